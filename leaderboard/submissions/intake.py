"""Submitting a model: check_submission runs every rule and reports all problems at once, reading
the model and each declared parent from the source exactly once; record_submission saves an
accepted outcome (catalog node and submission) inside the transaction leaderboard.flow.submit
opens for the whole record (lineage, status, queued run)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError
from django.urls import reverse
from django.utils import timezone

from leaderboard.accounts.roles import is_maintainer
from leaderboard.catalog.cards import ParsedCard, declared_datasets, relation_for_model_type
from leaderboard.catalog.lineage import (
    CardRead,
    card_of,
    cycle_paths,
    unresolved,
    upsert_repository,
)
from leaderboard.catalog.models import DeclaredIn, Relation, RepositoryKind
from leaderboard.catalog.sources import (
    InvalidRepoId,
    ModelSource,
    RepoAccessDenied,
    RepoNotFound,
    RepoSnapshot,
    RevisionNotFound,
    SourceUnavailable,
    get_source,
)
from leaderboard.catalog.sources.base import SourceError
from leaderboard.integrity import blocklist
from leaderboard.problems import Problem, Refusal
from leaderboard.submissions import checks
from leaderboard.submissions.checks import problem
from leaderboard.submissions.models import (
    ModelType,
    Precision,
    Submission,
    WeightType,
)

WEEK = timedelta(days=7)


@dataclass(frozen=True, kw_only=True)
class SubmissionRequest:
    """What a submitter types, as strings: the form and the API build the same request."""

    repo_id: str
    precision: str
    model_type: str
    revision: str = "main"
    weight_type: str = WeightType.ORIGINAL

    def cleaned(self) -> SubmissionRequest:
        return replace(
            self,
            repo_id=(self.repo_id or "").strip(),
            revision=(self.revision or "").strip() or "main",
            precision=(self.precision or "").strip(),
            model_type=(self.model_type or "").strip(),
            weight_type=(self.weight_type or "").strip() or WeightType.ORIGINAL,
        )


@dataclass
class CheckOutcome:
    """Every problem found, and what was read on the way: the model's snapshot and each
    declared parent's card, so recording the submission reads nothing again."""

    request: SubmissionRequest
    problems: list[Problem] = field(default_factory=list)
    snapshot: RepoSnapshot | None = None
    card: ParsedCard | None = None
    parents: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    parameter_count: int | None = None
    # (kind, repo_id) -> the card as read, for every declared parent the source knows.
    cards: dict[tuple[str, str], CardRead] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- the checks ---------------------------------------------------------------------------------


def check_submission(request: SubmissionRequest, user: Any) -> CheckOutcome:
    """Run all nine rules of a submission against the model source and the database.

    When the repository or its revision cannot be read, the rules on its files are skipped (the
    first problem says why) while the rules on the typed fields and the weekly limit still run."""
    req = request.cleaned()
    outcome = CheckOutcome(request=req)
    problems = outcome.problems
    problems.extend(
        checks.check_input(
            req.repo_id, req.revision, req.precision, req.model_type, req.weight_type
        )
    )
    typed_ok = not any(p.code in ("invalid_repo_id", "invalid_revision") for p in problems)
    blocked = blocked_problem(req.repo_id) if typed_ok else None
    if blocked is not None:
        # Nothing of a blocked repository is read: the entry is the whole answer.
        problems.append(blocked)
        typed_ok = False
    if typed_ok:
        source = get_source()
        snapshot, read_problems = _read_repository(source, req)
        problems.extend(read_problems)
        if snapshot is not None:
            outcome.snapshot = snapshot
            _check_repository(outcome, source)
    limit = weekly_limit_problem(user)
    if limit is not None:
        problems.append(limit)
    return outcome


