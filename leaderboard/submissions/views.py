"""Submission pages: the form, and the submitter's own list. The rules live in services."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from leaderboard.submissions.forms import SubmissionForm
from leaderboard.submissions.models import Submission
from leaderboard.submissions.services import SubmissionRefused, submit

PAGE_SIZE = 50


@login_required
def new(request: HttpRequest) -> HttpResponse:
    form = SubmissionForm(request.POST or None)
    problems = []
    if request.method == "POST" and form.is_valid():
        try:
            submission = submit(form.to_request(), request.user)
        except SubmissionRefused as refused:
            problems = refused.problems
            form.add_problems(problems)
        else:
            messages.success(
                request,
                f"{submission.repository.repo_id} at {submission.revision[:12]} was accepted; "
                "its evaluation is queued.",
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
    return render(request, "submissions/mine.html", {"page": page})
