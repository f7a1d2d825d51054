"""What a run leaves to be looked at while and after it trains: TensorBoard events, provenance.

    workdir/tb/events.out.tfevents.*   every logged scalar, evaluation metrics, sample grids
    workdir/provenance.json            versions, git commit, devices, processes, wall time

Events are written with tensorboardX (no TensorFlow). Only process 0 writes.
"""

import datetime
import json
import math
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

TB_DIR = "tb"
PROVENANCE = "provenance.json"
VERSIONED = ("jaxgen", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


class TensorBoard:
  """A tensorboardX writer for workdir/tb that a resumed run continues without duplicates.

  `purge_step` is the first step this session logs (restored step + 1): TensorBoard then
  drops any events an interrupted earlier session wrote at or after it, so steps logged
  after the last checkpoint and logged again after the restore appear once.
  """

  def __init__(self, workdir: str | Path, purge_step: int | None = None):
    from tensorboardX import SummaryWriter  # imported here: only process 0 needs it

    self.writer = SummaryWriter(str(Path(workdir) / TB_DIR), purge_step=purge_step, flush_secs=30)

  def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
    """Every finite number of `values` as `prefix + key`; other entries (e.g. flags) skipped."""
    for key, value in values.items():
      if (
        isinstance(value, (int, float, np.number))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
      ):
        self.writer.add_scalar(prefix + key, float(value), step)

  def image_file(self, tag: str, path: str | Path, step: int) -> None:
    """A PNG already written (e.g. a sample grid) as an image summary."""
    from PIL import Image

    with Image.open(path) as img:
      self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


def git_commit(path: str | Path = Path(__file__).parent) -> str | None:
  """The commit of the checkout holding `path` (with "+dirty" if it has changes), or None."""
  try:
    run = lambda *args: subprocess.run(
      ["git", *args], cwd=path, capture_output=True, text=True, timeout=10
    )
    head = run("rev-parse", "HEAD")
    if head.returncode:
      return None
    dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None


def versions() -> dict[str, str | None]:
  """Installed versions of jaxgen and the libraries its numbers depend on."""
  out = {}
  for name in VERSIONED:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def session_info(start_step: int) -> dict:
  """This process's view of the session starting now: versions, commit, devices, processes."""
  import jax

  devices = jax.devices()
  return dict(
    started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
    start_step=start_step,
    end_step=start_step,
    seconds=0.0,
    versions=versions(),
    git_commit=git_commit(),
    python=platform.python_version(),
    host=platform.node(),
    platform=devices[0].platform,
    device_kind=devices[0].device_kind,
    device_count=len(devices),
    process_count=jax.process_count(),
  )


def record_session(workdir: str | Path, session: dict) -> Path:
  """Adds or updates `session` (matched by its `started`) in workdir/provenance.json."""
  path = Path(workdir) / PROVENANCE
  sessions = read_provenance(workdir)
  sessions = [s for s in sessions if s.get("started") != session["started"]] + [session]
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(sessions, indent=1))
  tmp.replace(path)
  return path


def read_provenance(workdir: str | Path) -> list[dict]:
  """The sessions of a run (one per `jaxgen train` that stepped it), oldest first; [] if none."""
  path = Path(workdir) / PROVENANCE
  if not path.is_file():
    return []
  try:
    return list(json.loads(path.read_text()))
  except (ValueError, TypeError):
    return []


class Session:
  """Times a training session and keeps its provenance record up to date (process 0 only)."""

  def __init__(self, workdir: str | Path, start_step: int, enabled: bool):
    self.workdir, self.enabled = Path(workdir), enabled
    self.t0 = time.perf_counter()
    self.info = session_info(start_step) if enabled else {}
    self.logged: list[tuple[int, float]] = []  # (step, time) of the first and latest log point
    if enabled:
      record_session(self.workdir, self.info)

  def log_point(self, step: int) -> None:
    """Notes the time of a log point (the loop's metrics rows)."""
    now = (step, time.perf_counter())
    self.logged = [self.logged[0] if self.logged else now, now]

  def end(self, step: int) -> None:
    if self.enabled:
      self.info.update(end_step=step, seconds=round(time.perf_counter() - self.t0, 1))
      if len(self.logged) == 2 and self.logged[1][0] > self.logged[0][0]:
        # the steady loop: data, steps, logging, checkpoints, grids between the first log point
        # (compile and warm-up before it) and the last
        (s0, t0), (s1, t1) = self.logged
        self.info["loop"] = dict(from_step=s0, to_step=s1, seconds=t1 - t0)
      record_session(self.workdir, self.info)
