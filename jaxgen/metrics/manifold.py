"""k-NN manifold metrics: precision/recall and density/coverage."""

from __future__ import annotations

import numpy as np

from jaxgen.metrics.distances import (
  DEFAULT_CHUNK_SIZE,
  ArrayLike,
  centre,
  count_in_balls,
  knn_radii_sq,
  knn_sq_distances,
  per_class_mean,
)


def precision_recall(
  real_NxD: ArrayLike, fake_MxD: ArrayLike, *, k: int = 3, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> dict[str, float]:
  """Improved precision and recall (Kynkaanniemi et al., 2019).

  precision: fraction of fake points within (<=) the k-NN ball of some real point.
  recall: fraction of real points within the k-NN ball of some fake point.
  Radii are k-NN distances within each set, excluding the point itself.
  """
  real, fake = centre(real_NxD, fake_MxD)
  real_r2 = knn_radii_sq(real, k, chunk_size=chunk_size)
  fake_r2 = knn_radii_sq(fake, k, chunk_size=chunk_size)
  precision = np.mean(count_in_balls(fake, real, real_r2, chunk_size=chunk_size) > 0)
  recall = np.mean(count_in_balls(real, fake, fake_r2, chunk_size=chunk_size) > 0)
  return dict(precision=float(precision), recall=float(recall))


def density_coverage(
  real_NxD: ArrayLike,
  fake_MxD: ArrayLike,
  *,
  k: int = 5,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
  real_labels_N: ArrayLike | None = None,
  num_classes: int = 0,
) -> dict:
  """Density and coverage (Naeem et al., 2020), with real k-NN radii r_i.

  density = sum_j #{i: fake_j in B(real_i, r_i)} / (k M);
  coverage = fraction of real balls B(real_i, r_i) holding at least one fake point.
  Ball membership is strict (dist < r), as in the reference implementation.
  With `real_labels_N`: also `coverage_per_class`, for each class c < max(num_classes, the
  labels' largest + 1) the coverage of the real points labelled c (None where there are none):
  which real classes the fakes do not reach.
  """
  real, fake = centre(real_NxD, fake_MxD)
  real_r2 = knn_radii_sq(real, k, chunk_size=chunk_size)
  counts_M = count_in_balls(fake, real, real_r2, strict=True, chunk_size=chunk_size)
  nearest_fake_sq_N = knn_sq_distances(real, fake, 1, chunk_size=chunk_size)
  density = counts_M.sum() / (k * fake.shape[0])
  covered_N = nearest_fake_sq_N < real_r2
  out = dict(density=float(density), coverage=float(np.mean(covered_N)))
  if real_labels_N is not None:
    out["coverage_per_class"] = per_class_mean(covered_N, real_labels_N, num_classes)
  return out
