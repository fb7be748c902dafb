"""`manage.py refresh_ranking`: rebuild the ranking's read table from every finished run (after a
restore, a bulk import, or to recover from a missed refresh)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand

from leaderboard.public.projection import rebuild_all_entries


class Command(BaseCommand):
    help = __doc__

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        written = rebuild_all_entries()
        self.stdout.write(f"{written} ranking rows in {time.perf_counter() - started:.1f} s.")
