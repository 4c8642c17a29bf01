"""The one rule for which files sweepcat opens, and the one way it opens HDF5 files and datasets.

A file may be opened when its real path (symlinks resolved, ``..`` removed)
lies inside one of the rule's roots and it is a regular file: never a FIFO,
device, socket or directory. The check is made with ``os.stat`` before any
open that could block, and the open itself is non-blocking and verified on
the descriptor (``/proc/self/fd``), so a file swapped between check and open
is refused too, not followed.

A dataset may be read when every link on its path is a hard link, a soft
link, or an external link whose target file passes the file rule (sweepcat
follows external links itself; HDF5 never does), and its raw data lies in its
own file. HDF5 external raw storage and virtual datasets are refused: HDF5
opens their files itself, by path, at read time, where no check can follow.

Roots are resolved once, when configured or recorded, never at each read: a
root directory later swapped for a symlink does not carry readable storage
along.

Every reader uses this module: the server (through ``server/policy.py``),
``inspect``, ``manifest``, ingest's verification and the client's direct
reads. It imports nothing from sweepcat but ``errors``.
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import h5py

from .errors import SweepcatError

_PROC_FD = os.path.isdir("/proc/self/fd")
MAX_LINK_HOPS = 16


class FileRefused(SweepcatError):
    """A file or dataset the rule does not allow to be opened; ``path`` is the one named to users."""

    def __init__(self, path: str, reason: str, hint: str | None = None):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}", hint or "keep data files as regular files inside the dataset root "
                         "(no symlinks, links or external storage that leave it)")


class DatasetMissing(SweepcatError):
    """The file opens, but holds no dataset at that path."""


Stamp = tuple[int, int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    """A file's version: device, inode, size, mtime and ctime. The ctime is set by the kernel on every
    write and cannot be set back (``os.utime``, ``cp -p``, ``rsync -t`` restore only the mtime), so a
    file rewritten in place to the same size and mtime still gets a new stamp."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _inside(real: str, roots: tuple[str, ...]) -> bool:
    return any(real == r or real.startswith(r if r.endswith("/") else r + "/") for r in roots)


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


@dataclass(frozen=True)
class FileRule:
    """Which files may be opened: regular files whose real path lies under one of ``roots`` (real paths)."""

    roots: tuple[str, ...]
    what: str = field(default="readable storage", compare=False)  # how messages name the roots

    @classmethod
    def under(cls, *roots: str | os.PathLike, what: str = "readable storage") -> "FileRule":
        """Roots resolved now (symlinks followed once): a root later swapped for a symlink moves nothing."""
        return cls(tuple(sorted({os.path.realpath(os.fspath(r)) for r in roots})), what)

    @classmethod
    def of(cls, real_roots: Iterable[str], what: str = "readable storage") -> "FileRule":
        """Roots already resolved when they were configured or recorded: never resolved again."""
        return cls(tuple(sorted(set(real_roots))), what)

    def contains(self, real_path: str) -> bool:
        """An already resolved path lies inside the roots (the caller resolved it once, and uses that)."""
        return _inside(real_path, self.roots)

    def covers(self, directory: str | os.PathLike) -> bool:
        """The real path of ``directory`` lies inside the roots (for data roots, not for opening files)."""
        return _inside(os.path.realpath(os.fspath(directory)), self.roots)

    def permits_path(self, path: str) -> bool:
        """The real path lies inside the roots (no open, no stat of the file itself): for listings."""
        return _inside(os.path.realpath(path), self.roots)

    def check(self, path: str) -> tuple[str, os.stat_result]:
        """(real path, stat) of a file that may be opened; raises FileRefused naming ``path``."""
        real = os.path.realpath(path)
        if not _inside(real, self.roots):
            raise FileRefused(path, f"lies outside {self.what} (its real path leaves it)")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            raise FileNotFoundError(path) from None
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"is {file_kind(st.st_mode)}, not a regular file")
        return real, st

    def open_fd(self, path: str) -> tuple[int, str, Stamp]:
        """(descriptor, real path, stamp) of a file opened read-only under the rule, checked on the
        descriptor itself; the caller closes it. FileNotFoundError and OSError propagate."""
        real, _ = self.check(path)
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: swapped for a symlink since the check
                raise FileRefused(path, "was replaced by a symlink while being opened") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileRefused(path, f"is {file_kind(st.st_mode)}, not a regular file")
            # What was opened, not what the path says now: a directory swapped for a symlink is caught here.
            if _PROC_FD and not _inside(os.readlink(f"/proc/self/fd/{fd}"), self.roots):
                raise FileRefused(path, f"lies outside {self.what} (it moved while being opened)")
        except BaseException:
            os.close(fd)
            raise
        return fd, real, stamp_of(st)

    def open(self, path: str) -> "H5Handle":
        """Open an HDF5 file read-only under the rule. FileNotFoundError and OSError (not HDF5) propagate."""
        fd, real, stamp = self.open_fd(path)
        try:
            f = h5py.File(f"/proc/self/fd/{fd}" if _PROC_FD else real, "r")
        except BaseException:
            os.close(fd)
            raise
        # The descriptor stays open with the file: positional reads (h5read's direct rows) use the very
        # inode the rule checked, never the path again.
        return H5Handle(path, real, stamp, f, fd=fd)


