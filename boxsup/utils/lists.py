"""Small helpers for lists of names (class lists, split lists)."""

from __future__ import annotations

from collections.abc import Iterable


def first_duplicate(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, or None when all are distinct."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None
