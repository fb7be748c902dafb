"""Benchmark of the public read paths on a 10,000-model catalog (not a test).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trellis_bench_public \
        .venv/bin/python bench/public_bench.py [--models 10000] [--repeat 40]

Migrates the database, seeds the synthetic catalog when it does not hold exactly --models
synthetic models, then times requests in-process through Django's full stack (middleware,
URL routing, templates, serialization; no network): the ranking page (first page, default
filters), the leaderboard JSON (every row; from the response cache keyed by its ETag, plain
and gzip, and once more with the cache emptied before each request), and a conditional request
answered 304 from its ETag. A baseline measured in the same run, the bare read of the same
rows' stored JSON with one ORM query (no HTTP, no filtering, no ranking), gives each figure
as a ratio: runs on busier or quieter machines compare by ratio, and the full-JSON ratio is the
cost of everything the endpoint adds to reading its rows (target: p95 within 2x the baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")

TARGETS_MS = {"page": 150.0, "json": 300.0, "304": 20.0}
# The full JSON is served from the response cache (leaderboard/public/cache.py): its p95 must
# stay within this multiple of the baseline's p95 measured in the same run.
TARGET_RATIOS = {"json": 2.0, "json-gzip": 2.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings
    from django.core.cache import caches
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from leaderboard.public.cache import forget_local_copies
    from leaderboard.public.models import RankingEntry
    from leaderboard.public.query import default_suite
    from leaderboard.public.suites import current_version

    if connection.vendor != "postgresql":
        print(f"warning: running on {connection.vendor}, the targets are for PostgreSQL")
    call_command("migrate", verbosity=0)
    suite = default_suite()
    version = current_version(suite)
    ranked = RankingEntry.objects.filter(
        is_synthetic=True, suite_name=suite, suite_version=version
    ).count()
    if ranked != args.models:
        print(f"seeding {args.models} synthetic models (found {ranked}) ...", flush=True)
        call_command("seed_synthetic", "--purge", "--models", str(args.models))
        if connection.vendor == "postgresql":
            # What autovacuum does soon after a bulk load: planner statistics and the
            # visibility map that index-only scans rely on.
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")
    total = RankingEntry.objects.filter(suite_name=suite, suite_version=version).count()
    print(f"database: {connection.vendor} {settings.DATABASES['default']['NAME']}")
    print(f"catalog: {total} ranked models on {suite} {version}; {args.repeat} timed requests each")

    client = Client(HTTP_HOST="localhost")
    full = client.get("/api/v1/leaderboard")
    assert full.status_code == 200, full.status_code
    etag = full["ETag"]
    rows = len(full.json()["rows"])

    def expect(status: int, path: str, **headers: str) -> Callable[[], None]:
        def request() -> None:
            response = client.get(path, **headers)
            assert response.status_code == status, (path, response.status_code)

        return request

    def bare_read() -> None:
        list(
            RankingEntry.objects.filter(suite_name=suite, suite_version=version).values_list(
                "id", "row_json"
            )
        )

    def cold() -> None:
        caches["default"].clear()
        forget_local_copies()
        expect(200, "/api/v1/leaderboard")()

    packed = client.get("/api/v1/leaderboard", HTTP_ACCEPT_ENCODING="gzip")
    print(
        f"full JSON: {len(full.content) / 1e6:.1f} MB, gzip {len(packed.content) / 1e6:.2f} MB "
        f"(cache: {settings.CACHES['default']['BACKEND'].rsplit('.', 1)[-1]})"
    )

    cases = [
        ("baseline", f"baseline: ORM read of {total} rows' JSON", bare_read),
        ("page", "ranking page / (first page, default filters)", expect(200, "/")),
        ("json", f"GET /api/v1/leaderboard ({rows} rows)", expect(200, "/api/v1/leaderboard")),
        (
            "json-gzip",
            "GET /api/v1/leaderboard, Accept-Encoding: gzip",
            expect(200, "/api/v1/leaderboard", HTTP_ACCEPT_ENCODING="gzip"),
        ),
        ("json-cold", "GET /api/v1/leaderboard, cache emptied first", cold),
        (
            "304",
            "GET /api/v1/leaderboard, If-None-Match hits",
            expect(304, "/api/v1/leaderboard", HTTP_IF_NONE_MATCH=etag),
        ),
    ]
    results = {}
    for key, _label, request in cases:
        for _ in range(3):
            request()
        samples = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            request()
            samples.append((time.perf_counter() - started) * 1000)
        results[key] = (statistics.median(samples), _p95(samples))

    base50, base95 = results["baseline"]
    print()
    print(
        f"{'request':<48} {'p50 ms':>8} {'p95 ms':>8} {'target':>8} {'p50/base':>9} {'p95/base':>9}"
    )
    failures = 0
    for key, label, _request in cases:
        p50, p95 = results[key]
        target = TARGETS_MS.get(key)
        ratio = TARGET_RATIOS.get(key)
        verdict = ""
        if target is not None or ratio is not None:
            met = (target is None or p95 < target) and (ratio is None or p95 <= ratio * base95)
            verdict = "ok" if met else "MISSED"
            failures += verdict == "MISSED"
        target_text = f"<{target:.0f}" if target is not None else "-"
        if ratio is not None:
            target_text += f",{ratio:g}x"
        print(
            f"{label:<48} {p50:8.1f} {p95:8.1f} {target_text:>8} {p50 / base50:9.1f} "
            f"{p95 / base95:9.1f}  {verdict}"
        )
    return 1 if failures else 0


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


if __name__ == "__main__":
    raise SystemExit(main())
