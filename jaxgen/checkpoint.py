"""Orbax checkpoints of the train state together with the data iterator's position.

Each checkpoint also holds an "integrity" item, written in the same atomic commit: a SHA-256
of every array leaf and a copy of the data position. A restore recomputes and compares them,
so a checkpoint damaged on disk after it was written is detected, not loaded.
"""

import errno
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgen.errors import UserError, find_os_error

TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be read, fails its checksums, cannot be written or does not fit."""


def _first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def leaf_array(x: Any) -> np.ndarray:
  """A host copy of a (replicated) array leaf, read from this process's own replica."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


def checksums(tree: Any) -> dict[str, str]:
  """{leaf path: SHA-256 of its dtype, shape and bytes} for every leaf of `tree`."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.ascontiguousarray(leaf_array(x))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def verify(state: Any, data_state: dict, integrity: dict) -> str | None:
  """None if the restored `state` and `data_state` match the recorded `integrity`, else why not."""
  want, got = integrity.get("leaves", {}), checksums(state)
  if set(want) != set(got):
    return f"its checksums list {len(want)} array leaves, the state has {len(got)}"
  bad = [k for k in got if got[k] != want[k]]
  if bad:
    return f"{len(bad)} array leaves fail their SHA-256 (first: {bad[0]})"
  if integrity.get("data") != data_state:
    return "its data position differs from the one recorded with it"
  return None


def remove_partial_saves(directory: str | Path) -> list[Path]:
  """Deletes the temporary folders of saves that never completed (a killed run's); returns them.

  Only call this while holding the workdir's lock: a live run's save in progress looks the same.
  """
  directory = Path(directory)
  found = sorted(p for p in directory.glob(f"*{TMP_MARKER}*")) if directory.is_dir() else []
  for p in found:
    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
  return found


class Checkpointer:
  """Saves {state, data position, checksums} every N steps (async), keeps the last `keep`."""

  def __init__(
    self, directory: str | Path, keep: int = 3, async_save: bool = True, read_only: bool = False
  ):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=async_save,
      create=not read_only,
      read_only=read_only,
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "integrity")
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every complete checkpoint's step, newest first."""
    return sorted(self._manager.all_steps(), reverse=True)

  def _write_error(self, e: Exception, step: int | None) -> Exception:
    os_error = find_os_error(e)
    if os_error is None:
      return e
    where = os_error.filename or (
      self.directory / str(step) if step is not None else self.directory
    )
    cause = os_error.strerror or errno.errorcode.get(os_error.errno, str(os_error.errno))
    try:  # let earlier saves still in flight finish, then list the complete ones
      self._manager.wait_until_finished()
    except Exception:  # noqa: BLE001 - the error being reported, again
      pass
    self._manager.reload()
    kept = self.all_steps()
    kept_msg = (
      f"the checkpoints of steps {kept[::-1]} are intact" if kept else "no checkpoint was kept"
    )
    return CheckpointError(
      f"cannot write a checkpoint ({where}: {cause}); {kept_msg}; free space or fix the "
      f"folder's permissions, then run the same command to resume"
    )

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Starts saving `state` and `data_state` as `step` (async); OSErrors become one line."""
    integrity = {"leaves": checksums(state), "data": data_state}
    try:
      self._manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          integrity=ocp.args.JsonSave(integrity),
        ),
      )
    except Exception as e:  # a previous async save's error surfaces here too
      raise self._write_error(e, step) from e

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores and verifies (state, data position, step) from `step` (default: the latest).

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings: what to restore into.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(
        f"no checkpoint in {self.directory}; train first with "
        f"`jaxgen train --workdir {self.directory.parent}`"
      )
    path = self.directory / str(step)
    if step not in self._manager.all_steps():
      raise CheckpointError(f"no checkpoint {path}; the run has steps {self.all_steps()[::-1]}")
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    if (path / "integrity").exists():
      items["integrity"] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      state, data_state = restored["state"], dict(restored["data"] or {})
      # Checkpoints written before checksums existed load unverified.
      problem = verify(state, data_state, restored["integrity"]) if "integrity" in items else None
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      raise CheckpointError(
        f"checkpoint {path} cannot be restored ({type(e).__name__}: {_first_line(e)})"
      ) from e
    if problem:
      raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
    return state, data_state, step

  def restore_newest_good(
    self, abstract_state: Any, report: Callable[[str], None] = print
  ) -> tuple[Any, dict, int, list[int]]:
    """(state, data position, step, newer bad steps) from the newest checkpoint that restores and
    verifies; each one skipped is reported in one line. Nothing on disk is changed."""
    steps = self.all_steps()
    if not steps:
      return self.restore(abstract_state)  # raises: no checkpoint
    bad = []
    for step in steps:
      try:
        return (*self.restore(abstract_state, step), bad)
      except CheckpointError as e:
        report(f"skipping {e}")
        bad.append(step)
    raise CheckpointError(
      f"none of the checkpoints in {self.directory} (steps {steps[::-1]}) restores and verifies; "
      f"move that folder aside to start afresh, or train in a new --workdir"
    )

  def move_aside(self, steps: list[int], destination: str | Path) -> list[Path]:
    """Moves the step folders `steps` (damaged ones a resumed run will write again) into
    `destination`, kept for inspection; returns their new paths."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    moved = []
    for step in steps:
      target, n = destination / str(step), 1
      while target.exists():
        target, n = destination / f"{step}.{n}", n + 1
      shutil.move(str(self.directory / str(step)), str(target))
      moved.append(target)
    self._manager.reload()
    return moved

  def wait(self) -> None:
    """Blocks until pending async saves are on disk; OSErrors become one line."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._write_error(e, None) from e

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays, each placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
