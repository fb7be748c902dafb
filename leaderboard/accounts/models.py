"""Accounts: API tokens and the maintainer role's permissions."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.db import models

MAINTAINERS_GROUP = "maintainers"
TOKEN_PREFIX = "trl_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class Role(models.Model):
    """Holds the role permissions; no table, only Permission rows hang on it."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("moderate", "Can confirm, dismiss and lift flags and see the moderation queue"),
            ("requeue_any_run", "Can re-queue any failed evaluation run"),
        ]


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A bearer token; only its sha256 is stored, the raw value is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, default="default")
    key_hash = models.CharField(max_length=64, unique=True)
    key_prefix = models.CharField(max_length=12)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "default") -> tuple[ApiToken, str]:
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, key_hash=hash_token(raw), key_prefix=raw[:10]
        )
        return token, raw
