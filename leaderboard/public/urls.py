from django.urls import path

from leaderboard.public import views

app_name = "public"

urlpatterns = [
    path("", views.ranking, name="ranking"),
    path("plots/", views.plots, name="plots"),
    path("compare/", views.compare, name="compare"),
]
