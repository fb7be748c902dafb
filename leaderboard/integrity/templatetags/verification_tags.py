"""The verified badge (integrity/verification.py) on pages that show one model."""

from __future__ import annotations

from django import template
from django.utils.html import format_html

from leaderboard.integrity.verification import is_verified

register = template.Library()


@register.simple_tag
def verified_badge(repo_id_or_org: str) -> str:
    """The badge when the organisation of `repo_id_or_org` ("org/name" or "org") is verified."""
    org = (repo_id_or_org or "").split("/", 1)[0]
    if not org or not is_verified(org):
        return ""
    return format_html(
        '<span class="badge verified" title="{} is verified as the official provider of its '
        'models">verified</span>',
        org,
    )
