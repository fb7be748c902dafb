"""The copies public pages keep in each process (bodies, plotted rows, stored suite versions):
one registry of their resets, so whatever must start clean (a test with its own database) clears
every one, including the next one added."""

from __future__ import annotations

from collections.abc import Callable

_RESETS: list[Callable[[], None]] = []


def kept_per_process(reset: Callable[[], None]) -> Callable[[], None]:
    """Register `reset` (as a decorator) as the way to drop one of this process's copies."""
    _RESETS.append(reset)
    return reset


def forget_process_copies() -> None:
    """Drop every copy this process keeps (the shared cache is untouched)."""
    for reset in _RESETS:
        reset()
