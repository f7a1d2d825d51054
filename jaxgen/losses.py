"""Losses as pure array functions: adversarial losses, ELBO terms, likelihood bounds.

Nothing here knows a model's internals; every function maps arrays to arrays.
Logits are pre-sigmoid discriminator outputs (real > 0).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------- adversarial


def d_loss_standard(real_logits_B: jnp.ndarray, fake_logits_B: jnp.ndarray) -> jnp.ndarray:
  """-E[log D(x)] - E[log(1 - D(G(z)))], the discriminator's cross-entropy (scalar)."""
  return jnp.mean(jax.nn.softplus(-real_logits_B)) + jnp.mean(jax.nn.softplus(fake_logits_B))


def g_loss_nonsaturating(fake_logits_B: jnp.ndarray) -> jnp.ndarray:
  """-E[log D(G(z))] (Goodfellow et al. 2014, the non-saturating heuristic; scalar)."""
  return jnp.mean(jax.nn.softplus(-fake_logits_B))


def g_loss_minimax(fake_logits_B: jnp.ndarray) -> jnp.ndarray:
  """E[log(1 - D(G(z)))], the generator's side of the original min-max game (scalar)."""
  return -jnp.mean(jax.nn.softplus(fake_logits_B))


def d_loss_hinge(real_logits_B: jnp.ndarray, fake_logits_B: jnp.ndarray) -> jnp.ndarray:
  """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))] (scalar)."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits_B)) + jnp.mean(jax.nn.relu(1.0 + fake_logits_B))


def g_loss_hinge(fake_logits_B: jnp.ndarray) -> jnp.ndarray:
  """-E[D(G(z))] (scalar)."""
  return -jnp.mean(fake_logits_B)


def r1_penalty(
  d_fn: Callable[[jnp.ndarray], jnp.ndarray], real_BxHxWxC: jnp.ndarray, gamma: float
) -> jnp.ndarray:
  """gamma/2 * E_x ||grad_x D(x)||^2 on real images, the zero-centred gradient penalty R1
  (Mescheder et al. 2018; scalar). `d_fn`: images [B, H, W, C] -> logits [B]. The gradient is
  that of sum_b D(x_b), i.e. each image's own gradient when D treats examples independently
  (a discriminator without BatchNorm in training mode)."""
  grad = jax.grad(lambda x: jnp.sum(d_fn(x)))(real_BxHxWxC)
  return 0.5 * gamma * jnp.mean(jnp.sum(jnp.square(grad), axis=tuple(range(1, grad.ndim))))


def mode_seeking(
  fake_PAIRx2xHxWxC: jnp.ndarray, z_PAIRx2xZ: jnp.ndarray, eps: float = 1e-5
) -> jnp.ndarray:
  """1 / (E|G(z1) - G(z2)| / E|z1 - z2| + eps) over pairs of images drawn for the same label
  from two latents, the mode-seeking term G minimises (MSGAN, Mao et al. 2019; scalar): small
  when images move with their latents, large when G maps different latents to one image. Pairs
  on axis 1; the means run over every pair, pixel and latent dimension, as MSGAN's code does."""
  image = jnp.mean(jnp.abs(fake_PAIRx2xHxWxC[:, 0] - fake_PAIRx2xHxWxC[:, 1]))
  latent = jnp.mean(jnp.abs(z_PAIRx2xZ[:, 0] - z_PAIRx2xZ[:, 1]))
  return 1.0 / (image / latent + eps)


GAN_LOSSES = {
  # name: (discriminator loss, generator loss)
  "nonsaturating": (d_loss_standard, g_loss_nonsaturating),
  "minimax": (d_loss_standard, g_loss_minimax),
  "hinge": (d_loss_hinge, g_loss_hinge),
}


def softmax_cross_entropy(logits_BxK: jnp.ndarray, labels_B: jnp.ndarray) -> jnp.ndarray:
  """Mean cross-entropy of integer labels (scalar, nats)."""
  logp_BxK = jax.nn.log_softmax(logits_BxK)
  return -jnp.mean(jnp.take_along_axis(logp_BxK, labels_B[:, None], axis=-1))


# ---------------------------------------------------------------- VAE: ELBO terms and bounds
# Log-likelihoods are in nats, summed over an image's pixels and channels (the last three
# axes), so any leading axes (batch, importance samples) are kept.

_IMAGE_AXES = (-3, -2, -1)


def gaussian_kl(mean_BxZ: jnp.ndarray, logvar_BxZ: jnp.ndarray) -> jnp.ndarray:
  """KL(N(mean, exp(logvar)) || N(0, 1)) per latent unit, closed form, nats [B, Z]."""
  return 0.5 * (jnp.exp(logvar_BxZ) + jnp.square(mean_BxZ) - 1.0 - logvar_BxZ)


def diag_gaussian_log_prob(
  z_BxZ: jnp.ndarray, mean_BxZ: jnp.ndarray, logvar_BxZ: jnp.ndarray
) -> jnp.ndarray:
  """log N(z; mean, diag(exp(logvar))), summed over the last axis, nats [B] (any leading axes)."""
  sq = jnp.square(z_BxZ - mean_BxZ) * jnp.exp(-logvar_BxZ)
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar_BxZ + sq, axis=-1)


