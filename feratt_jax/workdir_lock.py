"""One writer per workdir: ``WORKDIR/train.lock`` names the trainer's host and pid.

The trainer holds an ``flock`` on the file while it runs, so the kernel
releases it when the process dies however it dies (SIGKILL, OOM). The
file's JSON says who holds it. A second trainer is refused with one line
naming the holder; a file left by a process that is gone from this host is
taken over with a warning. A holder on another host cannot be checked from
here, so that lock is refused until someone removes the file. Readers
(``feratt eval``/``represent``/``predict``) never take the lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import time
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid check alone decides
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"


class WorkdirBusyError(RuntimeError):
    """Another trainer holds the workdir."""


def _holder(path: pathlib.Path) -> dict | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')!r} (since {holder.get('started', '?')})"


@contextlib.contextmanager
def exclusive_writer(workdir: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Hold ``workdir``'s trainer lock for the ``with`` block.

    Raises:
      WorkdirBusyError: another live trainer holds it (the message names it).
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    host, pid = socket.gethostname(), os.getpid()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(path) or {"pid": "?", "host": "?"}
                raise WorkdirBusyError(f"{workdir} is already being trained by {_describe(holder)}; lock file {path}") from None
        holder = _holder(path)
        if holder and holder.get("pid") != pid:
            if holder.get("host") != host:
                raise WorkdirBusyError(
                    f"{workdir} is locked by {_describe(holder)}, which this host cannot check; "
                    f"if that run is gone, delete {path} and rerun"
                )
            if fcntl is None and _alive(int(holder.get("pid", -1))):
                raise WorkdirBusyError(f"{workdir} is already being trained by {_describe(holder)}; lock file {path}")
            message = f"taking over the stale lock {path} of {_describe(holder)}: that process is gone"
            log.warning(message)
            print(f"warning: {message}", flush=True)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": host, "pid": pid, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.fsync(fd)
        try:
            yield path
        finally:
            # Emptied, not deleted: a waiter that opened the old file must not
            # lock an unlinked inode while a third process creates a new one.
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
