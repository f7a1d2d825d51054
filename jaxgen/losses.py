"""Losses as pure array functions: adversarial losses, ELBO terms, likelihood bounds.

Nothing here knows a model's internals; every function maps arrays to arrays.
Logits are pre-sigmoid discriminator outputs (real > 0).
"""

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
