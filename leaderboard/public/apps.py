from django.apps import AppConfig


class PublicConfig(AppConfig):
    name = "leaderboard.public"
    label = "public"
