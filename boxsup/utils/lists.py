"""Small helpers for lists of names (class lists, split lists) and the user's text files that hold them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from boxsup.errors import BoxSupError


def first_duplicate(names: Iterable[str]) -> str | None:
    """The first name that occurs a second time, or None when all are distinct."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def read_user_text(path: Path, what: str = "text file") -> str:
    """A user's text file as UTF-8, with or without the byte-order mark that Windows editors write first."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BoxSupError(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None


def list_ids(path: Path, what: str = "split list") -> list[str]:
    """The image ids of a list file, one per line (blank lines skipped), in file order.

    DeepLab's ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` lines give the first path's
    stem. Any other line of more than one word is refused with its line number: an id holds no
    space, and reading its first word would name another image.
    """
    ids = []
    for number, line in enumerate(read_user_text(path, what).splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        first = words[0]
        if "/" in first or first.endswith(".jpg"):
            ids.append(Path(first).stem)
        elif len(words) > 1:
            raise BoxSupError(f"{path}:{number}: {line.strip()!r} is not one image id (an id holds no spaces)")
        else:
            ids.append(first)
    return ids


def shown(name: str) -> str:
    """``name`` as it reads in a message: repr-escaped when it holds an invisible character
    (a byte-order mark, a zero-width or non-breaking space, a control character), else as it is."""
    return name if name.isprintable() else repr(name)


def names_text(names: Iterable[str]) -> str:
    """Names joined for a message (``a, b, c``), each ``shown`` so that invisible characters are seen."""
    return ", ".join(shown(name) for name in names)
