"""Public pages (ranking, model pages, compare, plots). Placeholder until the public-views issue."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def ranking(request: HttpRequest) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "Ranking"})


def plots(request: HttpRequest) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "Plots"})


def compare(request: HttpRequest) -> HttpResponse:
    return render(request, "public/placeholder.html", {"title": "Compare"})