def bernoulli_log_prob(logits_BxHxWxC: jnp.ndarray, x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """log p(x) of binary images x in {0, 1} under independent Bernoulli(sigmoid(logits)), nats [B].

  Given pixel probabilities x in [0, 1] in place of a binary image, the same expression is the
  exact expectation of log p over x's binarisations (it is linear in x). Any real logit is a
  valid distribution, so the decoder cannot leave the support.
  """
  lp = x_BxHxWxC * logits_BxHxWxC - jax.nn.softplus(logits_BxHxWxC)
  return jnp.sum(lp, axis=_IMAGE_AXES)


def _clip_log_scale(log_scale: jnp.ndarray) -> jnp.ndarray:
  # Below e^-7 a bin holds all the mass already (PixelCNN++); above e^7 exp(-log_scale) would
  # only head towards underflow. Any real decoder output thus gives a finite distribution.
  return jnp.clip(log_scale, -7.0, 7.0)


def discretized_logistic_log_prob(
  loc_BxHxWxC: jnp.ndarray,
  log_scale_BxHxWxC: jnp.ndarray,
  x_BxHxWxC: jnp.ndarray,
  num_bins: int = 256,
) -> jnp.ndarray:
  """log P(x) of images x in [-1, 1] on a grid of `num_bins` values, nats [B].

  Each pixel's value is a logistic(loc, scale) variable rounded to the nearest grid value,
  with the tails below -1 and above 1 folded into the end bins (Salimans et al. 2017, one
  mixture component, channels independent). This is a proper distribution over the grid for
  any real loc and log_scale, and log P(x) <= 0.
  """
  half_bin = 1.0 / (num_bins - 1)
  log_scale = _clip_log_scale(log_scale_BxHxWxC)
  inv_scale = jnp.exp(-log_scale)
  centered = x_BxHxWxC - loc_BxHxWxC
  upper = (centered + half_bin) * inv_scale
  lower = (centered - half_bin) * inv_scale
  width = 2.0 * half_bin * inv_scale  # upper - lower, without the cancellation
  log_cdf_upper = -jax.nn.softplus(-upper)  # bottom bin: log sigmoid(upper)
  log_sf_lower = -jax.nn.softplus(lower)  # top bin: log(1 - sigmoid(lower))
  # log(sigmoid(u) - sigmoid(l)) = l + log(expm1(u - l)) - softplus(u) - softplus(l), stable
  # for both tails; log(expm1(w)) = w + log(-expm1(-w)) does not overflow for large w.
  log_mid = (
    lower + width + jnp.log(-jnp.expm1(-width)) - jax.nn.softplus(upper) - jax.nn.softplus(lower)
  )
  lp = jnp.where(
    x_BxHxWxC < -1.0 + half_bin,
    log_cdf_upper,
    jnp.where(x_BxHxWxC > 1.0 - half_bin, log_sf_lower, log_mid),
  )
  return jnp.sum(lp, axis=_IMAGE_AXES)


def discretized_logistic_mean(
  loc: jnp.ndarray, log_scale: jnp.ndarray, num_bins: int = 256
) -> jnp.ndarray:
  """The exact mean of `discretized_logistic_log_prob`'s distribution, in [-1, 1], same shape.

  E[x] = 1 - (2 / (num_bins - 1)) * sum_j sigmoid((b_j - loc) / scale) over the num_bins - 1
  bin boundaries b_j (summation by parts), accumulated one boundary at a time.
  """
  step = 2.0 / (num_bins - 1)
  inv_scale = jnp.exp(-_clip_log_scale(log_scale))

  def add(j, acc):
    boundary = -1.0 + (j + 0.5) * step
    return acc + jax.nn.sigmoid((boundary - loc) * inv_scale)

  total = jax.lax.fori_loop(0, num_bins - 1, add, jnp.zeros_like(loc))
  return jnp.clip(1.0 - step * total, -1.0, 1.0)  # float rounding can step just outside


def log_mean_exp(log_w_KxB: jnp.ndarray, valid_K: jnp.ndarray | None = None) -> jnp.ndarray:
  """log (1/k) sum_i exp(log_w_i) over axis 0, [B]; `valid_K` (bool) keeps only some rows."""
  if valid_K is None:
    return jax.nn.logsumexp(log_w_KxB, axis=0) - jnp.log(log_w_KxB.shape[0])
  mask = valid_K.reshape(-1, *([1] * (log_w_KxB.ndim - 1)))
  k = jnp.sum(valid_K)
  return jax.nn.logsumexp(jnp.where(mask, log_w_KxB, -jnp.inf), axis=0) - jnp.log(k)


def iwae_bound(log_w_KxB: jnp.ndarray) -> jnp.ndarray:
  """log (1/K) sum_i p(x, z_i) / q(z_i|x) from log-weights [K, B] (Burda et al. 2016), nats [B]."""
  return log_mean_exp(log_w_KxB)


def bits_per_dim(nats: jnp.ndarray, num_dims: int) -> jnp.ndarray:
  """Converts a negative log-likelihood in nats per image to bits per dimension (same shape)."""
  return nats / (num_dims * jnp.log(2.0))


def gaussian_kl_between(
  mean_q: jnp.ndarray, logvar_q: jnp.ndarray, mean_p: jnp.ndarray, logvar_p: jnp.ndarray
) -> jnp.ndarray:
  """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))) per unit, closed form, nats (same
  shape); with mean_p = logvar_p = 0 it equals `gaussian_kl`. For learned priors (alignDRAW)."""
  sq = jnp.square(mean_q - mean_p)
  return 0.5 * (logvar_p - logvar_q + (jnp.exp(logvar_q) + sq) * jnp.exp(-logvar_p) - 1.0)
