"""Re-derive every node's lineage status from scratch (after a restore, a manual data fix, or
to check that the incremental recomputes kept up: `--check` changes nothing and fails on drift)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from leaderboard.integrity import graph
from leaderboard.integrity.derived import recompute_all
from leaderboard.integrity.status import derive


class Command(BaseCommand):
    help = "Recompute the derived lineage status (flagged, tainted, ...) of every repository."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="only report how many stored statuses differ; exit 1 if any do",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["check"]:
            with transaction.atomic():
                sub = graph.load_subgraph(None, with_stored=True)
            derived = derive(sub.nodes, sub.parents)
            drift = sorted(
                node_id
                for node_id, (status, path) in derived.items()
                if (status, path) != (sub.stored[node_id].status, sub.stored[node_id].path)
            )
            if drift:
                raise CommandError(
                    f"{len(drift)} of {len(derived)} stored statuses differ from a full "
                    f"recompute (first ids: {drift[:10]}); run without --check to fix them."
                )
            self.stdout.write(f"All {len(derived)} stored statuses match a full recompute.")
            return
        result = recompute_all()
        self.stdout.write(
            f"Recomputed {result.computed} repositories in {result.seconds:.3f} s; "
            f"{result.written} stored statuses changed."
        )
