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
from jaxgen.config import check_dtype
from jaxgen.errors import ConfigError


@struct.dataclass
class LossScale:
  """Dynamic loss scaling for float16 compute (as NVIDIA's AMP and jmp do): the loss is
  multiplied by `scale` before differentiation so small activation gradients do not underflow
  float16, and the gradients are divided by it after. An update with a non-finite gradient is
  skipped and halves the scale; `period` finite updates in a row double it."""

  scale: jax.Array  # float32 scalar
  good_steps: jax.Array  # int32 scalar: finite updates since the scale last changed
  period: int = struct.field(pytree_node=False, default=2000)

  @classmethod
  def initial(cls, scale: float = 2.0**15) -> "LossScale":
    return cls(scale=jnp.asarray(scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32))

  def adjust(self, finite: jax.Array) -> "LossScale":
    """The scale after an update whose gradients were all finite (`finite`) or not."""
    grow = finite & (self.good_steps + 1 >= self.period)
    scale = jnp.where(finite, jnp.where(grow, self.scale * 2.0, self.scale), self.scale / 2.0)
    good_steps = jnp.where(finite & ~grow, self.good_steps + 1, 0)
    # float16's largest value is 65504: a scale past float32's range would be inf.
    return self.replace(scale=jnp.clip(scale, 1.0, 2.0**64), good_steps=good_steps)


class ModelState(train_state.TrainState):
  """One network's params, BatchNorm statistics (or an empty dict) and optimizer state;
  `lr_fn(step)` is the learning rate its optimizer uses at a step (static, for logging)."""

  batch_stats: Any = struct.field(default_factory=dict)
  lr_fn: Callable[[jax.Array], jax.Array] | None = struct.field(pytree_node=False, default=None)

  @property
  def loss_scale(self) -> "LossScale | None":
    return None


class ScaledModelState(ModelState):
  """A ModelState with the LossScale of a network computing in float16. A subclass, not a
  None-by-default field, so the checkpoints of every other state keep their tree."""

  loss_scale: LossScale = None  # type: ignore[assignment]


def create_model_state(
  model: nn.Module,
  params: Any,
  batch_stats: Any,
  optim: ml_collections.ConfigDict,
  lr: float | optax.Schedule,
) -> ModelState:
  """A ModelState optimised by `optimizer(optim, lr)`; `lr` a constant or an optax schedule.
  A model computing in float16 (its `dtype`) gets dynamic loss scaling."""
  kwargs = dict(
    apply_fn=model.apply,
    params=params,
    batch_stats=batch_stats,
    tx=optimizer(optim, lr),
    lr_fn=lr if callable(lr) else optax.constant_schedule(lr),
  )
  if getattr(model, "dtype", None) == jnp.float16:
    return ScaledModelState.create(**kwargs, loss_scale=LossScale.initial())
  return ModelState.create(**kwargs)


def value_and_grad(fn: Callable[..., tuple[jax.Array, Any]], state: ModelState) -> Callable:
  """jax.value_and_grad(fn, has_aux=True) for the network of `state`: fn(params, ...) returns
  (loss, aux); the result returns ((loss, aux), grads). With `state.loss_scale` the gradients
  are taken of loss * scale and divided by it (float32, like the params), so they may be
  non-finite when float16 overflowed; apply_gradients then skips the update."""
  if state.loss_scale is None:
    return jax.value_and_grad(fn, has_aux=True)
  scale = state.loss_scale.scale

  def scaled(*args, **kwargs):
    loss, aux = fn(*args, **kwargs)
    return loss * scale.astype(loss.dtype), (loss, aux)

  def wrapped(*args, **kwargs):
    grads, out = jax.grad(scaled, has_aux=True)(*args, **kwargs)
    return out, jax.tree.map(lambda g: g / scale.astype(g.dtype), grads)

  return wrapped


