"""Evaluation runs and their per-task scores. The database, not the broker, holds every run's
state (decision 1); workers report progress and results through trusted web-side tasks."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from leaderboard.submissions.models import Submission


class RunState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    FINISHED = "finished", "finished"
    FAILED = "failed", "failed"


class EvaluationRun(models.Model):
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="runs")
    suite_name = models.CharField(max_length=64)
    suite_version = models.CharField(max_length=32)
    state = models.CharField(
        max_length=10, choices=RunState.choices, default=RunState.QUEUED, db_index=True
    )
    queue = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    requeued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # When the evaluation message was last published; NULL while a publish has not succeeded,
    # which the reconciler treats as "send now".
    sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Progress: loglikelihood requests scored so far out of the total.
    progress_done = models.PositiveBigIntegerField(default=0)
    progress_total = models.PositiveBigIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    # A stable code (out_of_memory, model_load, worker_lost, ...) and the reason in words.
    failure_code = models.CharField(max_length=40, blank=True)
    failure_reason = models.CharField(max_length=300, blank=True)
    log_tail = models.TextField(blank=True)
    payload = models.JSONField(null=True, blank=True)
    artifact_path = models.CharField(max_length=500, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True)
    is_synthetic = models.BooleanField(default=False, db_index=True)
    # A submitter may re-queue their failed run once; maintainers any number of times.
    submitter_requeues = models.PositiveSmallIntegerField(default=0)
    # A maintainer's raise (> 0) or lowering (< 0) of the run in the start order, which is
    # boost, then votes, then age (evaluations/priority.py).
    boost = models.SmallIntegerField(default=0)
    # Energy of the evaluation as the worker measured or estimated it (evaluator/energy.py);
    # the carbon from it with the web side's TRELLIS_CARBON_INTENSITY at ingest.
    energy_wh = models.FloatField(null=True, blank=True)
    energy_method = models.CharField(max_length=16, blank=True)
    co2_grams = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["suite_name", "suite_version", "state"]),
            # The dispatcher's question: the unsent queued runs of a queue.
            models.Index(fields=["queue", "state", "sent_at"]),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.submission} on {self.suite_name}@{self.suite_version}"


class TaskScore(models.Model):
    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="scores")
    task = models.CharField(max_length=100, help_text="the suite's task key, e.g. arc_challenge")
    metric = models.CharField(max_length=32, help_text="acc or acc_norm")
    value = models.FloatField(help_text="0..1")
    stderr = models.FloatField(null=True, blank=True)
    n_samples = models.PositiveIntegerField()
    num_fewshot = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "task"], name="unique_task_score")]
        ordering = ["task"]

    def __str__(self) -> str:
        return f"{self.task} {self.metric}={self.value:.4f}"


class Vote(models.Model):
    """A signed-in user's vote for a submission's pending evaluation: one per user and
    submission, a weekly budget per user (TRELLIS_WEEKLY_VOTES)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="votes")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "submission"], name="one_vote_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user} votes for {self.submission}"
