"""Sample-quality metrics on precomputed features / classifier logits.

All functions are pure: arrays in ([N, D] features or [N, K] logits), Python
floats (or dicts of floats) out. Pairwise work is chunked and runs on device.
"""

from jaxgen.metrics.classifier import (
  conditional_accuracy,
  conditional_accuracy_per_class,
  inception_score,
)
from jaxgen.metrics.distances import (
  count_in_balls,
  knn_radii,
  knn_sq_distances,
  pairwise_sq_distances,
)
from jaxgen.metrics.duplicates import duplicate_rate, duplicate_threshold
from jaxgen.metrics.frechet import (
  feature_statistics,
  frechet_distance,
  frechet_distance_from_features,
)
from jaxgen.metrics.kid import kernel_inception_distance, kid_subset_indices, polynomial_mmd2
from jaxgen.metrics.manifold import density_coverage, precision_recall
from jaxgen.metrics.memorization import (
  memorization_rate,
  memorization_threshold,
  nearest_neighbours,
)

__all__ = [
  "conditional_accuracy",
  "conditional_accuracy_per_class",
  "count_in_balls",
  "density_coverage",
  "duplicate_rate",
  "duplicate_threshold",
  "feature_statistics",
  "frechet_distance",
  "frechet_distance_from_features",
  "inception_score",
  "kernel_inception_distance",
  "kid_subset_indices",
  "knn_radii",
  "knn_sq_distances",
  "memorization_rate",
  "memorization_threshold",
  "nearest_neighbours",
  "pairwise_sq_distances",
  "polynomial_mmd2",
  "precision_recall",
]
