"""What the broker holds: whether it answers, and how many messages wait on each queue. Read
with a short timeout on every transport Trellis uses (Redis, RabbitMQ, the filesystem, memory),
by the health endpoint and by the reconciler, which compares it with the runs the database says
were sent (docs/operations.md)."""

from __future__ import annotations

import contextlib
from typing import Any

TIMEOUT = 3.0  # seconds


class BrokerUnreachable(Exception):
    pass


def queue_depths(queues: list[str], timeout: float = TIMEOUT) -> dict[str, int]:
    """Messages waiting (not yet taken by a worker) on each queue; a queue nobody declared holds
    none. Raises BrokerUnreachable when the broker does not answer within `timeout`."""
    from kombu import Connection

    from leaderboard.celery import app

    # The Celery app's own broker settings: what the messages really travel through.
    options = dict(app.conf.broker_transport_options or {})
    options.update(socket_connect_timeout=timeout, socket_timeout=timeout, max_retries=0)
    try:
        with Connection(
            app.conf.broker_url, connect_timeout=timeout, transport_options=options
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            return {queue: _depth(conn, queue) for queue in queues}
    except Exception as exc:
        raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from exc


def _depth(conn: Any, queue: str) -> int:
    # A passive declare works on every transport: AMQP answers it, Redis and the filesystem
    # count their lists or files. A fresh channel each time: AMQP closes one on NOT_FOUND.
    channel = conn.channel()
    try:
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
        return int(count)
    except Exception as exc:
        if _is_missing_queue(exc):
            return 0
        raise
    finally:
        with contextlib.suppress(Exception):
            channel.close()


def _is_missing_queue(exc: Exception) -> bool:
    from amqp.exceptions import NotFound
    from kombu.exceptions import ChannelError

    text = str(exc).upper().replace(" ", "_")
    return isinstance(exc, NotFound | ChannelError) and "NOT_FOUND" in text


def reserved_runs(timeout: float = 1.0) -> set[tuple[int, int]]:
    """(run id, attempt) of the evaluation messages workers have taken off their queue but not
    started yet (a busy worker holds its next message). They are in no queue's depth, yet not
    lost. Asked of the workers by broadcast; none when none answer, or the transport cannot
    broadcast (the filesystem one)."""
    from evaluator.messages import EVALUATE_TASK
    from leaderboard.celery import app

    try:
        replies = app.control.inspect(timeout=timeout).reserved() or {}
    except Exception:
        return set()
    found: set[tuple[int, int]] = set()
    for tasks in replies.values():
        for task in tasks or []:
            args = task.get("args")
            if task.get("name") != EVALUATE_TASK or not isinstance(args, list | tuple) or not args:
                continue
            job = args[0]
            if isinstance(job, dict) and "run_id" in job:
                found.add((int(job["run_id"]), int(job.get("attempt", 1))))
    return found
