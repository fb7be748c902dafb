"""Load bench: concurrent readers of the public pages and the JSON API while submissions and
reports arrive, against gunicorn with deploy/gunicorn.conf.py on PostgreSQL and Redis and the
synthetic catalog. Not a test: it prints requests per second, p50/p95/p99 and errors per route,
each route's p95 against a baseline measured in the same run (a static file through the same
server and client: what the machine, shared with other work, gives any request) and the load
averages, and checks that every accepted submission and report is in the database afterwards.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trellis_bench \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/8 \\
    python bench/load.py --models 10000 --readers 50 --writers 2 --duration 60

It seeds the synthetic catalog (`seed_synthetic`) when the database holds fewer synthetic
models than --models, builds submittable model repositories in a local model root, creates the
bench's users and tokens, starts gunicorn on a free loopback port and drives it with locust
(headless, in this process). Readers wait --think seconds on average between requests (a
person reading); writers submit a model and file a report every 20 s each, inside the
per-minute throttles."""

from __future__ import annotations

# locust patches the standard library for gevent: it must come first.
from locust import FastHttpUser, between, constant_throughput, events, task  # isort: skip
from locust.env import Environment  # isort: skip

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gevent

ROOT = Path(__file__).resolve().parent.parent
WRITER_INTERVAL = 20.0  # seconds between one writer's submissions (and between its reports)
BASELINE = "baseline (static)"


# --- preparing: runs in a subprocess with Django (no gevent there) ------------------------------


def prepare(models: int, writers: int, root: str, repos: int) -> dict[str, Any]:
    """Seed the catalog if needed, build `repos` submittable repositories, and create the
    writers (maintainers: the weekly limit does not apply, the per-minute throttles do)."""
    import django

    model_root = Path(root)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    from leaderboard.accounts.models import MAINTAINERS_GROUP, ApiToken
    from leaderboard.catalog.models import Repository
    from tests.builders import default_card, make_dataset_repo, make_model_repo

    call_command("migrate", verbosity=0)
    synthetic = Repository.objects.filter(is_synthetic=True, kind="model").count()
    if synthetic < models:
        if synthetic:
            call_command("seed_synthetic", purge=True)
        call_command("seed_synthetic", models=models)
    make_model_repo(model_root, "bench/base")
    make_dataset_repo(model_root, "bench/data")
    run_tag = f"{int(time.time())}"
    names = [f"bench/m-{run_tag}-{i:04d}" for i in range(repos)]
    for name in names:
        card = default_card(name, base_model="bench/base", datasets=["bench/data"])
        make_model_repo(model_root, name, card=card)
    users = get_user_model()
    tokens = []
    for i in range(writers):
        user, _ = users.objects.get_or_create(username=f"bench-writer-{i}")
        user.groups.add(Group.objects.get(name=MAINTAINERS_GROUP))
        tokens.append(ApiToken.issue(user, name="bench")[1])
    # Never a model the bench's writers reported in an earlier run: a second report of it by
    # the same writer is refused (409 already_reported), an error the server did not make.
    targets = list(
        Repository.objects.filter(is_synthetic=True, kind="model")
        .exclude(reports__reporter__username__startswith="bench-writer-")
        .order_by("?")
        .values_list("repo_id", flat=True)[:500]
    )
    return {"tokens": tokens, "repos": names, "targets": targets}


def count_recorded(repos: list[str], targets: list[str], since: float) -> dict[str, int]:
    import django

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")
    django.setup()
    from datetime import UTC, datetime

    from leaderboard.evaluations.models import EvaluationRun
    from leaderboard.integrity.models import Report
    from leaderboard.submissions.models import Submission

    started = datetime.fromtimestamp(since, tz=UTC)
    return {
        "submissions": Submission.objects.filter(repository__repo_id__in=repos).count(),
        "runs": EvaluationRun.objects.filter(submission__repository__repo_id__in=repos).count(),
        "reports": Report.objects.filter(
            created_at__gte=started, reporter__username__startswith="bench-writer-"
        ).count(),
    }


# --- the load ---------------------------------------------------------------------------------

STATE: dict[str, Any] = {}


