"""Files written whole or not at all: a temporary name beside the target, renamed into place.

A reader of the old file (a running server holding it open) keeps reading the old one; a writer
killed halfway leaves the old file as it was and no debris. The new file gets the mode any new file
would get (0666 less the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import SweepcatError


def umask_mode() -> int:
    """0666 less the process umask (read without changing it, so no other thread sees a 0 umask)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except FileNotFoundError:
        raise SweepcatError(f"{target.parent}: no such directory", "create it first, or pick another output") from None
    except OSError as exc:
        raise SweepcatError(f"cannot write in {target.parent}: {exc.strerror}",
                            "pick a directory you may write to") from None
    os.close(fd)
    try:
        os.chmod(tmp, umask_mode())
        yield Path(tmp)
        os.replace(tmp, target)
    except IsADirectoryError:
        Path(tmp).unlink(missing_ok=True)
        raise SweepcatError(f"{target} is a directory", "pass a file name, or another directory") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_directory(path: str | os.PathLike) -> Path:
    """An output directory, created when missing; a file or an unwritable place is a clear error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SweepcatError(f"{out} is a file, not a directory", "pass a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepcatError(f"cannot create directory {out}: {exc.strerror}",
                            "pass a directory you may write to") from None
    if not os.access(out, os.W_OK):
        raise SweepcatError(f"cannot write in {out}: permission denied", "pass a directory you may write to")
    return out
