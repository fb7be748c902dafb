"""Submission pages. Placeholder until the submission views land."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def new(request: HttpRequest) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "Submit"})


def mine(request: HttpRequest) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "My submissions"})
