from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Demo and synthetic-catalog builders (`demo_setup`, `seed_synthetic`): no models of its
    own, above every product app (see docs/architecture.md)."""

    name = "leaderboard.demo"
    label = "demo"
