"""Lineage-status benchmark (not a test): a synthetic catalog of 100,000 models with realistic
fan-out, a flag confirmed on a root with about 10,000 descendants, and the ranking JSON served
afterwards with 10,000 rows.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trellis_bench_integrity \\
        .venv/bin/python bench/lineage_bench.py [--models 100000] [--ranked 10000] [--seed 7]

The database is DROPPED and created again, then migrated: never point it at a database you
care about. Targets: recompute < 1 s, ranking JSON < 200 ms.
Baseline in the same run: recompute_all() over the whole graph.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUITE, VERSION = "open-llm-v1", "1"
TASKS = ("arc_challenge", "hellaswag", "mmlu", "winogrande")
FEWSHOT = {"arc_challenge": 25, "hellaswag": 10, "mmlu": 5, "winogrande": 5}
METRIC = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "mmlu": "acc", "winogrande": "acc"}
TARGET_DESCENDANTS = 10_000


def recreate_database(url: str) -> None:
    """DROP and CREATE the benchmark database (connecting to the server's `postgres` db), so
    the current migrations apply from scratch even while other apps still edit theirs."""
    import dj_database_url
    import psycopg
    from psycopg import sql

    config = dj_database_url.parse(url)
    name = config["NAME"]
    params = {
        "host": config.get("HOST") or "127.0.0.1",
        "port": config.get("PORT") or 5432,
        "user": config.get("USER") or "postgres",
        "dbname": "postgres",
        "autocommit": True,
    }
    if config.get("PASSWORD"):
        params["password"] = config["PASSWORD"]
    with psycopg.connect(**params) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# --- the synthetic graph ------------------------------------------------------------------------


class Catalog:
    """Models in creation order (a parent always exists before its children), in families
    grown from a few roots by preferential attachment: fine-tunes, merges (a few across
    families), quantizations and adapters; a share of models declares a training dataset."""

    def __init__(self, models: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.roots = 24
        weights = [1 / (rank + 1) ** 1.1 for rank in range(self.roots)]
        self.repo_ids: list[str] = []
        self.family: list[int] = []
        self.parents: list[list[tuple[int, str]]] = []
        members: list[list[int]] = [[] for _ in range(self.roots)]
        for root in range(self.roots):
            self._add(f"base-{root}/pretrained-{root}", root, [])
            members[root].append(root)
        for index in range(self.roots, models):
            fam = rng.choices(range(self.roots), weights)[0]
            pool = members[fam]
            draw = rng.random()
            if draw < 0.58:
                relation, parents = "fine-tune", [self._pick(pool)]
            elif draw < 0.90:
                relation = "merge"
                first = self._pick(pool)
                if rng.random() < 0.015:
                    second = self._pick(members[rng.choices(range(self.roots), weights)[0]])
                else:
                    second = self._pick(pool)
                parents = list(dict.fromkeys([first, second]))
                if rng.random() < 0.15:
                    parents = list(dict.fromkeys([*parents, self._pick(pool)]))
            else:
                relation = rng.choice(["quantized", "adapter"])
                parents = [self._pick(pool)]
            org = f"org{rng.randrange(2_000)}"
            self._add(f"{org}/{relation}-{index}", fam, [(p, relation) for p in parents])
            pool.append(index)
        self.models = models
        self.datasets = [f"data-org{i % 40}/corpus-{i}" for i in range(400)]
        dataset_weights = [1 / (rank + 1) for rank in range(len(self.datasets))]
        self.trained_on: list[tuple[int, int]] = []  # (model index, dataset index)
        for index in range(models):
            if rng.random() < 0.25:
                self.trained_on.append(
                    (index, rng.choices(range(len(self.datasets)), dataset_weights)[0])
                )
        self.unresolved = set(rng.sample(range(self.roots, models), models // 100))

    def _add(self, repo_id: str, fam: int, parents: list[tuple[int, str]]) -> None:
        self.repo_ids.append(repo_id)
        self.family.append(fam)
        self.parents.append(parents)

    def _pick(self, pool: Sequence[int]) -> int:
        # A third of derivations start from the family's popular early models, the rest from
        # anywhere in it: long fine-tune chains and merges of merges both appear.
        if self.rng.random() < 0.33:
            return pool[self.rng.randrange(max(1, len(pool) // 200))]
        return pool[self.rng.randrange(len(pool))]

    def descendant_count(self, start: int) -> int:
        children: dict[int, list[int]] = {}
        for child, plist in enumerate(self.parents):
            for parent, _ in plist:
                children.setdefault(parent, []).append(child)
        seen = {start}
        queue = deque([start])
        while queue:
            for child in children.get(queue.popleft(), []):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
        return len(seen) - 1

    def edge_count(self) -> int:
        return sum(len(p) for p in self.parents) + len(self.trained_on)


# --- bulk loading with COPY ---------------------------------------------------------------------


def copy_rows(model: Any, rows: Iterable[dict[str, Any]], **constant: Any) -> int:
    """COPY rows into `model`'s table. Every column not given takes the value an unsaved
    instance would have (field defaults, auto_now timestamps), so the loader follows schema
    changes made by other apps without editing this file."""
    from django.db import connection
    from django.db.models import DateTimeField
    from django.utils import timezone

    now = timezone.now()
    template_instance = model(**constant)
    fields = [f for f in model._meta.concrete_fields]
    columns = [f.column for f in fields]
    template: dict[str, Any] = {}
    for field in fields:
        value = getattr(template_instance, field.attname)
        if isinstance(field, DateTimeField) and (field.auto_now or field.auto_now_add):
            value = now
        template[field.column] = field.get_db_prep_save(value, connection)
    count = 0
    with connection.cursor() as cursor:
        raw = cursor.cursor
        names = ", ".join(f'"{c}"' for c in columns)
        with raw.copy(f'COPY "{model._meta.db_table}" ({names}) FROM STDIN') as copy:
            for row in rows:
                values = template | row
                copy.write_row([values[c] for c in columns])
                count += 1
    return count


def reset_sequence(model: Any) -> None:
    from django.db import connection

    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
            f'COALESCE((SELECT MAX(id) FROM "{table}"), 1))'
        )


def load(catalog: Catalog, ranked: int) -> tuple[list[int], dict[str, float]]:
    """Write the catalog; return the ids of ranked models and the phase timings."""
    from django.db import transaction

    from leaderboard.catalog.models import LineageEdge, Repository
    from leaderboard.evaluations.models import EvaluationRun, TaskScore
    from leaderboard.submissions.models import Submission

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with transaction.atomic():
        copy_rows(
            Repository,
            (
                {
                    "id": index + 1,
                    "repo_id": repo_id,
                    "lineage_resolved": index not in catalog.unresolved,
                    "resolution_note": "no model card (README.md) on the hub source"
                    if index in catalog.unresolved
                    else "",
                }
                for index, repo_id in enumerate(catalog.repo_ids)
            ),
            kind="model",
            is_synthetic=True,
            lineage_resolved=True,
        )
        base = catalog.models
        copy_rows(
            Repository,
            (
                {"id": base + i + 1, "repo_id": repo_id}
                for i, repo_id in enumerate(catalog.datasets)
            ),
            kind="dataset",
            is_synthetic=True,
            lineage_resolved=True,
        )
        reset_sequence(Repository)
        edge_id = iter(range(1, 10_000_000))
        copy_rows(
            LineageEdge,
            (
                {
                    "id": next(edge_id),
                    "child_id": child + 1,
                    "parent_id": parent + 1,
                    "relation": relation,
                }
                for child, plist in enumerate(catalog.parents)
                for parent, relation in plist
            ),
            declared_in="synthetic",
        )
        copy_rows(
            LineageEdge,
            (
                {
                    "id": next(edge_id),
                    "child_id": model + 1,
                    "parent_id": base + dataset + 1,
                    "relation": "trained-on",
                }
                for model, dataset in catalog.trained_on
            ),
            declared_in="synthetic",
        )
        reset_sequence(LineageEdge)
    timings["graph COPY"] = time.perf_counter() - started

    started = time.perf_counter()
    rng = random.Random(11)
    chosen = sorted(rng.sample(range(catalog.models), ranked))
    with transaction.atomic():
        copy_rows(
            Submission,
            (
                {
                    "id": n + 1,
                    "repository_id": index + 1,
                    "revision": hashlib.sha1(str(index).encode()).hexdigest(),
                    "model_type": "merge" if len(catalog.parents[index]) > 1 else "fine-tuned",
                    "merge_method": "slerp" if len(catalog.parents[index]) > 1 else "",
                    "parameter_count": rng.choice([135, 360, 1_700, 7_000, 13_000]) * 1_000_000,
                }
                for n, index in enumerate(chosen)
            ),
            requested_revision="main",
            precision="bfloat16",
            license="apache-2.0",
            architecture="LlamaForCausalLM",
            state="finished",
            is_synthetic=True,
        )
        reset_sequence(Submission)
        from django.utils import timezone

        finished = timezone.now()
        copy_rows(
            EvaluationRun,
            ({"id": n + 1, "submission_id": n + 1} for n in range(len(chosen))),
            suite_name=SUITE,
            suite_version=VERSION,
            state="finished",
            finished_at=finished,
            started_at=finished,
            is_synthetic=True,
        )
        reset_sequence(EvaluationRun)
        score_id = iter(range(1, 10_000_000))
        copy_rows(
            TaskScore,
            (
                {
                    "id": next(score_id),
                    "run_id": n + 1,
                    "task": task,
                    "metric": METRIC[task],
                    "num_fewshot": FEWSHOT[task],
                    "value": round(rng.uniform(0.3, 0.8), 4),
                    "stderr": 0.01,
                    "n_samples": 1000,
                }
                for n in range(len(chosen))
                for task in TASKS
            ),
            run_id=1,
            n_samples=1000,
            num_fewshot=0,
            value=0.5,
        )
        reset_sequence(TaskScore)
    timings["ranked models COPY"] = time.perf_counter() - started
    return [index + 1 for index in chosen], timings


# --- measuring ----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def load_average() -> str:
    # The machine may be shared: other work inflates every wall-clock figure below.
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--ranked", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5, help="confirm/lift cycles timed")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit(
            "Set DATABASE_URL to a PostgreSQL database, e.g. "
            "postgres://postgres@127.0.0.1:5432/trellis_bench_integrity"
        )
    recreate_database(url)

    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from leaderboard import flow
    from leaderboard.accounts.models import MAINTAINERS_GROUP
    from leaderboard.catalog.models import Repository
    from leaderboard.integrity import derived

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"migrated a fresh database in {time.perf_counter() - started:.1f} s")
    print(f"PostgreSQL: {connection.pg_version}; {os.cpu_count()} CPUs; {load_average()}")

    built, catalog = timed(lambda: Catalog(args.models, args.seed))
    counts = {root: catalog.descendant_count(root) for root in range(catalog.roots)}
    root = min(counts, key=lambda r: abs(counts[r] - TARGET_DESCENDANTS))
    print(
        f"graph: {catalog.models:,} models + {len(catalog.datasets)} datasets, "
        f"{catalog.edge_count():,} edges ({len(catalog.trained_on):,} trained-on), "
        f"{len(catalog.unresolved):,} unresolved; generated in {built:.1f} s"
    )
    print(
        "descendants of the largest roots: "
        + ", ".join(
            f"{catalog.repo_ids[r]}={counts[r]:,}"
            for r in sorted(counts, key=lambda r: -counts[r])[:6]
        )
    )
    ranked_ids, load_timings = load(catalog, args.ranked)
    for phase, seconds in load_timings.items():
        print(f"{phase}: {seconds:.1f} s")

    from leaderboard.public.projection import rebuild_all_entries

    entries_time, entries = timed(rebuild_all_entries)
    print(f"ranking read table: {entries:,} rows rebuilt in {entries_time:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    first_all, first = timed(derived.recompute_all)
    print(f"recompute_all, first (every row written): {ms(first_all)}, {first.written:,} rows")
    baseline_times = []
    for _ in range(args.repeat):
        seconds, result = timed(derived.recompute_all)
        baseline_times.append(seconds)
    baseline = statistics.median(baseline_times)
    print(
        f"BASELINE recompute_all, nothing changed (median of {args.repeat}): {ms(baseline)} "
        f"({result.computed:,} nodes)"
    )

    user_model = get_user_model()
    maintainer, _ = user_model.objects.get_or_create(username="bench-maintainer")
    maintainer.groups.add(Group.objects.get(name=MAINTAINERS_GROUP))
    target = Repository.objects.get(pk=root + 1)
    ranked_set = set(ranked_ids)
    print(f"flag target: {target.repo_id} with {counts[root]:,} descendants; {load_average()}")

    confirm_times, lift_times, recompute_times, queries = [], [], [], []
    written = 0
    for cycle in range(args.repeat):
        report = flow.file_report(
            reporter=None,
            target=target,
            kind="contamination",
            evidence=f"benchmark cycle {cycle}: GSM8K test answers memorised",
        ).report
        with CaptureQueriesContext(connection) as captured:
            seconds, _ = timed(
                lambda pk=report.pk: flow.resolve(pk, "confirm", "bench", maintainer)
            )
        confirm_times.append(seconds)
        queries.append(len(captured))
        tainted = Repository.objects.filter(status="tainted").count()
        seconds, _ = timed(lambda pk=report.pk: flow.resolve(pk, "lift", "bench", maintainer))
        lift_times.append(seconds)
    # The recompute alone, without the report bookkeeping: the flag's state is flipped under
    # it. Then the same change recomputed by recompute_all, the like-for-like baseline.
    from leaderboard.integrity.models import Report

    full_times: list[float] = []
    for _ in range(args.repeat):
        report = flow.file_report(
            reporter=None, target=target, kind="lineage", evidence="bench"
        ).report
        flow.resolve(report.pk, "confirm", "bench", maintainer)
        Report.objects.filter(pk=report.pk).update(status="lifted")
        seconds, result = timed(lambda: derived.recompute([target.pk]))
        recompute_times.append(seconds)
        written = result.written
        Report.objects.filter(pk=report.pk).update(status="confirmed")
        seconds, full = timed(derived.recompute_all)
        full_times.append(seconds)
        Report.objects.filter(pk=report.pk).update(status="lifted")
        derived.recompute([target.pk])
    print(
        f"BASELINE recompute_all of the same change ({full.written:,} rows rewritten), "
        f"median of {args.repeat}: {ms(statistics.median(full_times))}"
    )
    confirm = statistics.median(confirm_times)
    recompute = statistics.median(recompute_times)
    print(
        f"confirm a flag (resolve(): report, audit, recompute, commit), median of "
        f"{args.repeat}: {ms(confirm)}  [{', '.join(ms(t) for t in confirm_times)}]; "
        f"{statistics.median(queries):.0f} SQL queries"
    )
    print(f"lift the flag, median: {ms(statistics.median(lift_times))}")
    print(
        f"recompute([root]) alone, {written:,} rows rewritten, median: {ms(recompute)} "
        f"[{', '.join(ms(t) for t in recompute_times)}]"
    )
    print(f"tainted after confirming: {tainted:,} (descendants: {counts[root]:,})")
    print(
        f"fastest of {args.repeat}: confirm {ms(min(confirm_times))}, "
        f"recompute alone {ms(min(recompute_times))}, "
        f"recompute_all {ms(min(baseline_times))}"
    )
    full_median = statistics.median(full_times)
    print(
        f"RATIO recompute_all of the same change / recompute alone: "
        f"{full_median / recompute:.1f}x; / confirm: {full_median / confirm:.1f}x (medians)"
    )
    print(f"target recompute < 1 s: {'met' if confirm < 1 else 'MISSED'}")

    # Leave the flag confirmed for the ranking measurement.
    report = flow.file_report(
        reporter=None, target=target, kind="other", evidence="bench: final flag"
    ).report
    flow.resolve(report.pk, "confirm", "bench", maintainer)
    ranked_tainted = Repository.objects.filter(
        pk__in=ranked_set, status__in=["tainted", "flagged"]
    ).count()

    client = Client(HTTP_HOST="localhost")
    for label, query in (
        ("all 10,000 rows (show_flagged=1&show_tainted=1)", "&show_flagged=1&show_tainted=1"),
        ("default (flagged and tainted hidden)", ""),
    ):
        url = f"/api/v1/leaderboard?suite={SUITE}&version={VERSION}{query}"
        times = []
        rows = 0
        for _ in range(5):
            seconds, response = timed(lambda url=url: client.get(url))
            if response.status_code != 200:
                sys.exit(f"{url} answered {response.status_code}: {response.content[:300]!r}")
            times.append(seconds)
        body = response.json()
        rows = len(body.get("rows", body.get("results", [])))
        print(
            f"ranking JSON, {label}: {rows:,} rows, {len(response.content) / 1e6:.1f} MB, "
            f"median of 5 {ms(statistics.median(times))} [{', '.join(ms(t) for t in times)}]"
        )
    print(f"ranked models tainted or flagged: {ranked_tainted:,}; {load_average()}")


if __name__ == "__main__":
    main()
