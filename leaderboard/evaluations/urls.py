"""Evaluation routes under /runs/: the submission page's live fragment, re-queue, artifacts,
reproduction bundles, votes and boosts (the queue page itself is /queue/, leaderboard/urls.py)."""

from django.urls import path

from leaderboard.evaluations import views

app_name = "evaluations"

urlpatterns = [
    path("submission/<int:pk>/live/", views.submission_live, name="submission_live"),
    path("<int:pk>/requeue/", views.requeue, name="requeue"),
    path("<int:pk>/artifact/", views.artifact, name="artifact"),
    path("<int:pk>/boost/", views.boost, name="boost"),
    path("<int:pk>/bundle/", views.bundle, name="bundle"),
    path("vote/<int:submission_id>/", views.vote, name="vote"),
]
