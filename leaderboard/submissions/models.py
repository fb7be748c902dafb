"""Submissions: a repository at a pinned revision and precision, handed in for evaluation."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from evaluator.vocabulary import PRECISIONS
from leaderboard.catalog.models import Repository

# The precisions are the evaluator's (evaluator/vocabulary.py): a worker must load each one.
Precision = models.TextChoices(  # type: ignore[call-overload,misc]
    "Precision", [(value.upper(), (value, value)) for value in PRECISIONS]
)


class WeightType(models.TextChoices):
    ORIGINAL = "original", "original"
    ADAPTER = "adapter", "adapter"
    DELTA = "delta", "delta"


class ModelType(models.TextChoices):
    PRETRAINED = "pretrained", "pretrained"
    CONTINUED_PRETRAINING = "continued-pretraining", "continued pretraining"
    FINE_TUNED = "fine-tuned", "fine-tuned"
    CHAT = "chat", "chat"
    MERGE = "merge", "merge"
    ADAPTER = "adapter", "adapter"
    QUANTIZED = "quantized", "quantized"


class SubmissionState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    FINISHED = "finished", "finished"
    FAILED = "failed", "failed"


class Submission(models.Model):
    repository = models.ForeignKey(Repository, on_delete=models.PROTECT, related_name="submissions")
    requested_revision = models.CharField(max_length=255, help_text="what the submitter typed")
    revision = models.CharField(max_length=64, help_text="the pinned commit sha")
    precision = models.CharField(max_length=10, choices=Precision.choices)
    weight_type = models.CharField(
        max_length=10, choices=WeightType.choices, default=WeightType.ORIGINAL
    )
    model_type = models.CharField(max_length=24, choices=ModelType.choices)
    parameter_count = models.BigIntegerField()
    architecture = models.CharField(max_length=100, blank=True)
    license = models.CharField(max_length=100)
    card_text = models.TextField(blank=True)
    card_metadata = models.JSONField(default=dict, blank=True)
    merge_method = models.CharField(max_length=40, blank=True, help_text="from mergekit_config.yml")
    submitter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="submissions", null=True
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Mirrors the latest evaluation run's state, for lists that must not join runs.
    state = models.CharField(
        max_length=10,
        choices=SubmissionState.choices,
        default=SubmissionState.QUEUED,
        db_index=True,
    )
    is_synthetic = models.BooleanField(default=False, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["repository", "revision", "precision"], name="unique_submission"
            )
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.repository.repo_id}@{self.revision[:10]} ({self.precision})"
