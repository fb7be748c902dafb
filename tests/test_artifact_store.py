"""The artifact store without a shared filesystem: a real S3-compatible server (moto in server
mode on a free loopback port, started here) holds the details artifacts. The job names the
bucket; the worker-side code writes into it through boto3; the web side checks the object at
ingest and streams it over HTTP; backup and restore cover the bucket. The folder store obeys the
same contract."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from evaluator.artifacts import (
    BucketStore,
    FolderStore,
    StoreError,
    StoreUnavailable,
    endpoint_url,
    open_store,
    s3_client,
)
from evaluator.messages import SCHEMA_VERSION, EvaluationJob, InvalidMessage, Result, parse
from evaluator.progress import localize_job
from evaluator.run import write_artifact
from evaluator.suites import load_suite
from leaderboard.env import env_bucket
from leaderboard.evaluations import tasks
from leaderboard.evaluations.dispatch import build_job
from leaderboard.evaluations.models import EvaluationRun
from tests.factories import QUEUES, RunFactory, drain, quick_payload

ROOT = Path(__file__).resolve().parent.parent
ROWS = [
    {"task": "arc_easy", "doc_id": d, "choices": ["a", "b"], "correct": d % 2 == 0}
    for d in range(50)
]


def objects(location: str) -> dict[str, bytes]:
    """Every object under the store's prefix, read with boto3 directly (not through the store)."""
    store = open_store(location)
    assert isinstance(store, BucketStore)
    client = s3_client(endpoint_url())
    listed = client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=store.bucket, Key=item["Key"])["Body"].read()
        for item in listed
    }


@pytest.fixture
def _clean_broker() -> Iterator[None]:
    yield
    for queue in QUEUES:
        drain(queue)


# --- one contract, two stores --------------------------------------------------------------------


@pytest.fixture(params=["folder", "bucket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "folder":
        return FolderStore(tmp_path / "store")
    return open_store(request.getfixturevalue("bucket"))


def test_a_store_keeps_what_the_worker_wrote_under_its_name(store, tmp_path):
    assert store.is_empty() and list(store.names()) == []
    written = write_artifact(store, 7, load_suite("quick", "1"), ROWS)
    name = written["path"]
    assert name.startswith("7/quick@1-") and name.endswith(".details.jsonl.gz")
    opened = store.open(name)
    with opened.stream as stream:
        data = stream.read()
    assert (opened.size, len(data), written["size"]) == (len(data),) * 3
    assert hashlib.sha256(data).hexdigest() == written["sha256"]
    assert [json.loads(line) for line in gzip.decompress(data).splitlines()] == ROWS
    assert list(store.names()) == [name]
    assert store.open("7/absent.jsonl.gz") is None


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "7/../../x", "7//x", "", "a\\b"])
def test_a_name_outside_the_store_is_refused(store, tmp_path, name):
    source = tmp_path / "file"
    source.write_bytes(b"x")
    with pytest.raises(StoreError, match="is not a relative name inside the artifact store"):
        store.put(name, source)
    assert store.open(name) is None
    assert store.is_empty()


def test_a_folder_store_does_not_follow_a_symlink_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    store = FolderStore(tmp_path / "store")
    store.root.mkdir()
    (store.root / "7").symlink_to(outside)
    assert store.open("7/secret") is None


def test_a_location_is_a_folder_or_a_bucket(tmp_path):
    assert open_store(tmp_path).location == str(tmp_path.resolve())
    assert open_store(f"file://{tmp_path}").location == str(tmp_path.resolve())
    assert open_store("s3://bucket/a/b/").location == "s3://bucket/a/b"
    assert open_store("s3://bucket").location == "s3://bucket"
    with pytest.raises(StoreError, match="the bucket name is missing or malformed"):
        open_store("s3:///prefix")


# --- the job names the store; the worker writes where it says -----------------------------------


