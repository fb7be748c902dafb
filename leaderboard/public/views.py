"""Public pages: ranking, model page, compare, plots, CSV export. Each parses its query, calls
the module that holds the content, and renders; a Refusal is shown with its problems (400)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.safestring import SafeString, mark_safe
from django.views import defaults
from django.views.decorators.http import require_safe

from leaderboard.accounts.roles import is_maintainer
from leaderboard.catalog.models import Repository
from leaderboard.integrity.plots import lineage_figure
from leaderboard.integrity.reports import integrity_context
from leaderboard.problems import Problem, Refusal
from leaderboard.public import compare, detail, plots
from leaderboard.public.cache import cached_bytes, cached_response
from leaderboard.public.etags import (
    data_version,
    model_state,
    query_key,
    ranking_validator,
    release,
)
from leaderboard.public.export import export
from leaderboard.public.http import with_cors
from leaderboard.public.licenses import PERMISSIVE, RESTRICTIVE
from leaderboard.public.models import LicenseFamily
from leaderboard.public.query import SORT_COLUMNS, RankingQuery, default_query, parse_ranking_query
from leaderboard.public.sanitize import render_card
from leaderboard.public.selection import Ranking, flags_by_repository, plotted, ranking
from leaderboard.public.suites import suite_names, versions_of
from leaderboard.public.table import ranking_rows
from leaderboard.submissions.models import ModelType, Precision

SORT_LABELS = {
    "model": "Model",
    "model_type": "Type",
    "parameters": "Params",
    "precision": "Precision",
    "license": "License",
    "average": "Average",
    "status": "Lineage",
    "submitted": "Submitted",
}
SORT_TITLES = {
    "average": "Mean of the task scores; follows the normalized switch.",
    "status": "Derived lineage status: hover a badge for the path that explains it.",
    "parameters": "Parameter count read from the safetensors headers.",
    "license": "The license the model card declares.",
}


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def _parse(
    params: QueryDict | dict[str, Any], *, paginate: bool
) -> tuple[RankingQuery, list[Problem]]:
    """The query, or the default one and the problems of a refused query (shown above it)."""
    try:
        return parse_ranking_query(params, paginate=paginate), []
    except Refusal as refused:
        query = default_query()
        if not paginate:
            query = query.model_copy(update={"page": None})
        return query, refused.problems


def _subset(params: QueryDict, names: tuple[str, ...]) -> QueryDict:
    kept = QueryDict(mutable=True)
    for name in names:
        if name in params:
            kept.setlist(name, params.getlist(name))
    return kept


def _safe_ranking(query: RankingQuery, data: str | None = None) -> Ranking | None:
    """The ranking, or None on a fresh install where no suite is known yet. With the data
    version `data`, a page is cut from the placement of every row (selection.select)."""
    if query.version is None:
        return None
    return ranking(query, data_version=data)


def _filter_context(query: RankingQuery) -> dict[str, Any]:
    return {
        "query": query,
        "suites": suite_names(),
        "versions": versions_of(query.suite),
        "model_types": [(t.value, t.label, t in query.model_type) for t in ModelType],
        "precisions": [(p.value, p.label, p in query.precision) for p in Precision],
        "license_families": [
            (f.value, f.label, f in query.license, _family_title(f.value)) for f in LicenseFamily
        ],
    }


def _family_title(family: str) -> str:
    if family == "permissive":
        return "Allows commercial use and redistribution: " + ", ".join(sorted(PERMISSIVE)[:8])
    if family == "restrictive":
        return "Use restrictions, non-commercial or share-alike: " + ", ".join(
            sorted(RESTRICTIVE)[:8]
        )
    return "No license, 'other', or an identifier Trellis does not classify."


def _table_context(result: Ranking) -> dict[str, Any]:
    query = result.query
    headers = []
    for key in ("model", "model_type", "parameters", "precision", "license", "average"):
        headers.append(_header(query, key, SORT_LABELS[key], SORT_TITLES.get(key, "")))
    task_headers = [
        _header(query, column.key, column.key, column.tooltip)
        | {"shots": column.shots_label, "metric": column.metric}
        for column in result.view.columns
    ]
    tail = [
        _header(query, key, SORT_LABELS[key], SORT_TITLES.get(key, ""))
        for key in ("status", "submitted")
    ]
    rows = [
        {
            "row": row,
            "cells": row.cells(result.view, query.normalized),
            "average": row.shown_average(query.normalized),
            "status_title": status_title(row.lineage_status, row.taint_path),
        }
        for row in result.rows
    ]
    pages = {}
    if result.page is not None:
        if result.page > 1:
            pages["first"] = query.querystring(page=1)
            pages["previous"] = query.querystring(page=result.page - 1)
        if result.page < result.pages:
            pages["next"] = query.querystring(page=result.page + 1)
            pages["last"] = query.querystring(page=result.pages)
    return {
        "result": result,
        "headers": headers,
        "task_headers": task_headers,
        "tail_headers": tail,
        "rows": rows,
        # Written in Python (public/table.py): the template loop was most of a page's time.
        "rows_html": ranking_rows(rows),
        "pages": pages,
        "reveal_flagged": query.querystring(show_flagged=True, page=None),
        "reveal_tainted": query.querystring(show_tainted=True, page=None),
        "reveal_all": query.querystring(show_flagged=True, show_tainted=True, page=None),
        "permalink": query.querystring(),
        "plots_link": query.querystring(page=None, per_page=50),
    }


def status_title(status: str, path_text: str) -> str:
    """A status badge's tooltip: the explaining path, or what `clean` means."""
    if path_text:
        return path_text
    if status == "clean":
        return CLEAN_TITLE
    return status


