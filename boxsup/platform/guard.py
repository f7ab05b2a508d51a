"""A watchdog beside the driver: when the driver dies without cleaning up (``kill -9``, the OOM
killer), it kills every process the driver started and marks the MLflow runs it left open KILLED.

The driver starts it once (``driver_guard()``); it runs in its own session, so a signal to the
driver's process group does not reach it. Every half second it records the driver's descendants
(a local Ray: GCS, raylet, agents, Train workers, assignment actors, loader workers). When the
driver is gone, it SIGKILLs what it recorded that still runs, and their children, then ends.
Without it, a killed driver leaves Ray's workers training on, writing later label rounds and
checkpoints, and Ray's agents alive. Runs the driver opens are listed in a small JSON state file
(atomically rewritten); the guard reads it only after the driver died.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from boxsup.utils.files import write_text_atomic

if TYPE_CHECKING:
    import psutil  # at run time only the guard process (watch) imports it

POLL_SECONDS = 0.5
KILLED_TAG = "driver process died (killed?) while the run was open; continue it with `boxsup train --resume`"


class DriverGuard:
    """The driver's handle: the watchdog process and the list of open runs it would close."""

    def __init__(self) -> None:
        self.state_file = Path(tempfile.gettempdir()) / f"boxsup-guard-{os.getpid()}-{time.time_ns()}.json"
        self.runs: dict[str, str] = {}
        self._write()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "boxsup.platform.guard", str(os.getpid()), str(self.state_file)],
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def _write(self) -> None:
        write_text_atomic(self.state_file, json.dumps({"runs": self.runs}))

    def open_run(self, tracking_uri: str, run_id: str) -> None:
        self.runs[run_id] = tracking_uri
        self._write()

    def close_run(self, run_id: str) -> None:
        self.runs.pop(run_id, None)
        self._write()


_guard: DriverGuard | None = None


def driver_guard() -> DriverGuard:
    """This process's guard, started on first use."""
    global _guard
    if _guard is None or _guard.process.poll() is not None:
        _guard = DriverGuard()
    return _guard


def _kill_recorded(recorded: dict[int, psutil.Process]) -> None:
    import psutil

    alive = []
    for process in recorded.values():
        try:
            if process.is_running():  # same pid and start time: never a stranger that reused the pid
                alive += [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
    for process in alive:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


def _close_runs(state_file: Path) -> None:
    try:
        runs = json.loads(state_file.read_text())["runs"]
    except (OSError, ValueError, KeyError):
        return
    if not runs:
        return
    from mlflow.tracking import MlflowClient

    for run_id, uri in runs.items():
        try:
            client = MlflowClient(uri)
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_tag(run_id, "boxsup.error", KILLED_TAG)
                client.set_terminated(run_id, "KILLED")
        except Exception:  # the tracking store may be gone too; nothing else to do
            pass


def watch(driver_pid: int, state_file: Path) -> None:
    """Record the driver's descendants until it dies; then kill them and close its open runs."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    recorded: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    recorded.setdefault(child.pid, child)
        except psutil.Error:
            pass
        time.sleep(POLL_SECONDS)
    _kill_recorded(recorded)
    _close_runs(state_file)
    state_file.unlink(missing_ok=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
