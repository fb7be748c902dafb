"""Number formats of the public pages: sizes as 1.2B/135M, scores with two decimals."""

from __future__ import annotations

import re

from django import template
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()


@register.filter
def params(count: int | None) -> str:
    if count is None:
        return "—"
    for bound, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= bound:
            value = count / bound
            return f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return str(count)


@register.filter
def score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


@register.filter
def signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


# Trellis pages a message may name (a duplicate submission's page, a model's page).
_PAGE_PATH = re.compile(r"(?<![\w/])(/(?:submissions/\d+|models/[\w.-]+/[\w.-]+)/)")


@register.filter
def link_pages(text: str) -> SafeString:
    """Escape a message and make the Trellis page paths it names links."""
    return mark_safe(_PAGE_PATH.sub(r'<a href="\1">\1</a>', str(escape(text))))
