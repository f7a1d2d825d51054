"""Chunked pairwise distances and k-nearest-neighbour primitives.

Everything runs in float32 on device, one [chunk_size, M] block of the distance
matrix at a time, so N x M matrices are never materialised for large N.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

ArrayLike = jax.typing.ArrayLike
DEFAULT_CHUNK_SIZE = 1024
_HIGHEST = jax.lax.Precision.HIGHEST  # No TF32/bf16 passes on GPU/TPU matmuls.


def as_f32(x: ArrayLike) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def iter_chunks(
  x_NxD: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[jax.Array, int]]:
  """Yields (block_CxD, n_valid): row blocks of one fixed size, last zero-padded.

  A fixed block shape means each jitted kernel compiles once per call site.
  """
  n = x_NxD.shape[0]
  c = max(1, min(chunk_size, n))
  for start in range(0, n, c):
    block = x_NxD[start : start + c]
    n_valid = block.shape[0]
    if n_valid < c:
      block = jnp.pad(block, ((0, c - n_valid), (0, 0)))
    yield block, n_valid


def map_rows(
  fn: Callable[[jax.Array], jax.Array], x_NxD: jax.Array, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
  """Applies a row-wise `fn` ([C, D] -> [C, ...]) chunk by chunk; returns [N, ...]."""
  return np.concatenate(
    [np.asarray(fn(block))[:n_valid] for block, n_valid in iter_chunks(x_NxD, chunk_size)]
  )


def per_class_mean(
  hits_N: ArrayLike, labels_N: ArrayLike, num_classes: int = 0
) -> list[float | None]:
  """For each class c < max(num_classes, the largest label + 1): the mean of `hits_N` over the
  entries labelled c; None for a class with no entries."""
  labels_N = np.asarray(labels_N)
  n = max(num_classes, int(labels_N.max(initial=-1)) + 1)
  counts = np.bincount(labels_N, minlength=n)
  sums = np.bincount(labels_N, weights=np.asarray(hits_N, np.float64), minlength=n)
  return [float(s / c) if c else None for s, c in zip(sums, counts)]


@jax.jit
def pairwise_sq_distances(a_NxD: ArrayLike, b_MxD: ArrayLike) -> jax.Array:
  """Squared Euclidean distances [N, M] via ||a||^2 + ||b||^2 - 2 a.b, clipped at 0.

  The expansion cancels badly far from the origin; callers that need accuracy
  should centre both sets with a common shift first (see `centre`).
  """
  a, b = as_f32(a_NxD), as_f32(b_MxD)
  ab_NxM = jnp.matmul(a, b.T, precision=_HIGHEST)
  d2 = jnp.sum(a * a, -1)[:, None] + jnp.sum(b * b, -1)[None, :] - 2.0 * ab_NxM
  return jnp.maximum(d2, 0.0)


def centre(ref_NxD: ArrayLike, *others: ArrayLike) -> tuple[jax.Array, ...]:
  """Subtracts the mean of `ref` from every set (distances are unchanged)."""
  ref = as_f32(ref_NxD)
  shift_D = jnp.mean(ref, axis=0)
  return (ref - shift_D,) + tuple(as_f32(o) - shift_D for o in others)


@functools.partial(jax.jit, static_argnames="k")
def _kth_smallest_sq(query_CxD: jax.Array, ref_MxD: jax.Array, k: int) -> jax.Array:
  neg_topk_CxK, _ = jax.lax.top_k(-pairwise_sq_distances(query_CxD, ref_MxD), k)
  return -neg_topk_CxK[:, -1]


def knn_sq_distances(
  query_NxD: ArrayLike, ref_MxD: ArrayLike, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> np.ndarray:
  """Squared distance [N] from each query point to its k-th nearest point in ref."""
  if not 1 <= k <= np.shape(ref_MxD)[0]:
    raise ValueError(f"need 1 <= k <= len(ref), got k={k}.")
  ref = as_f32(ref_MxD)
  return map_rows(lambda q: _kth_smallest_sq(q, ref, k), as_f32(query_NxD), chunk_size)


def knn_radii_sq(x_NxD: ArrayLike, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """Squared distance [N] from each point to its k-th nearest neighbour in x, itself excluded."""
  # Each point is its own nearest neighbour (distance 0), hence k + 1.
  return knn_sq_distances(x_NxD, x_NxD, k + 1, chunk_size=chunk_size)


def knn_radii(x_NxD: ArrayLike, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """Euclidean k-NN radius [N] of each point of x (itself excluded)."""
  (x,) = centre(x_NxD)
  return np.sqrt(knn_radii_sq(x, k, chunk_size=chunk_size))


@functools.partial(jax.jit, static_argnames="strict")
def _ball_counts(
  query_CxD: jax.Array, centres_MxD: jax.Array, radii_sq_M: jax.Array, strict: bool
) -> jax.Array:
  d2_CxM = pairwise_sq_distances(query_CxD, centres_MxD)
  inside_CxM = d2_CxM < radii_sq_M if strict else d2_CxM <= radii_sq_M
  return jnp.sum(inside_CxM, axis=-1)


def count_in_balls(
  query_NxD: ArrayLike,
  centres_MxD: ArrayLike,
  radii_sq_M: ArrayLike,
  *,
  strict: bool = False,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
  """Number [N] of balls B(centre_j, r_j) containing each query point.

  Membership is dist^2 <= r^2, or dist^2 < r^2 when `strict`.
  """
  centres, radii_sq = as_f32(centres_MxD), as_f32(radii_sq_M)
  return map_rows(
    lambda q: _ball_counts(q, centres, radii_sq, strict), as_f32(query_NxD), chunk_size
  )
