"""`manage.py demo_family`: the contamination bench's family registered in the demo and queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from evaluator.family import Sizes
from leaderboard.demo.family import register_family
from leaderboard.demo.showcase import DemoError
from leaderboard.problems import Refusal


class Command(BaseCommand):
    help = (
        "Build the contamination bench's tiny family (a base, clean and contaminated children, "
        "merges; evaluator.family) into --work, write each member with its card into "
        "TRELLIS_MODEL_ROOT and submit it as demo-maintainer. Safe to run again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        default = Sizes()
        parser.add_argument("--work", type=Path, default=None, help="where the models are built")
        parser.add_argument("--pretrain-steps", type=int, default=default.pretrain_steps)
        parser.add_argument("--unrelated", type=int, default=default.unrelated)
        parser.add_argument("--items", type=int, default=default.items)

    def handle(self, *args: Any, **options: Any) -> None:
        sizes = Sizes(
            items=options["items"],
            unrelated=options["unrelated"],
            pretrain_steps=options["pretrain_steps"],
        )
        try:
            outcome = register_family(work=options["work"], sizes=sizes)
        except (DemoError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        except Refusal as refused:
            raise CommandError(f"a family member was refused:\n{refused.as_text()}") from refused
        for username in outcome.created_users:
            self.stdout.write(f"created user {username}")
        for member in outcome.members:
            verb = "submitted" if member.submitted_now else "already submitted"
            self.stdout.write(
                f"{verb}: {member.repo_id} ({member.spec.kind}, {member.submission.state})"
            )
