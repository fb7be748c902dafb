"""The web side's Celery application: transport between the web side and the GPU workers.

It registers only the trusted web-side tasks (leaderboard/evaluations/tasks.py). The evaluation
task runs in the GPU workers' own application (evaluator/worker.py); this one sends it jobs by
task name. Routes: a job goes to the GPU queue chosen per run by model size (the default route
is the small queue); everything else is a web-side task on the web queue. Beat runs the
reconciler, which re-sends lost messages and reaps silent runs."""

from __future__ import annotations

import os

from celery import Celery

from evaluator.messages import EVALUATE_TASK

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")

# Web-side tasks that read a model source: retried with backoff, since the source may be down for
# a while; the limits bound a slow source, far below an evaluation's.
SOURCE_READING_TASK: dict[str, object] = {
    "ignore_result": True,
    "autoretry_for": (Exception,),
    "retry_backoff": True,
    "max_retries": 5,
    "soft_time_limit": 1200,
    "time_limit": 1260,
}

app = Celery("trellis")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _configure_routes_and_beat(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    sender.conf.task_routes = {
        EVALUATE_TASK: {"queue": settings.TRELLIS_QUEUE_SMALL},
        "evaluations.*": {"queue": settings.CELERY_TASK_DEFAULT_QUEUE},
    }
    sender.conf.beat_schedule = {
        "reconcile-evaluation-runs": {
            "task": "evaluations.reconcile",
            "schedule": float(settings.TRELLIS_RECONCILE_INTERVAL),
            # A pass nobody picked up is worthless once the next one is due.
            "options": {"expires": float(settings.TRELLIS_RECONCILE_INTERVAL)},
        }
    }
