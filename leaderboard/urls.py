"""Root URL map: each app owns its pages; the API lives under /api/v1/."""

from django.contrib import admin
from django.urls import include, path

from leaderboard.api import api
from leaderboard.evaluations import views as evaluation_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("accounts/", include("leaderboard.accounts.urls")),
    path("submissions/", include("leaderboard.submissions.urls")),
    path("runs/", include("leaderboard.evaluations.urls")),
    path("queue/", evaluation_views.queue_page, name="queue"),
    path("integrity/", include("leaderboard.integrity.urls")),
    path("", include("leaderboard.public.urls")),
]

# /healthz and /metrics are answered by leaderboard.operations.middleware, ahead of the host check.
# A database outage is a 503 page, not a 500 (leaderboard.operations.views).
handler500 = "leaderboard.operations.views.server_error"
# A form posted over DATA_UPLOAD_MAX_MEMORY_SIZE gets a page saying so (413), not a bare 400.
handler400 = "leaderboard.public.views.bad_request"
