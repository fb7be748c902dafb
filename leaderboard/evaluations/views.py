"""Evaluation pages: the submission page with its runs' live state. Placeholder until issue 3."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def submission_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "Submission"})
