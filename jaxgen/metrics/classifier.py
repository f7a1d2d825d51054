"""Metrics on classifier outputs: Inception Score and conditional accuracy (overall, per class)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.metrics.distances import ArrayLike, as_f32, per_class_mean


@jax.jit
def _mean_kl_to_marginal(logits_NxK: jax.Array) -> jax.Array:
  logp_NxK = jax.nn.log_softmax(logits_NxK, axis=-1)
  log_py_K = jax.nn.logsumexp(logp_NxK, axis=0) - jnp.log(logp_NxK.shape[0])
  return jnp.mean(jnp.sum(jnp.exp(logp_NxK) * (logp_NxK - log_py_K), axis=-1))


def inception_score(logits_NxK: ArrayLike, *, num_splits: int = 10) -> dict[str, float]:
  """Inception Score (Salimans et al., 2016): mean and std over splits.

  Per split: exp(mean_i KL(p(y|x_i) || p(y))), p(y) the split's mean prediction.
  Split s holds rows [s N // num_splits, (s + 1) N // num_splits).
  """
  logits = as_f32(logits_NxK)
  n = logits.shape[0]
  if not 1 <= num_splits <= n:
    raise ValueError(f"need 1 <= num_splits <= N, got {num_splits} and N={n}.")
  bounds = [s * n // num_splits for s in range(num_splits + 1)]
  scores = np.exp(
    [float(_mean_kl_to_marginal(logits[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]
  )
  return dict(mean=float(scores.mean()), std=float(scores.std()))


def conditional_accuracy(logits_NxK: ArrayLike, labels_N: ArrayLike) -> float:
  """Fraction of samples whose classifier argmax equals the label they were generated for."""
  return float(jnp.mean(jnp.argmax(jnp.asarray(logits_NxK), -1) == jnp.asarray(labels_N)))


def conditional_accuracy_per_class(
  logits_NxK: ArrayLike, labels_N: ArrayLike
) -> list[float | None]:
  """For each class k (those of the classifier's K and of the labels): the fraction of the
  samples generated for k that it reads as k; None for a class no sample was generated for."""
  pred_N = np.argmax(np.asarray(logits_NxK), -1)
  labels_N = np.asarray(labels_N)
  return per_class_mean(pred_N == labels_N, labels_N, np.shape(logits_NxK)[-1])
