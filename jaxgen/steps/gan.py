"""DCGAN family: alternating discriminator / generator updates and an EMA generator."""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxgen import augment, losses, ops
from jaxgen import config as config_lib
from jaxgen.errors import ConfigError
from jaxgen.models import common as models_common
from jaxgen.models import gan as gan_models
from jaxgen.steps import common


@struct.dataclass
class GANState:
  step: jax.Array
  g: common.ModelState
  d: common.ModelState
  ema_params: Any
  hp: ml_collections.FrozenConfigDict = struct.field(pytree_node=False)


@struct.dataclass
class AdaptiveGANState(GANState):
  """A GANState with ADA's augmentation probability (model.ada_target > 0). A subclass, not a
  None-by-default field, so the checkpoints of every other GAN keep their tree."""

  aug_p: jax.Array = None  # type: ignore[assignment]  # float32 scalar in [0, 1]


def _models(hp: ml_collections.FrozenConfigDict):
  kw = dict(
    image_shape=tuple(hp.image_shape),
    width=hp.width,
    kernel_size=hp.kernel_size,
    num_classes=hp.num_classes,
    fast_ops=hp.fast_ops,
    dtype=common.compute_dtype(hp),
    full_res_width=hp.get("full_res_width", 0),  # DCGAN only: _recipe_hp refuses other archs
    mid_layers=hp.get("mid_layers", 0),  # DCGAN only, as full_res_width
  )
  sn = hp.get("spectral_norm", "none")
  g_cls, d_cls = ARCHS[hp.get("arch", "dcgan")]
  g = g_cls(**kw, spectral_norm=sn == "dg", class_bn=hp.get("class_bn", False))
  return g, d_cls(
    **kw,
    spectral_norm=sn in ("d", "dg"),
    mbstd_group=hp.get("mbstd_group", 0),
    split_logit=bool(hp.get("transition_end", 0)),
  )


# ---- GAN recipes (config.model switches, all off by default; README "GAN recipes")
SPECTRAL_NORM = ("none", "d", "dg")
ARCHS = {
  "dcgan": (gan_models.Generator, gan_models.Discriminator),
  "resnet": (gan_models.ResNetGenerator, gan_models.ResNetDiscriminator),
}
EMA_BN = ("online", "standing")


