"""Root URL map: each app owns its pages; the API lives under /api/v1/."""

from django.contrib import admin
from django.urls import include, path

from leaderboard.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("accounts/", include("leaderboard.accounts.urls")),
    path("submissions/", include("leaderboard.submissions.urls")),
    path("runs/", include("leaderboard.evaluations.urls")),
    path("integrity/", include("leaderboard.integrity.urls")),
    path("", include("leaderboard.public.urls")),
]
