"""Sample quality in feature space (FD, KID, IS, precision/recall, density/coverage, diversity,
duplicates, conditional accuracy) and the flags that read them against their floor."""

import numpy as np

from jaxgen import metrics

COLLAPSE_FRACTION = 0.5  # recall, coverage, diversity under this x floor: "low"
COLLAPSE_METRICS = ("recall", "coverage", "diversity")
HIGH_PRECISION_FRACTION = 0.75  # precision at least this x floor counts as high
# Duplicate rates over DUPLICATE_FACTOR x floor (and over DUPLICATE_MIN_RATE, since a floor of
# about 1% of a few hundred samples can be 0) suggest collapse.
DUPLICATE_FACTOR, DUPLICATE_MIN_RATE = 3.0, 0.05
LOW_COVERAGE, MODE_COLLAPSE = "low diversity or coverage", "possible mode collapse"
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
PRECISION_RECALL_K, DENSITY_COVERAGE_K, IS_SPLITS = 3, 5, 10
DIVERSITY_POINTS = 2000


def mean_pairwise_distance(feats_NxD: np.ndarray, max_points: int = DIVERSITY_POINTS) -> float:
  """Sample diversity: mean Euclidean distance between distinct points (first `max_points`)."""
  x = np.asarray(feats_NxD[:max_points], np.float32)
  n = len(x)
  x = x - x.mean(0)
  d = np.sqrt(np.asarray(metrics.pairwise_sq_distances(x, x), np.float64))
  return float(d.sum() / max(n * (n - 1), 1))


def sample_metrics(
  real_NxD: np.ndarray,
  fake_MxD: np.ndarray,
  fake_logits_MxK: np.ndarray,
  fake_labels_M: np.ndarray | None = None,
  seed: int = 0,
  real_labels_N: np.ndarray | None = None,
) -> dict[str, float | list[float | None]]:
  """FD, KID, IS, precision/recall, density/coverage, diversity; with `fake_labels_M` (the
  classes the samples were drawn for) conditional accuracy, overall and per class (a list);
  with `real_labels_N` (the real images' classes) coverage per class of the real images."""
  kid = metrics.kernel_inception_distance(
    real_NxD, fake_MxD, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=seed
  )
  inception = metrics.inception_score(fake_logits_MxK, num_splits=min(IS_SPLITS, len(fake_MxD)))
  out = dict(
    fd=metrics.frechet_distance_from_features(real_NxD, fake_MxD),
    kid=kid["mean"],
    kid_std=kid["std"],
    inception_score=inception["mean"],
    inception_score_std=inception["std"],
    **metrics.precision_recall(real_NxD, fake_MxD, k=PRECISION_RECALL_K),
    **metrics.density_coverage(
      real_NxD,
      fake_MxD,
      k=DENSITY_COVERAGE_K,
      real_labels_N=real_labels_N,
      num_classes=np.shape(fake_logits_MxK)[-1],
    ),
    diversity=mean_pairwise_distance(fake_MxD),
    **metrics.duplicate_rate(real_NxD, fake_MxD),
  )
  if fake_labels_M is not None:
    out["conditional_accuracy"] = metrics.conditional_accuracy(fake_logits_MxK, fake_labels_M)
    out["conditional_accuracy_per_class"] = metrics.conditional_accuracy_per_class(
      fake_logits_MxK, fake_labels_M
    )
  return out


def sample_flags(values: dict, floor: dict, fraction: float = COLLAPSE_FRACTION) -> list[str]:
  """ "kind: evidence" lines, the evidence starting with the metric it marks in the table.

  LOW_COVERAGE: one line per metric of COLLAPSE_METRICS below `fraction` x its floor.
  MODE_COLLAPSE: recall low while precision stays high (>= HIGH_PRECISION_FRACTION x floor:
  samples on the real manifold, but few places of it); or a duplicate rate above
  DUPLICATE_FACTOR x its floor and DUPLICATE_MIN_RATE (samples repeat one another).
  """
  low = lambda k: k in values and floor.get(k) and values[k] < fraction * floor[k]
  flags = [
    f"{LOW_COVERAGE}: {k} {values[k]:.3g} < {fraction:g} x floor {floor[k]:.3g}"
    for k in COLLAPSE_METRICS
    if low(k)
  ]
  if (
    low("recall")
    and floor.get("precision")
    and (values.get("precision", 0) >= HIGH_PRECISION_FRACTION * floor["precision"])
  ):
    flags.append(
      f"{MODE_COLLAPSE}: recall {values['recall']:.3g} < {fraction:g} x floor "
      f"{floor['recall']:.3g} with precision {values['precision']:.3g} >= "
      f"{HIGH_PRECISION_FRACTION:g} x floor {floor['precision']:.3g}"
    )
  dup, dup_floor = values.get("duplicate_rate"), floor.get("duplicate_rate")
  if (
    dup is not None
    and dup_floor is not None
    and dup > max(DUPLICATE_FACTOR * dup_floor, DUPLICATE_MIN_RATE)
  ):
    flags.append(
      f"{MODE_COLLAPSE}: duplicate_rate {dup:.3g} > {DUPLICATE_FACTOR:g} x floor "
      f"{dup_floor:.3g} (and > {DUPLICATE_MIN_RATE:g}): samples repeat one another"
    )
  return flags


def flag_kind_and_evidence(flag: str) -> tuple[str, str]:
  """(kind, evidence) of a flag; flags written before the kinds existed read as LOW_COVERAGE."""
  for kind in (LOW_COVERAGE, MODE_COLLAPSE):
    if flag.startswith(kind + ": "):
      return kind, flag[len(kind) + 2 :]
  return LOW_COVERAGE, flag
