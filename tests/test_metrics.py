"""Metrics vs brute-force NumPy/SciPy references on small random sets."""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from jaxgen import metrics

RTOL = 1e-4


def _gaussian(seed, n, d, *, shift=0.0, scale=1.0):
  rng = np.random.default_rng(seed)
  mix_DxD = np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features
  return (shift + scale * rng.normal(size=(n, d)) @ mix_DxD).astype(np.float32)


@pytest.fixture(scope="module")
def real():
  return _gaussian(0, 300, 16, shift=10.0)  # off-origin, to exercise centring


@pytest.fixture(scope="module")
def fake():
  return _gaussian(1, 250, 16, shift=10.3, scale=1.2)


# ----------------------------------------------------------------------------- distances


def test_pairwise_sq_distances_matches_cdist(real, fake):
  a, b = metrics.distances.centre(real, fake)
  np.testing.assert_allclose(
    metrics.pairwise_sq_distances(a, b),
    cdist(real.astype(np.float64), fake, "sqeuclidean"),
    rtol=RTOL,
    atol=1e-4,
  )


@pytest.mark.parametrize("k", [1, 3])
def test_knn_radii_matches_bruteforce(real, k):
  ref_N = np.sort(cdist(real, real), axis=1)[:, k]  # column 0 is the point itself
  np.testing.assert_allclose(metrics.knn_radii(real, k), ref_N, rtol=RTOL)
  np.testing.assert_allclose(metrics.knn_radii(real, k, chunk_size=64), ref_N, rtol=RTOL)


# ----------------------------------------------------------------------------- Frechet


def _scipy_frechet(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_feature_statistics_matches_numpy(real):
  mu, sigma = metrics.feature_statistics(real, chunk_size=64)  # 300 rows: 5 chunks, padded last
  ref = real.astype(np.float64)
  np.testing.assert_allclose(mu, ref.mean(0), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), rtol=RTOL, atol=1e-6)


def test_frechet_distance_matches_scipy_sqrtm(real, fake):
  ref_real = (real.mean(0), np.cov(real.astype(np.float64), rowvar=False))
  ref_fake = (fake.mean(0), np.cov(fake.astype(np.float64), rowvar=False))
  expected = _scipy_frechet(*ref_real, *ref_fake)
  assert metrics.frechet_distance(*ref_real, *ref_fake) == pytest.approx(expected, rel=1e-6)
  assert metrics.frechet_distance_from_features(real, fake) == pytest.approx(expected, rel=RTOL)
  assert metrics.frechet_distance_from_features(real, fake, chunk_size=64) == pytest.approx(
    expected, rel=RTOL
  )


def test_frechet_distance_exact_parameters():
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
  s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)  # 5 + 4 + 1
  assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
  # Same spectra in a common rotated basis: still commuting, same answer.
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
  assert metrics.frechet_distance(
    mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T
  ) == pytest.approx(expected)


def test_frechet_distance_sampled_gaussians_near_closed_form():
  rng = np.random.default_rng(0)
  s1, s2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 1.0, 1.0, 4.0])
  a = rng.normal(size=(20000, 4)) * np.sqrt(s1)
  b = rng.normal(size=(20000, 4)) * np.sqrt(s2) + np.array([1.0, 0, 0, 0])
  expected = 1.0 + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  assert metrics.frechet_distance_from_features(a, b) == pytest.approx(expected, abs=0.1)


def test_frechet_distance_of_set_with_itself_is_zero(real):
  assert abs(metrics.frechet_distance_from_features(real, real)) < 1e-3
  few = _gaussian(2, 20, 64)  # N < D: singular covariance, must stay finite
  assert abs(metrics.frechet_distance_from_features(few, few)) < 1e-3


# ----------------------------------------------------------------------------- KID


def _numpy_mmd2(x, y):
  x, y = x.astype(np.float64), y.astype(np.float64)
  m, d = x.shape
  kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
  within = kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)
  return within / (m * (m - 1)) - 2 * kxy.sum() / m**2


@pytest.fixture(scope="module")
def kid_sets():
  # KID's kernel is not translation-invariant: use centred-ish sets, as for Inception features.
  return _gaussian(3, 300, 16), _gaussian(4, 250, 16, shift=0.3, scale=1.2)


def test_kid_full_set_matches_numpy(kid_sets):
  x, y = kid_sets[0][:250], kid_sets[1]
  kid = metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=10**6, chunk_size=64)
  assert kid["mean"] == pytest.approx(_numpy_mmd2(x, y), rel=RTOL)
  assert kid["std"] == 0.0


def test_kid_subsets_match_numpy(kid_sets):
  x, y = kid_sets
  kw = dict(num_subsets=5, subset_size=100, seed=7)
  idx_x, idx_y = metrics.kid_subset_indices(len(x), len(y), **kw)
  assert idx_x.shape == idx_y.shape == (5, 100)
  ref = np.array([_numpy_mmd2(x[i], y[j]) for i, j in zip(idx_x, idx_y)])
  kid = metrics.kernel_inception_distance(x, y, **kw)
  assert kid["mean"] == pytest.approx(ref.mean(), rel=RTOL)
  assert kid["std"] == pytest.approx(ref.std(), rel=1e-3)
  assert metrics.kernel_inception_distance(x, y, **kw, chunk_size=32) == pytest.approx(
    kid, rel=1e-5
  )


