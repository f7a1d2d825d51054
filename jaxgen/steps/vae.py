"""VAE family: the reparameterised ELBO, an importance-weighted (IWAE) likelihood bound, and
what its pictures show (reconstructions, latent interpolations, KL per latent unit; drawn by
jaxgen.pictures).

Units: every likelihood number is in nats per image (summed over the H*W*C dimensions);
`bpd` is the same number in bits per dimension, nats / (H*W*C * ln 2).

Likelihoods (config.model.likelihood):
  "bernoulli": images are binarised afresh every time they are seen, x ~ Bernoulli((image + 1) / 2)
    (dynamic binarisation); the encoder sees the binary image mapped to {-1, 1}.
  "logistic": the 8-bit grey or colour images as they are, each pixel a discretised logistic
    over the 256 grid values of [-1, 1] (jaxgen.losses.discretized_logistic_log_prob).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from jaxgen import config as config_lib
from jaxgen import losses, ops
from jaxgen.errors import ConfigError
from jaxgen.models import vae as vae_models
from jaxgen.models.common import reparameterize
from jaxgen.steps import common

# Decoder output channels per image channel: logits, or (location, log-scale).
LIKELIHOODS = {"bernoulli": 1, "logistic": 2}
ACTIVE_UNIT_NATS = 0.01  # a latent unit is "active" if its batch-mean KL exceeds this


@struct.dataclass
class VAEState:
  step: jax.Array
  vae: common.ModelState
  hp: ml_collections.FrozenConfigDict = struct.field(pytree_node=False)


def _model(hp: ml_collections.FrozenConfigDict) -> vae_models.VAE:
  out_channels = LIKELIHOODS[hp.likelihood] * hp.image_shape[-1]
  return vae_models.VAE(
    image_shape=tuple(hp.image_shape),
    out_channels=out_channels,
    latent_dim=hp.latent_dim,
    width=hp.width,
    kernel_size=hp.kernel_size,
    num_classes=hp.num_classes,
    fast_ops=hp.fast_ops,
    dtype=common.compute_dtype(hp),
  )


def init_state(config: ml_collections.ConfigDict, key: jax.Array, sample_batch: dict) -> VAEState:
  """Initial state for images shaped like `sample_batch["image"]` [B, H, W, C]."""
  m = config.model
  if m.likelihood not in LIKELIHOODS:
    raise ConfigError(
      f"unknown VAE likelihood {m.likelihood!r}; set config.model.likelihood to "
      f"one of {tuple(LIKELIHOODS)}"
    )
  hp = ml_collections.FrozenConfigDict(
    dict(
      image_shape=tuple(sample_batch["image"].shape[1:]),
      width=m.width,
      kernel_size=m.get("kernel_size", 4),
      latent_dim=m.latent_dim,
      num_classes=m.num_classes,
      likelihood=m.likelihood,
      fast_ops=ops.use_fast_ops(config.get("fast_ops", "auto")),
      accum_steps=config.get("accum_steps", 1),
      dtype=config_lib.check_dtype(config.get("dtype", "float32")),
    )
  )
  model = _model(hp)
  x = sample_batch["image"][:1]
  labels = jnp.zeros((1,), jnp.int32) if hp.num_classes else None
  params, stats = common.init_model(model, key, x, jnp.zeros((1, hp.latent_dim)), labels)
  vae = common.create_model_state(
    model, params, stats, config.optim, common.learning_rate(config, config.optim.lr)
  )
  return VAEState(step=jnp.zeros((), jnp.int32), vae=vae, hp=hp)


# ------------------------------------------------------------------ the objective


def observe(
  hp: ml_collections.FrozenConfigDict, image_BxHxWxC: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(encoder input in [-1, 1], likelihood target), both [B, H, W, C], for this likelihood."""
  return _observe_with(hp, image_BxHxWxC, common.uniform_like(key, image_BxHxWxC))


def _observe_with(
  hp: ml_collections.FrozenConfigDict, image_BxHxWxC: jax.Array, u_BxHxWxC: jax.Array
) -> tuple[jax.Array, jax.Array]:
  if hp.likelihood == "bernoulli":
    target = common.binarize_with(u_BxHxWxC, image_BxHxWxC)
    return 2.0 * target - 1.0, target
  return image_BxHxWxC, image_BxHxWxC


def elbo_noise(
  hp: ml_collections.FrozenConfigDict, image_BxHxWxC: jax.Array, key: jax.Array
) -> dict:
  """The per-example randomness of one -ELBO estimate, drawn for the whole batch: uniforms that
  binarise the images (u [B, H, W, C]) and the reparameterisation noise (eps [B, Z])."""
  bin_key, eps_key = jax.random.split(key)
  return dict(
    u=common.uniform_like(bin_key, image_BxHxWxC),
    eps=jax.random.normal(eps_key, (image_BxHxWxC.shape[0], hp.latent_dim), image_BxHxWxC.dtype),
  )


