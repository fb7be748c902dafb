"""A GPU worker's side of one evaluation: run the evaluator on a job and report back by message
(started, progress as the heartbeat, then a result or a failure). Nothing here can reach a
database: GPU workers load strangers' weights and hold no credentials (docs/architecture.md);
the trusted web side validates and records what they say."""

from __future__ import annotations

import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evaluator.artifacts import is_bucket
from evaluator.messages import (
    EvaluationJob,
    Failure,
    Message,
    Progress,
    Result,
    Started,
    problems_of,
)

logger = logging.getLogger(__name__)

# Publishes one report to the web side.
Send = Callable[[Message], None]

LOG_TAIL_LINES = 40


class ProgressReporter:
    """Forwards the evaluator's progress, at most once per `interval` seconds, and keeps the
    run's heartbeat alive with the last known figures while the evaluator is silent (loading
    weights, building requests), so the reconciler reaps only workers that are really gone."""

    def __init__(
        self,
        send: Callable[[int, int], None],
        *,
        interval: float = 2.0,
        heartbeat: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._interval = interval
        self._heartbeat = heartbeat
        self._clock = clock
        self._lock = threading.Lock()
        self._last_sent = float("-inf")
        self._latest: tuple[int, int] = (0, 0)
        self._sent: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            self._latest = (int(done), int(total))
            if self._clock() - self._last_sent >= self._interval:
                self._emit()

    def flush(self) -> None:
        """Send the latest figures if they were throttled away (e.g. the final 100%)."""
        with self._lock:
            if self._sent != self._latest:
                self._emit()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="trellis-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat):
            with self._lock:
                if self._clock() - self._last_sent >= self._heartbeat:
                    self._emit()

    def _emit(self) -> None:
        try:
            self._send(*self._latest)
        except Exception:
            # A lost progress message costs nothing but a stale bar; the evaluation goes on.
            logger.exception("could not send progress")
        self._sent = self._latest
        self._last_sent = self._clock()


def localize_job(
    job: dict[str, Any], *, artifact_root: Path, data_root: str, model_root: Path
) -> dict[str, Any]:
    """The job with this host's paths: where it mounts the artifact folder, where the task data
    mirror and (local source) the model root are. The web side's paths in the message describe
    its own host, which on a many-host deployment is not this one; a bucket is the same from
    every host and stays as sent."""
    local = dict(job)
    if not is_bucket(str(job.get("artifact_store", ""))):
        local["artifact_store"] = str(artifact_root)
    if data_root:
        local["data_root"] = data_root
    if job.get("model_source") == "local":
        local["model_path"] = str(model_root)
    return local


def run_evaluation(
    job: EvaluationJob,
    hostname: str,
    send: Send,
    *,
    progress_interval: float = 2.0,
    heartbeat_interval: float = 60.0,
) -> str:
    """Run one job and report its outcome through `send`; returns "finished" or "failed"."""
    from evaluator.run import EvaluationFailure, run_job

    def tell(kind: type[Message], **fields: Any) -> None:
        send(kind.model_validate({"run_id": job.run_id, "attempt": job.attempt, **fields}))

    tell(Started, worker=hostname or "unknown")
    progress = functools.partial(_progress, tell)
    reporter = ProgressReporter(progress, interval=progress_interval, heartbeat=heartbeat_interval)
    reporter.start()
    try:
        payload = run_job(job, progress=reporter)
    except EvaluationFailure as failure:
        tail = failure.log_tail or log_tail()
        tell(Failure, code=failure.reason, message=failure.message, log_tail=tail)
        return "failed"
    except Exception as exc:
        # Celery's soft time limit, or anything the evaluator did not classify, still ends the
        # run with words and a log instead of leaving it "running" until the reconciler reaps it.
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            code, message = "time_limit", "The evaluation ran past its time limit."
        else:
            logger.exception("evaluation of run %s crashed", job.run_id)
            code, message = "error", f"{type(exc).__name__}: {exc}"
        tell(Failure, code=code, message=message, log_tail=log_tail())
        return "failed"
    finally:
        reporter.stop()
    reporter.flush()
    try:
        tell(Result, payload=payload)
    except ValidationError as exc:
        # A bug of this worker, not of the model: say so rather than send what the web side
        # would refuse anyway.
        problems = "; ".join(problems_of(exc))
        message = f"The evaluator's result does not fit the message schema: {problems}"
        tell(Failure, code="error", message=message[:10_000], log_tail="")
        return "failed"
    return "finished"


def _progress(tell: Callable[..., None], done: int, total: int) -> None:
    tell(Progress, done=done, total=total)


def log_tail() -> str:
    """The last lines of the exception being handled."""
    lines = traceback.format_exc().rstrip().splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
