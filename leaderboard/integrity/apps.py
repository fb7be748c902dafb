from django.apps import AppConfig


class IntegrityConfig(AppConfig):
    name = "leaderboard.integrity"
    label = "integrity"