CLEAN_TITLE = (
    "No confirmed flag, open report or unresolved lineage on this model or its declared "
    "ancestors and datasets"
)


def _header(query: RankingQuery, key: str, label: str, title: str) -> dict[str, Any]:
    active = query.sort == key
    return {
        "key": key,
        "label": label,
        "title": title,
        "link": query.sort_link(key),
        "active": active,
        "arrow": ("▼" if query.direction == "desc" else "▲") if active else "",
        "numeric": key not in ("model", "model_type", "precision", "license", "status"),
    }


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """The 400 handler: a form posted over the upload limit gets a page that says so (413)
    rather than Django's bare "Bad Request"; the API answers its own error shape."""
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        problem = Problem(
            "body_too_large",
            "",
            f"What you sent is larger than this site accepts ({limit / 1_000_000:g} MB): "
            "shorten the text (link to long evidence instead of pasting it) and send it again.",
        )
        context = {
            "heading": "Too much to send",
            "errors": [problem],
            "back": "javascript:history.back()",
        }
        return render(request, "public/refused.html", context, status=413)
    return defaults.bad_request(request, exception)


def _fragment(namespace: str, version: str, template: str, context: Any) -> SafeString:
    """A page's public part, rendered without the request (so nothing of the visitor's session,
    user or CSRF token can be in it) once per data `version` and shared by every web process
    (public/cache.py); `context` is called only to build it."""
    key = f"{release()}:{version}"
    body = cached_bytes(namespace, key, lambda: render_to_string(template, context()))
    return mark_safe(body.decode())


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _ranking_context(
    query: RankingQuery, errors: list[Problem], data: str | None = None
) -> dict[str, Any]:
    result = _safe_ranking(query, data)
    context = _filter_context(query) | {"errors": errors, "sort_keys": list(SORT_COLUMNS)}
    if result is not None:
        context |= _table_context(result)
    return context


@require_safe
def ranking_page(request: HttpRequest) -> HttpResponse:
    query, errors = _parse(request.GET, paginate=True)
    fragment = None
    if not errors:
        # The page is the same for every visitor: the ranking part comes from the cache, keyed
        # by the data version and the query; the menu, messages and queue line are per request.
        data = data_version(query)
        version = ranking_validator(query, extra="ranking-page", data=data).etag
        try:
            fragment = _fragment(
                "ranking",
                version,
                "public/_ranking.html",
                lambda: _ranking_context(query, [], data.etag),
            )
        except Refusal as refused:  # a page past the last one
            query, errors = default_query(), refused.problems
    if fragment is None:
        fragment = mark_safe(
            render_to_string("public/_ranking.html", _ranking_context(query, errors))
        )
    # htmx swaps only 2xx answers: a refused filter change must still show its message.
    status = 400 if errors and not _is_htmx(request) else 200
    if _is_htmx(request):
        return HttpResponse(fragment, status=status)
    return render(request, "public/ranking.html", {"ranking_html": fragment}, status=status)


@require_safe
def model_page(request: HttpRequest, org: str, name: str) -> HttpResponse:
    repository = detail.find_model(f"{org}/{name}")
    if repository is None:
        raise Http404(f"No model {org}/{name} in this catalog.")
    query, errors = _parse(_subset(request.GET, ("suite", "version", "normalized")), paginate=False)
    submission_id = _int_param(request.GET.get("submission"))

    maintainer = is_maintainer(request.user)

    def context() -> dict[str, Any]:
        return _model_context(repository, query, errors, submission_id, signals_too=maintainer)

    if errors or maintainer:
        # Maintainers see the model's signals (per role); a refused query is rare: both live.
        body = mark_safe(render_to_string("public/_model.html", context(), request=request))
    else:
        version = _digest(model_state(repository).etag, query_key(query), str(submission_id))
        body = _fragment("model", version, "public/_model.html", context)
    return render(
        request,
        "public/model.html",
        {"repository": repository, "model_html": body},
        status=400 if errors else 200,
    )


def _model_context(
    repository: Repository,
    query: RankingQuery,
    errors: list[Problem],
    submission_id: int | None,
    *,
    signals_too: bool,
) -> dict[str, Any]:
    model = detail.model_detail(repository, query, submission_id, reports=False)
    selected = model.selected
    result = model.selected_result
    return {
        "model": model,
        "repository": repository,
        "query": query,
        "errors": errors,
        "versions": versions_of(query.suite),
        "card_html": render_card(selected.submission.card_text) if selected else "",
        "result": result,
        "scores_figure": plots.figure_json(plots.task_scores(result, query.normalized))
        if result and result.tasks
        else None,
        "lineage_figure": plots.figure_json(lineage_figure(repository, depth=2, max_nodes=60)),
        "integrity": integrity_context(repository, signals_too=signals_too),
        "compare_hint": f"{repository.repo_id},",
    }


