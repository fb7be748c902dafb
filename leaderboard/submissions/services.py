"""Submitting a model: check_submission runs every rule and reports all problems at once; submit
records an accepted model in one transaction (catalog node, submission, lineage, queued run)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from leaderboard.accounts.roles import is_maintainer
from leaderboard.catalog.cards import ParsedCard, declared_datasets, relation_for_model_type
from leaderboard.catalog.models import DeclaredIn, Relation, RepositoryKind
from leaderboard.catalog.services import cycle_paths, record_lineage, upsert_repository
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
from leaderboard.evaluations.services import create_run_for
from leaderboard.submissions import checks
from leaderboard.submissions.checks import Problem, problem
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
    """Every problem found, and what was read on the way (reused by submit)."""

    request: SubmissionRequest
    problems: list[Problem] = field(default_factory=list)
    snapshot: RepoSnapshot | None = None
    card: ParsedCard | None = None
    parents: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    parameter_count: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


class SubmissionRefused(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.code}: {p.message}" for p in problems))
        self.problems = problems


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
        problems.extend(_check_parents_exist(source, req.repo_id, parents))
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
        outcome.parameter_count = _parameter_count(outcome, source, bool(adapter_problems))
        problems.extend(
            checks.check_parameter_count(outcome.parameter_count, settings.TRELLIS_MAX_PARAMETERS)
        )

    duplicate = find_duplicate(req.repo_id, snapshot.sha, req.precision)
    if duplicate is not None:
        problems.append(duplicate_problem(duplicate))


def _check_parents_exist(source: ModelSource, repo_id: str, parents: list[str]) -> list[Problem]:
    problems: list[Problem] = []
    for parent in parents:
        try:
            found = source.exists(parent, "model")
        except SourceUnavailable as exc:
            return [*problems, _source_unavailable(exc)]
        if not found:
            problems.append(
                problem(
                    "parent_not_found",
                    f"base_model {parent!r} is not a model repository on the model source: "
                    "correct the id in README.md (org/name, as in the parent's URL).",
                )
            )
    # Each path runs from the model back to itself: [model, parent, ..., model].
    for path in cycle_paths(repo_id, parents):
        problems.append(
            problem(
                "lineage_cycle",
                f"{path[1]} already derives from {repo_id} ({' → '.join(path)}), so declaring it "
                f"as a parent would close a lineage cycle: remove {path[1]} from base_model.",
            )
        )
    return problems


def _parameter_count(
    outcome: CheckOutcome, source: ModelSource, adapter_unclear: bool
) -> int | None:
    """The size a worker must load: an adapter's own tensors are a sliver of its base model, so
    adapter weights count the base's parameters too (when the base can be read)."""
    req, snapshot = outcome.request, outcome.snapshot
    assert snapshot is not None
    own = snapshot.parameter_count
    if own is None or req.weight_type != WeightType.ADAPTER or adapter_unclear:
        return own
    if len(outcome.parents) != 1:
        return own
    try:
        base = source.snapshot(outcome.parents[0], None, kind="model")
    except (RepoNotFound, RevisionNotFound, SourceUnavailable):
        return own  # the parent checks report an unreadable base
    return own + base.parameter_count if base.parameter_count is not None else own


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


def submit(request: SubmissionRequest, user: Any) -> Submission:
    """Check `request` and record it, or raise SubmissionRefused with every problem."""
    outcome = check_submission(request, user)
    if not outcome.ok:
        raise SubmissionRefused(outcome.problems)
    return record_submission(outcome, user)


def record_submission(outcome: CheckOutcome, user: Any) -> Submission:
    """Save an accepted outcome in one transaction: the repository node, the submission, its
    lineage (ancestors resolved upward) and its queued evaluation run, whose Celery message
    leaves on commit. Refusals found at this point save nothing either."""
    if not outcome.ok:
        raise SubmissionRefused(outcome.problems)
    req, snapshot = outcome.request, outcome.snapshot
    assert snapshot is not None and outcome.card is not None
    try:
        with transaction.atomic():
            # Serialises one user's concurrent submissions, so two cannot both take the last slot.
            list(
                get_user_model()
                .objects.select_for_update()
                .filter(pk=user.pk)
                .values_list("pk", flat=True)
            )
            limit = weekly_limit_problem(user)
            if limit is not None:
                raise SubmissionRefused([limit])
            submission = _save(outcome, user)
    except IntegrityError:
        # A concurrent submission of the same repo, revision and precision won the race: the
        # unique constraint is the real duplicate check, the earlier lookup only a courtesy.
        existing = find_duplicate(req.repo_id, snapshot.sha, req.precision)
        if existing is None:
            raise
        raise SubmissionRefused([duplicate_problem(existing)]) from None
    return submission


def _save(outcome: CheckOutcome, user: Any) -> Submission:
    req, snapshot, card = outcome.request, outcome.snapshot, outcome.card
    assert snapshot is not None and card is not None and outcome.parameter_count is not None
    metadata = card.metadata
    repository = upsert_repository(
        req.repo_id, RepositoryKind.MODEL, snapshot=snapshot, metadata=metadata
    )
    submission = Submission.objects.create(
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
    record_lineage(
        repository,
        parents=outcome.parents,
        relation=_relation(req),
        declared_in=_declared_in(req, snapshot),
        datasets=outcome.datasets,
        source=get_source(),
        max_depth=settings.TRELLIS_LINEAGE_MAX_DEPTH,
    )
    # Lineage resolution re-derived the node's status through other instances of the row.
    repository.refresh_from_db()
    create_run_for(submission)
    return submission


def _relation(req: SubmissionRequest) -> str:
    if req.weight_type == WeightType.ADAPTER:
        return Relation.ADAPTER
    return relation_for_model_type(req.model_type)


def _declared_in(req: SubmissionRequest, snapshot: RepoSnapshot) -> str:
    """Where the parents were verified: the merge or adapter config when one backs the card."""
    if req.model_type == ModelType.MERGE and snapshot.mergekit_config is not None:
        return DeclaredIn.MERGEKIT
    if snapshot.adapter_config is not None:
        return DeclaredIn.ADAPTER_CONFIG
    return DeclaredIn.CARD
