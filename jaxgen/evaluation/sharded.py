"""The one batched pass over the devices: pad a block to a device multiple, place it sharded on
"data", call, gather to every host, cut the padding off, concatenate."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxgen import parallel

BATCH_SIZE = 500  # rows per call (rounded down to a multiple of the devices)

# images_BxHxWxC in [-1, 1] -> (features_BxD, logits_BxK): a feature extractor
FeaturesFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def device_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """`batch_size` rounded down to a multiple of the mesh's devices (at least one per device)."""
  n = mesh.size
  return max(n, batch_size // n * n)


def to_host(tree: Any) -> Any:
  """Whole host copies of (possibly several processes') arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """`x` [N, ...] with zero rows appended up to `size` (unchanged if N >= size)."""
  if len(x) >= size:
    return x
  return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])


def map_batches(
  fn: Callable[[int, dict[str, jax.Array], int], Any],
  inputs: dict[str, np.ndarray],
  num: int,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = BATCH_SIZE,
) -> Any:
  """`fn(i, block, size)` over `num` rows, block by block; its outputs [size, ...] on the host.

  Block i holds rows [i*size, (i+1)*size) of every input [num, ...], zero-padded to `size`
  (`batch_size` rounded to the devices) and sharded on "data"; `fn` returns a pytree of arrays
  [size, ...]. Returns that pytree with each leaf's real rows of every block: [num, ...].
  """
  mesh = mesh or parallel.make_mesh()
  size = device_batch_size(batch_size, mesh)
  sharding = parallel.data_sharding(mesh)
  out = []
  for i, start in enumerate(range(0, num, size)):
    block = {k: pad_rows(np.asarray(v[start : start + size]), size) for k, v in inputs.items()}
    result = to_host(fn(i, jax.device_put(block, sharding), size))
    rows = min(size, num - start)
    out.append(jax.tree.map(lambda x, rows=rows: np.asarray(x)[:rows], result))
  return jax.tree.map(lambda *blocks: np.concatenate(blocks), *out)


def compute_features(
  features_fn: FeaturesFn,
  images_NxHxWxC: np.ndarray,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], logits [N, K]) of host images, batch by batch, sharded over the mesh."""
  fn = lambda i, block, size: features_fn(block["image"])
  feats, logits = map_batches(fn, {"image": images_NxHxWxC}, len(images_NxHxWxC), mesh, batch_size)
  return feats, logits


@functools.cache
def jit_sample(sample_fn: Callable, sharding: jax.sharding.Sharding) -> Callable:
  """`sample_fn(state, key, num, conditioning)` compiled per num, its images sharded."""
  return jax.jit(sample_fn, static_argnums=2, out_shardings=sharding)


def generate_features(
  family: Any,
  state: Any,
  features_fn: FeaturesFn,
  key: jax.Array,
  num: int,
  num_classes: int = 0,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = BATCH_SIZE,
  labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Features [num, D], logits [num, K] and requested labels [num] (or None) of `num` samples.

  Samples are drawn `batch_size` at a time (key folded with the batch index) and never leave
  the devices; class-conditional models get `labels` [num], by default 0..K-1 cycled.
  """
  mesh = mesh or parallel.make_mesh()
  sample = jit_sample(family.sample, parallel.data_sharding(mesh))
  if labels is None and num_classes:
    labels = np.arange(num) % num_classes
  inputs = {"label": labels.astype(np.int32)} if num_classes else {}

  def fn(i: int, block: dict, size: int) -> tuple[jax.Array, jax.Array]:
    return features_fn(sample(state, jax.random.fold_in(key, i), size, block.get("label")))

  feats, logits = map_batches(fn, inputs, num, mesh, batch_size)
  return feats, logits, labels