def log_likelihood(
  hp: ml_collections.FrozenConfigDict, out_BxHxWxP: jax.Array, target_BxHxWxC: jax.Array
) -> jax.Array:
  """log p(x|z) in nats [B] (any leading axes) from the decoder's output."""
  if hp.likelihood == "bernoulli":
    return losses.bernoulli_log_prob(out_BxHxWxP, target_BxHxWxC)
  loc, log_scale = jnp.split(out_BxHxWxP, 2, axis=-1)
  return losses.discretized_logistic_log_prob(loc, log_scale, target_BxHxWxC)


def mean_image(hp: ml_collections.FrozenConfigDict, out_BxHxWxP: jax.Array) -> jax.Array:
  """The mean of p(x|z) mapped to [-1, 1], [B, H, W, C]: 2 * sigmoid(logits) - 1 for Bernoulli,
  the exact mean of the discretised logistic otherwise."""
  if hp.likelihood == "bernoulli":
    return 2.0 * jax.nn.sigmoid(out_BxHxWxP) - 1.0
  loc, log_scale = jnp.split(out_BxHxWxP, 2, axis=-1)
  return losses.discretized_logistic_mean(loc, log_scale)


def _labels(hp: ml_collections.FrozenConfigDict, batch: dict) -> jax.Array | None:
  return batch["label"] if hp.num_classes else None


def _negative_elbo(
  params: Any, state: VAEState, batch: dict, noise: dict
) -> tuple[jax.Array, dict]:
  """(-ELBO averaged over the batch, metrics): one reparameterised sample (`elbo_noise`), KL in
  closed form."""
  hp = state.hp
  x_in, target = _observe_with(hp, batch["image"], noise["u"])
  (mean_BxZ, logvar_BxZ, out), _ = common.apply(
    _model(hp), params, state.vae.batch_stats, x_in, noise["eps"], _labels(hp, batch), train=True
  )
  recon_B = -log_likelihood(hp, out, target)
  kl_B = jnp.sum(losses.gaussian_kl(mean_BxZ, logvar_BxZ), axis=-1)
  return common.elbo_metrics(recon_B, kl_B, int(np.prod(hp.image_shape)))


def train_step(state: VAEState, batch: dict, key: jax.Array) -> tuple[VAEState, dict]:
  """One Adam/SGD step on -ELBO; metrics in nats/image (`loss`, `elbo`, `recon`, `kl`), `bpd`,
  the learning rate `lr` and the gradients' global norm `grad_norm`."""
  step_key = jax.random.fold_in(key, state.step)
  noise = elbo_noise(state.hp, batch["image"], step_key)

  def grads_fn(stats, inputs, _):
    (_, metrics), grads = common.value_and_grad(_negative_elbo, state.vae)(
      state.vae.params, state, *inputs
    )
    return grads, stats, metrics

  grads, _, metrics = common.accumulate(
    grads_fn, {}, (batch, noise), step_key, state.hp.accum_steps
  )
  vae, logged = common.apply_gradients(state.vae, grads)
  return state.replace(step=state.step + 1, vae=vae), {**metrics, **logged}


def eval_step(state: VAEState, batch: dict, key: jax.Array) -> dict:
  """The training metrics on a batch without updating (binarisation and eps drawn from `key`)."""
  return _negative_elbo(state.vae.params, state, batch, elbo_noise(state.hp, batch["image"], key))[
    1
  ]


def sample(state: VAEState, key: jax.Array, num: int, conditioning: Any = None) -> jax.Array:
  """`num` images [num, H, W, C] in [-1, 1]: z ~ N(0, I) decoded to the mean of p(x|z)
  (Bernoulli: the probabilities; logistic: the discretised logistic's exact mean);
  `conditioning`: class labels of a conditional model."""
  return sample_latents(state, jax.random.normal(key, (num, state.hp.latent_dim)), conditioning)


def sample_latents(state: VAEState, z_NxZ: jax.Array, conditioning: Any = None) -> jax.Array:
  """`sample` from given latents z [N, Z] (walks, truncation): images [N, H, W, C]."""
  labels = common.labels_for(z_NxZ.shape[0], state.hp.num_classes, conditioning)
  return mean_image(state.hp, _decode(state, z_NxZ, labels))


def _encode(state: VAEState, x_BxHxWxC: jax.Array, labels: jax.Array | None):
  return common.apply(
    _model(state.hp),
    state.vae.params,
    state.vae.batch_stats,
    x_BxHxWxC,
    labels,
    train=False,
    method="encode",
  )[0]


def _decode(state: VAEState, z_BxZ: jax.Array, labels: jax.Array | None) -> jax.Array:
  return common.apply(
    _model(state.hp),
    state.vae.params,
    state.vae.batch_stats,
    z_BxZ,
    labels,
    train=False,
    method="decode",
  )[0]


# ------------------------------------------------------------------ likelihood bounds


