"""`manage.py seed_synthetic --models N [--purge]`: a synthetic catalog (plausible lineage,
licenses, sizes, scores on every shipped suite) for benchmarks and UI exploration. Every row is
marked synthetic; `--purge` alone removes them all, with `--models` it replaces them."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from leaderboard.accounts.roles import is_maintainer
from leaderboard.demo import synthetic


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--models", type=int, help="how many models to create")
        parser.add_argument("--purge", action="store_true", help="remove every synthetic row")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument(
            "--flags",
            type=int,
            default=None,
            help="contamination reports to file on synthetic models (default: 1 per 1,000)",
        )
        parser.add_argument(
            "--confirm-as",
            metavar="USERNAME",
            help="a maintainer who confirms those reports (their descendants become tainted); "
            "without it they stay open (under review)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count, purge = options["models"], options["purge"]
        if count is None and not purge:
            raise CommandError("Give --models N to seed, --purge to remove, or both to replace.")
        actor = None
        if options["confirm_as"]:
            actor = get_user_model().objects.filter(username=options["confirm_as"]).first()
            if actor is None or not is_maintainer(actor):
                raise CommandError(
                    f"--confirm-as {options['confirm_as']!r} is not a maintainer's username."
                )
        if purge:
            purged = synthetic.purge()
            self.stdout.write(
                f"Purged {purged.repositories} repositories, {purged.submissions} submissions "
                f"and {purged.runs} runs in {purged.seconds:.1f} s."
            )
        if count is None:
            return
        try:
            seeded = synthetic.seed(count, rng_seed=options["seed"])
        except synthetic.SyntheticError as refused:
            raise CommandError(str(refused)) from None
        self.stdout.write(
            f"Seeded {seeded.models} models, {seeded.datasets} datasets, {seeded.edges} "
            f"lineage edges, {seeded.runs} runs, {seeded.scores} scores; {seeded.ranked} "
            f"ranking rows in {seeded.seconds:.1f} s."
        )
        flags = options["flags"] if options["flags"] is not None else count // 1000
        if flags:
            filed = synthetic.flag_some(flags, actor, rng_seed=options["seed"])
            state = "confirmed" if actor else "open"
            self.stdout.write(f"Filed {filed} contamination reports ({state}).")
