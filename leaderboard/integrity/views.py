"""Moderation pages. Placeholder until the integrity issue."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def queue(request: HttpRequest) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "Moderation"})
