"""Progress bars: the one place that decides whether boxsup draws them.

A bar is drawn only on a terminal: with stderr redirected to a file or a pipe (a log, CI, ``nohup``)
its ``\\r`` frames would fill the log, so none is drawn there. ``boxsup -q`` turns them off
everywhere. A caller still says whether it wants a bar at all (``progress=False``: a Ray worker, a
test); :func:`progress_bar` draws one only when both agree.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm

_allowed = True  # False after `boxsup -q`


def allow_progress(allowed: bool) -> None:
    """Let bars be drawn (on a terminal) or not at all (``boxsup -q``), for the rest of the process."""
    global _allowed
    _allowed = allowed


def show_progress(stream: TextIO | None = None) -> bool:
    """Whether a progress bar on ``stream`` (default: stderr, where tqdm writes) is drawn: it is a
    terminal, and bars were not turned off with ``boxsup -q``."""
    stream = sys.stderr if stream is None else stream
    try:
        return _allowed and stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, drawn only when the caller wants it (``enabled``) and
    :func:`show_progress` allows it; a bar not drawn still iterates, counts and closes as one."""
    return tqdm(iterable, disable=not (enabled and show_progress(kwargs.get("file"))), **kwargs)