class Reader(FastHttpUser):
    """A person reading: ranking pages (plain, filtered, searched, paged), the plots, a model
    page and the JSON API."""

    wait_time = between(0.0, 2.0)  # replaced by --think at start

    def _model(self) -> str:
        return random.choice(STATE["targets"])

    @task(4)
    def ranking(self) -> None:
        self.client.get("/", name="ranking")

    @task(2)
    def ranking_filtered(self) -> None:
        self.client.get(
            "/?model_type=chat&precision=bfloat16&hide_merges=1&min_params=1",
            name="ranking filtered",
        )

    @task(2)
    def ranking_searched(self) -> None:
        self.client.get(f"/?q={random.choice(['llama', 'mistral', 'qwen', '-7b', 'merge'])}",
                        name="ranking searched")  # fmt: skip

    @task(2)
    def ranking_paged(self) -> None:
        self.client.get(f"/?page={random.randint(2, 150)}", name="ranking paged")

    @task(1)
    def plots(self) -> None:
        self.client.get("/plots/", name="plots")

    @task(2)
    def model_page(self) -> None:
        self.client.get(f"/models/{self._model()}/", name="model page")

    @task(2)
    def api_leaderboard(self) -> None:
        self.client.get(f"/api/v1/leaderboard?page={random.randint(1, 50)}", name="api leaderboard")

    @task(1)
    def api_model(self) -> None:
        self.client.get(f"/api/v1/models/{self._model()}", name="api model")

    @task(1)
    def baseline(self) -> None:
        # The baseline measured in the same run: a static file (WhiteNoise, no database, no
        # cache) through the same server and client. What it costs is what the machine, shared
        # with other work, gives any request; the routes' ratios to it are what compare runs.
        self.client.get("/static/css/trellis.css", name=BASELINE)


