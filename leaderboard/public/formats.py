"""Number formats of the public pages (sizes as 1.2B/135M, scores with two decimals), used
by the templates' filters (templatetags/public_tags.py) and the rows written in Python
(table.py)."""

from __future__ import annotations


def params(count: int | None) -> str:
    if count is None:
        return "—"
    for bound, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= bound:
            value = count / bound
            return f"{value:.1f}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return str(count)


def score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"