@dataclass
class H5Handle:
    """An HDF5 file opened under a rule; ``stamp`` identifies the file's content version."""

    path: str  # as named by the caller (catalog, manifest)
    real: str
    stamp: Stamp  # stamp_of: dev, ino, size, mtime_ns, ctime_ns
    file: h5py.File
    refs: int = 0
    datasets: dict[tuple[str, tuple[str, ...]], h5py.Dataset] = field(default_factory=dict)
    fd: int = -1  # the descriptor the rule checked, open for positional reads until close()

    def close(self) -> None:
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - closing a file HDF5 already lost is not an error worth raising
            pass
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


# --------------------------------------------------------------------------- dataset resolution


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


def _beside(handle: H5Handle, name: str) -> str:
    """A file named by an HDF5 link or storage property, resolved against the directory of ``handle``."""
    name = os.fsdecode(name)
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(handle.real), name)


class Opener:
    """Opens files under a rule; ``dataset`` resolves a dataset path under the dataset rule."""

    def __init__(self, rule: FileRule):
        self.rule = rule

    def acquire(self, path: str) -> H5Handle:
        return self.rule.open(path)

    def release(self, handle: H5Handle) -> None:
        handle.close()

    def resolve(self, handle: H5Handle, name: str, held: list[H5Handle], *, group: bool = False) -> Any:
        """The dataset (or, with ``group``, the group) ``name`` of ``handle``: links followed under the
        rule, a dataset's storage checked. Files opened to follow external links are appended to
        ``held`` (the caller releases them)."""
        want_group = group
        where = f"{handle.path}#{name}"
        current = handle
        group: h5py.Group = current.file
        parts = _parts(name)
        hops = 0
        i = 0
        while True:
            if not parts:
                if want_group:
                    return group
                raise DatasetMissing(f"{where}: the path names the file's root group, not a dataset",
                                     "fix 'dataset' in the manifest")
            link = group.get(parts[i], getlink=True)
            if link is None:
                raise DatasetMissing(f"{where}: no such dataset in the file", "fix 'dataset' in the manifest, "
                                     "or regenerate the file")
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise FileRefused(where, f"more than {MAX_LINK_HOPS} links on the dataset path (a loop?)")
                rest = parts[i + 1:]
                if isinstance(link, h5py.SoftLink):
                    target = link.path
                    if target.startswith("/"):
                        group = current.file
                else:
                    target_file = _beside(current, link.filename)
                    try:
                        current = self.acquire(target_file)
                    except FileRefused as exc:
                        raise FileRefused(where, f"an external link leads to {link.filename}, which {exc.reason}") \
                            from None
                    except (FileNotFoundError, OSError) as exc:
                        raise DatasetMissing(f"{where}: an external link leads to {link.filename}, which cannot be "
                                             f"opened ({exc})", "restore the linked file") from None
                    held.append(current)
                    group = current.file
                    target = link.path
                parts, i = _parts(target) + rest, 0
                continue
            if not isinstance(link, h5py.HardLink):
                raise FileRefused(where, f"the path holds a {type(link).__name__}, which sweepcat does not follow")
            last = i == len(parts) - 1
            kind = group.get(parts[i], getclass=True)
            if not last:
                if kind is not h5py.Group:
                    raise DatasetMissing(f"{where}: {parts[i]!r} is not a group", "fix 'dataset' in the manifest")
                group = group[parts[i]]
                i += 1
                continue
            if want_group:
                if kind is not h5py.Group:
                    raise DatasetMissing(f"{where}: not a group", "fix the group path")
                return group[parts[i]]
            if kind is not h5py.Dataset:
                raise DatasetMissing(f"{where}: not a dataset (a {getattr(kind, '__name__', kind)})",
                                     "fix 'dataset' in the manifest")
            ds = group[parts[i]]
            self._check_storage(ds, where)
            return ds

    @staticmethod
    def _check_storage(ds: h5py.Dataset, where: str) -> None:
        """The dataset holds its raw data in its own file. HDF5 opens the files of external storage and of
        virtual datasets itself, by path, at read time, where no check of sweepcat's can follow (a file
        swapped for a symlink or a FIFO after any check would be read, or block): such datasets are refused."""
        dcpl = ds.id.get_create_plist()
        if dcpl.get_external_count():
            names = ", ".join(os.fsdecode(dcpl.get_external(k)[0]) for k in range(dcpl.get_external_count()))
            raise FileRefused(where, f"its raw data is stored in external file(s) {names} (HDF5 external storage), "
                              "which HDF5 opens by path, beyond sweepcat's file checks",
                              "copy the data into the file (e.g. `h5repack`), then regenerate the manifests")
        if dcpl.get_layout() == h5py.h5d.VIRTUAL:
            sources = ", ".join(sorted({os.fsdecode(dcpl.get_virtual_filename(k))
                                        for k in range(dcpl.get_virtual_count())}))
            raise FileRefused(where, f"it is a virtual dataset (sources: {sources}), whose source files HDF5 opens "
                              "by path, beyond sweepcat's file checks",
                              "write the data into one file (e.g. `h5repack` or h5py), then regenerate the manifests")

    @contextmanager
    def dataset(self, path: str, name: str) -> Iterator[h5py.Dataset]:
        """A dataset of ``path``, open for the duration of the block."""
        with self.located(path, name) as (ds, _):
            yield ds

    @contextmanager
    def located(self, path: str, name: str) -> Iterator[tuple[h5py.Dataset, H5Handle]]:
        """A dataset of ``path`` and the handle of the file that holds its bytes (the last file an external
        link led to, else ``path`` itself), open for the duration of the block."""
        handle = self.acquire(path)
        held: list[H5Handle] = []
        try:
            ds = self.resolve(handle, name, held)
            yield ds, (held[-1] if held else handle)
        finally:
            for h in held:
                self.release(h)
            self.release(handle)