def blocked_problem(repo_id: str) -> Problem | None:
    """The `blocked` refusal naming the block-list entry `repo_id` falls under, or None."""
    entry = blocklist.matching_entry(repo_id)
    if entry is None:
        return None
    return problem(
        "blocked",
        f"{repo_id} is refused by block-list entry #{entry.pk} ({entry.kind} "
        f"{entry.pattern!r}, since {entry.created_at:%Y-%m-%d}): {entry.reason} The public "
        f"block list ({reverse('integrity:blocklist')}) says how to contest it: file a report "
        "or write to the maintainers.",
    )


def _read_repository(
    source: ModelSource, req: SubmissionRequest
) -> tuple[RepoSnapshot | None, list[Problem]]:
    skipped = "Its card and files are checked once it resolves."
    try:
        return source.snapshot(req.repo_id, req.revision, kind="model"), []
    except RepoAccessDenied:
        message = (
            f"{req.repo_id} is gated or private, so evaluation workers could not download it: "
            f"make it public, then submit again. {skipped}"
        )
        return None, [problem("repo_access_denied", message)]
    except InvalidRepoId as exc:
        return None, [problem("invalid_repo_id", f"The model source refused the id: {exc}.")]
    except RepoNotFound:
        message = (
            f"No model repository {checks.shown(req.repo_id)} on the model source: check the "
            f"spelling (org/name, as in the repository's URL). {skipped}"
        )
        return None, [problem("repo_not_found", message)]
    except RevisionNotFound:
        message = (
            f"Revision {checks.shown(req.revision)} does not exist in {req.repo_id}: enter a "
            f"branch, tag or commit sha of the repository (or 'main'). {skipped}"
        )
        return None, [problem("revision_not_found", message)]
    except SourceUnavailable as exc:
        return None, [_source_unavailable(exc)]


def _source_unavailable(exc: Exception) -> Problem:
    return problem(
        "source_unavailable",
        f"The model source could not be reached ({exc}); nothing was saved: try again in a few "
        "minutes.",
    )


def _check_repository(outcome: CheckOutcome, source: ModelSource) -> None:
    """The rules that read the repository's card and files at the pinned revision."""
    req, snapshot, problems = outcome.request, outcome.snapshot, outcome.problems
    assert snapshot is not None
    card, card_problems = checks.check_card(snapshot.card_text)
    outcome.card = card
    problems.extend(card_problems)
    metadata = card.metadata if card is not None else None

    if metadata is not None:
        problems.extend(checks.check_license(metadata))
        parents, parent_problems = checks.check_parents(
            req.repo_id, metadata, req.model_type, req.weight_type
        )
        outcome.parents = parents
        outcome.datasets = declared_datasets(metadata)
        problems.extend(parent_problems)
        problems.extend(_read_parents(outcome, source, parents))
        problems.extend(checks.check_datasets(metadata, req.model_type))
        problems.extend(checks.check_merge(parents, snapshot, req.model_type))
    adapter_problems = checks.check_adapter(
        outcome.parents if metadata is not None else None, snapshot, req.weight_type
    )
    problems.extend(adapter_problems)

    weight_problems = checks.check_weights(snapshot)
    problems.extend(weight_problems)
    # Without safetensors files there is nothing to count: the weights problem already says so.
    if not any(p.code in ("weights_missing", "pickle_weights") for p in weight_problems):
        outcome.parameter_count = _parameter_count(outcome, bool(adapter_problems))
        problems.extend(
            checks.check_parameter_count(outcome.parameter_count, settings.TRELLIS_MAX_PARAMETERS)
        )

    duplicate = find_duplicate(req.repo_id, snapshot.sha, req.precision)
    if duplicate is not None:
        problems.append(duplicate_problem(duplicate))