class Writer(FastHttpUser):
    """A maintainer's script submitting models and filing reports, inside the throttles."""

    fixed_count = 0  # set at start
    wait_time = constant_throughput(2 / WRITER_INTERVAL)

    def on_start(self) -> None:
        index = STATE["writer_index"]
        STATE["writer_index"] += 1
        self.headers = {"Authorization": f"Bearer {STATE['tokens'][index % len(STATE['tokens'])]}"}
        self.turn = 0

    @task
    def write(self) -> None:
        self.turn += 1
        if self.turn % 2:
            if not STATE["repos"]:
                return
            repo = STATE["repos"].pop()
            body = {"repo_id": repo, "precision": "bfloat16", "model_type": "fine-tuned"}
            with self.client.post(
                "/api/v1/submissions", json=body, headers=self.headers, name="submit",
                catch_response=True,
            ) as response:  # fmt: skip
                if response.status_code == 201:
                    STATE["accepted"]["submissions"] += 1
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")
        else:
            body = {
                "target": random.choice(STATE["targets"]),
                "kind": "contamination",
                "evidence": "Bench: the test items appear verbatim in its training data.",
            }
            with self.client.post(
                "/api/v1/flags", json=body, headers=self.headers, name="report",
                catch_response=True,
            ) as response:  # fmt: skip
                if response.status_code in (200, 201):
                    STATE["accepted"]["reports"] += 1
                    response.success()
                else:
                    response.failure(f"{response.status_code}: {response.text[:200]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _in_subprocess(function: str, env: dict[str, str], *args: Any) -> Any:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from bench import load; "
        f"print(json.dumps(load.{function}(*json.loads(sys.argv[2]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), json.dumps(list(args), default=str)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"{function} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cpu_seconds(group: int) -> float:
    """CPU seconds used so far by the processes of process group `group` (the web server):
    what a request costs the server whatever share of the machine it gets."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def _percentile(entry: Any, fraction: float) -> int:
    return int(entry.get_response_time_percentile(fraction)) if entry.num_requests else 0


def report(environment: Environment, seconds: float) -> list[dict[str, Any]]:
    rows = []
    for (name, method), entry in sorted(environment.stats.entries.items()):
        rows.append(
            {
                "route": name,
                "method": method,
                "requests": entry.num_requests,
                "rps": round(entry.num_requests / seconds, 1),
                "p50_ms": _percentile(entry, 0.50),
                "p95_ms": _percentile(entry, 0.95),
                "p99_ms": _percentile(entry, 0.99),
                "errors": entry.num_failures,
                "avg_kb": round(entry.avg_content_length / 1024, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between reads")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    database = os.environ.get("DATABASE_URL", "")
    if not database.startswith(("postgres://", "postgresql://")):
        sys.exit("DATABASE_URL must point at PostgreSQL (the bench measures the real setup)")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
    work = Path(tempfile.mkdtemp(prefix="trellis-load-"))
    queue = f"bench-gpu-{os.getpid()}"
    env = {
        **os.environ,
        "TRELLIS_DEBUG": "0",
        "TRELLIS_VAR_DIR": str(work / "var"),
        "TRELLIS_CACHE_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": "cache+memory://",
        "TRELLIS_QUEUE_SMALL": queue,
        "TRELLIS_QUEUE_LARGE": queue,
        "TRELLIS_WEB_QUEUE": queue + "-web",
        "TRELLIS_MODEL_SOURCE": "local",
        "TRELLIS_MODEL_ROOT": str(work / "models"),
        "TRELLIS_DB_CONN_MAX_AGE": "60",
        "HF_HUB_OFFLINE": "1",
    }
    repos = int(args.writers * (args.duration + args.warmup) / WRITER_INTERVAL) + 10
    print(f"preparing ({args.models} synthetic models, {repos} submittable repositories)…")
    prepared = _in_subprocess("prepare", env, args.models, args.writers, work / "models", repos)
    submittable = list(prepared["repos"])  # the writers pop from prepared["repos"]

    port = _free_port()
    log = work / "gunicorn.log"
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "deploy/gunicorn.conf.py"],
        cwd=ROOT, env=env | {"GUNICORN_BIND": f"127.0.0.1:{port}"},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if gunicorn.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        STATE.update(prepared, writer_index=0, accepted={"submissions": 0, "reports": 0})
        Reader.wait_time = between(0.0, 2 * args.think)
        Writer.fixed_count = args.writers
        # Without writers, only readers: locust would still start one Writer (fixed_count 0).
        environment = Environment(
            user_classes=[Reader, Writer] if args.writers else [Reader],
            events=events,
            host=f"http://127.0.0.1:{port}",
        )
        runner = environment.create_local_runner()
        load_before = os.getloadavg()
        started = time.time()
        runner.start(args.readers + args.writers, spawn_rate=max(10, args.readers))
        gevent.sleep(args.warmup)
        environment.stats.reset_all()
        measured_from = time.monotonic()
        cpu_from = _cpu_seconds(gunicorn.pid)
        gevent.sleep(args.duration)
        server_cpu = _cpu_seconds(gunicorn.pid) - cpu_from
        runner.quit()
        seconds = time.monotonic() - measured_from
        load_after = os.getloadavg()
        rows = report(environment, seconds)
        total = environment.stats.total
        workers = re.findall(r"Booting worker", log.read_text())
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        gunicorn.wait(timeout=60)

    recorded = _in_subprocess("count_recorded", env, submittable, prepared["targets"], started)
    print(
        f"\n{args.readers} readers (think {args.think} s), {args.writers} writers, "
        f"{seconds:.0f} s measured after {args.warmup:.0f} s warm-up, gunicorn "
        f"{len(workers)} processes, {args.models} synthetic models; load average "
        f"{' '.join(f'{v:.2f}' for v in load_before)} before, "
        f"{' '.join(f'{v:.2f}' for v in load_after)} after ({os.cpu_count()} cores)\n"
    )
    baseline = next((row for row in rows if row["route"] == BASELINE), None)
    base_p95 = max(1, baseline["p95_ms"]) if baseline else 1
    header = (
        f"{'route':<20}{'reqs':>7}{'req/s':>8}{'p50':>7}{'p95':>7}{'p99':>7}{'err':>6}{'kB':>8}"
        f"{'p95/base':>10}"
    )
    print(header)
    for row in rows:
        row["p95_ratio"] = round(row["p95_ms"] / base_p95, 1)
        print(
            f"{row['route']:<20}{row['requests']:>7}{row['rps']:>8}{row['p50_ms']:>7}"
            f"{row['p95_ms']:>7}{row['p99_ms']:>7}{row['errors']:>6}{row['avg_kb']:>8}"
            f"{row['p95_ratio']:>10}"
        )
    print(
        f"{'all':<20}{total.num_requests:>7}{round(total.num_requests / seconds, 1):>8}"
        f"{_percentile(total, 0.5):>7}{_percentile(total, 0.95):>7}"
        f"{_percentile(total, 0.99):>7}{total.num_failures:>6}"
    )
    print(
        f"\nserver CPU {server_cpu:.1f} s in {seconds:.0f} s ({server_cpu / seconds:.2f} of "
        f"{os.cpu_count()} cores), {1000 * server_cpu / max(1, total.num_requests):.1f} ms "
        "per request (gunicorn's processes; PostgreSQL and Redis not counted)"
    )
    accepted = STATE["accepted"]
    # More recorded than accepted: requests in flight when the run stopped, whose answers the
    # bench no longer waited for (they were stored all the same).
    lost_submissions = max(0, accepted["submissions"] - recorded["submissions"])
    lost_reports = max(0, accepted["reports"] - recorded["reports"])
    print(
        f"\naccepted submissions {accepted['submissions']}, recorded {recorded['submissions']} "
        f"(with {recorded['runs']} queued runs); accepted reports {accepted['reports']}, "
        f"recorded {recorded['reports']}; lost: {lost_submissions} submissions, "
        f"{lost_reports} reports"
    )
    errors = environment.stats.errors
    for error in list(errors.values())[:10]:
        print(f"  error x{error.occurrences} {error.method} {error.name}: {error.error}")
    if args.json:
        figures = {
            "args": vars(args),
            "load_average": {"before": load_before, "after": load_after},
            "server_cpu_seconds": server_cpu,
            "routes": rows,
            "accepted": accepted,
            "recorded": recorded,
        }
        Path(args.json).write_text(json.dumps(figures, indent=2))
    import redis

    client = redis.Redis.from_url(redis_url)
    leftovers = list(client.scan_iter(f"*{queue}*"))
    if leftovers:
        client.delete(*leftovers)


if __name__ == "__main__":
    main()
