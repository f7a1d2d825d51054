"""Near-duplicate samples: how many samples have another sample closer than real data ever is."""

from __future__ import annotations

import numpy as np

from jaxgen.metrics.distances import DEFAULT_CHUNK_SIZE, ArrayLike, centre, knn_radii_sq

DUPLICATE_PERCENTILE = 1.0


def duplicate_threshold(
  real_NxD: ArrayLike,
  *,
  percentile: float = DUPLICATE_PERCENTILE,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> float:
  """The `percentile`-th percentile (numpy's linear interpolation) of the real points'
  nearest-neighbour distances d_i = min_{j != i} ||real_i - real_j||: "closer than real data
  almost ever is"."""
  (real,) = centre(real_NxD)
  nn_N = np.sqrt(np.asarray(knn_radii_sq(real, 1, chunk_size=chunk_size), np.float64))
  return float(np.percentile(nn_N, percentile))


def duplicate_rate(
  real_NxD: ArrayLike,
  fake_MxD: ArrayLike,
  *,
  percentile: float = DUPLICATE_PERCENTILE,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
  """Fraction of fake points whose nearest *other* fake point is closer than the threshold.

  duplicate_rate = #{j : min_{l != j} ||fake_j - fake_l|| < t} / M, with
  t = duplicate_threshold(real) (returned as duplicate_threshold). Real data scored the same
  way (another real set of N points in place of fake) gives about percentile / 100; a generator
  that repeats itself gives up to 1. Nearest-neighbour distances shrink as sets grow, so compare
  rates of sets of equal size. Exact copies count (distance 0 < t whenever t > 0).
  """
  if np.shape(real_NxD)[0] < 2 or np.shape(fake_MxD)[0] < 2:
    raise ValueError(
      f"duplicate_rate needs >= 2 points in each set, got "
      f"{np.shape(real_NxD)[0]} real and {np.shape(fake_MxD)[0]} fake."
    )
  t = duplicate_threshold(real_NxD, percentile=percentile, chunk_size=chunk_size)
  (fake,) = centre(fake_MxD)
  nn_sq_M = np.asarray(knn_radii_sq(fake, 1, chunk_size=chunk_size), np.float64)
  return dict(duplicate_rate=float(np.mean(np.sqrt(nn_sq_M) < t)), duplicate_threshold=t)
