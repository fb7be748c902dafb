"""The Makefile's newcomer path: `make demo` / `make worker` stop every process they started
when the process group gets SIGTERM with the output piped (`make demo | cat`), even a command
that does not stop on SIGTERM (a worker mid-evaluation, or one stuck on a dead output pipe)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (zombies awaiting their parent do not)."""
    listed = subprocess.run(
        ["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True
    ).stdout.split()
    return any(not state.startswith("Z") for state in listed)


@pytest.mark.worker
def test_sigterm_to_a_piped_make_worker_leaves_no_process(tmp_path):
    stubborn = (
        "python3 -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "time.sleep(300)'"
    )
    command = (
        # -o: never rebuild .venv here, whatever pyproject.toml's date.
        f'make -s -o .venv/.installed STOP_GRACE=4 WEB_WORKER_COMMAND="{stubborn}" '
        "GPU_WORKER_COMMAND='sleep 300' worker | cat"
    )
    started = subprocess.Popen(
        ["sh", "-c", command], cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL
    )
    pgid = os.getpgid(started.pid)
    try:
        time.sleep(2)
        os.killpg(pgid, signal.SIGTERM)
        # A second SIGTERM during the cleanup (make forwards its own to the shell, an impatient
        # user sends another) must not cut the cleanup short.
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _group_alive(pgid), subprocess.run(
            ["ps", "-o", "pid,stat,cmd", "-g", str(pgid)], capture_output=True, text=True
        ).stdout
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        started.wait(timeout=10)
    assert started.returncode is not None


def test_every_browser_test_file_launches_chromium_through_the_one_helper(monkeypatch):
    """A missing Chromium fails every browser file under TRELLIS_REQUIRE_SERVICES=1 and skips
    every one elsewhere (one file used to fail while another skipped)."""
    import pytest

    from tests import conftest

    monkeypatch.setattr(conftest, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(conftest, "REQUIRE_SERVICES", False)
    with (
        pytest.raises(pytest.skip.Exception, match="Chromium is not reachable"),
        conftest.chromium(),
    ):
        pass
    monkeypatch.setattr(conftest, "REQUIRE_SERVICES", True)
    with (
        pytest.raises(pytest.fail.Exception, match="apt-get install chromium"),
        conftest.chromium(),
    ):
        pass
    browser_files = sorted((ROOT / "tests").glob("test_*browser*.py"))
    assert len(browser_files) >= 2
    for path in browser_files:
        text = path.read_text()
        assert "with chromium() as" in text, path.name
        assert "/usr/bin/chromium" not in text, path.name


def test_setup_installs_chromium_where_it_can():
    planned = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "setup"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "apt-get install -y --no-install-recommends chromium" in planned


@pytest.mark.slow
def test_the_demo_quiets_progress_bars_and_the_root_warning():
    """What the demo's processes see: no tqdm flood, no Celery superuser warning (the demo
    data and the real commands are left out: `env` stands in for the web server)."""
    shown = subprocess.run(
        [
            "make",
            "-s",
            "-o",
            ".venv/.installed",
            "-o",
            "demo-data",
            "demo",
            "WEB_WORKER_COMMAND=sleep 2",
            "GPU_WORKER_COMMAND=sleep 2",
            "WEB_COMMAND=env; sleep 2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    environment = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert environment["TQDM_DISABLE"] == "1"
    assert environment["TQDM_MININTERVAL"] == "60"
    assert environment["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert environment["PYTHONWARNINGS"] == (
        "ignore:You're running the worker with superuser privileges"
    )


def test_the_demo_web_worker_logs_warnings_only():
    planned = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "-o", "demo-data", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "celery -A leaderboard worker -B" in planned
    web_worker = planned.split("celery -A leaderboard worker -B", 1)[1].split("&", 1)[0]
    gpu_worker = planned.split("celery -A evaluator.worker worker", 1)[1].split("&", 1)[0]
    assert ("--loglevel=WARNING" in web_worker, "--loglevel=INFO" in gpu_worker) == (True, True)
