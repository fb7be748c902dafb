"""The ranking's read table: one denormalized row per (evaluated submission, suite version).

The source of truth stays in submissions, runs and scores; this table is rebuilt from them by
`leaderboard.public.projection.refresh_entries_for` so that a 10,000-row ranking is one indexed
query instead of a pivot over every task score. Lineage status and flags are not copied: the
ranking joins them live from the catalog and integrity tables."""

from __future__ import annotations

from django.db import models
from django.db.models import F

from leaderboard.catalog.models import Repository
from leaderboard.evaluations.models import EvaluationRun
from leaderboard.submissions.models import Submission

# Sort key of a run that misses a task (no average): below any real score.
MISSING_AVERAGE = -1e9


class LicenseFamily(models.TextChoices):
    PERMISSIVE = "permissive", "permissive"
    RESTRICTIVE = "restrictive", "restrictive"
    UNKNOWN = "unknown", "unknown"


class RankingEntry(models.Model):
    submission = models.ForeignKey(
        Submission, on_delete=models.CASCADE, related_name="ranking_entries"
    )
    # The latest finished run of the submission on this suite version.
    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="+")
    repository = models.ForeignKey(
        Repository, on_delete=models.CASCADE, related_name="ranking_entries"
    )
    suite_name = models.CharField(max_length=64)
    suite_version = models.CharField(max_length=32)
    repo_id = models.CharField(max_length=200)
    revision = models.CharField(max_length=64)
    precision = models.CharField(max_length=10)
    model_type = models.CharField(max_length=24)
    weight_type = models.CharField(max_length=10)
    parameter_count = models.BigIntegerField()
    license = models.CharField(max_length=100)
    license_family = models.CharField(max_length=12, choices=LicenseFamily.choices)
    merge_method = models.CharField(max_length=40, blank=True)
    is_merge = models.BooleanField()
    is_synthetic = models.BooleanField()
    submitted_at = models.DateTimeField()
    evaluated_at = models.DateTimeField(null=True)
    # {task key: value in 0..1} and {task key: stderr or null}, for the suite's tasks.
    scores = models.JSONField(default=dict)
    stderrs = models.JSONField(default=dict)
    # Percent; null when a task of the suite has no score.
    average = models.FloatField(null=True)
    average_normalized = models.FloatField(null=True)
    # The averages as sort keys, never null (MISSING_AVERAGE sorts an incomplete run last):
    # indexes with NULLS LAST are not portable, plain descending ones are.
    average_key = models.FloatField()
    normalized_key = models.FloatField()
    # The organisation is verified (integrity/verification.py): stored so that "verified only"
    # is a column; leaderboard.flow refreshes an organisation's rows when that changes.
    verified = models.BooleanField(default=False)
    # The run's energy and carbon (evaluations.EvaluationRun), and how the energy was obtained.
    energy_wh = models.FloatField(null=True)
    co2_grams = models.FloatField(null=True)
    energy_method = models.CharField(max_length=16, blank=True, default="")
    # The row's serialized JSON object minus its live fields (rank, lineage status, flags),
    # written by leaderboard.public.row.stored_row_dict at refresh: the full-leaderboard API
    # splices these instead of serializing 10,000 rows per request.
    row_json = models.TextField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["submission", "suite_name", "suite_version"],
                name="unique_ranking_entry",
            )
        ]
        indexes = [
            # The ranking's default order, covering what the narrow ordering query reads: the
            # first page and the window rank come from an index-only walk, without a sort.
            # repository_id is a trailing key column rather than INCLUDE (PostgreSQL only; SQLite
            # warns models.W040 and drops it): after the unique id it never changes the order.
            models.Index(
                F("suite_name"),
                F("suite_version"),
                F("average_key").desc(),
                F("repo_id"),
                F("id"),
                F("repository_id"),
                name="ranking_by_average",
            ),
            models.Index(
                F("suite_name"),
                F("suite_version"),
                F("normalized_key").desc(),
                F("repo_id"),
                F("id"),
                F("repository_id"),
                name="ranking_by_normalized",
            ),
            # Validators: COUNT(*) and MAX(updated_at) of one suite version, index-only.
            models.Index(
                fields=["suite_name", "suite_version", "updated_at"], name="ranking_by_change"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.repo_id} on {self.suite_name}@{self.suite_version}"
