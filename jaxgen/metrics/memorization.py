"""Memorisation: is each sample closer to some training image than training images are to
each other?

Definitions (one space at a time: extractor features, or flattened pixels):

  d_train(i) = min_{j != i} ||train_i - train_j||     the training set's own NN distances
  t          = the q-quantile of d_train (numpy's linear interpolation), q = MEMORIZATION_QUANTILE
  d(x)       = min_j ||x - train_j||                  a query's distance to the training set
  rate       = #{samples x : d(x) < t} / #samples     "copied" samples
  floor      = #{held-out real test images x : d(x) < t} / #test

A held-out real image is as close to the training set as a training image is to the others,
so the floor is about q; a model that returns training images scores 1 (d = 0 < t whenever
t > 0). A rate well above the floor means the model copies. Unlike duplicate_rate, the rate
does not depend on the number of queries (each query's d(x) is measured against the same
training set), only on the training set's size through t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.metrics import duplicates
from jaxgen.metrics.distances import (
  DEFAULT_CHUNK_SIZE,
  ArrayLike,
  as_f32,
  centre,
  map_rows,
  pairwise_sq_distances,
)

MEMORIZATION_QUANTILE = 0.05


@jax.jit
def _nearest_CxR(query_CxD: jax.Array, ref_MxD: jax.Array) -> jax.Array:
  neg_d2_Cx1, idx_Cx1 = jax.lax.top_k(-pairwise_sq_distances(query_CxD, ref_MxD), 1)
  # Indices travel as float32 beside the distances (exact below 2^24 training items).
  return jnp.concatenate([-neg_d2_Cx1, idx_Cx1.astype(jnp.float32)], axis=-1)


def nearest_neighbours(
  query_NxD: ArrayLike, ref_MxD: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
  """(distance [N] float64, index [N] int64) of each query's nearest point in ref.

  Both sets are centred on ref's mean first (distances unchanged, less cancellation); one
  [chunk_size, M] block of distances is held at a time."""
  if np.shape(ref_MxD)[0] > 2**24:
    raise ValueError("nearest_neighbours: more than 2^24 reference points")
  ref, query = centre(ref_MxD, query_NxD)
  out_Nx2 = map_rows(lambda q: _nearest_CxR(q, ref), query, chunk_size)
  return np.sqrt(out_Nx2[:, 0].astype(np.float64)), out_Nx2[:, 1].astype(np.int64)


def memorization_threshold(
  train_NxD: ArrayLike,
  *,
  quantile: float = MEMORIZATION_QUANTILE,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
  """t: the `quantile` of the training points' distances to their nearest other training
  point (see the module docstring)."""
  if np.shape(train_NxD)[0] < 2:
    raise ValueError(f"memorization needs >= 2 training points, got {np.shape(train_NxD)[0]}.")
  if not 0.0 < quantile < 1.0:
    raise ValueError(f"quantile must be in (0, 1), got {quantile}.")
  # The same statistic as the near-duplicate threshold, at another quantile.
  return duplicates.duplicate_threshold(
    train_NxD, percentile=100.0 * quantile, chunk_size=chunk_size
  )


def memorization_rate(
  train_NxD: ArrayLike,
  samples_MxD: ArrayLike,
  test_KxD: ArrayLike,
  *,
  quantile: float = MEMORIZATION_QUANTILE,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
  """{"rate", "floor", "threshold", "quantile"}: the fraction of samples, and of held-out real
  test images (the floor), closer to a training point than the threshold t (module docstring).

  Also the medians of d(sample) and d(test) ("median_distance", "median_distance_floor")."""
  t = memorization_threshold(train_NxD, quantile=quantile, chunk_size=chunk_size)
  d_sample, _ = nearest_neighbours(samples_MxD, train_NxD, chunk_size=chunk_size)
  d_test, _ = nearest_neighbours(test_KxD, train_NxD, chunk_size=chunk_size)
  return dict(
    rate=float(np.mean(d_sample < t)),
    floor=float(np.mean(d_test < t)),
    threshold=t,
    quantile=quantile,
    median_distance=float(np.median(d_sample)),
    median_distance_floor=float(np.median(d_test)),
  )


def flatten_pixels(images_NxHxWxC: ArrayLike) -> jax.Array:
  """Images [N, H, W, C] as pixel vectors [N, H*W*C] float32."""
  x = as_f32(images_NxHxWxC)
  return x.reshape(x.shape[0], -1)


def side_by_side(
  samples_NxHxWxC: np.ndarray, train_MxHxWxC: np.ndarray, *neighbour_indices_N: np.ndarray
) -> np.ndarray:
  """Images [N * (1 + S), H, W, C]: each sample followed by its nearest training image in each
  of S spaces (e.g. features, then pixels), ready for viz.grid(..., ncols=1 + S)."""
  samples = np.asarray(samples_NxHxWxC)
  columns = [samples] + [np.asarray(train_MxHxWxC)[np.asarray(i)] for i in neighbour_indices_N]
  return np.stack(columns, axis=1).reshape(-1, *samples.shape[1:])