def _recipe_hp(m: ml_collections.ConfigDict) -> dict:
  """The recipe switches of config.model, checked; empty when all are off (state as before)."""
  hp = {k: type(v)(m.get(k, v)) for k, v in config_lib.GAN_RECIPES.items()}
  if hp["arch"] not in ARCHS:
    raise ConfigError(
      f"unknown arch {hp['arch']!r}; set config.model.arch to one of {tuple(ARCHS)}"
    )
  if hp["spectral_norm"] not in SPECTRAL_NORM:
    raise ConfigError(
      f"unknown spectral_norm {hp['spectral_norm']!r}; set config.model.spectral_norm to one of "
      f"{SPECTRAL_NORM}"
    )
  if hp["ema_bn"] not in EMA_BN:
    raise ConfigError(
      f"unknown ema_bn {hp['ema_bn']!r}; set config.model.ema_bn to one of {EMA_BN}"
    )
  if hp["r1_every"] < 1:
    raise ConfigError(
      f"model.r1_every={hp['r1_every']}; set it to 1 or more (lazy R1 every k D steps)"
    )
  if hp["class_bn"] and not m.get("num_classes", 0):
    raise ConfigError(
      "model.class_bn=True conditions BatchNorm on the label, but model.num_classes is 0; set "
      "model.num_classes to the data's class count or class_bn to False"
    )
  if hp["mbstd_group"] < 0:
    raise ConfigError(
      f"model.mbstd_group={hp['mbstd_group']}; set it to 0 (off) or a group size such as 4"
    )
  if hp["full_res_width"] < 0 or (hp["full_res_width"] and hp["arch"] != "dcgan"):
    raise ConfigError(
      f"model.full_res_width={hp['full_res_width']} with arch {hp['arch']!r}; set it to 0 "
      "(off) or, with arch 'dcgan', to the channels of the full-resolution layer (e.g. 32)"
    )
  if hp["mid_layers"] < 0 or (hp["mid_layers"] and hp["arch"] != "dcgan"):
    raise ConfigError(
      f"model.mid_layers={hp['mid_layers']} with arch {hp['arch']!r}; set it to 0 (off) or, "
      "with arch 'dcgan', to the number of stride-1 layers at the lowest resolution (e.g. 1)"
    )
  augment.parse_policy(hp["augment"])
  if not 0.0 <= hp["augment_p"] <= 1.0 or (hp["augment_p"] != 1.0 and not hp["augment"]):
    raise ConfigError(
      f"model.augment_p={hp['augment_p']} with augment {hp['augment']!r}; set it to a "
      "probability in [0, 1] (1: every image) and model.augment to the policy it applies"
    )
  if hp["ada_target"] and not (0.0 < hp["ada_target"] < 1.0 and hp["augment"]):
    raise ConfigError(
      f"model.ada_target={hp['ada_target']} with augment {hp['augment']!r}; set ada_target in "
      "(0, 1) (ADA's is 0.6) and model.augment to the policy it adapts, e.g. 'translation'"
    )
  if hp["ada_target"] and (hp["augment_p"] != 1.0 or hp["ada_kimg"] <= 0):
    raise ConfigError(
      f"model.ada_target={hp['ada_target']} with augment_p={hp['augment_p']}, ada_kimg="
      f"{hp['ada_kimg']}: ADA sets the probability itself, from 0; leave augment_p at 1 and set "
      "ada_kimg > 0"
    )
  start, end = hp["transition_start"], hp["transition_end"]
  if (end or start) and not (0 <= start < end and m.get("num_classes", 0)):
    raise ConfigError(
      f"model.transition_start={start}, transition_end={end} with num_classes="
      f"{m.get('num_classes', 0)}; set 0 <= transition_start < transition_end (the steps over "
      "which the label fades in) on a conditional model, or both to 0 (off)"
    )
  if hp["mode_seeking"] < 0:
    raise ConfigError(
      f"model.mode_seeking={hp['mode_seeking']}; set it to 0 (off) or a weight > 0 (MSGAN's is 1)"
    )
  return hp if hp != config_lib.GAN_RECIPES else {}


def _r1(d_fn, real, update: jax.Array, hp, on: bool | None = None) -> jax.Array:
  """Lazy R1: gamma * r1_every / 2 * E||grad D(real)||^2 on the D updates whose index `update`
  (training step * d_steps + the update's place in the step) divides by r1_every (a float16
  update that is skipped for overflow loses its penalty; the next one due is r1_every later).

  `on` (static) says whether this update is one, as `step_variants` passes it; None decides
  from `update` inside the program."""
  if not hp.get("r1_gamma", 0.0):
    return jnp.zeros((), real.dtype)
  gamma = hp.r1_gamma * hp.r1_every
  if on is None and hp.r1_every == 1:
    on = True
  if on is not None:
    return losses.r1_penalty(d_fn, real, gamma) if on else jnp.zeros((), real.dtype)
  on = update % hp.r1_every == 0
  if jax.default_backend() == "cpu":
    # XLA:CPU brings convolutions to its fast (Eigen) layout only outside nested computations
    # (jax-ml/jax#12868 shows it for loop bodies): inside lax.cond, 12 of R1's double-backward
    # convolutions keep their autodiff layouts and run on the naive emitter, 6.8 s against 0.1 s
    # inline for the width-64 Fashion D. So on CPU the penalty is computed every D step and
    # masked: the same loss and gradients, without the saving (the trainer saves it: it
    # compiles one step per `step_variants` entry and picks it by step number).
    return jnp.where(on, losses.r1_penalty(d_fn, real, gamma), jnp.zeros((), real.dtype))
  return jax.lax.cond(
    on, lambda: losses.r1_penalty(d_fn, real, gamma), lambda: jnp.zeros((), real.dtype)
  )


def _per_pass(hp: ml_collections.FrozenConfigDict, batch_size: int) -> int:
  """Images in each D or G pass: batch_size split over fresh real batches (d_steps of them) and
  accumulation micro-batches."""
  return batch_size // (hp.d_steps if hp.get("fresh_real_batches") else 1) // hp.accum_steps


