"""WSGI entry point for gunicorn."""

import os

from django.core.cache import caches
from django.core.wsgi import get_wsgi_application
from django.template.loader import get_template
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderboard.settings")
application = get_wsgi_application()
# Every view imported, the cache backend's client library loaded and the public pages'
# templates compiled now, not on the first request: that is ~2 s of CPU the first visitor of
# each gunicorn worker would wait for. With gunicorn's preload_app (deploy/gunicorn.conf.py) it
# happens once, in the master, and every worker (a recycled one too) is forked with it done.
# Nothing here connects to the database or the cache.
get_resolver().url_patterns  # noqa: B018
caches["default"]
for page in ("ranking", "plots", "model"):
    get_template(f"public/{page}.html")
    get_template(f"public/_{page}.html")
