"""Hostile input against every route of the served OpenAPI document (schemathesis, through the
WSGI application): whatever it sends, signed in or not, the answer is never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from leaderboard.accounts.models import ApiToken
from tests.factories import ranked


@pytest.fixture
def api_schema(db):
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from leaderboard.wsgi import application

    # Something to find.
    ranked("org/base", 0.6)
    ranked("org/child", 0.7)
    # As Django's test client does: the test's transaction must outlive each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/v1/openapi.json", application)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def bearer(db, django_user_model) -> dict[str, str]:
    user = django_user_model.objects.create_user("fuzzer", password="fuzzer-password-1")
    return {"Authorization": f"Bearer {ApiToken.issue(user)[1]}"}


FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


def fuzz_every_operation(schema, headers: dict[str, str]) -> list[str]:
    """Run each operation of the schema with generated input; return what was tried."""
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @FUZZ
        def call(case) -> None:
            response = case.call(headers=headers)
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                case.query,
                case.body,
                response.text[:500],
            )

        call()
    return tried


@pytest.mark.slow
def test_no_anonymous_input_makes_the_api_answer_5xx(api_schema, unthrottled):
    tried = fuzz_every_operation(api_schema, {})
    assert "POST /api/v1/submissions" in tried and "GET /api/v1/leaderboard" in tried


@pytest.mark.slow
def test_no_input_with_a_token_makes_the_api_answer_5xx(api_schema, bearer, unthrottled):
    tried = fuzz_every_operation(api_schema, bearer)
    assert len(tried) >= 9


@pytest.fixture
def unthrottled(settings):
    # Fuzzing sends bursts: the per-minute limits would answer 429 and hide the routes.
    settings.TRELLIS_THROTTLE_SUBMISSIONS = 0
    settings.TRELLIS_THROTTLE_REPORTS = 0
    settings.TRELLIS_THROTTLE_TOKENS = 0
    return settings
