"""Pieces shared by the families' step functions."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state

from jaxgen import losses
from jaxgen.errors import ConfigError


class ModelState(train_state.TrainState):
  """One network's params, BatchNorm statistics (or an empty dict) and optimizer state;
  `lr_fn(step)` is the learning rate its optimizer uses at a step (static, for logging)."""

  batch_stats: Any = struct.field(default_factory=dict)
  lr_fn: Callable[[jax.Array], jax.Array] | None = struct.field(pytree_node=False, default=None)


def create_model_state(
  model: nn.Module,
  params: Any,
  batch_stats: Any,
  optim: ml_collections.ConfigDict,
  lr: float | optax.Schedule,
) -> ModelState:
  """A ModelState optimised by `optimizer(optim, lr)`; `lr` a constant or an optax schedule."""
  return ModelState.create(
    apply_fn=model.apply,
    params=params,
    batch_stats=batch_stats,
    tx=optimizer(optim, lr),
    lr_fn=lr if callable(lr) else optax.constant_schedule(lr),
  )


def apply_gradients(
  state: ModelState, grads: Any, prefix: str = "", **kwargs: Any
) -> tuple[ModelState, dict]:
  """(state after one optimizer update, numbers to log): `{prefix}lr`, the learning rate of
  this update, and `{prefix}grad_norm`, the gradients' global norm before any clipping."""
  logged = {f"{prefix}grad_norm": optax.global_norm(grads)}
  if state.lr_fn is not None:
    logged[f"{prefix}lr"] = jnp.asarray(state.lr_fn(state.step), jnp.float32)
  return state.apply_gradients(grads=grads, **kwargs), logged


def apply(
  model: nn.Module, state_params: Any, batch_stats: Any, *args: Any, train: bool, **kwargs: Any
) -> tuple[Any, Any]:
  """Runs `model`, returning (output, updated batch_stats); stats change only when training."""
  variables = {"params": state_params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  if train and batch_stats:
    out, updates = model.apply(variables, *args, train=True, mutable=["batch_stats"], **kwargs)
    return out, updates["batch_stats"]
  return model.apply(variables, *args, train=train, **kwargs), batch_stats


def init_model(model: nn.Module, key: jax.Array, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
  """Returns (params, batch_stats) of `model` initialised on example inputs."""
  variables = model.init(key, *args, train=False, **kwargs)
  return variables["params"], variables.get("batch_stats", {})


def optimizer(optim: ml_collections.ConfigDict, lr: float) -> optax.GradientTransformation:
  """optim.name "adam" (AdamW with optim.b1/b2/weight_decay) or "sgd", after optional clipping."""
  name = optim.get("name", "adam")
  if name == "adam":
    tx = optax.adamw(
      lr,
      b1=optim.get("b1", 0.9),
      b2=optim.get("b2", 0.999),
      weight_decay=optim.get("weight_decay", 0.0),
    )
  elif name == "sgd":
    tx = optax.sgd(lr, momentum=optim.get("momentum") or None)
  else:
    raise ConfigError(f"unknown optimizer {name!r}; set config.optim.name to 'adam' or 'sgd'")
  clip = optim.get("grad_clip", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def shard_batch_axis(x: jax.Array) -> jax.Array:
  """Splits x's leading (batch) axis over the mesh's "data" axis when a mesh is set; else x.

  Arrays made inside a step (e.g. latents from a key) are otherwise replicated, so every
  device would run the whole batch through the networks that consume them.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "data" not in mesh.axis_names:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec("data"))


def labels_for(num: int, num_classes: int, conditioning: Any = None) -> jax.Array | None:
  """Class labels for `num` conditional samples: the given ones, or 0..K-1 cycled."""
  if not num_classes:
    return None
  if conditioning is None:
    return jnp.arange(num) % num_classes
  return jnp.broadcast_to(jnp.asarray(conditioning, jnp.int32), (num,))


# ------------------------------------------------------------------ the ELBO families (VAE, DRAW)


def binarize(key: jax.Array, image_BxHxWxC: jax.Array) -> jax.Array:
  """A fresh binary image {0., 1.} [B, H, W, C] with P(1) = (image + 1) / 2 from [-1, 1] images."""
  return jax.random.bernoulli(key, (image_BxHxWxC + 1.0) / 2.0).astype(image_BxHxWxC.dtype)


def elbo_metrics(recon_B: jax.Array, kl_B: jax.Array, num_dims: int) -> tuple[jax.Array, dict]:
  """(-ELBO averaged over the batch, metrics): `loss`, `elbo`, `recon`, `kl` in nats per image
  from the per-image reconstruction and KL terms [B], and `bpd` over `num_dims` = H*W*C."""
  loss = jnp.mean(recon_B + kl_B)
  return loss, dict(
    loss=loss,
    elbo=-loss,
    recon=jnp.mean(recon_B),
    kl=jnp.mean(kl_B),
    bpd=losses.bits_per_dim(loss, num_dims),
  )
