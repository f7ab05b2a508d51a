"""Injected faults for the recovery tests: ``BOXSUP_FAULT=<kind>:<epoch>[,<kind>:<epoch>...]``.

Kinds: ``raise`` (rank 0 raises after epoch E's checkpoint), ``kill-worker`` (the last rank is
SIGKILLed after its first batch of epoch E), ``kill-actor`` (an assignment actor is SIGKILLed on
its second image of round E), ``kill-driver`` (rank 0 SIGKILLs the driver process after epoch E is
logged). A marker file ``.fault-<kind>-<E>`` in the run directory makes each fire once, so the
recovered run goes on. The driver reads the variable and hands it to workers and actors, which
may run in processes started before it was set.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from boxsup.errors import BoxSupError
from boxsup.utils.storage import open_location

KINDS = ("raise", "kill-worker", "kill-actor", "kill-driver")


@dataclass(frozen=True)
class Fault:
    planned: frozenset[tuple[str, int]]
    run_dir: str

    def fires(self, kind: str, epoch: int) -> bool:
        """True once for a planned (kind, epoch): the marker is written before the fault happens."""
        if (kind, epoch) not in self.planned:
            return False
        location, marker = open_location(self.run_dir), f".fault-{kind}-{epoch}"
        if location.exists(marker):
            return False
        location.write_bytes(marker, b"")
        return True


def fault_from_env(run_dir: str) -> Fault | None:
    """The faults ``BOXSUP_FAULT`` asks for, or None."""
    text = os.environ.get("BOXSUP_FAULT")
    if not text:
        return None
    planned = set()
    for item in text.split(","):
        kind, _, epoch = item.strip().partition(":")
        if kind not in KINDS or not epoch.isdigit():
            raise BoxSupError(f"BOXSUP_FAULT={text!r}: expected <kind>:<epoch>[,...] with kind one of {', '.join(KINDS)}")
        planned.add((kind, int(epoch)))
    return Fault(frozenset(planned), run_dir)


def kill(pid: int | None = None) -> None:
    """SIGKILL a process (this one by default): no cleanup, no atexit, as a crash or the OOM killer."""
    os.kill(pid or os.getpid(), signal.SIGKILL)