def log_likelihood_bounds(
  state: VAEState, batch: dict, key: jax.Array, num_samples: int, chunk_images: int = 1024
) -> dict[str, jax.Array]:
  """Lower bounds on log p(x) per test image, nats [B]: {"elbo": ..., "iwae": ...}.

  Both come from the same `num_samples` importance samples z_i ~ q(z|x), with log-weights
  log w_i = log p(x|z_i) + log N(z_i; 0, I) - log q(z_i|x):
    iwae = log (1/k) sum_i w_i   (Burda et al. 2016; logsumexp),
    elbo = (1/k) sum_i log w_i   (the k-sample ELBO estimate; <= iwae for every image).
  Samples are decoded `max(1, chunk_images // B)` at a time in a lax.scan, so memory does not
  grow with k; sample i's noise is drawn from fold_in(key, i), so the result does not depend on
  the chunk size. Bernoulli models binarise the batch once, from `key`. Static: num_samples,
  chunk_images.
  """
  hp = state.hp
  bin_key, eps_key = jax.random.split(key)
  labels = _labels(hp, batch)
  x_in, target = observe(hp, batch["image"], bin_key)
  b = x_in.shape[0]
  mean_BxZ, logvar_BxZ = _encode(state, x_in, labels)
  chunk = max(1, min(num_samples, chunk_images // b))
  num_chunks = -(-num_samples // chunk)

  def one_chunk(carry, c):
    lse_B, sum_B = carry
    index_C = c * chunk + jnp.arange(chunk)
    eps_CxBxZ = jax.vmap(
      lambda i: jax.random.normal(
        jax.random.fold_in(eps_key, i), (b, hp.latent_dim), mean_BxZ.dtype
      )
    )(index_C)
    z_CxBxZ = reparameterize(mean_BxZ, logvar_BxZ, eps_CxBxZ)
    out = jax.vmap(lambda z: _decode(state, z, labels))(z_CxBxZ)
    log_w_CxB = (
      log_likelihood(hp, out, target)
      + losses.diag_gaussian_log_prob(z_CxBxZ, 0.0, 0.0)
      - losses.diag_gaussian_log_prob(z_CxBxZ, mean_BxZ, logvar_BxZ)
    )
    valid_Cx1 = (index_C < num_samples)[:, None]  # the last chunk may run past k
    lse_B = jnp.logaddexp(lse_B, jax.nn.logsumexp(jnp.where(valid_Cx1, log_w_CxB, -jnp.inf), 0))
    sum_B = sum_B + jnp.sum(jnp.where(valid_Cx1, log_w_CxB, 0.0), axis=0)
    return (lse_B, sum_B), None

  init = (jnp.full((b,), -jnp.inf, mean_BxZ.dtype), jnp.zeros((b,), mean_BxZ.dtype))
  (lse_B, sum_B), _ = jax.lax.scan(one_chunk, init, jnp.arange(num_chunks))
  return {"elbo": sum_B / num_samples, "iwae": lse_B - jnp.log(float(num_samples))}


# ------------------------------------------------------------------ what the pictures show


def reconstruct(state: VAEState, batch: dict, key: jax.Array) -> jax.Array:
  """Reconstructions [B, H, W, C] in [-1, 1]: the decoder's mean at the posterior mean of z."""
  hp = state.hp
  labels = _labels(hp, batch)
  x_in, _ = observe(hp, batch["image"], key)
  mean_BxZ, _ = _encode(state, x_in, labels)
  return mean_image(hp, _decode(state, mean_BxZ, labels))


def interpolate(
  state: VAEState, batch_a: dict, batch_b: dict, key: jax.Array, num_points: int = 10
) -> jax.Array:
  """Images [P, num_points, H, W, C] decoded along the straight line between the posterior means
  of P pairs (a, b); conditional models interpolate the one-hot labels alongside."""
  hp = state.hp
  key_a, key_b = jax.random.split(key)
  t_T = jnp.linspace(0.0, 1.0, num_points)
  ends = []
  for b, k in ((batch_a, key_a), (batch_b, key_b)):
    labels = _labels(hp, b)
    ends.append(
      (
        _encode(state, observe(hp, b["image"], k)[0], labels)[0],
        jax.nn.one_hot(labels, hp.num_classes) if hp.num_classes else None,
      )
    )
  (za_PxZ, ya), (zb_PxZ, yb) = ends
  lerp = lambda a, b: a[:, None] + t_T[None, :, None] * (b - a)[:, None]  # [P, T, .]
  z_PxTxZ = lerp(za_PxZ, zb_PxZ)
  p, t = z_PxTxZ.shape[:2]
  y = lerp(ya, yb).reshape(p * t, -1) if hp.num_classes else None
  images = mean_image(hp, _decode(state, z_PxTxZ.reshape(p * t, -1), y))
  return images.reshape(p, t, *images.shape[1:])


def kl_per_unit(state: VAEState, batch: dict, key: jax.Array) -> jax.Array:
  """KL(q(z_u|x) || N(0, 1)) of each latent unit u averaged over the batch, nats [Z]."""
  hp = state.hp
  mean_BxZ, logvar_BxZ = _encode(state, observe(hp, batch["image"], key)[0], _labels(hp, batch))
  return jnp.mean(losses.gaussian_kl(mean_BxZ, logvar_BxZ), axis=0)
