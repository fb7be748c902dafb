from django.urls import path

from leaderboard.evaluations.views import submission_detail
from leaderboard.submissions import views

app_name = "submissions"

urlpatterns = [
    path("new/", views.new, name="new"),
    path("mine/", views.mine, name="mine"),
    # The submission page is mostly its evaluation runs' state: the evaluations app renders it.
    path("<int:pk>/", submission_detail, name="detail"),
]
