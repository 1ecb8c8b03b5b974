"""A small tmpfs as (part of) one node's disk, which the nemesis can fill and free.

``Tmpfs(path, size)`` mounts a tmpfs of ``size`` bytes at ``path``: a node's data
directory, or one of its parts (``raft/wal`` for the write-ahead log alone, ``kv`` for
the state machine's store alone), always inside the run's own working directory.
``fill`` writes ``path/torture-filler`` until the file system says ENOSPC, so the
node's next write there fails; ``free`` deletes the filler. ``unmount`` undoes the
mount and is safe to call twice; a mount still busy is detached lazily
(``umount -l``), so that a failed run never leaves a mount behind.

Filling happens from the harness's process: the node sees the same file system (a
namespace made by ``ip netns exec`` is a mount-namespace slave of ours, and the mount
was made before the node started). The filler's name ends in no suffix the node reads
(``.wal``, ``.mdb``), so the node ignores it. This module must never mount, write or
unmount anything outside ``path``.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from quorumkv.torture._system import TortureError, require_root, run

_CHUNKS = (1 << 20, 64 << 10, 4 << 10, 512, 1)
FILLER = "torture-filler"


class Tmpfs:
    """A tmpfs mounted at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        if size_bytes < 1 << 20:
            raise ValueError(f"a node's disk needs at least 1 MiB, not {size_bytes} bytes")
        self.path = path
        self.size_bytes = size_bytes
        self.mounted = False

    @property
    def filler(self) -> Path:
        return self.path / FILLER

    def mount(self) -> None:
        require_root("mounting a tmpfs as a node's disk (fault kind disk-full)")
        self.path.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0755", "tmpfs",
             str(self.path)])  # fmt: skip
        self.mounted = True

    def fill(self) -> int:
        """Write the filler until ENOSPC; returns how many bytes it took."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in _CHUNKS:
                block = b"\0" * size
                while True:
                    try:
                        n = os.write(fd, block)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if not self.mounted:
            return
        for _ in range(20):
            status, err = run(["umount", str(self.path)], check=False)
            if status == 0:
                self.mounted = False
                return
            if "busy" not in err:
                raise TortureError(f"umount {self.path} failed: {err}")
            time.sleep(0.1)  # a process that just died may still hold a file open
        run(["umount", "-l", str(self.path)])
        self.mounted = False
