"""The submission form, "my submissions" and POST /api/v1/submissions, through HTTP."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from leaderboard.accounts.models import ApiToken
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.submissions.models import Submission
from tests.builders import default_card, make_dataset_repo, make_model_repo
from tests.factories import SubmissionFactory

pytestmark = pytest.mark.django_db

API = "/api/v1/submissions"
FORM = {
    "repo_id": "acme/tiny-chat",
    "revision": "main",
    "precision": "bfloat16",
    "model_type": "fine-tuned",
    "weight_type": "original",
}
PARAMETERS = 640


@pytest.fixture
def repos(model_root):
    make_model_repo(model_root, "acme/base")
    make_dataset_repo(model_root, "acme/instructions")
    card = default_card("acme/tiny-chat", base_model="acme/base", datasets=["acme/instructions"])
    make_model_repo(model_root, "acme/tiny-chat", card=card)
    return model_root


@pytest.fixture
def bad_repo(model_root):
    """A fine-tune whose card forgets its license and parents, with pickled weights."""
    card = default_card("acme/tiny-chat", license=None, datasets=["acme/instructions"])
    make_model_repo(model_root, "acme/tiny-chat", card=card, weights="bin")
    return model_root


def problem_codes(html: str) -> dict[str, list[str]]:
    """The problem codes the form page shows, per field row ("" for those above the form)."""
    shown: dict[str, list[str]] = {}
    for field, block in re.findall(r'id="problems-(\w+)">(.*?)</ul>', html, flags=re.S):
        shown[field] = re.findall(r'data-code="([a-z_]+)"', block)
    top = re.search(r'<div class="notice form-problems" id="problems".*?</div>', html, flags=re.S)
    if top:
        shown[""] = re.findall(r'data-code="([a-z_]+)"', top.group(0))
    return shown


# --- permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/submissions/new/", "/submissions/mine/"])
def test_pages_need_a_signed_in_user(anonymous_client, url):
    response = anonymous_client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"


def test_anonymous_form_post_saves_nothing(anonymous_client, repos):
    response = anonymous_client.post("/submissions/new/", FORM)
    assert response.status_code == 302
    assert Submission.objects.count() == 0


def test_api_without_credentials_is_401_in_the_error_shape(anonymous_client, repos):
    response = anonymous_client.post(API, FORM, content_type="application/json")
    assert response.status_code == 401
    assert response.json() == {
        "errors": [
            {
                "code": "not_authenticated",
                "field": "Authorization",
                "message": "Sign in, or send 'Authorization: Bearer <token>' with a token from "
                "your profile page.",
            }
        ]
    }
    assert Submission.objects.count() == 0


def test_api_with_a_revoked_token_is_401(submitter, repos):
    token, raw = ApiToken.issue(submitter, name="old")
    token.revoked_at = timezone.now()
    token.save()
    response = Client().post(
        API, FORM, content_type="application/json", headers={"Authorization": f"Bearer {raw}"}
    )
    assert response.status_code == 401


# --- the form -------------------------------------------------------------------------------------


def test_form_explains_every_field(submitter_client):
    response = submitter_client.get("/submissions/new/")
    assert response.status_code == 200
    html = response.content.decode()
    for field in FORM:
        assert f'id="id_{field}"' in html
        help_text = re.search(rf'<span class="helptext" id="help-{field}">(.*?)</span>', html)
        assert help_text is not None and len(help_text.group(1)) > 60
    assert 'value="main"' in html


def test_form_submission_lands_on_the_submission_page(submitter_client, submitter, repos):
    response = submitter_client.post("/submissions/new/", FORM)
    submission = Submission.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/submissions/{submission.pk}/"
    assert submission.submitter == submitter
    assert submission.parameter_count == PARAMETERS
    assert EvaluationRun.objects.filter(submission=submission, state="queued").count() == 1


def test_form_lists_every_problem_next_to_its_field(submitter_client, bad_repo):
    response = submitter_client.post("/submissions/new/", {**FORM, "precision": "int4"})
    assert response.status_code == 200
    html = response.content.decode()
    assert problem_codes(html) == {
        "repo_id": ["license_missing", "parents_missing", "pickle_weights"],
        "precision": ["invalid_precision"],
        "": [],
    }
    assert "The submission was refused: 4 problems to fix" in html
    assert "README.md front matter declares no license" in html
    # The typed values survive the refusal.
    assert 'value="acme/tiny-chat"' in html
    assert Submission.objects.count() == 0


def test_form_shows_the_weekly_limit_above_the_fields(submitter_client, submitter, repos, settings):
    settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT = 1
    SubmissionFactory(submitter=submitter)
    response = submitter_client.post("/submissions/new/", FORM)
    assert response.status_code == 200
    assert problem_codes(response.content.decode()) == {"": ["weekly_limit_reached"]}


def test_form_links_the_existing_entry_of_a_duplicate(submitter_client, repos):
    first = submitter_client.post("/submissions/new/", FORM)
    assert first.status_code == 302
    again = submitter_client.post("/submissions/new/", FORM)
    html = again.content.decode()
    assert problem_codes(html) == {"revision": ["duplicate_submission"], "": []}
    link = f'<a href="{first["Location"]}">{first["Location"]}</a>'
    assert f"see its results at {link}." in html


# --- my submissions -------------------------------------------------------------------------------


def test_my_submissions_newest_first_with_states(submitter_client, submitter, other_submitter):
    now = timezone.now()
    rows = [
        SubmissionFactory(submitter=submitter, state="finished"),
        SubmissionFactory(submitter=submitter, state="failed"),
        SubmissionFactory(submitter=submitter, state="running"),
    ]
    for age, submission in zip((3, 2, 1), rows, strict=True):
        Submission.objects.filter(pk=submission.pk).update(created_at=now - timedelta(hours=age))
    hidden = SubmissionFactory(submitter=other_submitter)

    html = submitter_client.get("/submissions/mine/").content.decode()
    listed = [int(pk) for pk in re.findall(r'<tr data-submission="(\d+)">', html)]
    assert listed == [rows[2].pk, rows[1].pk, rows[0].pk]
    assert hidden.repository.repo_id not in html
    states = re.findall(r'<span class="state (\w+)">', html)
    assert states == ["running", "failed", "finished"]


def test_my_submissions_empty(submitter_client):
    html = submitter_client.get("/submissions/mine/").content.decode()
    assert "No submissions yet." in html


# --- the API --------------------------------------------------------------------------------------


@pytest.fixture
def token_client(submitter) -> Client:
    _, raw = ApiToken.issue(submitter, name="ci")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def test_api_accepts_with_201_and_the_submission(token_client, submitter, repos):
    response = token_client.post(API, FORM, content_type="application/json")
    assert response.status_code == 201
    submission = Submission.objects.get()
    assert response.json() == {
        "id": submission.pk,
        "url": f"/submissions/{submission.pk}/",
        "repo_id": "acme/tiny-chat",
        "requested_revision": "main",
        "revision": submission.revision,
        "precision": "bfloat16",
        "weight_type": "original",
        "model_type": "fine-tuned",
        "parameters": PARAMETERS,
        "architecture": "LlamaForCausalLM",
        "license": "apache-2.0",
        "merge_method": "",
        "parents": ["acme/base"],
        "datasets": ["acme/instructions"],
        "submitter": "alice",
        "state": "queued",
        "lineage_status": "clean",
        "verified": False,
        "is_synthetic": False,
        "submitted_at": submission.created_at.isoformat(),
    }
    assert len(submission.revision) == 40


def test_api_defaults_revision_and_weight_type(token_client, repos):
    payload = {"repo_id": "acme/tiny-chat", "precision": "float32", "model_type": "fine-tuned"}
    response = token_client.post(API, payload, content_type="application/json")
    assert response.status_code == 201
    assert (response.json()["requested_revision"], response.json()["weight_type"]) == (
        "main",
        "original",
    )


def test_api_refuses_with_the_same_problems_as_the_form(token_client, submitter_client, bad_repo):
    response = token_client.post(
        API, {**FORM, "precision": "int4"}, content_type="application/json"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [(e["code"], e["field"]) for e in errors] == [
        ("invalid_precision", "precision"),
        ("license_missing", "card.license"),
        ("parents_missing", "card.base_model"),
        ("pickle_weights", "files"),
    ]
    assert errors[1]["message"] == (
        "README.md front matter declares no license: add e.g. 'license: apache-2.0'."
    )
    html = submitter_client.post("/submissions/new/", {**FORM, "precision": "int4"})
    shown = problem_codes(html.content.decode())
    assert sorted(code for codes in shown.values() for code in codes) == sorted(
        e["code"] for e in errors
    )
    assert Submission.objects.count() == 0


def test_api_malformed_json_is_400_not_500(token_client):
    response = token_client.post(API, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {
                "code": "malformed_json",
                "field": "body",
                "message": "The request body is not valid JSON: send one JSON object, with "
                "'Content-Type: application/json'.",
            }
        ]
    }


def test_api_missing_and_mistyped_fields(token_client):
    response = token_client.post(
        API, {"repo_id": 7, "precision": "bfloat16"}, content_type="application/json"
    )
    assert response.status_code == 400
    assert [(e["code"], e["field"]) for e in response.json()["errors"]] == [
        ("invalid_string_type", "repo_id"),
        ("invalid_missing", "model_type"),
    ]


@pytest.mark.parametrize("body", [json.dumps(["acme/tiny-chat"]), "null", "42"])
def test_api_body_that_is_not_an_object(token_client, body):
    response = token_client.post(API, body, content_type="application/json")
    assert response.status_code == 400
    assert [(e["code"], e["field"]) for e in response.json()["errors"]] == [
        ("invalid_missing", "repo_id"),
        ("invalid_missing", "precision"),
        ("invalid_missing", "model_type"),
    ]


def test_api_empty_body(token_client):
    response = token_client.post(API, "", content_type="application/json")
    assert response.status_code == 400
    assert [(e["code"], e["field"]) for e in response.json()["errors"]] == [
        ("invalid_missing", "body")
    ]


def test_api_session_needs_csrf(submitter, repos):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(submitter)
    response = browser.post(API, FORM, content_type="application/json")
    assert response.status_code == 401
    browser.get("/submissions/new/")
    csrf = browser.cookies["csrftoken"].value
    response = browser.post(
        API, FORM, content_type="application/json", headers={"X-CSRFToken": csrf}
    )
    assert response.status_code == 201
