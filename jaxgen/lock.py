"""One run per workdir: an exclusive lock file naming its holder (host, pid).

The lock is an `flock` on WORKDIR/lock, which the kernel drops when its holder dies (even by
kill -9), so a lock left by a killed run is found stale and taken over. A lock written on
another host cannot be checked from here and is refused.
"""

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from jaxgen.errors import UserError


class LockError(UserError, RuntimeError):
  """Another run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _read_holder(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


class WorkdirLock:
  """Holds WORKDIR/lock for one run; `acquire()` returns a line about a stale lock taken over."""

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / "lock"
    self._fd: int | None = None

  def acquire(self) -> str | None:
    """Takes the lock or raises LockError naming the holder. Creates the workdir if needed."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        holder = _read_holder(self.path)
        raise LockError(
          f"{self.path.parent} is in use by another run (host {holder.get('host', '?')}, pid "
          f"{holder.get('pid', '?')}, since {holder.get('started', '?')}); wait for it to end, "
          f"stop it, or train in another --workdir"
        ) from None
      # The holder may have released and unlinked the file between our open and flock.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    holder = _read_holder(self.path)
    note = None
    if holder and holder.get("host") != host:
      os.close(fd)
      raise LockError(
        f"{self.path} names a run on host {holder.get('host')} (pid {holder.get('pid')}), which "
        f"cannot be checked from {host}; if no run is active there, delete {self.path} and "
        f"run again"
      )
    if holder.get("pid") is not None:
      alive = _pid_alive(int(holder["pid"]))
      note = (
        f"took over the stale lock of pid {holder['pid']} on {host} "
        f"({'a different process now has that pid' if alive else 'no longer running'})"
      )
    info = {
      "host": host,
      "pid": os.getpid(),
      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    os.fsync(fd)
    self._fd = fd
    return note

  def release(self) -> None:
    """Removes the lock file and drops the lock (unlink first, so no one locks a dead file)."""
    if self._fd is None:
      return
    try:
      self.path.unlink(missing_ok=True)
    finally:
      os.close(self._fd)
      self._fd = None
