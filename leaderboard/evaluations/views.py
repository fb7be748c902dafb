"""Evaluation pages: the run panel of a submission's page (its live state; the submissions app
serves the page), the fragment htmx polls, re-queueing a failed run, the details artifact's
download and the run's reproduction bundle; the public queue (/queue/) with votes and
maintainers' boosts."""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from evaluator.artifacts import StoreUnavailable
from leaderboard import flow
from leaderboard.accounts.roles import is_maintainer
from leaderboard.evaluations import bundle as reproduction
from leaderboard.evaluations import priority, queue, runs
from leaderboard.evaluations.artifacts import artifact_store
from leaderboard.evaluations.models import EvaluationRun, RunState, Vote
from leaderboard.evaluations.serializers import run_to_dict
from leaderboard.problems import Refusal
from leaderboard.submissions.models import Submission

logger = logging.getLogger(__name__)

# The page polls only while something can still change.
LIVE_STATES = (RunState.QUEUED, RunState.RUNNING)
# An outage of the artifact store is a 503 the browser may retry, not a 500.
RETRY = {"Retry-After": "60"}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def run_panel_context(request: HttpRequest, submission: Submission) -> dict[str, Any]:
    """What evaluations/_run_panel.html shows of `submission`'s newest run."""
    run = runs.latest_run(submission)
    view = run_to_dict(run) if run is not None else None
    return {
        "submission": submission,
        "run": view,
        "live": run is not None and run.state in LIVE_STATES,
        "elapsed": format_duration(view["elapsed_seconds"]) if view else "",
        "can_requeue": run is not None and runs.requeue_refusal(run, request.user) is None,
        "poll_seconds": 3,
    }


def _submission(pk: int) -> Submission:
    return get_object_or_404(Submission.objects.select_related("repository", "submitter"), pk=pk)


@require_GET
def submission_live(request: HttpRequest, pk: int) -> HttpResponse:
    return render(
        request, "evaluations/_run_panel.html", run_panel_context(request, _submission(pk))
    )


@require_POST
def requeue(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(EvaluationRun.objects.select_related("submission"), pk=pk)
    if not request.user.is_authenticated:
        return redirect_to_login(reverse("submissions:detail", args=[run.submission_id]))
    try:
        flow.requeue(run, request.user)
    except Refusal as refused:
        if refused.status == 403:
            return render(
                request,
                "evaluations/refused.html",
                {"message": refused.message, "submission_id": run.submission_id},
                status=403,
            )
        messages.error(request, refused.message)
    else:
        messages.success(request, "The run is queued again.")
    return redirect("submissions:detail", pk=run.submission_id)


@require_GET
def artifact(request: HttpRequest, pk: int) -> HttpResponseBase:
    """Streams the per-sample details (compressed JSON lines) of a finished run from the
    artifact store (a folder, or a bucket that needs not be reachable by the browser)."""
    run = get_object_or_404(EvaluationRun, pk=pk, state=RunState.FINISHED)
    try:
        opened = artifact_store().open(run.artifact_path) if run.artifact_path else None
    except StoreUnavailable as down:
        logger.warning("run %s: %s", run.pk, down)
        message = "The artifact store cannot be reached right now. Try again in a minute."
        return HttpResponse(message, status=503, content_type="text/plain", headers=RETRY)
    if opened is None:
        raise Http404("This run's details artifact is not on this server.")
    name = PurePosixPath(run.artifact_path).name
    content_type = "application/gzip" if name.endswith(".gz") else "application/octet-stream"
    response = FileResponse(
        opened.stream,
        as_attachment=True,
        filename=f"trellis-run-{run.pk}-{name}",
        content_type=content_type,
    )
    response["Content-Length"] = str(opened.size)
    return response


# --- the public queue, votes and boosts --------------------------------------------------------


@require_GET
def queue_page(request: HttpRequest) -> HttpResponse:
    """Pending runs in the order they start, running ones with progress, recently finished and
    failed; signed-in users vote here, maintainers raise or lower a run."""
    board = queue.queue_to_dict()
    for items in board.values():
        for item in items:  # ISO timestamps as the page shows them, to the minute (UTC)
            for key in ("enqueued_at", "finished_at"):
                if item.get(key):
                    item[f"{key}_shown"] = item[key][:16].replace("T", " ")
    user = request.user
    voted: set[int] = set()
    budget = None
    if user.is_authenticated:
        voted = set(
            Vote.objects.filter(user=user).values_list("submission_id", flat=True).order_by()
        )
        budget = priority.vote_budget(user)
    return render(
        request,
        "evaluations/queue.html",
        {
            "board": board,
            "voted": voted,
            "budget": budget,
            "maintainer": is_maintainer(user),
            "max_boost": priority.MAX_BOOST,
        },
    )


@require_POST
def vote(request: HttpRequest, submission_id: int) -> HttpResponse:
    submission = get_object_or_404(Submission, pk=submission_id)
    if not request.user.is_authenticated:
        return redirect_to_login(reverse("queue"))
    try:
        if request.POST.get("action") == "withdraw":
            priority.withdraw_vote(request.user, submission)
            messages.success(request, f"Your vote for {submission} was withdrawn.")
        else:
            priority.cast_vote(request.user, submission)
            messages.success(request, f"You voted for {submission}.")
    except Refusal as refused:
        messages.error(request, refused.message)
    return redirect("queue")


@require_POST
def boost(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(EvaluationRun, pk=pk)
    try:
        value = int(request.POST.get("boost", ""))
    except ValueError:
        messages.error(request, "Give the boost as a whole number (negative lowers the run).")
        return redirect("queue")
    try:
        priority.set_boost(run, request.user, value)
    except Refusal as refused:
        if refused.status in (401, 403):
            return render(
                request,
                "evaluations/refused.html",
                {"message": refused.message, "submission_id": run.submission_id},
                status=refused.status,
            )
        messages.error(request, refused.message)
    else:
        messages.success(request, f"Run {run.pk} now has boost {value}.")
    return redirect("queue")


@require_GET
def bundle(request: HttpRequest, pk: int) -> HttpResponse:
    """The run's reproduction bundle (zip): stock lm_eval commands, overrides, expected scores."""
    run = get_object_or_404(EvaluationRun.objects.select_related("submission__repository"), pk=pk)
    try:
        content = reproduction.build_bundle(run)
    except reproduction.NoBundle as exc:
        raise Http404(str(exc)) from None
    response = HttpResponse(content, content_type="application/zip")
    name = reproduction.bundle_name(run)
    response["Content-Disposition"] = f'attachment; filename="{name}.zip"'
    return response
