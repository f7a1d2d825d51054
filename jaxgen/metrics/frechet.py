"""Feature statistics and the Frechet distance (FID; Heusel et al., 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.metrics.distances import DEFAULT_CHUNK_SIZE, ArrayLike, as_f32, iter_chunks


@jax.jit
def _shifted_moments(
  x_CxD: jax.Array, shift_D: jax.Array, n_valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
  valid_C = jnp.arange(x_CxD.shape[0]) < n_valid
  xc_CxD = jnp.where(valid_C[:, None], x_CxD - shift_D, 0.0)
  return xc_CxD.sum(0), jnp.matmul(xc_CxD.T, xc_CxD, precision=jax.lax.Precision.HIGHEST)


def feature_statistics(
  feats_NxD: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (as np.cov(rowvar=False)), float64.

  Per-chunk moments are float32 on device, summed in float64 on the host.
  """
  x = as_f32(feats_NxD)
  n, d = x.shape
  if n < 2:
    raise ValueError(f"need at least 2 samples, got {n}.")
  # Moments about a shift near the mean barely cancel in float32; the exact
  # correction for the shift is applied below (shifted-data algorithm).
  shift_D = jnp.mean(x[:chunk_size], axis=0)
  sum_D, gram_DxD = np.zeros(d), np.zeros((d, d))
  for block, n_valid in iter_chunks(x, chunk_size):
    s, g = _shifted_moments(block, shift_D, n_valid)
    sum_D += np.asarray(s, np.float64)
    gram_DxD += np.asarray(g, np.float64)
  mu_D = np.asarray(shift_D, np.float64) + sum_D / n
  sigma_DxD = (gram_DxD - np.outer(sum_D, sum_D) / n) / (n - 1)
  return mu_D, sigma_DxD


def _psd_sqrt(s_DxD: np.ndarray) -> np.ndarray:
  w_D, v_DxD = np.linalg.eigh(s_DxD)
  return (v_DxD * np.sqrt(np.clip(w_D, 0.0, None))) @ v_DxD.T


def frechet_distance(
  mu1_D: ArrayLike, sigma1_DxD: ArrayLike, mu2_D: ArrayLike, sigma2_DxD: ArrayLike
) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between two Gaussians, in float64.

  Tr (S1 S2)^{1/2} = sum of sqrt(eig(S1^{1/2} S2 S1^{1/2})): a symmetric PSD
  matrix with the same spectrum as S1 S2, so no complex sqrtm is needed.
  """
  mu1, mu2 = np.asarray(mu1_D, np.float64), np.asarray(mu2_D, np.float64)
  s1, s2 = np.asarray(sigma1_DxD, np.float64), np.asarray(sigma2_DxD, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"shape mismatch: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}.")
  sqrt_s1 = _psd_sqrt((s1 + s1.T) / 2)
  m_DxD = sqrt_s1 @ s2 @ sqrt_s1
  tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m_DxD + m_DxD.T) / 2), 0.0, None)).sum()
  diff_D = mu1 - mu2
  return float(diff_D @ diff_D + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(
  feats1_NxD: ArrayLike, feats2_MxD: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> float:
  """Frechet distance between Gaussians fitted to two feature sets."""
  return frechet_distance(
    *feature_statistics(feats1_NxD, chunk_size=chunk_size),
    *feature_statistics(feats2_MxD, chunk_size=chunk_size),
  )
