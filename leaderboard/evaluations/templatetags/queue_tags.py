"""Template tags of the evaluation queue: the ranking's pointer to /queue/ while runs wait."""

from __future__ import annotations

from django import template
from django.urls import reverse
from django.utils.html import format_html

from leaderboard.evaluations.queue import pending_count

register = template.Library()


@register.simple_tag
def queue_pointer() -> str:
    """A line linking the queue while evaluations are queued or running; '' otherwise."""
    pending = pending_count()
    if not pending:
        return ""
    noun = "evaluation" if pending == 1 else "evaluations"
    return format_html(
        '<p class="queue-pointer"><a href="{}">{} {} pending</a>: new scores appear here as '
        "they finish.</p>",
        reverse("queue"),
        pending,
        noun,
    )
