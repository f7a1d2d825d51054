"""Mesh, shardings, global batches and multi-host start-up.

jaxgen is data-parallel: one mesh axis "data" over every device of every process.
State is replicated; batches are split along their first axis. Each process reads
only its own slice of the global batch and `global_batch` stitches the slices
into one global array, so the same code runs on 1 CPU, 8 GPUs or many hosts.
"""

import collections
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgen.errors import ConfigError


def initialize_distributed(
  coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """Calls `jax.distributed.initialize` when several processes take part, before any JAX work.

  With no arguments it initialises only where a cluster is detectable (the JAX_COORDINATOR_ADDRESS
  environment variable, or TPU pods / SLURM which `jax.distributed.initialize()` discovers
  itself when JAXGEN_DISTRIBUTED=1).
  """
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    # Collectives between CPU devices of different processes; no effect on GPU/TPU arrays.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif os.environ.get("JAXGEN_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over the "data" axis."""
  return NamedSharding(mesh, P("data"))


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's local slice [B/P, ...] into global arrays [B, ...] sharded on "data"."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )


def prefetch_to_device(
  local_batches: Iterator, mesh: Mesh, size: int = 2
) -> Iterator[tuple[Any, Any]]:
  """Yields (global batch [B, ...] sharded on "data", position after it) with up to `size`
  global batches on the device(s) at once: the yielded one and the next size - 1.

  `local_batches` yields this process's slices [B/P, ...] (`global_batch`); the position is its
  get_state() taken right after the batch was drawn (None if it has no get_state), so a caller
  that checkpoints the position of the batch it last consumed resumes exactly there, however far
  ahead this has read. No threads: each transfer is issued when the batch is drawn and runs
  asynchronously (jax's dispatch), so with size >= 2 the next batch is copied while the step
  runs. Ends when `local_batches` does.
  """
  if size < 1:
    raise ValueError(f"prefetch size {size} must be >= 1")
  position = getattr(local_batches, "get_state", lambda: None)
  queue = collections.deque()

  def fill() -> None:
    while len(queue) < size:
      try:
        local = next(local_batches)
      except StopIteration:
        return
      queue.append((global_batch(local, mesh), position()))

  fill()
  while queue:
    yield queue.popleft()
    fill()


def check_batch_size(batch_size: int, accum_steps: int = 1) -> None:
  """The global batch (each of its accum_steps micro-batches) must split evenly over devices."""
  n = jax.device_count()
  if batch_size % (n * accum_steps):
    micro = f" in {accum_steps} micro-batches" if accum_steps > 1 else ""
    raise ConfigError(
      f"batch_size {batch_size} does not divide over {n} devices{micro}; "
      f"set --config.batch_size to a multiple of {n * accum_steps}"
    )
