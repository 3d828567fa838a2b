"""One writer per run folder: OUT/run.lock, held (flock) for the whole run by rank 0.

A second trainer on the same folder (a notebook re-run while an orphaned `accelerate launch` is alive)
would interleave metrics rows and overwrite checkpoints under the first. The lock file names its
holder ({"pid", "host", "started"}); a second writer is refused with them. The kernel drops an flock
when its process dies, so a lock left by a killed run (dead PID) is simply taken over, with a note.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Callable, Optional, Union

from mambaft.durable import pid_alive
from mambaft.errors import RunLockError

LOCK_FILE = "run.lock"


class RunLock:
    def __init__(self, out_dir: Union[str, Path]):
        self.path = Path(out_dir) / LOCK_FILE
        self.fd: Optional[int] = None

    def _holder(self) -> dict:
        try:
            info = json.loads(os.pread(self.fd, 4096, 0).decode("utf-8") or "{}")
            return info if isinstance(info, dict) else {}
        except (ValueError, OSError):
            return {}

    def acquire(self, say: Callable[[str], None] = print) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = self._holder()
            os.close(self.fd)
            self.fd = None
            raise RunLockError(
                f"{self.path.parent}: another trainer is writing this run folder (PID {h.get('pid', '?')} on "
                f"host {h.get('host', '?')}, since {h.get('started', '?')}). Wait for it, stop it, or use "
                "another --out.") from None
        old = self._holder()
        if old.get("pid"):
            alive = old.get("host") == socket.gethostname() and pid_alive(int(old["pid"]))
            say(f"note: took over the lock of {self.path.parent} left by PID {old['pid']} on host "
                f"{old.get('host', '?')} ({'no longer holding it' if alive else 'not running'})")
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, me, 0)
        os.fsync(self.fd)
        return self

    def release(self) -> None:
        """Empty the file (no holder), then drop the flock. The file stays: unlinking it would let a
        waiter lock a file no longer in the folder."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
