"""The ranking read table (`public.RankingEntry`): one row per (submission, suite version),
projected from the submission's latest finished run so that a ranking is one indexed query."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from leaderboard.evaluations.models import EvaluationRun, RunState, TaskScore
from leaderboard.integrity.verification import verified_orgs
from leaderboard.public.licenses import license_family
from leaderboard.public.models import MISSING_AVERAGE, RankingEntry
from leaderboard.public.row import ENTRY_COLUMNS, build_row
from leaderboard.public.serializers import entry_row_json
from leaderboard.public.suites import SuiteView, forget_stored_versions, is_defined, suite_view
from leaderboard.submissions.models import ModelType, Submission

_CHUNK = 2000


def refresh_entries_for(submission_ids: Iterable[int]) -> int:
    """Rebuild the ranking rows of these submissions from their latest finished run on each
    suite version. Call it after a run is ingested (finished) or a submission is deleted or
    edited; it is idempotent. Returns how many rows now exist for them."""
    ids = sorted(set(submission_ids))
    written = 0
    for start in range(0, len(ids), _CHUNK):
        written += _refresh_chunk(ids[start : start + _CHUNK])
    return written


def rebuild_all_entries() -> int:
    """Rebuild the whole read table (after a restore, or to recover from a missed refresh)."""
    RankingEntry.objects.exclude(
        submission_id__in=EvaluationRun.objects.filter(state=RunState.FINISHED).values(
            "submission_id"
        )
    ).delete()
    ids = EvaluationRun.objects.filter(state=RunState.FINISHED).values_list(
        "submission_id", flat=True
    )
    return refresh_entries_for(ids)


def _refresh_chunk(ids: list[int]) -> int:
    latest: dict[tuple[int, str, str], EvaluationRun] = {}
    runs = (
        EvaluationRun.objects.filter(submission_id__in=ids, state=RunState.FINISHED)
        .only(
            "id",
            "submission_id",
            "suite_name",
            "suite_version",
            "finished_at",
            "energy_wh",
            "co2_grams",
            "energy_method",
        )
        .order_by("submission_id", "suite_name", "suite_version", "-finished_at", "-id")
    )
    for run in runs:
        latest.setdefault((run.submission_id, run.suite_name, run.suite_version), run)
    scores: dict[int, dict[str, tuple[float, float | None]]] = {}
    run_ids = [run.pk for run in latest.values()]
    for run_id, task, value, stderr in TaskScore.objects.filter(run_id__in=run_ids).values_list(
        "run_id", "task", "value", "stderr"
    ):
        scores.setdefault(run_id, {})[task] = (value, stderr)
    submissions = {
        s.pk: s
        for s in Submission.objects.filter(pk__in=ids)
        .select_related("repository")
        .defer("card_text", "card_metadata")
    }
    now = timezone.now()
    verified = set(verified_orgs().values_list("org", flat=True))
    views: dict[tuple[str, str], SuiteView | None] = {}
    entries = []
    for (submission_id, suite_name, version), run in latest.items():
        key = (suite_name, version)
        if key not in views:
            views[key] = suite_view(suite_name, version)
        view = views[key]
        submission = submissions.get(submission_id)
        if view is None or submission is None:
            continue
        entry = build_entry(
            submission,
            run,
            view,
            scores.get(run.pk, {}),
            now,
            submission.repository.org in verified,
        )
        entries.append(entry)
    with transaction.atomic():
        RankingEntry.objects.filter(submission_id__in=ids).delete()
        RankingEntry.objects.bulk_create(entries, batch_size=1000)
    if any(not is_defined(name, version) for name, version in views):
        forget_stored_versions()
    return len(entries)


def build_entry(
    submission: Submission,
    run: EvaluationRun,
    view: SuiteView,
    scores: Mapping[str, tuple[float, float | None]],
    now: datetime,
    verified: bool = False,
) -> RankingEntry:
    """The read-table row of one submission's run (unsaved)."""
    values = {key: scores[key][0] for key in view.task_keys if key in scores}
    stderrs = {key: scores[key][1] for key in view.task_keys if key in scores}
    complete = len(values) == len(view.columns) and bool(view.columns)
    average = sum(100 * v for v in values.values()) / len(values) if complete else None
    average_normalized = (
        sum(column.normalize(values[column.key]) for column in view.columns) / len(view.columns)
        if complete
        else None
    )
    entry = RankingEntry(
        submission_id=submission.pk,
        run_id=run.pk,
        repository_id=submission.repository_id,
        suite_name=view.name,
        suite_version=view.version,
        repo_id=submission.repository.repo_id,
        revision=submission.revision,
        precision=submission.precision,
        model_type=submission.model_type,
        weight_type=submission.weight_type,
        parameter_count=submission.parameter_count,
        license=submission.license,
        license_family=license_family(submission.license),
        merge_method=submission.merge_method,
        is_merge=submission.model_type == ModelType.MERGE or bool(submission.merge_method),
        is_synthetic=submission.is_synthetic,
        submitted_at=submission.created_at,
        evaluated_at=run.finished_at,
        scores=values,
        stderrs=stderrs,
        average=average,
        average_normalized=average_normalized,
        average_key=MISSING_AVERAGE if average is None else average,
        normalized_key=MISSING_AVERAGE if average_normalized is None else average_normalized,
        verified=verified,
        energy_wh=run.energy_wh,
        co2_grams=run.co2_grams,
        energy_method=run.energy_method,
        updated_at=now,
    )
    row = build_row([getattr(entry, column) for column in ENTRY_COLUMNS], view)
    entry.row_json = entry_row_json(row, view)
    return entry
