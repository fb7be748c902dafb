"""The demo's data: two accounts, the demo model repositories and the demo model's submission.
Every step is idempotent, so `make demo` can run it on each start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from leaderboard.accounts.models import MAINTAINERS_GROUP
from leaderboard.submissions.models import Submission

DEMO_MAINTAINER = ("demo-maintainer", "demo-maintainer-pw")
DEMO_SUBMITTER = ("demo-submitter", "demo-submitter-pw")


class DemoError(Exception):
    """The demo cannot be set up as configured; the message says what to change."""


@dataclass
class DemoOutcome:
    created_users: list[str]
    model_path: Path
    submission: Submission
    submitted_now: bool


def ensure_user(username: str, password: str, *, maintainer: bool = False) -> tuple[Any, bool]:
    """The user, created with `password` when missing (an existing password is left alone)."""
    user, created = get_user_model().objects.get_or_create(
        username=username, defaults={"email": f"{username}@example.org"}
    )
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    if maintainer:
        user.groups.add(Group.objects.get(name=MAINTAINERS_GROUP))
    return user, created


def setup_demo(model_root: Path | None = None) -> DemoOutcome:
    from evaluator.demo_model import (
        DEMO_MODEL_TYPE,
        INSTRUCT_ID,
        build_demo_repositories,
        demo_precision,
    )
    from leaderboard import flow
    from leaderboard.submissions.intake import SubmissionRequest

    if settings.TRELLIS_MODEL_SOURCE != "local":
        raise DemoError(
            "The demo model is a local repository: set TRELLIS_MODEL_SOURCE=local "
            f"(it is {settings.TRELLIS_MODEL_SOURCE!r})."
        )
    created = []
    _, new = ensure_user(*DEMO_MAINTAINER, maintainer=True)
    if new:
        created.append(DEMO_MAINTAINER[0])
    submitter, new = ensure_user(*DEMO_SUBMITTER)
    if new:
        created.append(DEMO_SUBMITTER[0])

    model_path = build_demo_repositories(Path(model_root or settings.TRELLIS_MODEL_ROOT))
    precision = demo_precision()
    existing = (
        Submission.objects.filter(repository__repo_id=INSTRUCT_ID, precision=precision)
        .order_by("created_at")
        .first()
    )
    if existing is not None:
        return DemoOutcome(created, model_path, existing, submitted_now=False)
    request = SubmissionRequest(
        repo_id=INSTRUCT_ID, precision=precision, model_type=DEMO_MODEL_TYPE
    )
    return DemoOutcome(created, model_path, flow.submit(request, submitter), submitted_now=True)
