"""Orbax checkpoints of the train state together with the data iterator's position."""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxgen.errors import UserError


class CheckpointError(UserError, RuntimeError):
  """A checkpoint that cannot be read or does not fit the model."""


class Checkpointer:
  """Saves {state, data position} every N steps (async), keeps the last `keep`."""

  def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores (state, data position, step) from `step` (default: the latest).

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings: what to restore into.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}; train first with "
                            f"`jaxgen train --workdir {self.directory.parent}`")
    path = self.directory / str(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for unreadable or mismatched files
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CheckpointError(
          f"checkpoint {path} cannot be restored ({type(e).__name__}: {reason}); nothing was "
          f"changed: move that step directory aside to resume from an earlier checkpoint, "
          f"or train in a new --workdir") from e
    return restored["state"], dict(restored["data"] or {}), step

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree`'s arrays, each placed with `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
