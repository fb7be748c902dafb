"""Trellis web side: the Django project and the apps that own the data."""

from leaderboard.celery import app as celery_app

__all__ = ["celery_app"]
