"""Backup and restore as an operator runs them (deploy/backup.sh, deploy/restore.sh: pg_dump and
pg_restore, a tar of the artifact store, a folder or an S3-compatible bucket): restored into an
empty database, the ranking is the same JSON, byte for byte, and every artifact is back with its
checksum."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection

from evaluator.artifacts import open_store
from evaluator.run import write_artifact as write_details
from evaluator.suites import load_suite
from tests.conftest import service_unavailable
from tests.factories import SUITE, VERSION, edge, flag, ranked, write_artifact

ROOT = Path(__file__).resolve().parent.parent


def _database_url(name: str | None = None) -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    host = f"{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}"
    return f"postgres://{auth}@{host}/{name or db['NAME']}"


def _run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _ranking_json(env: dict[str, str], out: Path) -> bytes:
    command = [sys.executable, "manage.py", "export_leaderboard", "--format", "json"]
    _run([*command, "--suite", SUITE, "--suite-version", VERSION, "--out", str(out)], env)
    return out.read_bytes()


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def empty_database():
    """A new, empty PostgreSQL database, dropped afterwards."""
    if connection.vendor != "postgresql":
        service_unavailable("PostgreSQL", RuntimeError("DATABASE_URL is not PostgreSQL"))
    name = f"{connection.settings_dict['NAME']}_restore_{uuid.uuid4().hex[:8]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_backup_restored_into_an_empty_database_gives_the_same_ranking(
    tmp_path, maintainer, empty_database, settings
):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    settings.TRELLIS_ARTIFACT_ROOT = artifacts
    base = ranked("org/base", 0.61)
    child = ranked(
        "org/child", {"arc_challenge": 0.7, "hellaswag": 0.5, "mmlu": 0.4, "winogrande": 0.6}
    )
    edge(child.repository, base.repository)
    ranked("org/other", 0.55, precision="float16", parameter_count=7_000_000_000)
    for submission in (base, child):
        run = submission.runs.get()
        artifact = write_artifact(artifacts, run.pk, [{"doc_id": 1, "ll": -1.5}])
        run.artifact_path, run.artifact_sha256 = artifact["path"], artifact["sha256"]
        run.save(update_fields=["artifact_path", "artifact_sha256"])
    flag(base.repository, maintainer)  # the child is tainted through its parent

    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "TRELLIS_ARTIFACT_ROOT": str(artifacts),
        "TRELLIS_VAR_DIR": str(tmp_path / "var"),
    }
    before = _ranking_json(env, tmp_path / "before.json")
    backups = tmp_path / "backups"
    folder = Path(_run([str(ROOT / "deploy" / "backup.sh"), str(backups)], env).strip())
    assert sorted(p.name for p in folder.iterdir()) == [
        "SHA256SUMS", "artifacts.tar.gz", "database.dump",
    ]  # fmt: skip

    restored_artifacts = tmp_path / "restored-artifacts"
    restored = env | {
        "DATABASE_URL": _database_url(empty_database),
        "TRELLIS_ARTIFACT_ROOT": str(restored_artifacts),
    }
    _run([str(ROOT / "deploy" / "restore.sh"), str(folder)], restored)
    after = _ranking_json(restored, tmp_path / "after.json")

    assert after == before
    assert b'"org/child"' in after and b"tainted" in after
    assert _digests(restored_artifacts) == _digests(artifacts)
    assert len(_digests(artifacts)) == 2
    # Restoring again into the now-filled database is refused, and changes nothing.
    again = subprocess.run(
        [str(ROOT / "deploy" / "restore.sh"), str(folder)],
        env=restored,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2
    assert "refusing: the database already has" in again.stderr
    assert _ranking_json(restored, tmp_path / "again.json") == before


def _bucket_digests(location: str) -> dict[str, str]:
    store = open_store(location)
    found = {}
    for name in store.names():
        opened = store.open(name)
        assert opened is not None
        with opened.stream as stream:
            found[name] = hashlib.sha256(stream.read()).hexdigest()
    return found


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_bucket_artifact_store_is_backed_up_and_restored_into_an_empty_bucket(
    tmp_path, empty_database, settings, bucket
):
    settings.TRELLIS_ARTIFACT_STORE = bucket
    suite = load_suite(SUITE, VERSION)
    for repo_id, score in (("org/base", 0.61), ("org/child", 0.7)):
        run = ranked(repo_id, score).runs.get()
        artifact = write_details(open_store(bucket), run.pk, suite, [{"doc_id": 1, "ll": -1.5}])
        run.artifact_path, run.artifact_sha256 = artifact["path"], artifact["sha256"]
        run.save(update_fields=["artifact_path", "artifact_sha256"])
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "TRELLIS_ARTIFACT_STORE": bucket,
        "TRELLIS_ARTIFACT_ROOT": str(tmp_path / "no-folder"),  # a bucket store needs none
        "TRELLIS_VAR_DIR": str(tmp_path / "var"),
        "PYTHON": sys.executable,
    }
    before = _ranking_json(env, tmp_path / "before.json")
    folder = Path(
        _run([str(ROOT / "deploy" / "backup.sh"), str(tmp_path / "backups")], env).strip()
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "SHA256SUMS", "artifacts.tar.gz", "database.dump",
    ]  # fmt: skip

    restored_bucket = bucket.rsplit("/", 1)[0] + "/restored"
    restored = env | {
        "DATABASE_URL": _database_url(empty_database),
        "TRELLIS_ARTIFACT_STORE": restored_bucket,
    }
    _run([str(ROOT / "deploy" / "restore.sh"), str(folder)], restored)

    assert _ranking_json(restored, tmp_path / "after.json") == before
    assert _bucket_digests(restored_bucket) == _bucket_digests(bucket)
    assert len(_bucket_digests(bucket)) == 2
    assert not (tmp_path / "no-folder").exists()
    # A bucket that holds anything is refused before the (empty) database is touched.
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{empty_database}_2"')
    try:
        again = subprocess.run(
            [str(ROOT / "deploy" / "restore.sh"), str(folder)],
            env=restored | {"DATABASE_URL": _database_url(f"{empty_database}_2")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 2
        assert again.stderr == (
            f"refusing: the artifact store {restored_bucket} is not empty; "
            "restore into an empty one\n"
        )
        tables = _run(
            ["psql", _database_url(f"{empty_database}_2"), "-tAc",
             "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"],
            env,
        )  # fmt: skip
        assert tables.strip() == "0"
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{empty_database}_2" WITH (FORCE)')
