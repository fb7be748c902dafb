"""Public pages: the ranking at /, model pages, compare, plots and the CSV export."""

from django.templatetags.static import static
from django.urls import path
from django.views.generic import RedirectView

from leaderboard.public import views

app_name = "public"

urlpatterns = [
    path("", views.ranking_page, name="ranking"),
    path("export.csv", views.export_csv, name="export_csv"),
    path("models/<str:org>/<str:name>/", views.model_page, name="model"),
    path("compare/", views.compare_page, name="compare"),
    path("compare/search", views.compare_search, name="compare_search"),
    path("plots/", views.plots_page, name="plots"),
    # Browsers and feed readers ask for /favicon.ico whatever the page names.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
]