def _read_parents(outcome: CheckOutcome, source: ModelSource, parents: list[str]) -> list[Problem]:
    """Read each declared parent once: its card (kept in the outcome for the lineage record),
    or for an adapter's single base the whole snapshot, whose parameters count too. A parent
    whose lineage the catalog already resolved is only looked up, as its card is not needed."""
    problems: list[Problem] = []
    req = outcome.request
    full = req.weight_type == WeightType.ADAPTER and len(parents) == 1
    wanted = set(unresolved(parents, RepositoryKind.MODEL))
    for parent in parents:
        if not full and parent not in wanted:
            try:
                found = source.exists(parent, "model")
            except SourceUnavailable as exc:
                return [*problems, _source_unavailable(exc)]
            if not found:
                problems.append(_parent_not_found(parent))
            continue
        try:
            try:
                snapshot = source.snapshot(parent, None, kind="model", card_only=not full)
            except RepoAccessDenied:
                # A gated base is still a parent: its public card is what lineage needs.
                snapshot = source.snapshot(parent, None, kind="model", card_only=True)
        except SourceUnavailable as exc:
            return [*problems, _source_unavailable(exc)]
        except RepoNotFound:
            problems.append(_parent_not_found(parent))
            continue
        except SourceError as exc:  # it exists, but its default revision cannot be read
            outcome.cards[("model", parent)] = CardRead(None, None, f"card not readable: {exc}")
            continue
        outcome.cards[("model", parent)] = card_of(
            snapshot, f"on the {getattr(source, 'name', 'model')} source"
        )
    # Each path runs from the model back to itself: [model, parent, ..., model].
    for path in cycle_paths(req.repo_id, parents):
        problems.append(
            problem(
                "lineage_cycle",
                f"{path[1]} already derives from {req.repo_id} ({' → '.join(path)}), so declaring "
                f"it as a parent would close a lineage cycle: remove {path[1]} from base_model.",
            )
        )
    return problems


def _parent_not_found(parent: str) -> Problem:
    return problem(
        "parent_not_found",
        f"base_model {parent!r} is not a model repository on the model source: correct the id "
        "in README.md (org/name, as in the parent's URL).",
    )


def _parameter_count(outcome: CheckOutcome, adapter_unclear: bool) -> int | None:
    """The size a worker must load: an adapter's own tensors are a sliver of its base model, so
    adapter weights count the base's parameters too (when the base could be read)."""
    req, snapshot = outcome.request, outcome.snapshot
    assert snapshot is not None
    own = snapshot.parameter_count
    if own is None or req.weight_type != WeightType.ADAPTER or adapter_unclear:
        return own
    if len(outcome.parents) != 1:
        return own
    base = outcome.cards.get(("model", outcome.parents[0]))
    if base is None or base.snapshot is None or base.snapshot.parameter_count is None:
        return own  # the parent checks report an unreadable base
    return own + base.snapshot.parameter_count


def awaiting_lineage(submitted_before: datetime) -> list[int]:
    """Repositories submitted before `submitted_before` whose ancestors still wait to be
    resolved: the task resolving them was lost or keeps failing."""
    return list(
        Submission.objects.filter(repository__lineage_pending=True, created_at__lt=submitted_before)
        .order_by("repository_id")
        .values_list("repository_id", flat=True)
        .distinct()
    )


def find_duplicate(repo_id: str, sha: str, precision: str) -> Submission | None:
    return (
        Submission.objects.filter(
            repository__kind=RepositoryKind.MODEL,
            repository__repo_id=repo_id,
            revision=sha,
            precision=precision,
        )
        .order_by("created_at")
        .first()
    )


def duplicate_problem(existing: Submission) -> Problem:
    url = reverse("submissions:detail", args=[existing.pk])
    return problem(
        "duplicate_submission",
        f"{existing.repository.repo_id} at {existing.revision[:12]} in {existing.precision} was "
        f"already submitted on {existing.created_at:%Y-%m-%d}: see its results at {url}. Push a "
        "new revision or choose another precision to submit again.",
    )


