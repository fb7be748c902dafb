"""Submission pages: the form, the submitter's list, and a submission's page."""

from django.urls import path

from leaderboard.submissions import views

app_name = "submissions"

urlpatterns = [
    path("new/", views.new, name="new"),
    path("mine/", views.mine, name="mine"),
    path("<int:pk>/", views.detail, name="detail"),
]
