"""Integrity pages: the report form, the moderation queue and its actions, the lineage graph."""

from django.urls import path

from leaderboard.integrity import views

app_name = "integrity"

urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("reports/<int:pk>/resolve/", views.resolve_report, name="resolve"),
    path("report/", views.report, name="report"),
    path("lineage/<path:repo_id>/", views.lineage, name="lineage"),
]