def _int_param(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


@require_safe
def compare_page(request: HttpRequest) -> HttpResponse:
    query, errors = _parse(_subset(request.GET, ("suite", "version", "normalized")), paginate=False)
    raw_models = ",".join(request.GET.getlist("models"))
    context: dict[str, Any] = {
        "query": query,
        "versions": versions_of(query.suite),
        "models_value": raw_models,
        "errors": errors,
        "min_models": compare.MIN_COMPARE,
        "max_models": compare.MAX_COMPARE,
    }
    chosen = compare.chosen_models(raw_models)
    context["chosen"] = chosen
    if len(chosen) == 1 and not errors:
        # The model page's "compare…" link names one model: pick the others, no refusal.
        context["picking"] = True
    elif raw_models and not errors:
        try:
            names = compare.parse_models_param(raw_models)
            comparison = compare.compare(names, query)
        except Refusal as refused:
            context["errors"] = refused.problems
        else:
            context["comparison"] = comparison
            context["figure"] = plots.figure_json(
                plots.comparison_bars(comparison, query.normalized)
            )
    status = 400 if context["errors"] else 200
    return render(request, "public/compare.html", context, status=status)


@require_safe
def compare_search(request: HttpRequest) -> HttpResponse:
    """The compare picker's suggestions (htmx, search as you type): ranked models whose name
    contains `q`, each a link that adds it to the models already chosen."""
    query, _errors = _parse(
        _subset(request.GET, ("suite", "version", "normalized")), paginate=False
    )
    chosen = compare.chosen_models(",".join(request.GET.getlist("models")))
    found = compare.search_models(request.GET.get("q", "")[:100], query, chosen)
    params = query.to_params(page=None)
    suggestions = [
        (name, urlencode(params | {"models": ",".join([*chosen, name])}, doseq=True))
        for name in found
    ]
    context = {"suggestions": suggestions, "q": request.GET.get("q", "").strip()}
    return render(request, "public/_compare_suggestions.html", context)


@require_safe
def plots_page(request: HttpRequest) -> HttpResponse:
    query, errors = _parse(request.GET, paginate=False)
    query = query.model_copy(update={"page": None})
    if errors:
        fragment = mark_safe(render_to_string("public/_plots.html", _plots_context(query, errors)))
    else:
        # Built once per data version and query (the figures of 10,000 rows take a while),
        # shared by every web process.
        version = ranking_validator(query, extra="plots-page").etag
        fragment = _fragment(
            "plots", version, "public/_plots.html", lambda: _plots_context(query, [])
        )
    status = 400 if errors and not _is_htmx(request) else 200
    if _is_htmx(request):
        return HttpResponse(fragment, status=status)
    return render(request, "public/plots.html", {"plots_html": fragment}, status=status)


def _plots_context(query: RankingQuery, errors: list[Problem]) -> dict[str, Any]:
    result = plotted(query) if query.version is not None else None
    context = _filter_context(query) | {"errors": errors, "result": result}
    if result is None:
        return context
    rows = result.rows
    threshold = settings.TRELLIS_SCORE_Z_OUTLIER
    scored = plots.zscores(rows, query.normalized)
    outliers = sorted(
        (s for s in scored if s.z is not None and abs(s.z) >= threshold),
        key=lambda s: -abs(s.z or 0.0),
    )
    flags = flags_by_repository(s.row.repository_id for s in outliers[:25])
    # New rows: the plotted ones are shared between builds (selection._plot_rows).
    listed = [
        replace(s, row=replace(s.row, flags=flags.get(s.row.repository_id, [])))
        for s in outliers[:25]
    ]
    return context | {
        "threshold": threshold,
        "outliers": listed,
        "outlier_count": len(outliers),
        "ranking_link": query.querystring(page=None),
        "figures": [
            ("size", plots.figure_json(plots.score_vs_size(scored, query.normalized, threshold))),
            ("correlation", plots.figure_json(plots.task_correlation(rows, result.view))),
            ("types", plots.figure_json(plots.distribution_by_type(rows, query.normalized))),
            (
                "merges",
                plots.figure_json(plots.distribution_by_merge_method(rows, query.normalized)),
            ),
            ("time", plots.figure_json(plots.best_over_time(rows, query.normalized))),
        ],
    }


@require_safe
def export_csv(request: HttpRequest) -> HttpResponse:
    try:
        query = parse_ranking_query(request.GET, paginate=False)
    except Refusal as refused:
        text = "\n".join(f"{p.field}: {p.message}" for p in refused.problems)
        return with_cors(HttpResponse(text + "\n", status=400, content_type="text/plain"))

    response = cached_response(
        request,
        "export.csv",
        ranking_validator(query, extra="csv"),
        lambda: export(query, "csv")[0],
        content_type="text/csv; charset=utf-8",
    )
    filename = f"trellis-{query.suite}-{query.version}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return with_cors(response)
