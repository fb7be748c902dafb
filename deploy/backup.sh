#!/usr/bin/env bash
# Back up a Trellis deployment: the PostgreSQL database (pg_dump's custom format, restorable with
# deploy/restore.sh or pg_restore) and the artifact store (a tar of TRELLIS_ARTIFACT_ROOT).
#
#   deploy/backup.sh /var/backups/trellis            # reads DATABASE_URL, TRELLIS_ARTIFACT_ROOT
#
# Run it as a user that can read both (on the single host: `sudo -u trellis`, with
# /etc/trellis/trellis.env sourced; deploy/systemd/trellis-backup.timer does that nightly).
# The database is dumped first and the artifacts second: an artifact is written before the run
# that names it is stored, so every artifact the dump refers to is in the tar (the tar may hold
# a few newer ones, which nothing refers to yet). Redis holds only messages: it is not backed up.
# With an S3-compatible artifact store, copy the bucket with the provider's tools instead (see
# docs/operations.md).
set -euo pipefail

dest=${1:?usage: backup.sh DESTINATION_FOLDER}
: "${DATABASE_URL:?DATABASE_URL must point at the PostgreSQL database}"
artifacts=${TRELLIS_ARTIFACT_ROOT:-${TRELLIS_VAR_DIR:-var}/artifacts}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
target="$dest/trellis-$stamp"

mkdir -p "$target"
chmod 0700 "$target"
# --no-owner / --no-privileges: the dump restores into a database owned by whoever restores it.
pg_dump --format=custom --no-owner --no-privileges --file="$target/database.dump" "$DATABASE_URL"
if [ -d "$artifacts" ]; then
  tar --create --gzip --file="$target/artifacts.tar.gz" --directory="$artifacts" .
else
  echo "no artifact folder at $artifacts: only the database is backed up" >&2
fi
(cd "$target" && sha256sum -- * > SHA256SUMS)
echo "$target"