def weekly_limit_problem(user: Any, now: datetime | None = None) -> Problem | None:
    """At most TRELLIS_WEEKLY_SUBMISSION_LIMIT submissions per user in any rolling 7 days;
    maintainers are exempt."""
    if is_maintainer(user):
        return None
    limit = settings.TRELLIS_WEEKLY_SUBMISSION_LIMIT
    now = now or timezone.now()
    recent = list(
        Submission.objects.filter(submitter=user, created_at__gt=now - WEEK)
        .order_by("created_at")
        .values_list("created_at", flat=True)
    )
    if len(recent) < limit:
        return None
    if limit == 0:
        return problem(
            "weekly_limit_reached",
            "Submissions are closed on this leaderboard (the weekly limit is 0): ask a "
            "maintainer to submit the model for you.",
        )
    # The slot frees when enough of the oldest submissions leave the 7-day window.
    frees_at = recent[len(recent) - limit] + WEEK
    return problem(
        "weekly_limit_reached",
        f"You have submitted {len(recent)} models in the last 7 days and the limit is {limit}: "
        f"your next submission slot frees at {frees_at:%Y-%m-%d %H:%M} UTC.",
    )


# --- recording an accepted submission -----------------------------------------------------------


@contextmanager
def refusing_duplicates(outcome: CheckOutcome) -> Iterator[None]:
    """Around the recording transaction: a concurrent submission of the same repo, revision and
    precision that won the race becomes the duplicate refusal (the unique constraint is the real
    duplicate check, the earlier lookup only a courtesy)."""
    try:
        yield
    except IntegrityError:
        req, snapshot = outcome.request, outcome.snapshot
        assert snapshot is not None
        existing = find_duplicate(req.repo_id, snapshot.sha, req.precision)
        if existing is None:
            raise
        raise Refusal([duplicate_problem(existing)]) from None


def record_submission(outcome: CheckOutcome, user: Any) -> Submission:
    """Save an accepted outcome: the repository node and the submission. Runs inside the
    caller's transaction and reads nothing from the source. Refusals found at this point (the
    weekly limit, taken by a concurrent submission) raise Refusal and save nothing."""
    if not outcome.ok:
        raise Refusal(outcome.problems)
    # Serialises one user's concurrent submissions, so two cannot both take the last slot.
    list(
        get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True)
    )
    limit = weekly_limit_problem(user)
    if limit is not None:
        raise Refusal([limit])
    req, snapshot, card = outcome.request, outcome.snapshot, outcome.card
    assert snapshot is not None and card is not None and outcome.parameter_count is not None
    metadata = card.metadata
    repository = upsert_repository(
        req.repo_id, RepositoryKind.MODEL, snapshot=snapshot, metadata=metadata
    )
    return Submission.objects.create(
        repository=repository,
        requested_revision=req.revision,
        revision=snapshot.sha,
        precision=Precision(req.precision),
        weight_type=WeightType(req.weight_type),
        model_type=ModelType(req.model_type),
        parameter_count=outcome.parameter_count,
        architecture=checks.architecture_of(snapshot.config),
        license=str(metadata.get("license", "")).strip()[:100],
        card_text=snapshot.card_text or "",
        card_metadata=metadata,
        merge_method=checks.merge_method_of(snapshot.mergekit_config),
        submitter=user,
    )


def declared_relation(outcome: CheckOutcome) -> str:
    """How the model relates to its declared parents."""
    req = outcome.request
    if req.weight_type == WeightType.ADAPTER:
        return Relation.ADAPTER
    return relation_for_model_type(req.model_type)


def declared_in(outcome: CheckOutcome) -> str:
    """Where the parents were verified: the merge or adapter config when one backs the card."""
    req, snapshot = outcome.request, outcome.snapshot
    assert snapshot is not None
    if req.model_type == ModelType.MERGE and snapshot.mergekit_config is not None:
        return DeclaredIn.MERGEKIT
    if snapshot.adapter_config is not None:
        return DeclaredIn.ADAPTER_CONFIG
    return DeclaredIn.CARD
