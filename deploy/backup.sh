#!/usr/bin/env bash
# Back up a Trellis deployment: the PostgreSQL database (pg_dump's custom format, restorable with
# deploy/restore.sh or pg_restore) and the artifact store (a tar of its artifacts, whether they
# live in the folder TRELLIS_ARTIFACT_ROOT or in the bucket TRELLIS_ARTIFACT_STORE names).
#
#   deploy/backup.sh /var/backups/trellis     # reads DATABASE_URL, TRELLIS_ARTIFACT_STORE or
#                                             # TRELLIS_ARTIFACT_ROOT (and AWS_* for a bucket)
#
# Run it as a user that can read both (on the single host: `sudo -u trellis`, with
# /etc/trellis/trellis.env sourced; deploy/systemd/trellis-backup.timer does that nightly).
# The database is dumped first and the artifacts second: an artifact is written before the run
# that names it is stored, so every artifact the dump refers to is in the tar (the tar may hold
# a few newer ones, which nothing refers to yet). Redis holds only messages: it is not backed up.
# A bucket is copied with `python -m evaluator.artifacts` (boto3, from the web extra) into the
# same tar layout as a folder: a backup of either restores into either (docs/operations.md).
set -euo pipefail

dest=${1:?usage: backup.sh DESTINATION_FOLDER}
: "${DATABASE_URL:?DATABASE_URL must point at the PostgreSQL database}"
artifacts=${TRELLIS_ARTIFACT_ROOT:-${TRELLIS_VAR_DIR:-var}/artifacts}
bucket=${TRELLIS_ARTIFACT_STORE:-}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$([ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$dest"
target="$(cd "$dest" && pwd)/trellis-$stamp"

mkdir "$target"
chmod 0700 "$target"
# --no-owner / --no-privileges: the dump restores into a database owned by whoever restores it.
pg_dump --format=custom --no-owner --no-privileges --file="$target/database.dump" "$DATABASE_URL"
if [ -n "$bucket" ]; then
  staging="$target/artifacts.staging"
  mkdir "$staging"
  (cd "$here" && "$python" -m evaluator.artifacts copy "$bucket" "$staging") >&2
  tar --create --gzip --file="$target/artifacts.tar.gz" --directory="$staging" .
  rm -rf "$staging"
elif [ -d "$artifacts" ]; then
  tar --create --gzip --file="$target/artifacts.tar.gz" --directory="$artifacts" .
else
  echo "no artifact folder at $artifacts: only the database is backed up" >&2
fi
(cd "$target" && sha256sum -- * > SHA256SUMS)
echo "$target"
