"""A slow model source never holds a database lock: while a submission's checks or the after-commit
resolution of its ancestors wait on the source, no transaction of theirs is open, and another
connection writes the very rows they will write (the user, the repositories). PostgreSQL only:
it is where row locks and open transactions can be observed from another connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction

from leaderboard import flow
from leaderboard.catalog.models import LineageEdge, Repository
from leaderboard.catalog.sources.local import LocalSource
from leaderboard.catalog.tasks import resolve_ancestors
from leaderboard.submissions.intake import SubmissionRequest
from tests.builders import default_card, make_dataset_repo, make_model_repo
from tests.conftest import service_unavailable

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 30  # seconds: generous, so a slow machine never makes the test flaky


class SlowSource:
    """The local source, except that reading one of `slow` blocks until that read is released."""

    name = "local"

    def __init__(self, inner: LocalSource, slow: list[str]) -> None:
        self.inner = inner
        self.reading = {repo_id: threading.Event() for repo_id in slow}
        self.release = {repo_id: threading.Event() for repo_id in slow}

    def snapshot(
        self, repo_id: str, revision: str | None = None, kind: Any = "model", *, card_only=False
    ):
        if repo_id in self.reading:
            self.reading[repo_id].set()
            assert self.release[repo_id].wait(WAIT), f"the read of {repo_id} was never released"
        return self.inner.snapshot(repo_id, revision, kind, card_only=card_only)

    def exists(self, repo_id: str, kind: Any = "model") -> bool:
        return self.inner.exists(repo_id, kind)


class Background:
    """Runs `work` on its own thread, hence its own database connection."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except BaseException as exc:
            self.error = exc
        finally:
            connections.close_all()

    def join(self) -> Any:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


def transactions_open_elsewhere() -> list[str]:
    """What the other sessions on this database are doing inside an open transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT state, query FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
        )
        return [f"{state}: {query}" for state, query in cursor.fetchall()]


def write_now(user_id: int, repo_ids: list[str]) -> None:
    """Lock and write the user row and the named repositories, failing at once (NOWAIT, and a
    short lock_timeout for the UPDATE) if any other transaction holds one of them."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '1s'")
        users = get_user_model().objects.select_for_update(nowait=True).filter(pk=user_id)
        assert list(users.values_list("pk", flat=True)) == [user_id]
        users.update(last_name="written meanwhile")
        rows = Repository.objects.select_for_update(nowait=True).filter(repo_id__in=repo_ids)
        assert sorted(rows.values_list("repo_id", flat=True)) == sorted(repo_ids)
        rows.update(license="written meanwhile")


@pytest.fixture
def postgresql() -> None:
    if connection.vendor != "postgresql":
        service_unavailable("PostgreSQL", RuntimeError(f"DATABASE_URL is {connection.vendor}"))


def test_a_slow_source_never_holds_a_database_lock(
    postgresql, model_root: Path, submitter, monkeypatch, settings
):
    # me/chat declares acme/base (read by the checks) and acme/base declares acme/root (read
    # after commit by the resolution task); both reads are made slow.
    make_model_repo(model_root, "acme/root")
    make_model_repo(model_root, "acme/base", card=default_card("acme/base", base_model="acme/root"))
    make_dataset_repo(model_root, "acme/instructions")
    make_model_repo(
        model_root,
        "me/chat",
        card=default_card("me/chat", base_model="acme/base", datasets=["acme/instructions"]),
    )
    # The parent is already in the catalog: its row is one the submission will write.
    Repository.objects.create(kind="model", repo_id="acme/base")
    source = SlowSource(LocalSource(model_root), slow=["acme/base", "acme/root"])
    monkeypatch.setattr("leaderboard.submissions.intake.get_source", lambda: source)
    monkeypatch.setattr("leaderboard.flow.get_source", lambda: source)
    request = SubmissionRequest(repo_id="me/chat", precision="bfloat16", model_type="fine-tuned")

    # 1. The checks wait on the declared parent: nothing is locked, no transaction is open.
    submitting = Background(lambda: flow.submit(request, submitter).pk)
    assert source.reading["acme/base"].wait(WAIT)
    assert transactions_open_elsewhere() == []
    write_now(submitter.pk, ["acme/base"])
    source.release["acme/base"].set()
    submission_id = submitting.join()

    chat = Repository.objects.get(repo_id="me/chat")
    assert (chat.status, chat.lineage_pending) == ("resolving", True)
    assert Repository.objects.get(repo_id="acme/root").status == "resolving"

    # 2. The resolution task (run in this process) waits on the grandparent: again no lock.
    resolving = Background(lambda: resolve_ancestors.apply(args=[chat.pk]).get())
    assert source.reading["acme/root"].wait(WAIT)
    assert transactions_open_elsewhere() == []
    write_now(submitter.pk, ["me/chat", "acme/base", "acme/root"])
    source.release["acme/root"].set()
    assert resolving.join() == 4  # me/chat, acme/base, acme/instructions, acme/root walked

    chat.refresh_from_db()
    assert (chat.status, chat.lineage_pending, chat.submissions.get().pk) == (
        "clean",
        False,
        submission_id,
    )
    assert Repository.objects.get(repo_id="acme/root").lineage_resolved is True
    assert sorted(
        LineageEdge.objects.values_list("child__repo_id", "parent__repo_id", "parent__kind")
    ) == [
        ("acme/base", "acme/root", "model"),
        ("me/chat", "acme/base", "model"),
        ("me/chat", "acme/instructions", "dataset"),
    ]
