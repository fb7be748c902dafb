"""`manage.py export_leaderboard --format json|csv --out FILE`: a full dump of one suite version's
ranking, flagged and tainted rows included, in the API's row format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.http import QueryDict

from leaderboard.problems import Refusal
from leaderboard.public.export import export
from leaderboard.public.query import parse_ranking_query


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=("json", "csv"), required=True)
        parser.add_argument("--out", required=True, help="file to write ('-' for stdout)")
        parser.add_argument("--suite", help="suite name (default: TRELLIS_DEFAULT_SUITE)")
        parser.add_argument("--suite-version", help="suite version (default: the latest)")
        parser.add_argument(
            "--filters",
            default="",
            help="ranking filters as a query string, e.g. 'model_type=chat&hide_merges=1' "
            "(default: every row, flagged and tainted included)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        params = QueryDict(options["filters"] or "show_flagged=1&show_tainted=1", mutable=True)
        if options["suite"]:
            params["suite"] = options["suite"]
        if options["suite_version"]:
            params["version"] = options["suite_version"]
        try:
            query = parse_ranking_query(params, paginate=False)
        except Refusal as refused:
            raise CommandError(
                "; ".join(f"{p.field}: {p.message}" for p in refused.problems)
            ) from None
        text, result = export(query, options["format"])
        if options["out"] == "-":
            self.stdout.write(text, ending="")
            return
        out = Path(options["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        self.stderr.write(
            f"Wrote {len(result.rows)} rows of {query.suite} {query.version} to {out}."
        )
