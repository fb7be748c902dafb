"""Print a new API token for a user (the only time the raw value is shown)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from leaderboard.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print it."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(
                f"No user named {username!r}; create it first (e.g. createsuperuser)."
            )
        _, raw = ApiToken.issue(user, name=name)
        self.stdout.write(raw)