@pytest.mark.django_db
def test_the_job_names_the_bucket_and_a_worker_keeps_it(settings, bucket, tmp_path):
    settings.TRELLIS_ARTIFACT_STORE = bucket
    job = build_job(RunFactory(queue="gpu-small"))
    assert (job["schema_version"], job["artifact_store"]) == (SCHEMA_VERSION, bucket)
    here = localize_job(job, artifact_root=tmp_path, data_root="", model_root=tmp_path)
    assert here["artifact_store"] == bucket
    # A folder is the web host's path: a worker writes into its own mount of it instead.
    settings.TRELLIS_ARTIFACT_STORE = ""
    settings.TRELLIS_ARTIFACT_ROOT = Path("/srv/web-host/artifacts")
    job = build_job(RunFactory(queue="gpu-small"))
    assert job["artifact_store"] == "/srv/web-host/artifacts"
    here = localize_job(job, artifact_root=tmp_path, data_root="", model_root=tmp_path)
    assert here["artifact_store"] == str(tmp_path)


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("gs://bucket/x", "'gs://bucket/x' is neither an absolute folder nor an s3://"),
        ("relative/folder", "'relative/folder' is neither an absolute folder nor an s3://"),
        ("s3://Bad_Bucket/x", "'s3://Bad_Bucket/x': the bucket name is missing or malformed"),
    ],
)
def test_a_job_naming_no_store_is_refused(location, problem):
    fields = {
        "run_id": 1,
        "attempt": 1,
        "repo_id": "org/model",
        "revision": "a" * 40,
        "precision": "bfloat16",
        "suite_name": "quick",
        "suite_version": "1",
        "model_source": "hub",
        "artifact_store": location,
    }
    with pytest.raises(InvalidMessage, match="artifact_store: Value error, ") as caught:
        parse(EvaluationJob, fields)
    assert problem in str(caught.value)


@pytest.mark.parametrize("value", ["/srv/artifacts", "s3://", "https://bucket.example.org/x"])
def test_an_artifact_store_setting_that_is_not_a_bucket_is_an_error(monkeypatch, value):
    monkeypatch.setenv("TRELLIS_ARTIFACT_STORE", value)
    with pytest.raises(ImproperlyConfigured) as caught:
        env_bucket("TRELLIS_ARTIFACT_STORE")
    assert str(caught.value) == (
        f"TRELLIS_ARTIFACT_STORE={value!r} is not a bucket: use s3://bucket/prefix, or leave "
        "it empty for the folder TRELLIS_ARTIFACT_ROOT"
    )
    monkeypatch.setenv("TRELLIS_ARTIFACT_STORE", "s3://bucket/prefix/")
    assert env_bucket("TRELLIS_ARTIFACT_STORE") == "s3://bucket/prefix"


# --- worker writes, web ingests, HTTP serves: no shared folder ------------------------------------


def worker_writes(job: dict[str, Any], worker_root: Path) -> dict[str, Any]:
    """What a GPU worker does with the job after scoring: the details artifact into the store
    the job names (evaluator.run.write_artifact, as run_job calls it), and the result message."""
    parsed = parse(
        EvaluationJob,
        localize_job(job, artifact_root=worker_root, data_root="", model_root=worker_root),
    )
    payload = quick_payload(parsed.run_id, worker_root / "scratch", {"arc_easy": 0.625})
    suite = load_suite(parsed.suite_name, parsed.suite_version)
    payload["artifact"] = write_artifact(
        open_store(parsed.artifact_store), parsed.run_id, suite, ROWS
    )
    result = {"run_id": parsed.run_id, "attempt": parsed.attempt, "payload": payload}
    return Result.model_validate(result).to_message()


