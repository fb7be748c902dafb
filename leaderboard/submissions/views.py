"""Submission pages: the form, the submission page (mostly its evaluation runs' state, drawn by
the evaluations app's run panel), and the submitter's own list. The rules live in intake."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from leaderboard import flow
from leaderboard.evaluations.views import run_panel_context
from leaderboard.problems import Refusal
from leaderboard.public.models import RankingEntry
from leaderboard.submissions.forms import SubmissionForm
from leaderboard.submissions.models import Submission

PAGE_SIZE = 50


@login_required
def new(request: HttpRequest) -> HttpResponse:
    form = SubmissionForm(request.POST or None)
    problems = []
    if request.method == "POST" and form.is_valid():
        try:
            submission = flow.submit(form.to_request(), request.user)
        except Refusal as refused:
            problems = refused.problems
            form.add_problems(problems)
        else:
            messages.success(
                request,
                f"{submission.repository.repo_id} at {submission.revision[:12]} was accepted: "
                "its evaluation's state is below and updates by itself.",
            )
            return redirect("submissions:detail", pk=submission.pk)
    return render(request, "submissions/new.html", {"form": form, "problems": problems})


@login_required
def mine(request: HttpRequest) -> HttpResponse:
    submissions = (
        Submission.objects.filter(submitter_id=request.user.pk)
        .select_related("repository")
        .order_by("-created_at", "-pk")
    )
    page = Paginator(submissions, PAGE_SIZE).get_page(request.GET.get("page"))
    # Each submission's averages, from the ranking's read table (one query for the page).
    averages: dict[int, list[tuple[str, float | None]]] = {}
    for submission_id, suite, version, average in RankingEntry.objects.filter(
        submission_id__in=[submission.pk for submission in page]
    ).values_list("submission_id", "suite_name", "suite_version", "average"):
        averages.setdefault(submission_id, []).append((f"{suite}@{version}", average))
    for submission in page:
        submission.averages = sorted(averages.get(submission.pk, []))  # type: ignore[attr-defined]
    return render(request, "submissions/mine.html", {"page": page})


@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    submission = get_object_or_404(
        Submission.objects.select_related("repository", "submitter"), pk=pk
    )
    context = run_panel_context(request, submission)
    context["earlier_runs"] = submission.runs.order_by("-created_at", "-pk")[1:]
    return render(request, "evaluations/submission_detail.html", context)
