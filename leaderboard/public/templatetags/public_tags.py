"""Template filters of the public pages: number formats (public/formats.py), message links."""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from leaderboard.public import table
from leaderboard.public.formats import params, score, signed

register = template.Library()
register.filter("params", params)
register.filter("score", score)
register.filter("signed", signed)


@register.simple_tag
def row_badges(row: object) -> SafeString:
    """A ranking row's badges, written once in `public.table` (which escapes what it writes)."""
    return mark_safe(table.row_badges(row))


# Trellis pages a message may name (a duplicate submission's page, a model's page).
_PAGE_PATH = re.compile(r"(?<![\w/])(/(?:submissions/\d+|models/[\w.-]+/[\w.-]+)/)")


@register.filter
def link_pages(text: str) -> SafeString:
    """Escape a message and make the Trellis page paths it names links."""
    return mark_safe(_PAGE_PATH.sub(r'<a href="\1">\1</a>', str(escape(text))))