def _check_mbstd_group(hp: ml_collections.FrozenConfigDict, batch_size: int) -> None:
  """Minibatch stddev's groups must tile each batch D sees: batch_size split over fresh real
  batches (d_steps of them) and accumulation micro-batches."""
  group = hp.get("mbstd_group", 0)
  per_pass = _per_pass(hp, batch_size)
  if group and per_pass and per_pass % min(group, per_pass):
    raise ConfigError(
      f"model.mbstd_group={group} does not divide the {per_pass} images of each discriminator "
      f"pass (batch_size {batch_size}); set model.mbstd_group to a divisor of {per_pass}"
    )


def _check_mode_seeking(hp: ml_collections.FrozenConfigDict, batch_size: int) -> None:
  """Mode seeking pairs the rows of each generator pass (2i, 2i + 1): their count must be even."""
  per_pass = _per_pass(hp, batch_size)
  if hp.get("mode_seeking", 0.0) and per_pass % 2:
    raise ConfigError(
      f"model.mode_seeking pairs the images of each generator pass, but it has {per_pass} "
      "(batch_size / accum_steps, / d_steps with fresh_real_batches); make that number even"
    )


def _pairs(x: jax.Array) -> jax.Array:
  """Rows [2P, ...] -> [P, 2, ...]: rows 2i and 2i + 1 side by side (a device's shard of an even
  number of rows holds whole pairs)."""
  return x.reshape((x.shape[0] // 2, 2) + x.shape[1:])


def step_variants(state: "GANState") -> tuple[dict, ...]:
  """train_step's static keyword arguments over a cycle of training steps: step n runs with
  entry n % len. With lazy R1 (r1_every > 1) each says which of the step's D updates carry the
  penalty (`r1_on`), so the steps without it compile without it; otherwise ({},)."""
  hp = state.hp
  k = hp.get("r1_every", 1)
  if not hp.get("r1_gamma", 0.0) or k == 1:
    return ({},)
  cycle = k // math.gcd(k, hp.d_steps)
  return tuple(
    {"r1_on": tuple((n * hp.d_steps + i) % k == 0 for i in range(hp.d_steps))} for n in range(cycle)
  )


def transition_weight(step: jax.Array, hp: ml_collections.FrozenConfigDict) -> jax.Array | None:
  """Transitional training's lambda at `step` (Shahbazi et al. 2022, "Collapse by
  Conditioning"): 0 until model.transition_start, then linear to 1 at transition_end, after
  which it stays 1; None when off. G sees the one-hot label times lambda (0: no label) and the
  losses are the unconditional logit's plus lambda times the conditional one's (`_weighed`)."""
  end = hp.get("transition_end", 0)
  if not end:
    return None
  start = hp.transition_start
  return jnp.clip((step - start) / (end - start), 0.0, 1.0).astype(jnp.float32)


def _g_labels(labels: jax.Array | None, lam: jax.Array | None, hp) -> jax.Array | None:
  """What G is given for `labels`: the labels, or with transitional training lambda times their
  one-hot rows [B, K] (integer or soft labels alike)."""
  if labels is None or lam is None:
    return labels
  return lam * models_common.one_hot(labels, hp.num_classes, jnp.float32)


def _weighed(loss_fn, lam: jax.Array | None, *logits: jax.Array) -> jax.Array:
  """loss_fn(*logits); with transitional training (logits [B, 2]) the unconditional logits'
  loss plus lambda times the conditional logits' loss."""
  if lam is None:
    return loss_fn(*logits)
  return loss_fn(*(x[:, 0] for x in logits)) + lam * loss_fn(*(x[:, 1] for x in logits))


def _unconditional(logits: jax.Array, lam: jax.Array | None) -> jax.Array:
  """The logits R1 and the logged D outputs read: the unconditional ones when split."""
  return logits if lam is None else logits[:, 0]


def _augment(key, x, hp, p) -> jax.Array:
  return augment.augment(key, x, hp.get("augment", ""), p)


def _standing_stats(generator, params, stats, hp, lam: jax.Array | None) -> Any:
  """BatchNorm statistics of G with weights `params`: the mean over `standing_batches` batches of
  256 fixed latents of each batch's mean and variance (BigGAN's standing statistics).
  Other "batch_stats" entries (spectral norm's u, sigma) are kept."""
  momentum = 0.9  # the models' BatchNorm momentum: one update from 0 leaves (1 - m) * batch stat
  is_bn = lambda path: path[-1].key in ("mean", "var")
  zeroed = jax.tree_util.tree_map_with_path(
    lambda p, x: jnp.zeros_like(x) if is_bn(p) else x, stats
  )

  def one(k):
    z = jax.random.normal(k, (256, hp.latent_dim))
    labels = _g_labels(common.labels_for(256, hp.num_classes), lam, hp)
    _, new = common.apply(generator, params, zeroed, z, labels, train=True)
    return new

  keys = jax.random.split(jax.random.key(0), hp.standing_batches)
  runs = jax.lax.map(one, keys)
  return jax.tree_util.tree_map_with_path(
    lambda p, old, new: jnp.mean(new, axis=0) / (1.0 - momentum) if is_bn(p) else old, stats, runs
  )


def ema_batch_stats(state: "GANState") -> Any:
  """The BatchNorm statistics sampled with the EMA weights: the online G's ("online", the default;
  they belong to other weights) or recomputed for the EMA weights (model.ema_bn = "standing")."""
  if state.hp.get("ema_bn", "online") == "online" or not state.g.batch_stats:
    return state.g.batch_stats
  generator, _ = _models(state.hp)
  lam = transition_weight(state.step, state.hp)
  return _standing_stats(generator, state.ema_params, state.g.batch_stats, state.hp, lam)


# ---- end of GAN recipes


def init_state(config: ml_collections.ConfigDict, key: jax.Array, sample_batch: dict) -> GANState:
  """Initial state of both players for images shaped like `sample_batch["image"]`."""
  m = config.model
  hp = ml_collections.FrozenConfigDict(
    dict(
      image_shape=tuple(sample_batch["image"].shape[1:]),
      width=m.width,
      kernel_size=m.kernel_size,
      num_classes=m.num_classes,
      latent_dim=m.latent_dim,
      loss=m.loss,
      d_steps=m.d_steps,
      ema_decay=m.ema_decay,
      fast_ops=ops.use_fast_ops(config.get("fast_ops", "auto")),
      accum_steps=config.get("accum_steps", 1),
      dtype=config_lib.check_dtype(config.get("dtype", "float32")),
      **_recipe_hp(m),
    )
  )
  if hp.loss not in losses.GAN_LOSSES:
    raise ConfigError(
      f"unknown GAN loss {hp.loss!r}; set config.model.loss to one of {tuple(losses.GAN_LOSSES)}"
    )
  _check_mbstd_group(hp, config.batch_size)
  _check_mode_seeking(hp, config.batch_size)
  generator, discriminator = _models(hp)
  g_key, d_key = jax.random.split(key)
  z = jnp.zeros((1, hp.latent_dim))
  labels = jnp.zeros((1,), jnp.int32) if hp.num_classes else None
  g_params, g_stats = common.init_model(generator, g_key, z, labels)
  d_params, d_stats = common.init_model(discriminator, d_key, sample_batch["image"][:1], labels)
  make = lambda model, params, stats, lr: common.create_model_state(
    model, params, stats, config.optim, lr
  )
  adaptive = {"aug_p": jnp.zeros((), jnp.float32)} if hp.get("ada_target", 0.0) else {}
  return (AdaptiveGANState if adaptive else GANState)(
    **adaptive,
    step=jnp.zeros((), jnp.int32),
    g=make(generator, g_params, g_stats, common.learning_rate(config, config.optim.g_lr)),
    d=make(
      discriminator,
      d_params,
      d_stats,
      common.learning_rate(config, config.optim.d_lr, updates_per_step=hp.d_steps),
    ),
    ema_params=jax.tree.map(jnp.copy, g_params),
    hp=hp,
  )


def train_step(
  state: GANState, batch: dict, key: jax.Array, r1_on: tuple[bool, ...] | None = None
) -> tuple[GANState, dict]:
  """`d_steps` discriminator updates then one generator update on a batch of real images.
  `r1_on` (static; `step_variants`): per D update, whether lazy R1 is due (None: from the step).

  Metrics: both losses, D(x) and D(G(z)) (`d_real`, `d_fake`), each player's learning rate and
  gradient norm (`d_lr`, `d_grad_norm` of the last D update; `g_lr`, `g_grad_norm`); with R1,
  `d_r1`, the penalty summed over the step's D updates; with ADA, `aug_p` (the probability this
  step used) and `d_real_sign` (E[sign D(real)] over its D updates, which moves aug_p)."""
  hp = state.hp
  generator, discriminator = _models(hp)
  d_loss_fn, g_loss_fn = losses.GAN_LOSSES[hp.loss]
  real = batch["image"]
  labels = batch["label"] if hp.num_classes else None
  lam = transition_weight(state.step, hp)
  aug_p = getattr(state, "aug_p", None)
  p = hp.get("augment_p", 1.0) if aug_p is None else aug_p
  keys = jax.random.split(jax.random.fold_in(key, state.step), hp.d_steps + 1)
  # fresh_real_batches: the batch holds d_steps real batches, one per D update (rows split as
  # common.micro_batches does); G's update uses a latent batch of that smaller size.
  if hp.get("fresh_real_batches", False):
    real_i = lambda i: common.shard_batch_axis(common.micro_batches(real, hp.d_steps)[i])
    labels_i = lambda i: (
      None
      if labels is None
      else common.shard_batch_axis(common.micro_batches(labels, hp.d_steps)[i])
    )
    num = real.shape[0] // hp.d_steps
  else:
    real_i, labels_i, num = (lambda i: real), (lambda i: labels), real.shape[0]
  latent = lambda k: common.shard_batch_axis(jax.random.normal(k, (num, hp.latent_dim), real.dtype))

  # ---- discriminator: G's BatchNorm runs on batch statistics but its running
  # averages are updated only in the generator's own step.
  g, d = state.g, state.d

  def d_grads_fn(d_params, d_stats, inputs, key, update, on):
    real, labels, z = inputs
    g_labels = _g_labels(labels, lam, hp)
    fake, _ = common.apply(generator, g.params, g.batch_stats, z, g_labels, train=True)
    fake = jax.lax.stop_gradient(fake)
    # recipes: the same augmentation policy on real and fake (own draws), R1 on what D sees
    real = _augment(jax.random.fold_in(key, 101), real, hp, p)
    fake = _augment(jax.random.fold_in(key, 102), fake, hp, p)

    def d_objective(d_params):
      real_logits, stats = common.apply(discriminator, d_params, d_stats, real, labels, train=True)
      fake_logits, stats = common.apply(discriminator, d_params, stats, fake, labels, train=True)
      d_fn = lambda x: _unconditional(
        common.apply(discriminator, d_params, d_stats, x, labels, train=True)[0], lam
      )
      r1 = _r1(d_fn, real, update, hp, on)
      loss = _weighed(d_loss_fn, lam, real_logits, fake_logits) + r1
      return loss, (stats, _unconditional(real_logits, lam), _unconditional(fake_logits, lam), r1)

    (loss, (stats, real_logits, fake_logits, r1)), grads = common.value_and_grad(d_objective, d)(
      d_params
    )
    d_real, d_fake = (jnp.mean(jax.nn.sigmoid(x)) for x in (real_logits, fake_logits))
    metrics = dict(d_loss=loss, d_real=d_real, d_fake=d_fake)
    if hp.get("r1_gamma", 0.0):
      metrics["d_r1"] = r1
    if aug_p is not None:
      metrics["d_real_sign"] = jnp.mean(jnp.sign(real_logits))
    if lam is not None:
      metrics["cond_weight"] = lam
    return grads, stats, metrics

  r1_sum, real_sign = 0.0, 0.0
  for i in range(hp.d_steps):
    d_grads, d_stats, d_metrics = common.accumulate(
      functools.partial(
        d_grads_fn,
        d.params,
        update=state.step * hp.d_steps + i,
        on=None if r1_on is None else r1_on[i],
      ),
      d.batch_stats,
      (real_i(i), labels_i(i), latent(keys[i])),
      keys[i],
      hp.accum_steps,
    )
    d, d_logged = common.apply_gradients(d, d_grads, "d_", batch_stats=d_stats)
    r1_sum = r1_sum + d_metrics.get("d_r1", 0.0)
    real_sign = real_sign + d_metrics.get("d_real_sign", 0.0) / hp.d_steps
  if "d_r1" in d_metrics:  # the penalty of every D update of the step, lazy ones included
    d_metrics["d_r1"] = r1_sum
  if aug_p is not None:
    d_metrics.update(d_real_sign=real_sign, aug_p=aug_p)
    seen = num * hp.d_steps  # the real images D trained on in this step
    aug_p = augment.ada_adjust(aug_p, real_sign, seen, hp.ada_target, hp.ada_kimg)

  # ---- generator
  ms = hp.get("mode_seeking", 0.0)

  def g_grads_fn(g_stats, inputs, key):
    labels, z = inputs
    if ms and labels is not None:  # mode seeking: rows 2i and 2i + 1 get the same label
      labels = jnp.repeat(_pairs(labels)[:, 0], 2, axis=0)

    def g_objective(g_params):
      g_labels = _g_labels(labels, lam, hp)
      fake, stats = common.apply(generator, g_params, g_stats, z, g_labels, train=True)
      term = losses.mode_seeking(_pairs(fake), _pairs(z)) if ms else 0.0
      fake = _augment(jax.random.fold_in(key, 102), fake, hp, p)
      logits, _ = common.apply(discriminator, d.params, d.batch_stats, fake, labels, train=True)
      loss = _weighed(g_loss_fn, lam, logits)
      return (loss + ms * term if ms else loss), (stats, loss, term)

    (_, (stats, loss, term)), grads = common.value_and_grad(g_objective, g)(g.params)
    return grads, stats, dict(g_loss=loss, **({"g_mode_seeking": term} if ms else {}))

  g_grads, g_stats, g_metrics = common.accumulate(
    g_grads_fn,
    g.batch_stats,
    (labels_i(hp.d_steps - 1), latent(keys[-1])),
    keys[-1],
    hp.accum_steps,
  )
  g, g_logged = common.apply_gradients(g, g_grads, "g_", batch_stats=g_stats)
  # Warm-up (as tf.train.ExponentialMovingAverage's num_updates): early on the average
  # would otherwise be dominated by the random initial weights.
  decay = jnp.minimum(hp.ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema = optax.incremental_update(g.params, state.ema_params, step_size=1.0 - decay)

  metrics = dict(**d_metrics, **g_metrics, **d_logged, **g_logged)
  state = state.replace(step=state.step + 1, g=g, d=d, ema_params=ema)
  return (state if aug_p is None else state.replace(aug_p=aug_p)), metrics


def eval_step(state: GANState, batch: dict, key: jax.Array) -> dict:
  """Both players' losses on a batch, networks in inference mode (EMA generator)."""
  hp = state.hp
  generator, discriminator = _models(hp)
  d_loss_fn, g_loss_fn = losses.GAN_LOSSES[hp.loss]
  labels = batch["label"] if hp.num_classes else None
  z = jax.random.normal(key, (batch["image"].shape[0], hp.latent_dim))
  fake = generate(state, z, labels)
  d_apply = lambda x: common.apply(
    discriminator, state.d.params, state.d.batch_stats, x, labels, train=False
  )[0]
  real_logits, fake_logits = d_apply(batch["image"]), d_apply(fake)
  lam = transition_weight(state.step, hp)
  return dict(
    d_loss=_weighed(d_loss_fn, lam, real_logits, fake_logits),
    g_loss=_weighed(g_loss_fn, lam, fake_logits),
  )


def generate(state: GANState, z_NxZ: jax.Array, labels_N: jax.Array | None = None) -> jax.Array:
  """Images [N, H, W, C] in [-1, 1] from given latents (and labels), EMA generator; with
  transitional training the labels are weighed by the state's lambda, as in training."""
  generator, _ = _models(state.hp)
  labels_N = _g_labels(labels_N, transition_weight(state.step, state.hp), state.hp)
  return common.apply(
    generator, state.ema_params, ema_batch_stats(state), z_NxZ, labels_N, train=False
  )[0]


def sample(state: GANState, key: jax.Array, num: int, conditioning: Any = None) -> jax.Array:
  """`num` images [num, H, W, C] in [-1, 1] from the EMA generator; `conditioning`: labels."""
  return sample_latents(state, jax.random.normal(key, (num, state.hp.latent_dim)), conditioning)


def sample_latents(state: GANState, z_NxZ: jax.Array, conditioning: Any = None) -> jax.Array:
  """`sample` from given latents z [N, Z] (walks, truncation): images [N, H, W, C]."""
  return generate(
    state, z_NxZ, common.labels_for(z_NxZ.shape[0], state.hp.num_classes, conditioning)
  )