def apply_gradients(
  state: ModelState, grads: Any, prefix: str = "", **kwargs: Any
) -> tuple[ModelState, dict]:
  """(state after one optimizer update, numbers to log): `{prefix}lr`, the learning rate of
  this update, and `{prefix}grad_norm`, the gradients' global norm before any clipping.

  With loss scaling (float16), an update whose gradients are not all finite is skipped (params,
  optimizer state, step and `kwargs` such as batch_stats stay as they were) and the scale
  adjusted; `{prefix}loss_scale` (the scale these gradients were taken with) and
  `{prefix}skipped` (1.0 for a skipped update) are logged."""
  logged = {f"{prefix}grad_norm": optax.global_norm(grads)}
  if state.lr_fn is not None:
    logged[f"{prefix}lr"] = jnp.asarray(state.lr_fn(state.step), jnp.float32)
  new = state.apply_gradients(grads=grads, **kwargs)
  if state.loss_scale is None:
    return new, logged
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  scale = state.loss_scale.scale
  # A skipped update is routine (the trainer stops a run on a non-finite metric), so its norm is
  # logged as 0, unless the scale is already at its floor of 1: then float16 overflows without
  # any scaling, the run has diverged, and the non-finite norm stops it.
  norm = logged[f"{prefix}grad_norm"]
  logged[f"{prefix}grad_norm"] = jnp.where(finite | (scale <= 1.0), norm, 0.0)
  logged[f"{prefix}loss_scale"] = scale
  logged[f"{prefix}skipped"] = jnp.where(finite, 0.0, 1.0)
  new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state)
  return new.replace(loss_scale=state.loss_scale.adjust(finite)), logged


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
  """The models' `dtype` for config.dtype (a config or a family's hp): None for "float32" (flax's
  default: computed as inputs and float32 params, so float32 runs are unchanged), else e.g.
  jnp.bfloat16. Raises a one-line ConfigError for an unsupported name."""
  name = check_dtype(config.get("dtype", "float32"))
  return None if name == "float32" else jnp.dtype(name)


def at_least_float32(tree: Any) -> Any:
  """`tree` with every floating leaf below float32 (bfloat16, float16) cast to float32."""

  def cast(x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      return x
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))

  return jax.tree.map(cast, tree)


