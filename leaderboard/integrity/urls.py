from django.urls import path

from leaderboard.integrity import views

app_name = "integrity"

urlpatterns = [
    path("queue/", views.queue, name="queue"),
]
