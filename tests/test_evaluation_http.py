"""The submission page, its live fragment, the artifact download, re-queueing and
GET/POST /api/v1/submissions/<id>[/requeue], through HTTP."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from evaluator.suites import load_suite
from leaderboard import flow
from leaderboard.evaluations import runs
from leaderboard.evaluations.models import EvaluationRun
from tests.factories import QUEUES, RunFactory, SubmissionFactory, drain, quick_payload


@pytest.fixture(autouse=True)
def _clean_broker():
    yield
    for queue in QUEUES:
        drain(queue)


@pytest.fixture
def submission(submitter):
    return SubmissionFactory(submitter=submitter, repository__repo_id="acme/tiny-chat")


def finished_run(submission, artifact_root) -> EvaluationRun:
    run = RunFactory(submission=submission, state="running", queue="gpu-small")
    runs.mark_started(run.pk, 1, "celery@gpu-box")
    payload = quick_payload(run.pk, artifact_root, {"arc_easy": 0.625})
    assert flow.ingest_result(run.pk, 1, payload) == "ingested"
    return EvaluationRun.objects.get(pk=run.pk)


def failed_run(submission) -> EvaluationRun:
    run = RunFactory(submission=submission, state="running", queue="gpu-small")
    runs.record_failure(
        run.pk, 1, "tokenizer_missing", "acme/tiny-chat has no tokenizer.", "line 1\nOSError: x"
    )
    return EvaluationRun.objects.get(pk=run.pk)


# --- the page ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_queued_run_shows_its_position_and_polls(anonymous_client, submission):
    RunFactory(queue="gpu-small", enqueued_at=timezone.now() - timedelta(minutes=5))
    RunFactory(submission=submission, queue="gpu-small", enqueued_at=timezone.now())
    response = anonymous_client.get(f"/submissions/{submission.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<h1><a id="model-link" href="/models/acme/tiny-chat/"' in html
    assert 'data-state="queued"' in html
    assert (
        'Position <strong class="queue-position">2</strong> in the <code>gpu-small</code> queue'
        in html
    )
    assert f'hx-get="/runs/submission/{submission.pk}/live/" hx-trigger="every 3s"' in html


@pytest.mark.django_db
def test_running_run_shows_progress_and_elapsed_time(anonymous_client, submission):
    run = RunFactory(submission=submission, queue="gpu-small")
    runs.mark_started(run.pk, 1, "celery@gpu-box")
    EvaluationRun.objects.filter(pk=run.pk).update(
        started_at=timezone.now() - timedelta(seconds=125)
    )
    runs.record_progress(run.pk, 1, 300, 1200)
    response = anonymous_client.get(f"/runs/submission/{submission.pk}/live/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-state="running"' in html
    assert "25% done: 300 of 1,200 loglikelihood requests scored." in html
    assert "Running for 2 min 05 s on <code>celery@gpu-box</code>." in html
    assert 'hx-trigger="every 3s"' in html
    assert "<html" not in html  # a fragment, not a page


@pytest.mark.django_db
def test_finished_run_shows_scores_reproduction_configuration_and_artifact(
    anonymous_client, submission, artifact_root
):
    run = finished_run(submission, artifact_root)
    html = anonymous_client.get(f"/submissions/{submission.pk}/").content.decode()
    assert 'data-state="finished"' in html
    assert "hx-trigger" not in html  # nothing changes any more: polling stops
    shots = load_suite("quick").task("arc_easy").num_fewshot
    assert (
        '<tr data-task="arc_easy"><td>arc_easy</td><td>acc</td><td class="num">62.50</td>'
        f'<td class="num">5.00</td><td class="num">4</td><td class="num">{shots}</td></tr>'
    ) in html
    assert html.count("<tr data-task=") == 5
    assert "on suite <strong>quick</strong> version <strong>1</strong>" in html
    assert "lm_eval --model hf --model_args pretrained=x --tasks arc_easy" in html
    assert "bfloat16 / cpu / 8" in html
    assert "lm_eval 0.4.13, transformers 5.23.0, torch 2.13.0" in html
    assert f'href="/runs/{run.pk}/artifact/"' in html


@pytest.mark.django_db
def test_failed_run_shows_the_reason_and_log_tail(anonymous_client, submitter_client, submission):
    run = failed_run(submission)
    html = anonymous_client.get(f"/submissions/{submission.pk}/").content.decode()
    assert (
        '<p class="notice failure-reason">The tokenizer is missing or would not load. '
        "acme/tiny-chat has no tokenizer.</p>"
    ) in html
    assert '<pre class="log-tail">line 1\nOSError: x</pre>' in html
    assert "Re-queue this run" not in html
    own = submitter_client.get(f"/submissions/{submission.pk}/").content.decode()
    assert f'action="/runs/{run.pk}/requeue/"' in own


@pytest.mark.django_db
def test_unknown_submission_is_404(anonymous_client):
    assert anonymous_client.get("/submissions/424242/").status_code == 404
    assert anonymous_client.get("/runs/submission/424242/live/").status_code == 404


# --- artifact ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_artifact_streams_with_content_type_and_filename(
    anonymous_client, submission, artifact_root
):
    run = finished_run(submission, artifact_root)
    response = anonymous_client.get(f"/runs/{run.pk}/artifact/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"] == (
        f'attachment; filename="trellis-run-{run.pk}-quick@1-details.jsonl.gz"'
    )
    body = b"".join(response.streaming_content)
    rows = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert rows[0]["loglikelihoods"] == [-1.5, -2.5]


@pytest.mark.django_db
def test_artifact_of_an_unfinished_or_missing_run_is_404(
    anonymous_client, submission, artifact_root
):
    queued = RunFactory(submission=submission)
    assert anonymous_client.get(f"/runs/{queued.pk}/artifact/").status_code == 404
    run = finished_run(SubmissionFactory(), artifact_root)
    (artifact_root / run.artifact_path).unlink()
    assert anonymous_client.get(f"/runs/{run.pk}/artifact/").status_code == 404


# --- requeue through the page -------------------------------------------------------------------


@pytest.mark.django_db
def test_page_requeue_matrix(
    anonymous_client, submitter_client, maintainer_client, other_submitter, submission
):
    from django.test import Client

    run = failed_run(submission)
    response = anonymous_client.post(f"/runs/{run.pk}/requeue/")
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/submissions/{submission.pk}/"

    other = Client()
    other.force_login(other_submitter)
    response = other.post(f"/runs/{run.pk}/requeue/")
    assert response.status_code == 403
    assert "Only the submitter or a maintainer can re-queue this run." in response.content.decode()
    assert EvaluationRun.objects.get(pk=run.pk).state == "failed"

    response = submitter_client.post(f"/runs/{run.pk}/requeue/")
    assert response.status_code == 302
    assert response["Location"] == f"/submissions/{submission.pk}/"
    assert EvaluationRun.objects.get(pk=run.pk).state == "queued"

    runs.record_failure(run.pk, 2, "error", "again", "")
    response = submitter_client.post(f"/runs/{run.pk}/requeue/")
    assert response.status_code == 403
    assert "already re-queued this run once" in response.content.decode()

    response = maintainer_client.post(f"/runs/{run.pk}/requeue/")
    assert response.status_code == 302
    assert EvaluationRun.objects.get(pk=run.pk).attempt == 3


# --- API ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_returns_the_submission_with_its_finished_run(
    anonymous_client, submission, artifact_root
):
    run = finished_run(submission, artifact_root)
    response = anonymous_client.get(f"/api/v1/submissions/{submission.pk}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == submission.pk
    assert body["repo_id"] == "acme/tiny-chat"
    assert body["state"] == "finished"
    assert len(body["runs"]) == 1
    got = body["runs"][0]
    assert got["id"] == run.pk
    assert got["suite"] == {"name": "quick", "version": "1"}
    assert (got["state"], got["queue"], got["attempt"], got["position"]) == (
        "finished",
        "gpu-small",
        1,
        None,
    )
    assert got["worker"] == "celery@gpu-box"
    assert got["failure"] is None
    suite = load_suite("quick")
    chance = {key: suite.task(key).random_baseline for key in ("arc_challenge", "arc_easy")}
    assert got["scores"][:2] == [
        {
            "task": "arc_challenge",
            "metric": "acc_norm",
            "num_fewshot": suite.task("arc_challenge").num_fewshot,
            "n_samples": 4,
            "random_baseline": round(100 * chance["arc_challenge"], 4),
            "value": 50.0,
            "stderr": 5.0,
            "normalized": round(
                100 * (0.5 - chance["arc_challenge"]) / (1 - chance["arc_challenge"]), 4
            ),
        },
        {
            "task": "arc_easy",
            "metric": "acc",
            "num_fewshot": suite.task("arc_easy").num_fewshot,
            "n_samples": 4,
            "random_baseline": round(100 * chance["arc_easy"], 4),
            "value": 62.5,
            "stderr": 5.0,
            "normalized": round(100 * (0.625 - chance["arc_easy"]) / (1 - chance["arc_easy"]), 4),
        },
    ]
    assert [score["task"] for score in got["scores"]] == [
        "arc_challenge",
        "arc_easy",
        "hellaswag",
        "mmlu",
        "winogrande",
    ]
    assert (
        got["reproduce"]["command"]
        == "lm_eval --model hf --model_args pretrained=x --tasks arc_easy"
    )
    assert got["configuration"] == {
        "dtype": "bfloat16",
        "device": "cpu",
        "batch_size": 8,
        "backend": "trellis-prefix",
        "versions": {"lm_eval": "0.4.13", "transformers": "5.23.0", "torch": "2.13.0"},
        "duration_seconds": 12.5,
        "loglikelihood_requests": 1234,
    }
    assert got["artifact"] == {
        "url": f"/runs/{run.pk}/artifact/",
        "sha256": run.artifact_sha256,
        "size": run.payload["artifact"]["size"],
    }


@pytest.mark.django_db
def test_api_shows_queue_position_progress_and_failure(anonymous_client, submission, monkeypatch):
    run = RunFactory(submission=submission, queue="gpu-small", enqueued_at=timezone.now())
    got = anonymous_client.get(f"/api/v1/submissions/{submission.pk}").json()["runs"][0]
    assert (got["state"], got["position"], got["progress"]) == (
        "queued",
        1,
        {"done": 0, "total": 0, "share": None},
    )
    runs.mark_started(run.pk, 1, "w1")
    runs.record_progress(run.pk, 1, 1, 8)
    started = timezone.now() - timedelta(seconds=125)
    EvaluationRun.objects.filter(pk=run.pk).update(started_at=started)
    monkeypatch.setattr(timezone, "now", lambda: started + timedelta(seconds=125.5))
    got = anonymous_client.get(f"/api/v1/submissions/{submission.pk}").json()["runs"][0]
    assert (got["state"], got["position"], got["progress"]) == (
        "running",
        None,
        {"done": 1, "total": 8, "share": 0.125},
    )
    assert got["elapsed_seconds"] == 125.5
    runs.record_failure(run.pk, 1, "out_of_memory", "", "tail")
    got = anonymous_client.get(f"/api/v1/submissions/{submission.pk}").json()["runs"][0]
    assert got["failure"] == {
        "code": "out_of_memory",
        "reason": "Out of memory: the model did not fit on the worker at this precision.",
        "log_tail": "tail",
    }
    assert got["scores"] == [] and got["artifact"] is None


@pytest.mark.django_db
def test_api_unknown_submission_is_404_in_the_error_shape(anonymous_client):
    response = anonymous_client.get("/api/v1/submissions/424242")
    assert response.status_code == 404
    assert response.json() == {
        "errors": [
            {"code": "not_found", "field": "id", "message": "There is no submission 424242."}
        ]
    }


@pytest.mark.django_db
def test_api_requeue_matrix(anonymous_client, submitter, other_submitter, maintainer, submission):
    from leaderboard.accounts.models import ApiToken

    run = failed_run(submission)
    url = f"/api/v1/submissions/{submission.pk}/requeue"

    def post(user):
        if user is None:
            return anonymous_client.post(url)
        _, raw = ApiToken.issue(user)
        return anonymous_client.post(url, HTTP_AUTHORIZATION=f"Bearer {raw}")

    response = post(None)
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "not_authenticated"

    response = post(other_submitter)
    assert response.status_code == 403
    assert response.json() == {
        "errors": [
            {
                "code": "forbidden",
                "field": "id",
                "message": "Only the submitter or a maintainer can re-queue this run.",
            }
        ]
    }

    response = post(submitter)
    assert response.status_code == 200
    assert response.json()["runs"][0]["state"] == "queued"
    assert response.json()["runs"][0]["attempt"] == 2

    response = post(submitter)  # the run is queued, not failed
    assert response.status_code == 409
    assert response.json()["errors"][0]["code"] == "not_failed"

    runs.record_failure(run.pk, 2, "error", "again", "")
    response = post(submitter)
    assert response.status_code == 403
    assert response.json()["errors"][0]["code"] == "requeue_limit"

    response = post(maintainer)
    assert response.status_code == 200
    assert response.json()["runs"][0]["attempt"] == 3


@pytest.mark.django_db
def test_api_requeue_with_a_session_needs_csrf(submitter, submission):
    from django.test import Client

    failed_run(submission)
    client = Client(enforce_csrf_checks=True)
    client.force_login(submitter)
    response = client.post(f"/api/v1/submissions/{submission.pk}/requeue")
    assert response.status_code == 401
