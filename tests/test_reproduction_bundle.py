"""A reproduction anyone can run (issue 14): a real evaluation of the tiny model is ingested,
its bundle is downloaded from the run's URL by `python -m evaluator reproduce` into an empty
folder, and the bundle's script runs the stock `lm_eval` commands and gets the stored scores."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from evaluator.messages import EvaluationJob
from evaluator.run import run_job
from leaderboard import flow
from leaderboard.evaluations.models import EvaluationRun
from tests.factories import RepositoryFactory, RunFactory, SubmissionFactory
from tests.tiny_model import build_tiny_repo

REPO_ID = "trellis-tests/tiny-bundle"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def evaluated_run(tmp_path, settings) -> tuple[EvaluationRun, Path]:
    model_root = tmp_path / "models"
    build_tiny_repo(model_root, REPO_ID)
    settings.TRELLIS_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TRELLIS_ARTIFACT_ROOT.mkdir()
    submission = SubmissionFactory(
        repository=RepositoryFactory(repo_id=REPO_ID), revision=REVISION, precision="float32"
    )
    run = RunFactory(submission=submission, state="running", attempt=1)
    job = EvaluationJob.model_validate(
        {
            "run_id": run.pk,
            "attempt": 1,
            "repo_id": REPO_ID,
            "revision": REVISION,
            "precision": "float32",
            "suite_name": "quick",
            "suite_version": "1",
            "model_source": "local",
            "model_path": str(model_root),
            "artifact_store": str(settings.TRELLIS_ARTIFACT_ROOT),
            "limit": 2,
        }
    )
    payload = run_job(job)
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"
    run.refresh_from_db()
    return run, model_root


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_bundle_names_the_model_as_its_source_does_and_reproduces_the_stored_scores(
    evaluated_run, live_server, tmp_path, client
):
    run, model_root = evaluated_run
    bundle = client.get(f"/runs/{run.pk}/bundle/")
    assert bundle.status_code == 200
    assert bundle["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(bundle.content))
    prefix = f"trellis-run-{run.pk}-reproduce"
    assert sorted(archive.namelist()) == [
        f"{prefix}/README.txt",
        f"{prefix}/expected.json",
        f"{prefix}/reproduce.py",
        f"{prefix}/run.json",
    ]
    manifest = json.loads(archive.read(f"{prefix}/run.json"))
    assert manifest["model"] == {
        "source": "local",
        "repo_id": REPO_ID,
        "revision": REVISION,
        "precision": "float32",
    }
    [command] = manifest["commands"]
    assert f"pretrained={REPO_ID}," in command
    assert str(model_root) not in json.dumps(manifest)  # nothing of the worker's folders
    assert "@LM_EVAL_TASKS@" in json.dumps(manifest["overrides"])
    expected = json.loads(archive.read(f"{prefix}/expected.json"))["scores"]
    stored = {s.task: s.value for s in run.scores.all()}
    assert {item["task"]: item["value"] for item in expected} == stored

    empty = tmp_path / "stranger"
    empty.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluator",
            "reproduce",
            f"{live_server.url}/runs/{run.pk}/",
            "--into",
            str(empty),
            "--model-root",
            str(model_root),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=empty,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"all {len(stored)} scores match the stored ones" in done.stdout
    for task, value in stored.items():
        line = next(line for line in done.stdout.splitlines() if line.startswith(task + " "))
        assert f"{value:.6f}" in line and line.endswith("ok")


@pytest.mark.django_db
def test_a_run_without_scores_has_no_bundle(client):
    run = RunFactory(state="queued")
    assert client.get(f"/runs/{run.pk}/bundle/").status_code == 404