class FileCache:
    """Open files shared by threads and by openers of different rules: reference counted, idle ones in an LRU.

    A handle in use is never closed under its reader; a file replaced on disk
    (new inode, size or mtime) is reopened, the old handle closed once idle.
    Every acquire checks the path against the caller's rule first, so a cached
    handle is never handed to a rule that would refuse the file.
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._current: dict[str, H5Handle] = {}  # real path -> newest handle
        self._idle: OrderedDict[int, H5Handle] = OrderedDict()  # id(handle) -> handle with no reader
        self._retired: set[int] = set()

    def opener(self, rule: FileRule) -> "Opener":
        return _CachedOpener(rule, self)

    def acquire(self, rule: FileRule, path: str) -> H5Handle:
        real, st = rule.check(path)
        stamp = stamp_of(st)
        with self._lock:
            h = self._current.get(real)
            if h is not None and h.stamp == stamp:
                h.refs += 1
                self._idle.pop(id(h), None)
                return h
        fresh = rule.open(path)
        with self._lock:
            old = self._current.get(fresh.real)
            if old is not None and old.stamp == fresh.stamp:  # another thread opened it meanwhile
                fresh.close()
                old.refs += 1
                self._idle.pop(id(old), None)
                return old
            if old is not None:
                self._retire(old)
            fresh.refs = 1
            self._current[fresh.real] = fresh
            self._trim()
            return fresh

    def release(self, handle: H5Handle) -> None:
        with self._lock:
            handle.refs -= 1
            if handle.refs > 0:
                return
            if id(handle) in self._retired or self._current.get(handle.real) is not handle:
                self._retired.discard(id(handle))
                handle.close()
                return
            self._idle[id(handle)] = handle
            self._trim()

    def _retire(self, handle: H5Handle) -> None:
        self._current.pop(handle.real, None)
        self._idle.pop(id(handle), None)
        if handle.refs <= 0:
            handle.close()
        else:
            self._retired.add(id(handle))

    def _trim(self) -> None:
        while len(self._current) > self.capacity and self._idle:
            _, h = self._idle.popitem(last=False)
            self._current.pop(h.real, None)
            h.close()

    def open_count(self) -> int:
        with self._lock:
            return len(self._current)

    def clear(self) -> None:
        with self._lock:
            for h in list(self._current.values()):
                self._retire(h)


class _CachedOpener(Opener):
    """An opener whose files come from (and go back to) a shared FileCache."""

    def __init__(self, rule: FileRule, cache: FileCache):
        super().__init__(rule)
        self.cache = cache

    def acquire(self, path: str) -> H5Handle:
        return self.cache.acquire(self.rule, path)

    def release(self, handle: H5Handle) -> None:
        self.cache.release(handle)

    def resolve(self, handle: H5Handle, name: str, held: list[H5Handle], *, group: bool = False) -> Any:
        if group:
            return super().resolve(handle, name, held, group=True)
        key = (name, self.rule.roots)
        ds = handle.datasets.get(key)
        if ds is not None:
            return ds
        ds = super().resolve(handle, name, held)
        if not held:  # only datasets held inside their own file are cached with it
            handle.datasets[key] = ds
        return ds


def regular_file_problem(path: str) -> str | None:
    """Why ``path`` is not something to open as a data file (no open, no block); None if it is a regular file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None if stat.S_ISREG(st.st_mode) else f"is {file_kind(st.st_mode)}, not a regular file"


def session(roots: Iterable[str | os.PathLike], what: str = "the dataset root") -> Opener:
    """An opener for one task (inspect, manifest, ingest checks, client reads) under ``roots``."""
    return Opener(FileRule.under(*roots, what=what))


__all__ = ["FileRule", "FileRefused", "DatasetMissing", "H5Handle", "Opener", "FileCache", "regular_file_problem",
           "session"]
