"""Progress for client reads that take over a second: a bar appears only once a read has run that long.

Shown with rich (Tiled's own dependency, so always installed); thread-safe, since Mode B pages arrive
on several threads. ``progress=False`` on a read turns it off.
"""

from __future__ import annotations

import threading
import time
from typing import Any

SHOW_AFTER_S = 1.0


class ReadProgress:
    """A callable counting rows read; draws a bar after ``SHOW_AFTER_S`` seconds, removes it at the end."""

    def __init__(self, total: int, what: str, show_after: float = SHOW_AFTER_S):
        self.total = total
        self.what = what
        self.done = 0
        self.show_after = show_after
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, rows: int) -> None:
        with self._lock:
            self.done += rows
            if self._bar is None and time.monotonic() - self._start >= self.show_after and self.done < self.total:
                from rich.progress import BarColumn, Progress, TimeRemainingColumn

                self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                     "{task.completed:,}/{task.total:,} rows", TimeRemainingColumn(),
                                     transient=True)
                self._bar.start()
                self._task = self._bar.add_task(self.what, total=self.total)
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None

    def __enter__(self) -> "ReadProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