def test_kid_same_distribution_near_zero():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2, 1000, 64)).astype(np.float32)  # independent draws, same law
  z = (1.1 * rng.normal(size=(1000, 64)) + 0.1).astype(np.float32)
  kw = dict(num_subsets=10, subset_size=500)
  same = metrics.kernel_inception_distance(x, y, **kw)["mean"]
  diff = metrics.kernel_inception_distance(x, z, **kw)["mean"]
  assert abs(same) < 2e-3 and diff > 10 * abs(same)


def test_kid_of_set_with_itself(kid_sets):
  # Identical (not independent) sets: the unbiased estimator is not 0 but
  # -2 (mean_i k(x_i, x_i) - mean_ij k(x_i, x_j)) / (m - 1), an O(1/m) bias.
  x = kid_sets[0].astype(np.float64)
  k_NxN = (x @ x.T / x.shape[1] + 1) ** 3
  expected = -2 * (np.mean(np.diag(k_NxN)) - k_NxN.mean()) / (len(x) - 1)
  kid = metrics.kernel_inception_distance(x, x, num_subsets=3, subset_size=len(x))
  assert kid["mean"] == pytest.approx(expected, rel=RTOL)
  assert kid["std"] < 1e-6 * abs(expected)


# ----------------------------------------------------------------------------- Inception Score


