"""Counts in messages, written as a reader says them: ``1 label map``, ``2 label maps``."""

from __future__ import annotations


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is 1: ``plural(1, "image")`` is
    ``1 image``, ``plural(0, "image")`` is ``0 images``. ``many`` is the plural where adding an
    ``s`` is wrong: ``plural(2, "class", "classes")``."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"