@pytest.mark.usefixtures("_clean_broker")
@pytest.mark.django_db(transaction=True)
def test_a_result_in_the_bucket_is_ingested_and_served_over_http(
    settings, bucket, tmp_path, live_server
):
    web_folder = tmp_path / "web-artifacts"
    settings.TRELLIS_ARTIFACT_ROOT = web_folder
    settings.TRELLIS_ARTIFACT_STORE = bucket
    run = RunFactory(queue="gpu-small", state="running")
    message = worker_writes(build_job(run), tmp_path / "gpu-host")

    assert tasks.ingest_result.apply(args=[message]).get() == "ingested"
    run.refresh_from_db()
    name = message["payload"]["artifact"]["path"]
    assert (run.state, run.artifact_path) == ("finished", name)
    stored = objects(bucket)
    assert list(stored) == [f"{bucket.split('/', 3)[3]}/{name}"]
    assert not web_folder.exists()  # nothing went through a folder on the web host
    assert not (tmp_path / "gpu-host").joinpath(str(run.pk)).exists()

    page = urllib.request.urlopen(f"{live_server.url}/submissions/{run.submission_id}/", timeout=30)
    assert f'href="/runs/{run.pk}/artifact/"' in page.read().decode()
    with urllib.request.urlopen(f"{live_server.url}/runs/{run.pk}/artifact/", timeout=30) as got:
        body = got.read()
        headers = got.headers
    assert body == next(iter(stored.values()))
    assert hashlib.sha256(body).hexdigest() == run.artifact_sha256
    assert headers["Content-Type"] == "application/gzip"
    assert headers["Content-Length"] == str(len(body))
    assert headers["Content-Disposition"] == (
        f'attachment; filename="trellis-run-{run.pk}-{name.split("/")[1]}"'
    )
    assert [json.loads(line) for line in gzip.decompress(body).splitlines()] == ROWS


@pytest.mark.usefixtures("_clean_broker")
@pytest.mark.django_db
@pytest.mark.parametrize("tamper", ["replaced", "deleted"])
def test_an_object_changed_after_the_worker_wrote_it_is_refused_by_name(
    settings, bucket, tmp_path, tamper
):
    settings.TRELLIS_ARTIFACT_STORE = bucket
    run = RunFactory(queue="gpu-small", state="running")
    message = worker_writes(build_job(run), tmp_path)
    store = open_store(bucket)
    name = message["payload"]["artifact"]["path"]
    client, key = s3_client(endpoint_url()), store.key(name)
    if tamper == "replaced":
        size = message["payload"]["artifact"]["size"]
        client.put_object(Bucket=store.bucket, Key=key, Body=b"\0" * size)
        problem = "artifact.sha256: the file's sha256 is "
    else:
        client.delete_object(Bucket=store.bucket, Key=key)
        problem = f"artifact.path: no file at {bucket}/{name}"

    assert tasks.ingest_result.apply(args=[message]).get() == "rejected"
    run.refresh_from_db()
    assert (run.state, run.failure_code) == ("failed", "invalid_result")
    assert run.failure_reason.startswith(f"The worker's result did not pass validation. {problem}")


@pytest.mark.django_db
def test_a_missing_object_is_a_404_not_an_error(settings, bucket, client):
    settings.TRELLIS_ARTIFACT_STORE = bucket
    run = RunFactory(state="finished", artifact_path="1/gone.details.jsonl.gz")
    response = client.get(f"/runs/{run.pk}/artifact/")
    assert response.status_code == 404
    assert EvaluationRun.objects.get(pk=run.pk).state == "finished"


# --- backup and restore cover the bucket ----------------------------------------------------------


