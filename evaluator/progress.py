"""The GPU side of an evaluation: run the evaluator on a self-contained job and report back by
message. Nothing here may touch the database: GPU workers load strangers' weights and hold no
database credentials (decision 2); the trusted web side validates and records what they say."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger(__name__)

# send(message, *args): publishes one message to the trusted web side. Messages are
# "started" (hostname), "progress" (done, total), "result" (payload) and
# "failure" (code, message, log_tail); the run id and attempt are bound by the caller.
Send = Callable[..., None]

LOG_TAIL_LINES = 40


class ProgressReporter:
    """Forwards the evaluator's progress, at most once per `interval` seconds, and keeps the
    run's heartbeat alive with the last known figures while the evaluator is silent (loading
    weights, building requests), so the reconciler reaps only workers that are really gone."""

    def __init__(
        self,
        send: Send,
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
            self._send("progress", *self._latest)
        except Exception:
            # A lost progress message costs nothing but a stale bar; the evaluation goes on.
            logger.exception("could not send progress")
        self._sent = self._latest
        self._last_sent = self._clock()


def localize_job(
    job: dict[str, Any], *, artifact_root: Path, data_root: str, model_root: Path
) -> dict[str, Any]:
    """The job with this host's paths: where the artifact store is mounted, where the task data
    mirror and (local source) the model root are. The web side's paths in the message describe
    its own host, which on a many-host deployment is not this one."""
    local = dict(job)
    local["artifact_root"] = str(artifact_root)
    if data_root:
        local["data_root"] = data_root
    if job.get("model_source") == "local":
        local["model_path"] = str(model_root)
    return local


def run_evaluation(
    job_dict: dict[str, Any],
    hostname: str,
    send: Send,
    *,
    progress_interval: float = 2.0,
    heartbeat_interval: float = 60.0,
) -> str:
    """Run one job and report its outcome through `send`; returns "finished" or "failed"."""
    from evaluator.jobs import EvaluationJob
    from evaluator.run import EvaluationFailure, run_job

    send("started", hostname)
    reporter = ProgressReporter(send, interval=progress_interval, heartbeat=heartbeat_interval)
    reporter.start()
    try:
        payload = run_job(EvaluationJob.from_dict(job_dict), progress=reporter)
    except SoftTimeLimitExceeded:
        send("failure", "time_limit", "The evaluation ran past its time limit.", _log_tail())
        return "failed"
    except EvaluationFailure as failure:
        send("failure", failure.reason, failure.message, failure.log_tail or _log_tail())
        return "failed"
    except Exception as exc:
        # Anything the evaluator did not classify still ends the run with words and a log,
        # instead of leaving it "running" until the reconciler reaps it.
        logger.exception("evaluation of run %s crashed", job_dict.get("run_id"))
        send("failure", "error", f"{type(exc).__name__}: {exc}", _log_tail())
        return "failed"
    finally:
        reporter.stop()
    reporter.flush()
    send("result", payload)
    return "finished"


def _log_tail() -> str:
    lines = traceback.format_exc().rstrip().splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])
