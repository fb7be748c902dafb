"""Per-minute rate limits on the routes that create things (submissions, reports, API tokens,
log-ins), counted in the shared cache so they hold across web processes and hosts.

They sit on top of the rules that keep a week or a day in view (the weekly submission limit in
leaderboard.submissions, the daily report limit in leaderboard.integrity): those count rows in the
database; these only blunt bursts."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

WINDOW = 60  # seconds


@dataclass(frozen=True)
class Rule:
    scope: str
    setting: str  # the per-minute limit's setting; 0 turns the limit off
    paths: re.Pattern[str]
    what: str  # plural noun for the message

    @property
    def limit(self) -> int:
        return int(getattr(settings, self.setting))


RULES = (
    Rule(
        "submissions",
        "TRELLIS_THROTTLE_SUBMISSIONS",
        re.compile(r"^/(submissions/new/|api/v1/submissions/?)$"),
        "submissions",
    ),
    Rule(
        "reports",
        "TRELLIS_THROTTLE_REPORTS",
        re.compile(r"^/(integrity/report/|api/v1/flags/?)$"),
        "reports",
    ),
    Rule("tokens", "TRELLIS_THROTTLE_TOKENS", re.compile(r"^/accounts/profile/tokens/$"), "tokens"),
    Rule("logins", "TRELLIS_THROTTLE_LOGINS", re.compile(r"^/accounts/login/$"), "log-in attempts"),
)


def rule_for(method: str, path: str) -> Rule | None:
    if method != "POST":
        return None
    return next((rule for rule in RULES if rule.paths.match(path)), None)


@dataclass(frozen=True)
class Throttled:
    rule: Rule
    retry_after: int

    @property
    def message(self) -> str:
        return (
            f"Too many {self.rule.what}: at most {self.rule.limit} a minute "
            f"({self.rule.setting}). Try again in {self.retry_after} seconds."
        )


def take(rule: Rule, who: str, now: float | None = None) -> Throttled | None:
    """Count one request of `who` against `rule`; a Throttled when it is over the limit.

    A fixed one-minute window per key: one atomic increment in the cache per request. When the
    cache is unreachable the request goes through (and is logged): an outage of the cache must
    not close the site, and the weekly and daily limits still hold in the database."""
    limit = rule.limit
    if limit <= 0:
        return None
    now = time.time() if now is None else now
    window = int(now // WINDOW)
    key = f"throttle:{rule.scope}:{who}:{window}"
    try:
        cache.add(key, 0, timeout=WINDOW * 2)
        count = cache.incr(key)
    except Exception:
        logger.warning("rate limit %s: the cache is unreachable; letting it through", rule.scope)
        return None
    if count <= limit:
        return None
    return Throttled(rule, retry_after=max(1, int((window + 1) * WINDOW - now + 0.999)))
