"""A maintainer's decision on a moderation item (a report or a signal): which decisions exist is
the item's business; that a decision comes with a note the public audit log can show is one rule
for both."""

from __future__ import annotations

from collections.abc import Iterable

from leaderboard.problems import Problem, Refusal

NOTE_MAX = 5_000


def checked_decision(decision: str, note: str, allowed: Iterable[str]) -> tuple[str, str]:
    """A maintainer's decision and note, stripped; Refusal naming every problem with them. A
    report's and a signal's decisions follow the same rule: a known decision, a note that the
    public audit log can show."""
    decision = (decision or "").strip()
    note = (note or "").strip()
    allowed = list(allowed)
    problems = []
    if decision not in allowed:
        problems.append(
            Problem(
                "invalid_decision",
                "decision",
                f"decision {decision!r} is not one of: {', '.join(allowed)}.",
            )
        )
    if not note:
        problems.append(
            Problem(
                "missing_note",
                "note",
                "Write a note explaining the decision; it is shown in the public audit log.",
            )
        )
    elif len(note) > NOTE_MAX:
        problems.append(
            Problem("note_too_long", "note", f"Keep the note under {NOTE_MAX} characters.")
        )
    if problems:
        raise Refusal(problems)
    return decision, note
