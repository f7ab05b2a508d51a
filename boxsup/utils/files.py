"""Atomic file writes (a reader never sees a half-written file, a crash never leaves one), and
output locations checked before the work that fills them."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from boxsup.errors import BoxSupError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's own is 0600


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    ``suffix`` keeps libraries that choose a format by extension (PIL, numpy) happy.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix or target.suffix)
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Refuse in one line (``what``, e.g. ``--out``, then the path) a directory that cannot be made or
    written: its nearest existing ancestor (or itself) must be a writable directory. Nothing is created."""
    target = Path(path).absolute()
    problem = _write_problem(target, [target, *target.parents])
    if problem is not None:
        raise BoxSupError(f"{what} {path}: {problem}")


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Refuse in one line a file that cannot be written: a directory in its place, or a folder for it
    that cannot be made or written. Nothing is created."""
    target = Path(path).absolute()
    problem = "is a directory; give a file name" if target.is_dir() else _write_problem(target, list(target.parents))
    if problem is not None:
        raise BoxSupError(f"{what} {path}: {problem}")


def _write_problem(target: Path, candidates: list[Path]) -> str | None:
    """What stops writing at ``target``, judged at the first of ``candidates`` that exists; None if nothing."""
    existing = next(p for p in candidates if p.exists())
    if not existing.is_dir():
        return "is a file, not a directory" if existing == target else f"lies under the file {existing}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write into {existing} (permission denied)"
    return None