@pytest.mark.slow
def test_the_copy_command_moves_a_folder_into_a_bucket_once(bucket, tmp_path):
    folder = FolderStore(tmp_path / "folder")
    written = [write_artifact(folder, run, load_suite("quick", "1"), ROWS) for run in (1, 2)]
    command = [sys.executable, "-m", "evaluator.artifacts", "copy", "--into-empty"]
    done = subprocess.run(
        [*command, str(folder.root), bucket], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"copied 2 artifacts from {folder.root} to {bucket}\n"
    assert list(open_store(bucket).names()) == sorted(w["path"] for w in written)
    again = subprocess.run(
        [*command, str(folder.root), bucket], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2
    assert again.stderr == (
        f"refusing: the artifact store {bucket} is not empty; "
        "restore the artifacts into an empty one\n"
    )


# --- the GPU task itself, a real (tiny) model, the database out of reach --------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("_clean_broker")
@pytest.mark.django_db
def test_the_gpu_task_writes_into_the_bucket_and_the_web_side_serves_it(
    bucket, tmp_path, settings, django_db_blocker, client, monkeypatch
):
    from evaluator import worker
    from tests.test_evaluation_worker import RUN_ID, WEB_TASKS, gpu_config, job_message
    from tests.tiny_model import build_tiny_repo

    models, gpu_folder = tmp_path / "models", tmp_path / "gpu-host-artifacts"
    build_tiny_repo(models)
    monkeypatch.setenv("TRELLIS_REFERENCE_ITEMS", "0")  # the details are what this test is about
    job = job_message(models, Path("/web-host/artifacts"), artifact_store=bucket, limit=1)
    drain("trellis")
    here = gpu_config(artifact_root=gpu_folder, model_root=models, web_queue="trellis")
    with django_db_blocker.block(), here:
        assert worker.evaluate.apply(args=[job]).get() == "finished"
    messages = drain("trellis")
    assert not gpu_folder.exists()  # the job named a bucket: nothing landed on the GPU host

    settings.TRELLIS_ARTIFACT_STORE = bucket
    RunFactory(id=RUN_ID, attempt=job["attempt"], queue="gpu-small")
    outcomes = [WEB_TASKS[name].apply(args=args).get() for name, args in messages]
    assert outcomes[-1] == "ingested"
    run = EvaluationRun.objects.get(pk=RUN_ID)
    artifact = messages[-1][1][0]["payload"]["artifact"]
    assert (run.state, run.artifact_path) == ("finished", artifact["path"])
    response = client.get(f"/runs/{run.pk}/artifact/")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == artifact["sha256"] == run.artifact_sha256
    rows = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert len(rows) == artifact["rows"] > 0


# --- a bucket that cannot be reached ----------------------------------------------------------


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket behind an endpoint where nothing listens (one attempt per request)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "trellis-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "trellis-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return "s3://trellis-down/artifacts"


@pytest.mark.usefixtures("_clean_broker")
@pytest.mark.django_db
def test_an_unreachable_bucket_is_a_503_and_a_result_waits_for_it(
    settings, unreachable, tmp_path, client, caplog
):
    settings.TRELLIS_ARTIFACT_STORE = unreachable
    finished = RunFactory(state="finished", artifact_path="1/quick@1.details.jsonl.gz")
    response = client.get(f"/runs/{finished.pk}/artifact/")
    assert (response.status_code, response["Retry-After"]) == (503, "60")
    assert response.content == (
        b"The artifact store cannot be reached right now. Try again in a minute."
    )

    run = RunFactory(queue="gpu-small", state="running")
    payload = quick_payload(run.pk, tmp_path)  # the object is somewhere the web side cannot see
    message = Result.model_validate({"run_id": run.pk, "attempt": 1, "payload": payload})
    # Two retries before the last allowed one (max_retries=10), then it gives up this delivery.
    with caplog.at_level(logging.INFO, logger="celery.app.trace"):
        outcome = tasks.ingest_result.apply(args=[message.to_message()], retries=8)
    retried = [r.getMessage() for r in caplog.records if " retry: Retry in " in r.getMessage()]
    assert len(retried) == 2, retried
    assert isinstance(outcome.result, StoreUnavailable)
    assert str(outcome.result).startswith(f"the artifact store {unreachable} failed: ")
    run.refresh_from_db()
    assert (run.state, run.failure_code) == ("running", "")  # neither stored nor rejected
