"""Integrity pages: the report form, the moderation queue and its actions, the lineage graph."""

from django.urls import path

from leaderboard.integrity import views

app_name = "integrity"

urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("reports/<int:pk>/resolve/", views.resolve_report, name="resolve"),
    path("signals/<int:pk>/decide/", views.decide_signal, name="decide-signal"),
    path("report/", views.report, name="report"),
    path("lineage/<path:repo_id>/", views.lineage, name="lineage"),
    path("log/", views.moderation_log, name="log"),
    path("log.json", views.moderation_log_json, name="log-json"),
    path("log.atom", views.moderation_log_atom, name="log-atom"),
    path("blocklist/", views.block_list, name="blocklist"),
    path("blocklist.json", views.block_list_json, name="blocklist-json"),
    path("verified/", views.verified_organisations, name="verified"),
]
