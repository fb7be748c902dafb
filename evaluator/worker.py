"""The GPU worker: a Celery application of its own for the evaluation queues, which imports
neither Django nor `leaderboard`, so a GPU host needs only the worker extra and has no database
to reach (docs/architecture.md, the trust boundary):

    celery -A evaluator.worker worker --queues=gpu-small --pool=prefork --concurrency=1

Its one task, `evaluations.evaluate`, runs a job and reports by sending the trusted web-side
tasks by name to the web queue. Configuration comes from the environment (evaluator/config.py);
the time limits come in each message, set by the web side that sent it."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, Task
from celery.signals import worker_ready, worker_shutting_down

from evaluator.config import WorkerConfig
from evaluator.messages import (
    EVALUATE_TASK,
    REPORT_TASKS,
    EvaluationJob,
    Failure,
    InvalidMessage,
    Message,
    named_run,
    parse,
)
from evaluator.progress import LOG_TAIL_LINES, localize_job, run_evaluation

logger = logging.getLogger(__name__)

config = WorkerConfig.from_env()

app = Celery("trellis-gpu")
app.conf.update(
    broker_url=config.broker_url,
    broker_transport_options=config.transport_options,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # Evaluations take hours: acknowledge a message when its task ends, put it back when the
    # worker dies under it, and hold one message at a time.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=config.queue_small,
    task_routes={name: {"queue": config.web_queue} for name in REPORT_TASKS.values()},
)


def configure(**changes: Any) -> WorkerConfig:
    """Replace fields of this process's configuration (tests point it at their own folders)."""
    global config
    config = replace(config, **changes)
    return config


def report(message: Message) -> None:
    """Publish one report to the web queue; the GPU side never opens the database."""
    app.send_task(REPORT_TASKS[type(message)], args=[message.to_message()], queue=config.web_queue)


# How often one attempt is sent again after its pool process died under it (killed by the OOM
# killer, a crash in native code). The repeat is the same attempt; once these are spent the
# message is acknowledged, the run falls silent and the reconciler queues it again as the next
# attempt, up to TRELLIS_MAX_ATTEMPTS, then fails it with worker_lost: a job that kills its
# worker every time costs (1 + LOST_POOL_RETRIES) x TRELLIS_MAX_ATTEMPTS tries, then drains.
LOST_POOL_RETRIES = 1


class EvaluationTask(Task):
    """Late acknowledgement: a worker killed mid-run leaves its message to be re-delivered (a
    whole worker) or sends it again (a pool process, LOST_POOL_RETRIES times); the web side makes
    the repeat harmless."""

    acks_late = True
    reject_on_worker_lost = True
    retry_on_worker_lost = True
    max_retries = LOST_POOL_RETRIES
    default_retry_delay = 1
    ignore_result = True

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The task ended without reporting: the pool killed it at the hard time limit (Celery
        calls this in the worker's main process then), or an exception escaped. Report it, so
        the run fails now with its reason instead of being reaped later. A lost pool process is not
        reported: its message is sent again or, the retries spent, the silent run is reaped."""
        ids = named_run(args[0]) if args else None
        if isinstance(exc, WorkerLostError) or ids is None:
            return
        if isinstance(exc, TimeLimitExceeded):
            code, message = "time_limit", f"It was stopped at the hard limit of {exc.args[0]} s."
        else:
            code, message = "error", f"{type(exc).__name__}: {exc}"
        tail = "\n".join(str(einfo or "").rstrip().splitlines()[-LOG_TAIL_LINES:])
        run_id, attempt = ids
        fields = {"code": code, "message": message, "log_tail": tail}
        report(Failure.model_validate({"run_id": run_id, "attempt": attempt, **fields}))


# The consumer of this process's worker, once it is ready (for the stop below).
_consumer: Any = None


@worker_ready.connect
def _remember_consumer(sender: Any, **kwargs: Any) -> None:
    global _consumer
    if getattr(sender, "app", None) is app:
        _consumer = sender


@worker_shutting_down.connect
def _hand_back_on_stop(sender: Any, how: str = "", **kwargs: Any) -> None:
    """SIGTERM (systemd, docker or make stopping the worker) ends the evaluation in progress at
    once and leaves its message unacknowledged, so the broker hands it to the next worker as the
    same attempt: Celery's warm shutdown would wait for the evaluation, hours, far past the unit's
    60 s TimeoutStopSec, and then be killed with nothing handed back until the broker's
    visibility timeout."""
    if how == "Warm" and _consumer is not None:
        logger.warning("stopping: the evaluation in progress goes back to the queue")
        _consumer.cancel_active_requests()


# Not shared: a process that imports this module (a test) must not give the web side's app
# the GPU task.
@app.task(bind=True, base=EvaluationTask, name=EVALUATE_TASK, shared=False)
def evaluate(self: Task, job: dict[str, Any]) -> str:
    local = localize_job(
        job,
        artifact_root=config.artifact_root,
        data_root=config.data_root,
        model_root=config.model_root,
    )
    try:
        parsed = parse(EvaluationJob, local)
    except InvalidMessage as invalid:
        # A job this worker cannot read (another schema version, a bug on the sending side):
        # fail the run it names with the problems, never retry it.
        logger.error("refused a job: %s", invalid)
        ids = named_run(job)
        if ids is not None:
            message = f"This worker could not read the job: {invalid}"[:10_000]
            fields = {"code": "error", "message": message, "log_tail": ""}
            report(Failure.model_validate({"run_id": ids[0], "attempt": ids[1], **fields}))
        return "refused"
    hostname = self.request.hostname or "unknown"
    return run_evaluation(parsed, hostname, report, heartbeat_interval=config.heartbeat_interval)