def apply(
  model: nn.Module, state_params: Any, batch_stats: Any, *args: Any, train: bool, **kwargs: Any
) -> tuple[Any, Any]:
  """Runs `model`, returning (output, updated batch_stats); stats change only when training.

  Outputs of a model computing in a low precision (its `dtype`) come back float32, so every
  loss, KL, log-likelihood and sample downstream is computed and returned in float32."""
  variables = {"params": state_params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  if train and batch_stats:
    out, updates = model.apply(variables, *args, train=True, mutable=["batch_stats"], **kwargs)
    return at_least_float32(out), updates["batch_stats"]
  return at_least_float32(model.apply(variables, *args, train=train, **kwargs)), batch_stats


def init_model(model: nn.Module, key: jax.Array, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
  """Returns (params, batch_stats) of `model` initialised on example inputs."""
  variables = model.init(key, *args, train=False, **kwargs)
  return variables["params"], variables.get("batch_stats", {})


OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def optimizer(
  optim: ml_collections.ConfigDict, lr: float | optax.Schedule
) -> optax.GradientTransformation:
  """optim.name: "adam" (optim.b1/b2), "adamw" (Adam with decoupled optim.weight_decay) or "sgd"
  (optim.momentum), after clipping the global norm to optim.grad_clip when set."""
  name = optim.get("name", "adam")
  betas = dict(b1=optim.get("b1", 0.9), b2=optim.get("b2", 0.999))
  weight_decay = optim.get("weight_decay", 0.0)
  if name == "adam":
    if weight_decay:
      raise ConfigError(
        f"optim.weight_decay={weight_decay} needs AdamW; set config.optim.name to 'adamw' "
        "(or config.optim.weight_decay to 0)"
      )
    tx = optax.adam(lr, **betas)
  elif name == "adamw":
    tx = optax.adamw(lr, **betas, weight_decay=weight_decay)
  elif name == "sgd":
    tx = optax.sgd(lr, momentum=optim.get("momentum") or None)
  else:
    raise ConfigError(f"unknown optimizer {name!r}; set config.optim.name to one of {OPTIMIZERS}")
  clip = optim.get("grad_clip", 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


def learning_rate(
  config: ml_collections.ConfigDict, peak: float, updates_per_step: int = 1
) -> float | optax.Schedule:
  """The learning rate of each optimizer update: a linear warm-up from 0 over
  config.optim.warmup_steps training steps, then `peak` held ("constant") or cosine-decayed to
  optim.final_lr_fraction * peak at config.num_steps ("cosine"). `updates_per_step`: optimizer
  updates per training step (a GAN's d_steps). A constant rate without warm-up is the float itself
  (the optimizer then keeps no schedule count). A cosine schedule is laid over num_steps: resuming
  with a larger num_steps stretches what remains of it."""
  optim = config.optim
  name = optim.get("schedule", "constant")
  warmup = optim.get("warmup_steps", 0) * updates_per_step
  if name == "constant":
    main = peak
  elif name == "cosine":
    total = max(config.num_steps * updates_per_step, 1)
    main = optax.cosine_decay_schedule(
      peak, max(total - warmup, 1), alpha=optim.get("final_lr_fraction", 0.0)
    )
  else:
    raise ConfigError(f"unknown schedule {name!r}; set config.optim.schedule to one of {SCHEDULES}")
  if not warmup:
    return main
  after = optax.constant_schedule(main) if name == "constant" else main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def micro_batches(tree: Any, k: int) -> Any:
  """Leaves [B, ...] -> [k, B/k, ...]. Micro-batch j holds rows j, j + k, j + 2k, ..., so each
  device's contiguous shard of the batch axis holds its own rows of every micro-batch and
  splitting moves no data between devices (B must divide by k * devices)."""

  def split(x):
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

  return jax.tree.map(split, tree)


def accumulate(
  fn: Callable[[Any, Any, jax.Array], tuple[Any, Any, dict]],
  batch_stats: Any,
  inputs: Any,
  key: jax.Array,
  accum_steps: int,
) -> tuple[Any, Any, dict]:
  """(grads, batch_stats, metrics) of `fn(batch_stats, inputs, key)` over `accum_steps` micro-batches.

  `inputs` is a pytree of [B, ...] arrays: the batch and any per-example randomness drawn for the
  whole batch. Micro-batches run in order in a lax.scan (so activations are held for one micro-
  batch only); grads and metrics are their means, which for a loss averaged over examples equal
  the whole batch's (the randomness in `inputs` is split with the batch). BatchNorm normalises
  each micro-batch by its own statistics and its running averages are updated once per
  micro-batch, in order (threaded through `batch_stats`). Micro-batch j draws any further
  randomness from fold_in(key, j). With accum_steps 1 this is fn(batch_stats, inputs, key).
  """
  if accum_steps == 1:
    return fn(batch_stats, inputs, key)
  micro = micro_batches(inputs, accum_steps)
  first = jax.tree.map(lambda x: x[0], micro)
  grads_shape, _, metrics_shape = jax.eval_shape(fn, batch_stats, first, key)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grads_shape, metrics_shape))

  def body(carry, xs):
    stats, sums = carry
    j, micro_inputs = xs
    micro_inputs = jax.tree.map(shard_batch_axis, micro_inputs)
    grads, stats, metrics = fn(stats, micro_inputs, jax.random.fold_in(key, j))
    return (stats, jax.tree.map(jnp.add, sums, (grads, metrics))), None

  (batch_stats, sums), _ = jax.lax.scan(
    body, (batch_stats, zeros), (jnp.arange(accum_steps), micro)
  )
  grads, metrics = jax.tree.map(lambda x: x / accum_steps, sums)
  return grads, batch_stats, metrics


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
  return binarize_with(uniform_like(key, image_BxHxWxC), image_BxHxWxC)


def uniform_like(key: jax.Array, x: jax.Array) -> jax.Array:
  """U[0, 1) noise of x's shape and dtype."""
  # Drawn flat, then reshaped: the same numbers as drawing at x.shape (the generator's counters
  # run over the flattened array), but XLA:CPU vectorises the flat loop; at [64, 64, 64, 3] the
  # shaped draw took about 3x as long (its innermost axis has 3 elements).
  return jax.random.uniform(key, (x.size,), x.dtype).reshape(x.shape)


def binarize_with(u_BxHxWxC: jax.Array, image_BxHxWxC: jax.Array) -> jax.Array:
  """`binarize` from given uniforms u [B, H, W, C] (drawn for a whole batch, then split)."""
  # u < p with u ~ U[0, 1) is exactly jax.random.bernoulli(key, p) for u drawn from that key.
  return (u_BxHxWxC < (image_BxHxWxC + 1.0) / 2.0).astype(image_BxHxWxC.dtype)


def elbo_metrics(
  recon_B: jax.Array,
  kl_B: jax.Array,
  num_dims: int,
  kl_weight: jax.Array | float = 1.0,
  loss_kl: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
  """(loss, metrics): the loss is mean(recon + kl_weight * kl), which is -ELBO averaged over the
  batch at kl_weight 1; metrics `loss`, `elbo`, `recon`, `kl` in nats per image from the
  per-image reconstruction and KL terms [B], and `bpd` (of -ELBO) over `num_dims` = H*W*C.
  `loss_kl` (a scalar, e.g. free bits' KL) replaces mean(kl) in the loss, not in the metrics."""
  neg_elbo = jnp.mean(recon_B + kl_B)
  if loss_kl is None:
    loss = jnp.mean(recon_B + kl_weight * kl_B)
  else:
    loss = jnp.mean(recon_B) + kl_weight * loss_kl
  return loss, dict(
    loss=loss,
    elbo=-neg_elbo,
    recon=jnp.mean(recon_B),
    kl=jnp.mean(kl_B),
    bpd=losses.bits_per_dim(neg_elbo, num_dims),
  )
