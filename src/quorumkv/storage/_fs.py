"""The small file-system interface the WAL and the snapshot store are written against.

Theory of operation
-------------------
Storage needs few things from a file system: append to a file and fsync it, read a file
whole or in part, list, rename, remove and truncate, and fsync a directory so that
creations, renames and removals in it survive a crash. ``FileSystem`` names exactly
those; two implementations provide them.

``OSFileSystem`` uses real files (``os.write``, ``os.fdatasync``, a directory fsync
through an ``O_RDONLY`` descriptor of the directory).

``MemFileSystem`` keeps bytes in memory and knows what a crash may take away:

* each file knows how many of its bytes are fsynced (``synced``); ``crash`` cuts every
  file back to that length, or, given a ``random.Random``, keeps a random prefix of the
  unsynced tail, which models a write that reached the disk in part (a torn write);
* each directory knows its fsynced listing; ``crash`` reverts a directory to it (or,
  given a ``random.Random``, may keep the new listing), so a file created or renamed and
  not followed by ``fsync_dir`` can vanish, as on a real disk;
* ``flip_bit`` damages a byte, for corruption tests.

Truncation is modeled as taking effect at once (the synced length shrinks with it); the
WAL fsyncs right after it truncates a torn tail.

Neither implementation decides anything about Raft; they only move bytes.
"""

from __future__ import annotations

import os
import posixpath
import random
from dataclasses import dataclass, field
from typing import Protocol


class AppendFile(Protocol):
    """A file open for appending."""

    def write(self, data: bytes) -> None: ...
    def sync(self) -> None: ...
    def size(self) -> int: ...
    def close(self) -> None: ...


class FileSystem(Protocol):
    """What the WAL and the snapshot store need from a file system. Paths are strings."""

    def makedirs(self, path: str) -> None: ...
    def open_append(self, path: str) -> AppendFile:
        """Open ``path`` for appending, creating it empty if it does not exist. A new
        file's name is durable only after ``fsync_dir`` of its directory."""
        ...

    def read(self, path: str) -> bytes: ...
    def read_range(self, path: str, offset: int, size: int) -> bytes: ...
    def size(self, path: str) -> int: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def rename(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def truncate(self, path: str, size: int) -> None:
        """Cut ``path`` to ``size`` bytes and fsync it."""
        ...

    def fsync_dir(self, path: str) -> None: ...


# -- real files --------------------------------------------------------------------------

_sync_data = getattr(os, "fdatasync", os.fsync)


class _OSAppendFile:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def sync(self) -> None:
        _sync_data(self._fd)

    def size(self) -> int:
        return self._size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OSFileSystem:
    """Real files. ``fsync_dir`` fsyncs the directory itself."""

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def open_append(self, path: str) -> AppendFile:
        return _OSAppendFile(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def truncate(self, path: str, size: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- in memory, with crashes -------------------------------------------------------------


@dataclass(slots=True)
class MemFile:
    data: bytearray = field(default_factory=bytearray)
    synced: int = 0
    """How many leading bytes of ``data`` are durable."""


class _MemAppendFile:
    def __init__(self, fs: MemFileSystem, path: str) -> None:
        self._fs = fs
        self._path = path

    def _file(self) -> MemFile:
        return self._fs.file(self._path)

    def write(self, data: bytes) -> None:
        self._fs.check_fault("write")
        self._file().data += data

    def sync(self) -> None:
        self._fs.check_fault("fsync")
        f = self._file()
        f.synced = len(f.data)
        self._fs.fsyncs += 1

    def size(self) -> int:
        return len(self._file().data)

    def close(self) -> None:
        pass


class MemFileSystem:
    """Files in memory that separate written from fsynced; see the module docstring.

    ``fail_next`` makes the next write or fsync raise ``OSError``, to test the handling of
    a failing disk."""

    def __init__(self) -> None:
        self._dirs: dict[str, dict[str, MemFile]] = {}
        self._durable_dirs: dict[str, dict[str, MemFile]] = {}
        self.fsyncs = 0
        self.fail_next: str | None = None

    def check_fault(self, op: str) -> None:
        if self.fail_next == op:
            self.fail_next = None
            raise OSError(f"injected {op} failure")

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        path = posixpath.normpath(path)
        return posixpath.dirname(path), posixpath.basename(path)

    def _dir(self, path: str) -> dict[str, MemFile]:
        d = self._dirs.get(posixpath.normpath(path))
        if d is None:
            raise FileNotFoundError(path)
        return d

    def file(self, path: str) -> MemFile:
        d, name = self._split(path)
        f = self._dir(d).get(name)
        if f is None:
            raise FileNotFoundError(path)
        return f

    def makedirs(self, path: str) -> None:
        path = posixpath.normpath(path)
        if path not in self._dirs:
            self._dirs[path] = {}
            self._durable_dirs[path] = {}  # directories themselves are taken as durable

    def open_append(self, path: str) -> AppendFile:
        d, name = self._split(path)
        self._dir(d).setdefault(name, MemFile())
        return _MemAppendFile(self, path)

    def read(self, path: str) -> bytes:
        return bytes(self.file(path).data)

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        return bytes(self.file(path).data[offset : offset + size])

    def size(self, path: str) -> int:
        return len(self.file(path).data)

    def listdir(self, path: str) -> list[str]:
        return sorted(self._dir(path))

    def exists(self, path: str) -> bool:
        d, name = self._split(path)
        return name in self._dirs.get(d, {}) or posixpath.normpath(path) in self._dirs

    def rename(self, src: str, dst: str) -> None:
        sd, sname = self._split(src)
        dd, dname = self._split(dst)
        f = self.file(src)
        del self._dir(sd)[sname]
        self._dir(dd)[dname] = f

    def remove(self, path: str) -> None:
        d, name = self._split(path)
        self.file(path)
        del self._dir(d)[name]

    def truncate(self, path: str, size: int) -> None:
        f = self.file(path)
        del f.data[size:]
        f.synced = min(f.synced, size)

    def fsync_dir(self, path: str) -> None:
        self.check_fault("fsync")
        path = posixpath.normpath(path)
        self._durable_dirs[path] = dict(self._dir(path))
        self.fsyncs += 1

    # -- fault injection ------------------------------------------------------------------

    def unsynced_bytes(self) -> int:
        return sum(len(f.data) - f.synced for d in self._dirs.values() for f in d.values())

    def crash(self, rng: random.Random | None = None) -> None:
        """Lose what was not fsynced. Without ``rng``, every unsynced byte and every
        directory change not followed by ``fsync_dir`` is lost; with it, each file keeps a
        random prefix of its unsynced tail (a torn write) and each directory may keep its
        unsynced listing."""
        for path, durable in self._durable_dirs.items():
            if rng is None or rng.random() < 0.5:
                self._dirs[path] = dict(durable)
        files = {id(f): f for d in self._dirs.values() for f in d.values()}
        for f in files.values():
            keep = f.synced
            if rng is not None and len(f.data) > f.synced:
                keep += rng.randint(0, len(f.data) - f.synced)
            del f.data[keep:]
            f.synced = len(f.data)
        self._durable_dirs = {p: dict(d) for p, d in self._dirs.items()}

    def flip_bit(self, path: str, offset: int, bit: int = 0) -> None:
        """Damage one bit of a file, durably (models media corruption)."""
        self.file(path).data[offset] ^= 1 << bit
