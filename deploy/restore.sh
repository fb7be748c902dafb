#!/usr/bin/env bash
# Restore a backup made by deploy/backup.sh into an EMPTY database and an empty artifact store
# (the folder TRELLIS_ARTIFACT_ROOT, or the bucket TRELLIS_ARTIFACT_STORE names).
#
#   createdb trellis                                  # a new, empty database
#   DATABASE_URL=postgres://…/trellis TRELLIS_ARTIFACT_ROOT=/var/lib/trellis/artifacts \
#       deploy/restore.sh /var/backups/trellis/trellis-20261130T020000Z
#   # or, into a bucket: TRELLIS_ARTIFACT_STORE=s3://bucket/prefix (and AWS_* as the web side)
#
# Stop the web process and the workers first; start them again afterwards (the web process runs
# `migrate`, which brings an older backup's schema up to date). It refuses a database that
# already has tables, or an artifact store that holds anything, before it changes either: it
# never mixes a backup into live data.
set -euo pipefail

source_dir=${1:?usage: restore.sh BACKUP_FOLDER}
: "${DATABASE_URL:?DATABASE_URL must point at the empty PostgreSQL database to restore into}"
artifacts=${TRELLIS_ARTIFACT_ROOT:-${TRELLIS_VAR_DIR:-var}/artifacts}
bucket=${TRELLIS_ARTIFACT_STORE:-}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$([ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}
store() { (cd "$here" && "$python" -m evaluator.artifacts "$@"); }

(cd "$source_dir" && sha256sum --check --quiet SHA256SUMS)
tables=$(psql "$DATABASE_URL" --no-psqlrc --tuples-only --no-align --command \
  "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
if [ "$tables" != "0" ]; then
  echo "refusing: the database already has $tables tables; restore into an empty one" >&2
  exit 2
fi
if [ -f "$source_dir/artifacts.tar.gz" ]; then
  if [ -n "$bucket" ]; then
    if [ -n "$(store list "$bucket")" ]; then
      echo "refusing: the artifact store $bucket is not empty; restore into an empty one" >&2
      exit 2
    fi
  else
    mkdir -p "$artifacts"
    if [ -n "$(ls -A "$artifacts")" ]; then
      echo "refusing: $artifacts is not empty; restore the artifacts into an empty folder" >&2
      exit 2
    fi
  fi
fi
pg_restore --no-owner --no-privileges --exit-on-error --single-transaction \
  --dbname="$DATABASE_URL" "$source_dir/database.dump"
if [ -f "$source_dir/artifacts.tar.gz" ]; then
  if [ -n "$bucket" ]; then
    staging=$(mktemp -d)
    trap 'rm -rf "$staging"' EXIT
    tar --extract --gzip --file="$source_dir/artifacts.tar.gz" --directory="$staging"
    store copy --into-empty "$staging" "$bucket" >&2
  else
    tar --extract --gzip --file="$source_dir/artifacts.tar.gz" --directory="$artifacts"
  fi
fi
echo "restored $source_dir"
