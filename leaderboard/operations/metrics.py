"""Prometheus metrics: requests counted and timed as they pass (per web process, aggregated
across gunicorn's processes through PROMETHEUS_MULTIPROC_DIR), and the evaluation pipeline read
from the database at scrape time, so every process, host and restart agrees on it: runs by state,
queue wait and run duration histograms, failures by reason and rejected results (ingest
failures)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.utils import timezone
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from leaderboard.evaluations.models import EvaluationRun, RunState

REQUESTS = Counter(
    "trellis_http_requests_total",
    "HTTP requests answered, by route (URL name), method and status.",
    ["view", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "trellis_http_request_duration_seconds",
    "Time to answer an HTTP request, by route (URL name).",
    ["view"],
)

# From seconds (a free worker) to a day (a backlog); the last bucket is +Inf.
QUEUE_WAIT_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
RUN_DURATION_BUCKETS = (30, 60, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600)
# The reasons a rejected result is recorded under (leaderboard.evaluations' failure codes).
INGEST_FAILURE_CODES = ("invalid_result",)


def observe_request(view: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(view=view, method=method, status=str(status)).inc()
    REQUEST_SECONDS.labels(view=view).observe(seconds)


def _histogram(
    name: str, documentation: str, start: str, end: str, buckets: tuple[int, ...], **filters: object
) -> HistogramMetricFamily:
    """A histogram of end - start over every run that has both, computed in one query."""
    span = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    runs = EvaluationRun.objects.filter(
        **{f"{start}__isnull": False, f"{end}__isnull": False}, **filters
    ).annotate(span=span)
    counts = runs.aggregate(
        total=Count("pk"),
        seconds=Sum("span"),
        **{
            f"le_{i}": Count("pk", filter=Q(span__lte=timedelta(seconds=bound)))
            for i, bound in enumerate(buckets)
        },
    )
    total_seconds = counts["seconds"].total_seconds() if counts["seconds"] else 0.0
    family = HistogramMetricFamily(name, documentation)
    family.add_metric(
        [],
        [(str(float(bound)), counts[f"le_{i}"]) for i, bound in enumerate(buckets)]
        + [("+Inf", counts["total"])],
        total_seconds,
    )
    return family


class PipelineCollector:
    """Reads the evaluation pipeline from the database on every scrape."""

    def collect(self) -> Iterator[Metric]:
        runs = GaugeMetricFamily(
            "trellis_runs", "Evaluation runs by state and queue.", labels=["state", "queue"]
        )
        by_state = {
            (row["state"], row["queue"]): row["n"]
            for row in EvaluationRun.objects.values("state", "queue")
            .annotate(n=Count("pk"))
            .order_by()
        }
        queues = {queue for _, queue in by_state}
        for state in RunState.values:
            for queue in sorted(queues):
                runs.add_metric([state, queue], by_state.get((state, queue), 0))
        yield runs

        oldest = GaugeMetricFamily(
            "trellis_oldest_queued_run_age_seconds",
            "How long the oldest queued run of each queue has waited.",
            labels=["queue"],
        )
        now = timezone.now()
        for queue, first in (
            EvaluationRun.objects.filter(state=RunState.QUEUED, enqueued_at__isnull=False)
            .values_list("queue")
            .annotate(first=Min("enqueued_at"))
            .order_by()
        ):
            oldest.add_metric([queue], (now - first).total_seconds())
        yield oldest

        yield _histogram(
            "trellis_run_queue_wait_seconds",
            "From a run's (latest) queueing to its start on a worker.",
            "enqueued_at",
            "started_at",
            QUEUE_WAIT_BUCKETS,
        )
        yield _histogram(
            "trellis_run_duration_seconds",
            "From a finished run's start to its result being stored.",
            "started_at",
            "finished_at",
            RUN_DURATION_BUCKETS,
            state=RunState.FINISHED,
        )

        failures = GaugeMetricFamily(
            "trellis_runs_failed", "Failed runs by failure reason code.", labels=["reason"]
        )
        for code, n in (
            EvaluationRun.objects.filter(state=RunState.FAILED)
            .values_list("failure_code")
            .annotate(n=Count("pk"))
            .order_by("failure_code")
        ):
            failures.add_metric([code or "unknown"], n)
        yield failures

        rejected = GaugeMetricFamily(
            "trellis_ingest_failures",
            "Runs whose worker's result failed validation at ingest (failed, invalid_result).",
        )
        rejected.add_metric(
            [],
            EvaluationRun.objects.filter(
                state=RunState.FAILED, failure_code__in=INGEST_FAILURE_CODES
            ).count(),
        )
        yield rejected


_pipeline = CollectorRegistry(auto_describe=False)
_pipeline.register(PipelineCollector())  # type: ignore[arg-type]


def exposition() -> bytes:
    """The text format Prometheus scrapes: this deployment's requests, then the pipeline."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        requests = generate_latest(registry)
    else:
        requests = generate_latest(REGISTRY)
    return requests + generate_latest(_pipeline)
