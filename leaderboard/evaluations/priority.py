"""Which queued run starts next: a maintainer's boost first, then the submission's votes, then
age (the oldest first). Votes (one per user and submission, a weekly budget) and boosts are
written here; the dispatcher (dispatch.py) hands runs to the broker in this order, so the order
runs start follows it rather than the order messages were sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Count, F, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from leaderboard.accounts.roles import is_maintainer
from leaderboard.evaluations.models import EvaluationRun, RunState, Vote
from leaderboard.problems import Refusal
from leaderboard.submissions.models import Submission

WEEK = timedelta(days=7)
# A boost is a small integer either way: maintainers raise or lower a run by steps.
MAX_BOOST = 100


@dataclass(frozen=True, order=True)
class StartKey:
    """A run's place in the start order: sorting keys ascending puts the next run first."""

    boost: int  # negated: a higher boost sorts first
    votes: int  # negated
    enqueued_at: datetime
    run_id: int


def start_key(boost: int, votes: int, enqueued_at: datetime, run_id: int) -> StartKey:
    """The rule itself: boost, then votes, then age, then the run id (a stable tie-break)."""
    return StartKey(-boost, -votes, enqueued_at, run_id)


def with_votes(runs: QuerySet[EvaluationRun]) -> QuerySet[EvaluationRun]:
    """`runs` annotated with `votes`, their submission's vote count."""
    count = (
        Vote.objects.filter(submission_id=OuterRef("submission_id"))
        .order_by()
        .values("submission_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return runs.annotate(votes=Coalesce(Subquery(count), Value(0)))


def in_start_order(runs: QuerySet[EvaluationRun]) -> QuerySet[EvaluationRun]:
    """`runs` (annotated with `votes`) in the order they start: the SQL of `start_key`."""
    return with_votes(runs).order_by(
        F("boost").desc(), F("votes").desc(), F("enqueued_at").asc(nulls_last=True), "pk"
    )


def pending() -> QuerySet[EvaluationRun]:
    """Every queued run, the next to start first."""
    return in_start_order(EvaluationRun.objects.filter(state=RunState.QUEUED))


# --- votes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteBudget:
    limit: int
    used: int
    frees_at: datetime | None  # when the oldest vote of the week leaves the window

    @property
    def left(self) -> int:
        return max(self.limit - self.used, 0)


def vote_budget(user: Any, now: datetime | None = None) -> VoteBudget:
    now = now or timezone.now()
    recent = Vote.objects.filter(user=user, created_at__gte=now - WEEK)
    oldest = recent.order_by("created_at").values_list("created_at", flat=True).first()
    return VoteBudget(
        settings.TRELLIS_WEEKLY_VOTES, recent.count(), oldest + WEEK if oldest else None
    )


def _pending_run(submission: Submission) -> EvaluationRun | None:
    return submission.runs.filter(state=RunState.QUEUED).order_by("-pk").first()


def cast_vote(user: Any, submission: Submission) -> Vote:
    """`user` votes for `submission`'s pending evaluation, or Refusal saying why not."""
    if user is None or not user.is_authenticated:
        raise Refusal.one("not_authenticated", "submission", "Sign in to vote.", 401)
    if _pending_run(submission) is None:
        raise Refusal.one(
            "not_pending",
            "submission",
            "Only a submission waiting in the queue can be voted for; this one is "
            f"{submission.state}.",
            409,
        )
    with transaction.atomic():
        # The user's row is the lock: two votes at once cannot both take the last one left.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        if Vote.objects.filter(user=user, submission=submission).exists():
            raise Refusal.one(
                "already_voted", "submission", "You have already voted for this submission.", 409
            )
        budget = vote_budget(user)
        if budget.left == 0:
            when = f" (the next frees on {budget.frees_at:%Y-%m-%d %H:%M} UTC)"
            raise Refusal.one(
                "vote_budget_spent",
                "submission",
                f"You have used your {budget.limit} votes of the last 7 days"
                f"{when if budget.frees_at else ''}: withdraw one or wait.",
                429,
            )
        try:
            with transaction.atomic():
                return Vote.objects.create(user=user, submission=submission)
        except IntegrityError:
            raise Refusal.one(
                "already_voted", "submission", "You have already voted for this submission.", 409
            ) from None


def withdraw_vote(user: Any, submission: Submission) -> bool:
    """Take back a vote (it leaves the budget too); False when there was none."""
    if user is None or not user.is_authenticated:
        raise Refusal.one("not_authenticated", "submission", "Sign in to vote.", 401)
    deleted, _ = Vote.objects.filter(user=user, submission=submission).delete()
    return bool(deleted)


# --- boosts ------------------------------------------------------------------------------------


def set_boost(run: EvaluationRun, user: Any, boost: int) -> EvaluationRun:
    """A maintainer raises (boost > 0) or lowers (< 0) a queued run; 0 is neutral."""
    if user is None or not user.is_authenticated:
        raise Refusal.one("not_authenticated", "boost", "Sign in as a maintainer.", 401)
    if not is_maintainer(user):
        raise Refusal.one("forbidden", "boost", "Only maintainers can raise or lower a run.", 403)
    if not -MAX_BOOST <= boost <= MAX_BOOST:
        raise Refusal.one(
            "invalid_boost", "boost", f"Choose a boost from {-MAX_BOOST} to {MAX_BOOST}.", 400
        )
    updated = EvaluationRun.objects.filter(pk=run.pk, state=RunState.QUEUED).update(boost=boost)
    if not updated:
        raise Refusal.one(
            "not_pending", "boost", f"Only a queued run can be moved; this one is {run.state}.", 409
        )
    run.refresh_from_db()
    return run
