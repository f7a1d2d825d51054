"""Kernel Inception Distance (KID; Binkowski et al., 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.metrics.distances import DEFAULT_CHUNK_SIZE, ArrayLike, as_f32, map_rows


def kid_subset_indices(
  n_real: int, n_fake: int, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """Row indices (real [S, m], fake [S, m]) of the random subsets used by KID.

  m = min(subset_size, n_real, n_fake); each subset is drawn without replacement.
  """
  m = min(subset_size, n_real, n_fake)
  if m < 2:
    raise ValueError(f"KID needs subsets of at least 2 points, got {m}.")
  rng = np.random.default_rng(seed)
  idx_real_SxM = np.stack([rng.choice(n_real, m, replace=False) for _ in range(num_subsets)])
  idx_fake_SxM = np.stack([rng.choice(n_fake, m, replace=False) for _ in range(num_subsets)])
  return idx_real_SxM, idx_fake_SxM


def _kernel_minus_one(a_NxD: jax.Array, b_MxD: jax.Array) -> jax.Array:
  # k(x, y) - 1 with k = (x.y / D + 1)^3. The constant 1 cancels exactly in the
  # unbiased MMD^2, and dropping it saves float32 precision in the sums; it also
  # makes zero padding rows contribute exactly 0.
  u = jnp.matmul(a_NxD, b_MxD.T, precision=jax.lax.Precision.HIGHEST) / a_NxD.shape[-1]
  return u * (u * (u + 3.0) + 3.0)


@jax.jit
def _kernel_row_sums(a_CxD: jax.Array, b_MxD: jax.Array) -> jax.Array:
  return _kernel_minus_one(a_CxD, b_MxD).sum(-1)


@jax.jit
def _kernel_diag(x_NxD: jax.Array) -> jax.Array:
  u = jnp.sum(x_NxD * x_NxD, -1) / x_NxD.shape[-1]
  return u * (u * (u + 3.0) + 3.0)


def polynomial_mmd2(
  x_NxD: ArrayLike, y_NxD: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> float:
  """Unbiased MMD^2 between equal-sized sets, cubic kernel (x.y / D + 1)^3.

  (sum_{i!=j} k(x_i,x_j) + sum_{i!=j} k(y_i,y_j)) / (m(m-1)) - 2 sum_ij k(x_i,y_j) / m^2.
  """
  x, y = as_f32(x_NxD), as_f32(y_NxD)
  m = x.shape[0]
  if y.shape[0] != m:
    raise ValueError(f"sets must have equal size, got {m} and {y.shape[0]}.")
  row_sum = lambda a, b: map_rows(lambda blk: _kernel_row_sums(blk, b), a, chunk_size)
  diag_sum = lambda a: np.asarray(_kernel_diag(a), np.float64).sum()
  kxx = row_sum(x, x).sum(dtype=np.float64) - diag_sum(x)
  kyy = row_sum(y, y).sum(dtype=np.float64) - diag_sum(y)
  kxy = row_sum(x, y).sum(dtype=np.float64)
  return float((kxx + kyy) / (m * (m - 1)) - 2.0 * kxy / m**2)


def kernel_inception_distance(
  real_NxD: ArrayLike,
  fake_MxD: ArrayLike,
  *,
  num_subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 0,
  chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
  """Mean and std (over random subsets) of the unbiased polynomial-kernel MMD^2.

  Subsets are `kid_subset_indices(len(real), len(fake), ...)`.
  """
  real, fake = as_f32(real_NxD), as_f32(fake_MxD)
  idx_real, idx_fake = kid_subset_indices(
    real.shape[0], fake.shape[0], num_subsets=num_subsets, subset_size=subset_size, seed=seed
  )
  mmds = np.array(
    [
      polynomial_mmd2(real[ir], fake[jf], chunk_size=chunk_size)
      for ir, jf in zip(idx_real, idx_fake)
    ]
  )
  return dict(mean=float(mmds.mean()), std=float(mmds.std()))
