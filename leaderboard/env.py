"""The settings' environment-variable helpers: evaluator/config.py's strict ones (the GPU worker
reads its environment with the same rules), raising Django's ImproperlyConfigured; and the
web-only ones."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.core.exceptions import ImproperlyConfigured

from evaluator import config

P = ParamSpec("P")
T = TypeVar("T")


def _for_django(helper: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(helper)
    def read(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return helper(*args, **kwargs)
        except config.ConfigError as exc:
            raise ImproperlyConfigured(str(exc)) from None

    return read


env_str = _for_django(config.env_str)
env_bool = _for_django(config.env_bool)
env_int = _for_django(config.env_int)
env_float = _for_django(config.env_float)
env_list = _for_django(config.env_list)
env_choice = _for_django(config.env_choice)
env_path = _for_django(config.env_path)
env_bucket = _for_django(config.env_bucket)
broker_transport_options = _for_django(config.broker_transport_options)


def env_cache(name: str, default: str = "locmem://") -> dict[str, object]:
    """A Django cache from a URL: `redis://…` / `rediss://…` (shared by every web process and
    host) or `locmem://` (this process only: the embedded default)."""
    url = os.environ.get(name) or default
    if url.startswith(("redis://", "rediss://", "unix://")):
        # Short socket timeouts: a cache outage must cost a request milliseconds, not minutes.
        options = {"socket_connect_timeout": 2, "socket_timeout": 2}
        return {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": "trellis",
            "OPTIONS": options,
        }
    if url == "locmem://":
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "trellis"}
    raise ImproperlyConfigured(f"{name}={url!r}: use redis://host:6379/N, rediss://… or locmem://")