def _numpy_inception_score(logits, num_splits):
  logits = logits.astype(np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  scores = []
  bounds = [s * len(p) // num_splits for s in range(num_splits + 1)]
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    part = p[lo:hi]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


def test_inception_score_matches_numpy():
  logits = 3.0 * np.random.default_rng(0).normal(size=(305, 10)).astype(np.float32)
  mean, std = _numpy_inception_score(logits, 4)
  score = metrics.inception_score(logits, num_splits=4)
  assert score["mean"] == pytest.approx(mean, rel=RTOL)
  assert score["std"] == pytest.approx(std, rel=1e-3)


def test_inception_score_extremes():
  k = 10
  confident_balanced = 100.0 * np.tile(np.eye(k), (20, 1))
  assert metrics.inception_score(confident_balanced, num_splits=2)["mean"] == pytest.approx(k)
  assert metrics.inception_score(np.zeros((200, k)), num_splits=2)["mean"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- k-NN manifold


def _bruteforce_manifold(real, fake, k_pr, k_dc):
  d_rr, d_ff, d_fr = cdist(real, real), cdist(fake, fake), cdist(fake, real)
  r_pr = np.sort(d_rr, 1)[:, k_pr]
  f_pr = np.sort(d_ff, 1)[:, k_pr]
  r_dc = np.sort(d_rr, 1)[:, k_dc]
  return dict(
    precision=np.mean((d_fr <= r_pr[None]).any(1)),
    recall=np.mean((d_fr.T <= f_pr[None]).any(1)),
    density=(d_fr < r_dc[None]).sum() / (k_dc * len(fake)),
    coverage=np.mean(d_fr.min(0) < r_dc),
  )


@pytest.mark.parametrize("chunk_size", [1024, 64])
def test_manifold_metrics_match_bruteforce(real, fake, chunk_size):
  ref = _bruteforce_manifold(real.astype(np.float64), fake.astype(np.float64), 3, 5)
  assert 0.05 < ref["precision"] < 0.95 and 0.05 < ref["coverage"] < 0.95  # non-trivial values
  got = {
    **metrics.precision_recall(real, fake, k=3, chunk_size=chunk_size),
    **metrics.density_coverage(real, fake, k=5, chunk_size=chunk_size),
  }
  assert got == pytest.approx(ref, rel=RTOL)


def test_manifold_metrics_ball_boundary_conventions():
  # 1-D points with exact float32 distances and ties on ball boundaries (k = 1).
  # Real radii: 0 -> 1, 1 -> 1, 5 -> 4. Fake radii: 2 -> 7, 9 -> 7, 20 -> 11.
  real, fake = np.array([[0.0], [1.0], [5.0]]), np.array([[2.0], [9.0], [20.0]])
  # Precision/recall count the boundary (<=): fake 2 is on ball(1), fake 9 on ball(5).
  assert metrics.precision_recall(real, fake, k=1) == pytest.approx(
    dict(precision=2 / 3, recall=1.0)
  )
  # Density/coverage do not (<): only fake 2 lies strictly inside ball(5).
  assert metrics.density_coverage(real, fake, k=1) == pytest.approx(
    dict(density=1 / 3, coverage=1 / 3)
  )


def test_coverage_per_class_is_each_real_classs_covered_fraction():
  # 1-D, k = 1. Real radii: 0 -> 1, 1 -> 1, 5 -> 4, 10 -> 5. Fakes at 0.5 and 9: inside the balls
  # of 0, 1 (both within 1 of 0.5) and 10 (1 < 5), not of 5 (4.5 and 4 are not < 4).
  real, fake = np.array([[0.0], [1.0], [5.0], [10.0]]), np.array([[0.5], [9.0]])
  got = metrics.density_coverage(real, fake, k=1, real_labels_N=np.array([0, 2, 2, 0]))
  assert got["coverage"] == 0.75
  assert got["coverage_per_class"] == [1.0, None, 0.5]  # class 1 has no real points
  wider = metrics.density_coverage(real, fake, k=1, real_labels_N=np.zeros(4, int), num_classes=3)
  assert wider["coverage_per_class"] == [0.75, None, None]
  assert "coverage_per_class" not in metrics.density_coverage(real, fake, k=1)


def test_collapsed_generator_has_no_recall_or_coverage(real):
  collapsed = np.repeat(real[:1], len(real), axis=0)
  pr = metrics.precision_recall(real, collapsed)
  dc = metrics.density_coverage(real, collapsed)
  assert pr["precision"] > 0.99  # the one mode sits on the real manifold...
  assert pr["recall"] < 0.02 and dc["coverage"] < 0.05  # ...but covers almost none of it


# ----------------------------------------------------------------------------- accuracy


def test_conditional_accuracy():
  logits = np.array([[5.0, 0.0, 1.0], [0.0, 2.0, -1.0], [0.0, 0.0, 3.0], [1.0, 0.5, 0.0]])
  assert metrics.conditional_accuracy(logits, np.array([0, 1, 2, 0])) == 1.0
  assert metrics.conditional_accuracy(logits, np.array([0, 1, 1, 2])) == 0.5
  assert metrics.conditional_accuracy(logits, np.array([1, 0, 0, 1])) == 0.0


def test_conditional_accuracy_per_class_by_hand():
  # argmax per row: 0, 1, 2, 0, 1; requested: 0, 1, 1, 0, 0 (nothing requested class 2)
  logits = np.array([[5.0, 0, 1], [0, 2, -1], [0, 0, 3], [1, 0.5, 0], [0, 1, 0]])
  per_class = metrics.conditional_accuracy_per_class(logits, np.array([0, 1, 1, 0, 0]))
  assert per_class == [2 / 3, 1 / 2, None]
  # a generator class the classifier lacks (label 3 of K=3) counts, as in the overall figure
  per_class = metrics.conditional_accuracy_per_class(logits, np.array([0, 1, 2, 3, 3]))
  assert per_class == [1.0, 1.0, 1.0, 0.0]


# ----------------------------------------------------------------------------- duplicates


def _bruteforce_duplicates(real, fake, percentile):
  d_rr, d_ff = cdist(real, real), cdist(fake, fake)
  np.fill_diagonal(d_rr, np.inf)
  np.fill_diagonal(d_ff, np.inf)
  t = np.percentile(d_rr.min(1), percentile)
  return d_ff.min(1), t


def _float32_sq_error(*sets):
  # The expansion ||a||^2 + ||b||^2 - 2 a.b (after centring) errs by a few float32 ulps of its
  # largest term: 8 eps |x|^2_max bounds it with room to spare.
  return (
    8 * np.finfo(np.float32).eps * max(float(np.max(np.sum((s - s.mean(0)) ** 2, 1))) for s in sets)
  )


@pytest.mark.parametrize("percentile", [1.0, 10.0])
def test_duplicate_rate_matches_bruteforce(real, fake, percentile):
  fake = fake[:200]
  fake = np.concatenate([fake[:150], fake[100:150] + 1e-4]).astype(np.float32)  # 50 near-copies
  nn_ref, t_ref = _bruteforce_duplicates(
    real.astype(np.float64), fake.astype(np.float64), percentile
  )
  sq_err = _float32_sq_error(real, fake)
  # No distance so close to the threshold that float32 could put it on the other side.
  assert np.all(np.abs(nn_ref**2 - t_ref**2) > 2 * sq_err)
  got = metrics.duplicate_rate(real, fake, percentile=percentile, chunk_size=64)
  assert got["duplicate_rate"] == np.mean(nn_ref < t_ref)
  assert got["duplicate_rate"] >= 100 / 200  # the 50 pairs, at least
  np.testing.assert_allclose(got["duplicate_threshold"], t_ref, rtol=sq_err / t_ref**2)


def test_duplicate_rate_of_real_data_is_its_percentile_and_of_a_repeater_is_one(real):
  other = _gaussian(0, 600, 16, shift=10.0)[300:]  # same distribution and size as `real`
  rate = metrics.duplicate_rate(real, other)["duplicate_rate"]
  assert rate < 0.05  # about 1% (the 1st percentile); 3 of 300 expected, 15 allowed
  repeated = np.repeat(real[:10], 30, axis=0)  # 10 distinct images, each drawn 30 times
  assert metrics.duplicate_rate(real, repeated)["duplicate_rate"] == 1.0
  with pytest.raises(ValueError, match=">= 2 points"):
    metrics.duplicate_rate(real, real[:1])
