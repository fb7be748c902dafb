"""Integrity pages: reporting (signed-in users), the moderation queue and decisions
(maintainers; everyone else gets 403), the public lineage graph, the public moderation log
(HTML, JSON, Atom), the block list and the verified organisations (public; maintainers change
them here). Rules live in reports, blocklist, verification and log."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.feedgenerator import Atom1Feed
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from leaderboard import flow
from leaderboard.accounts.roles import is_maintainer
from leaderboard.catalog.models import RepositoryKind
from leaderboard.evaluations.runs import evaluated_repositories
from leaderboard.integrity import blocklist, log, plots, reports, signals
from leaderboard.integrity.forms import ReportForm
from leaderboard.integrity.models import ReportKind, VerifiedOrganisation
from leaderboard.problems import Problem, Refusal

# The lineage page draws at most this much; the API returns everything.
DEPTH_DEFAULT, DEPTH_MAX = 3, 12
NODES_MAX = 250


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "integrity/forbidden.html", status=403)


def queue(request: HttpRequest) -> HttpResponse:
    if not is_maintainer(request.user):
        return _forbidden(request)
    order = "newest" if request.GET.get("order") == "newest" else "impact"
    signal_order = "impact" if request.GET.get("signals") == "impact" else "p"
    return render(
        request,
        "integrity/queue.html",
        {
            "items": reports.moderation_queue(evaluated_repositories(), order),
            "flags": reports.active_flags(),
            "order": order,
            "signal_items": signals.signal_queue(evaluated_repositories(), signal_order),
            "signal_order": signal_order,
            "next": request.get_full_path(),
        },
    )


@require_POST
def decide_signal(request: HttpRequest, pk: int) -> HttpResponse:
    if not is_maintainer(request.user):
        return _forbidden(request)
    try:
        signal = flow.decide_signal(
            pk, request.POST.get("decision", ""), request.POST.get("note", ""), request.user
        )
    except Refusal as refused:
        for item in refused.problems:
            messages.error(request, f"Signal #{pk}: {item.message}")
    else:
        done = f"Signal #{signal.pk} on {signal.target} is now {signal.state}"
        if signal.report_id:
            done += (
                f": flag #{signal.report_id} confirmed, and the status of it and every "
                "descendant recomputed"
            )
        messages.success(request, done + ".")
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, {request.get_host()}):
        return redirect(next_url)
    return redirect("integrity:queue")


@require_POST
def resolve_report(request: HttpRequest, pk: int) -> HttpResponse:
    if not is_maintainer(request.user):
        return _forbidden(request)
    decision = request.POST.get("decision", "")
    try:
        report = flow.resolve(pk, decision, request.POST.get("note", ""), request.user)
    except Refusal as refused:
        for item in refused.problems:
            messages.error(request, f"Report #{pk}: {item.message}")
    else:
        messages.success(
            request,
            f"Report #{report.pk} on {report.target} is now {report.status}; the status of "
            "it and every descendant was recomputed.",
        )
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, {request.get_host()}):
        return redirect(next_url)
    return redirect("integrity:queue")


@login_required
def report(request: HttpRequest) -> HttpResponse:
    target_type = request.GET.get("type", RepositoryKind.MODEL)
    repo_id = request.GET.get("target", "")
    try:
        target = reports.find_target(target_type, repo_id)
    except Refusal as refused:
        return render(
            request,
            "integrity/report.html",
            {"problems": refused.problems, "form": None},
            status=refused.status,
        )
    initial_kind = request.GET.get("kind", "")
    form = ReportForm(
        request.POST or None,
        initial={"kind": initial_kind if initial_kind in ReportKind.values else ""},
    )
    if request.method == "POST" and form.is_valid():
        try:
            filed = flow.file_report(
                reporter=request.user,
                target=target,
                kind=form.cleaned_data["kind"],
                evidence=form.cleaned_data["evidence"],
                links=form.cleaned_data["links"],
            )
        except Refusal as refused:
            form.add_problems(refused.problems)
        else:
            if filed.joined:
                text = (
                    f"An open {filed.report.kind} report on {target} already existed "
                    f"(#{filed.report.pk}); your evidence was added to it."
                )
            else:
                text = (
                    f"Report #{filed.report.pk} on {target} was filed; a maintainer will review it."
                )
            messages.success(request, text)
            return redirect(reports.lineage_url(target))
    return render(request, "integrity/report.html", {"form": form, "target": target})


def lineage(request: HttpRequest, repo_id: str) -> HttpResponse:
    kind = request.GET.get("type", RepositoryKind.MODEL)
    if kind not in RepositoryKind.values:
        problem = Problem(
            "invalid_target_type",
            "type",
            f"type {kind!r} is not one of: {', '.join(RepositoryKind.values)}.",
        )
        context = {"heading": "Unknown kind of repository", "errors": [problem]}
        return render(request, "public/refused.html", context, status=400)
    try:
        repository = reports.find_target(kind, repo_id)
    except Refusal as refused:
        raise Http404(refused.problems[0].message) from None
    errors: list[Problem] = []
    raw_depth = request.GET.get("depth", str(DEPTH_DEFAULT)).strip()
    depth = DEPTH_DEFAULT
    if raw_depth.isdigit() and 1 <= int(raw_depth) <= DEPTH_MAX:
        depth = int(raw_depth)
    else:
        errors.append(
            Problem(
                "invalid_depth",
                "depth",
                f"depth is a number of generations from 1 to {DEPTH_MAX}; got {raw_depth!r}.",
            )
        )
    figure = plots.lineage_figure(repository, depth=depth, max_nodes=NODES_MAX)
    return render(
        request,
        "integrity/lineage.html",
        {
            "repository": repository,
            "figure": figure,
            "depth": depth,
            "depth_choices": range(1, DEPTH_MAX + 1),
            "integrity": reports.integrity_context(repository),
            "errors": errors,
        },
        status=400 if errors else 200,
    )


# --- the public moderation log, block list and verified organisations -------------------------


def _before(request: HttpRequest) -> int | None:
    raw = request.GET.get("before", "")
    return int(raw) if raw.isdigit() else None


def moderation_log(request: HttpRequest) -> HttpResponse:
    entries = log.entries(before=_before(request))
    return render(
        request,
        "integrity/log.html",
        {
            "entries": entries,
            "next_before": entries[-1].pk if len(entries) == log.PAGE_SIZE else None,
        },
    )


def moderation_log_json(request: HttpRequest) -> JsonResponse:
    entries = log.entries(before=_before(request))
    return JsonResponse(
        {
            "entries": [log.entry_to_dict(entry) for entry in entries],
            "next_before": entries[-1].pk if len(entries) == log.PAGE_SIZE else None,
        }
    )


def moderation_log_atom(request: HttpRequest) -> HttpResponse:
    feed = Atom1Feed(
        title="Trellis moderation log",
        link=request.build_absolute_uri(reverse("integrity:log")),
        description="Reports, decisions, block-list and verification changes, newest first.",
        feed_url=request.build_absolute_uri(reverse("integrity:log-atom")),
    )
    for entry in log.entries():
        feed.add_item(
            title=f"{entry.get_action_display()}: {log.subject_of(entry)}",
            link=request.build_absolute_uri(log.entry_url(entry.pk)),
            description=entry.note,
            unique_id=request.build_absolute_uri(log.entry_url(entry.pk)),
            pubdate=entry.created_at,
            updateddate=entry.created_at,
            author_name=entry.actor.get_username() if entry.actor else "system",
        )
    return HttpResponse(feed.writeString("utf-8"), content_type="application/atom+xml")


def _refusal_messages(request: HttpRequest, refused: Refusal) -> None:
    for item in refused.problems:
        messages.error(request, item.message)


def block_list(request: HttpRequest) -> HttpResponse:
    """The public block list; maintainers add and remove entries from it (POST)."""
    if request.method == "POST":
        try:
            if request.POST.get("remove"):
                entry = blocklist.remove_entry(
                    request.user, int(request.POST["remove"]), request.POST.get("note", "")
                )
                messages.success(request, f"Block-list entry #{entry.pk} was removed.")
            else:
                entry = blocklist.add_entry(
                    request.user,
                    request.POST.get("kind", ""),
                    request.POST.get("pattern", ""),
                    request.POST.get("reason", ""),
                )
                messages.success(
                    request, f"{entry.kind.capitalize()} pattern {entry.pattern!r} is now blocked."
                )
        except Refusal as refused:
            if refused.status in (401, 403):
                return _forbidden(request)
            _refusal_messages(request, refused)
        except ValueError:
            messages.error(request, "Choose the entry to remove by its number.")
        return redirect("integrity:blocklist")
    return render(
        request,
        "integrity/blocklist.html",
        {"entries": blocklist.public_list(), "maintainer": is_maintainer(request.user)},
    )


def block_list_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"entries": [entry.to_dict() for entry in blocklist.public_list()]})


def verified_organisations(request: HttpRequest) -> HttpResponse:
    """The verified organisations; maintainers verify or withdraw (POST)."""
    if request.method == "POST":
        org, note = request.POST.get("org", ""), request.POST.get("note", "")
        try:
            if request.POST.get("action") == "withdraw":
                flow.withdraw_verification(request.user, org, note)
                messages.success(request, f"{org} is no longer verified.")
            else:
                flow.verify_organisation(request.user, org, note)
                messages.success(request, f"{org} is verified.")
        except Refusal as refused:
            if refused.status in (401, 403):
                return _forbidden(request)
            _refusal_messages(request, refused)
        return redirect("integrity:verified")
    return render(
        request,
        "integrity/verified.html",
        {
            "organisations": VerifiedOrganisation.objects.filter(revoked_at__isnull=True),
            "maintainer": is_maintainer(request.user),
        },
    )
