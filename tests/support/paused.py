"""Run `ingest` or `register` in a child process that stops itself (SIGSTOP) at a known point.

Tests then kill it, read while it holds its transaction, or let it go on, at that point, instead
of after a guessed delay:

    python -m tests.support.paused ingest MANIFESTS CATALOG PHASE [DONE]
        stops when ingest reports PHASE with at least DONE rows done (phases: sweepcat.catalog.ingest.PHASES)
    python -m tests.support.paused register MANIFESTS URL API_KEY BATCHES
        stops after BATCHES batches of 8 Hamiltonians went in

``stopped(proc)`` waits for the stop (an event from the kernel, not a timer).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def _stop_once() -> None:
    os.kill(os.getpid(), signal.SIGSTOP)


def main(argv: list[str]) -> None:
    from sweepcat.contract import read_manifests

    kind = argv[0]
    if kind == "ingest":
        from sweepcat.catalog.ingest import ingest

        manifests, catalog, phase = argv[1:4]
        at = int(argv[4]) if len(argv) > 4 else 0
        state = {"stopped": False}

        def progress(name: str, done: int, total: int) -> None:
            if not state["stopped"] and name == phase and done >= at:
                state["stopped"] = True
                _stop_once()

        ingest(read_manifests(manifests), catalog, progress=progress, batch_rows=1000)
    elif kind == "register":
        from sweepcat.client.register import register

        manifests, url, key, batches = argv[1], argv[2], argv[3], int(argv[4])
        count = {"n": 0}

        def advanced(hams: int, nodes: int) -> None:
            count["n"] += 1
            if count["n"] == batches:
                _stop_once()

        register(read_manifests(manifests), url, key, batch_size=8, progress=advanced)
    else:
        raise SystemExit(f"unknown kind {kind!r}")


def start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.support.paused", *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2])


def stopped(proc: subprocess.Popen, log: Path) -> None:
    """Block until the child has stopped itself; fail (with its output) if it ended instead."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        proc.returncode = os.waitstatus_to_exitcode(status)
        raise AssertionError(f"the child ended ({proc.returncode}) before the point to stop at:\n{log.read_text()}")


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def resume(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGCONT)


if __name__ == "__main__":
    main(sys.argv[1:])
