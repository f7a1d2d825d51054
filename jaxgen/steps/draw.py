"""DRAW / alignDRAW family: the ELBO with a KL per step, IWAE bounds and the canvas over time.

Images are modelled as independent Bernoulli(sigmoid(final canvas)) pixels of the binarised
image, x ~ Bernoulli((image + 1) / 2). Training sees them as config.model.binarization says:
  "dynamic" (default): binarised afresh every time they are seen (as the VAE family);
  "expected": the pixel probabilities p = (image + 1) / 2 themselves, for the encoder and as the
    target. p log q + (1 - p) log(1 - q) is the exact expectation over binarisations of the
    Bernoulli log-likelihood, so the loss is the expected -ELBO of the binarised image (q(z|.)
    reads p) without the binarisation's sampling noise.
Evaluation always scores test images binarised once. config.model.kl_warmup_steps = N > 0
weighs the KL term by min(1, (step + 1) / N) in the loss (KL warm-up, Sonderby et al. 2016), so
the encoder learns to pass information through z before the KL prices it; from step N on the
loss is -ELBO. config.model.free_bits = lambda > 0 prices each step's batch-mean KL only above
lambda nats, sum_t max(lambda, mean_B KL_t) (free bits, Kingma et al. 2016), so z_t may carry
that much information at no cost; a learned prior is still fitted to the posterior by the whole
KL (`priced_kl`). The mean is over the (micro-)batch the loss sees: with accum_steps > 1 the
allowance applies to each micro-batch. config.model.kl_beta = beta in (0, 1] weighs the
posterior's KL by beta (beta < 1, where beta-VAE's beta > 1: z may carry more information); a
learned prior's heads are again fitted by the whole KL. The `elbo` and `bpd` metrics are always
the true bound.
Every likelihood number is in nats per image; `bpd` is the same number in bits per dimension.

    -ELBO = -log p(x | z_1..T) + sum_t KL(q(z_t | x, z_<t) || p(z_t | z_<t [, caption]))

T is config.model.draw_steps, the number of canvas updates per image. With
config.model.captions the model reads a caption (alignDRAW); batches then carry "tokens" int32
[B, L] and `sample`'s conditioning is a caption or its tokens. The vocabulary is
config.data.vocabulary, which the trainer fills from the data set (emoji: the training split's
words, jaxgen.data.emoji.training_vocabulary) and config.json keeps; without it, captioned
Fashion-MNIST's (jaxgen.data.captions.VOCABULARY). Unconditional samples (grids) are drawn for
config.model.example_captions (default captions.EXAMPLE_CAPTIONS).

config.model.sample_temperature (default 1; `with_temperature`, `--temperature`) scales the
prior's noise in samples only. config.model.write_attention says how an N x N write patch
(write_n = N > 0) reaches the canvas: "gaussian", DRAW's window, or "shift", moved by a learned
distribution over whole-pixel offsets (jaxgen.models.draw.shift_filterbank). The shift write's
write_offsets ("soft": that distribution; "hard": its mode, straight-through), write_patches
(patches per step), write_coarse (f > 0: plus a dense (H/f) x (W/f) canvas, upsampled) and
write_stride (s > 1: offsets are multiples of s pixels, e.g. 16 puts a 28x28 patch on the nine
places of the 60x60 captioned canvases) are refused at any value but their defaults with any
other write. config.model.scan_unroll (default
1) is how many of the T steps one iteration of the compiled loop runs: the same maths, and on
XLA:CPU DRAW's small 28x28 steps run faster unrolled (draw_fashion.py unrolls all T).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from jaxgen import config as config_lib
from jaxgen import losses
from jaxgen.data import captions
from jaxgen.errors import ConfigError, UserError
from jaxgen.models import draw as draw_models
from jaxgen.steps import common


@struct.dataclass
class DRAWState:
  step: jax.Array
  draw: common.ModelState
  hp: ml_collections.FrozenConfigDict = struct.field(pytree_node=False)


def _model(hp: ml_collections.FrozenConfigDict) -> draw_models.DRAW:
  return draw_models.DRAW(
    image_shape=tuple(hp.image_shape),
    draw_steps=hp.draw_steps,
    latent_dim=hp.latent_dim,
    enc_features=hp.enc_features,
    dec_features=hp.dec_features,
    read_n=hp.read_n,
    write_n=hp.write_n,
    cell=hp.cell,
    learned_prior=hp.learned_prior,
    vocab_size=len(hp.vocabulary),
    embed_dim=hp.embed_dim,
    lang_features=hp.lang_features,
    align_features=hp.align_features,
    write_attention=hp.write_attention,
    write_offsets=hp.write_offsets,
    write_patches=hp.write_patches,
    write_coarse=hp.write_coarse,
    write_stride=hp.write_stride,
    temperature=hp.sample_temperature,
    dtype=common.compute_dtype(hp),
    scan_unroll=hp.scan_unroll,
  )


def init_state(config: ml_collections.ConfigDict, key: jax.Array, sample_batch: dict) -> DRAWState:
  """Initial state for images shaped like `sample_batch["image"]` [B, H, W, C]."""
  m = config.model
  if "num_steps" in m:  # the key's name before T was called draw_steps
    raise ConfigError(
      "config.model.num_steps is now config.model.draw_steps (T, the canvas updates per image); "
      "rename it in the config file, or in RUN/config.json for a run trained before the rename"
    )
  text = m.get("captions", False)
  hp = ml_collections.FrozenConfigDict(
    dict(
      image_shape=tuple(sample_batch["image"].shape[1:]),
      draw_steps=m.draw_steps,
      latent_dim=m.latent_dim,
      enc_features=m.enc_features,
      dec_features=m.dec_features,
      read_n=m.read_n,
      write_n=m.write_n,
      write_attention=_check_write_attention(
        m.get("write_attention", "gaussian"), m.write_n, sample_batch["image"].shape[1:3]
      ),
      **_check_shift_write(m, sample_batch["image"].shape[1:3]),
      cell=m.cell,
      learned_prior=m.learned_prior,
      binarization=_check_binarization(m.get("binarization", "dynamic")),
      kl_warmup_steps=int(m.get("kl_warmup_steps", 0)),
      free_bits=_check_free_bits(m.get("free_bits", 0.0)),
      kl_beta=_check_kl_beta(m.get("kl_beta", 1.0)),
      scan_unroll=_check_scan_unroll(m.get("scan_unroll", 1)),
      sample_temperature=check_temperature(
        m.get("sample_temperature", 1.0), "config.model.sample_temperature"
      ),
      # the data's caption words where the trainer filled them in (emoji: the training split's),
      # else captioned Fashion-MNIST's fixed template vocabulary
      vocabulary=tuple(config.data.get("vocabulary") or captions.VOCABULARY) if text else (),
      max_tokens=(config.data.get("max_tokens") or captions.MAX_TOKENS) if text else 0,
      example_captions=tuple(m.get("example_captions") or captions.EXAMPLE_CAPTIONS),
      embed_dim=m.get("embed_dim", 64),
      lang_features=m.get("lang_features", 128),
      align_features=m.get("align_features", 128),
      accum_steps=config.get("accum_steps", 1),
      dtype=config_lib.check_dtype(config.get("dtype", "float32")),
    )
  )
  tokens = None
  if text:  # the loop's example batch has no tokens; their shape is fixed by the vocabulary
    tokens = sample_batch.get("tokens", jnp.zeros((1, hp.max_tokens), jnp.int32))[:1]
  model = _model(hp)
  params, _ = common.init_model(model, key, sample_batch["image"][:1], tokens)
  lr = common.learning_rate(config, config.optim.lr)
  draw = common.create_model_state(model, params, {}, config.optim, lr)
  return DRAWState(step=jnp.zeros((), jnp.int32), draw=draw, hp=hp)


# ------------------------------------------------------------------ the objective

BINARIZATIONS = ("dynamic", "expected")


def _check_binarization(name: str) -> str:
  if name not in BINARIZATIONS:
    raise ConfigError(
      f"config.model.binarization={name!r} is not one of {BINARIZATIONS}: 'dynamic' binarises "
      "each batch afresh, 'expected' trains on the pixel probabilities"
    )
  return name


def _check_write_attention(name: str, write_n: int, image_hw: tuple[int, int]) -> str:
  if name not in draw_models.WRITE_ATTENTIONS:
    raise ConfigError(
      f"config.model.write_attention={name!r} is not one of {draw_models.WRITE_ATTENTIONS}: "
      "'gaussian' is DRAW's window, 'shift' moves the patch by a learned distribution over offsets"
    )
  if name == "shift" and not 0 < write_n <= min(image_hw):
    raise ConfigError(
      f"config.model.write_attention='shift' moves an N x N patch inside the {image_hw[0]}x"
      f"{image_hw[1]} image: set config.model.write_n to N in 1..{min(image_hw)} (e.g. 28 on the "
      f"60x60 captioned canvases), not {write_n}"
    )
  return name


def _check_shift_write(m: ml_collections.ConfigDict, image_hw: tuple[int, int]) -> dict:
  """The shift write's settings (model.write_offsets, write_patches, write_coarse, write_stride),
  checked."""
  got = {k: m.get(k, v) for k, v in config_lib.SHIFT_WRITE_DEFAULTS.items()}
  if got["write_offsets"] not in draw_models.WRITE_OFFSETS:
    raise ConfigError(
      f"config.model.write_offsets={got['write_offsets']!r} is not one of "
      f"{draw_models.WRITE_OFFSETS}: 'soft' moves the patch by the offset distribution, 'hard' "
      "by its mode (straight-through gradient)"
    )
  patches, f = got["write_patches"], got["write_coarse"]
  if isinstance(patches, bool) or not isinstance(patches, int) or patches < 1:
    raise ConfigError(
      f"config.model.write_patches={patches!r} must be an integer >= 1 (patches per step)"
    )
  if isinstance(f, bool) or not isinstance(f, int) or f < 0 or (f and any(n % f for n in image_hw)):
    raise ConfigError(
      f"config.model.write_coarse={f!r} must be 0 (off) or an integer factor of the "
      f"{image_hw[0]}x{image_hw[1]} image's sides (e.g. 4: a 15x15 canvas on 60x60)"
    )
  stride, n = got["write_stride"], m.write_n
  if (
    isinstance(stride, bool)
    or not isinstance(stride, int)
    or stride < 1
    or (n and any((side - n) % stride for side in image_hw))
  ):
    raise ConfigError(
      f"config.model.write_stride={stride!r} must be an integer >= 1 that divides the "
      f"{image_hw[0]}x{image_hw[1]} image's sides less write_n={n} (the patch's offsets are its "
      "multiples, so the last must reach the edge; e.g. 16 for a 28x28 patch on 60x60)"
    )
  changed = [k for k, v in config_lib.SHIFT_WRITE_DEFAULTS.items() if got[k] != v]
  if changed and m.get("write_attention", "gaussian") != "shift":
    raise ConfigError(
      f"config.model.{changed[0]}={got[changed[0]]!r} applies to the shift write only: set "
      "config.model.write_attention='shift' and write_n > 0, or leave it at "
      f"{config_lib.SHIFT_WRITE_DEFAULTS[changed[0]]!r}"
    )
  return got


def _check_free_bits(free_bits: float) -> float:
  if not free_bits >= 0:  # also NaN
    raise ConfigError(
      f"config.model.free_bits={free_bits!r} must be >= 0 (nats per step; 0 turns free bits off)"
    )
  return float(free_bits)


def _check_kl_beta(beta: float) -> float:
  if not 0 < beta <= 1:  # also NaN
    raise ConfigError(
      f"config.model.kl_beta={beta!r} must be in (0, 1]: the posterior's KL weight (1 is the ELBO)"
    )
  return float(beta)


def _check_scan_unroll(unroll: int) -> int:
  if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
    raise ConfigError(
      f"config.model.scan_unroll={unroll!r} must be an integer >= 1: time steps per iteration "
      "of the compiled loop (1: a loop over the T steps; config.model.draw_steps: unrolled)"
    )
  return unroll


def check_temperature(temperature: float, name: str = "--temperature") -> float:
  """`temperature` as a float, or a ConfigError naming `name` unless it is finite and >= 0."""
  if not 0 <= temperature < float("inf"):  # also NaN
    raise ConfigError(
      f"{name}={temperature!r} must be finite and >= 0: samples scale the prior's noise by it "
      "(1: the model's own prior; e.g. 0.5: more typical images, less variety; 0: its mean)"
    )
  return float(temperature)


def with_temperature(state: DRAWState, temperature: float) -> DRAWState:
  """`state` whose samples draw z_t = prior mean + temperature * prior std * eps; training,
  reconstructions and likelihood bounds do not use it."""
  hp = dict(state.hp, sample_temperature=check_temperature(temperature))
  return state.replace(hp=ml_collections.FrozenConfigDict(hp))


def observed(hp: ml_collections.FrozenConfigDict, key: jax.Array, image: jax.Array) -> jax.Array:
  """What training reads and scores, [B, H, W, C] in [0, 1], from [-1, 1] images: a fresh binary
  image ("dynamic", drawn from `key`) or the pixel probabilities ("expected")."""
  if hp.binarization == "expected":
    return (image + 1.0) / 2.0
  return common.binarize(key, image)


def _tokens(hp: ml_collections.FrozenConfigDict, batch: dict) -> jax.Array | None:
  if not hp.vocabulary:
    return None
  if "tokens" not in batch:
    raise ConfigError(
      "config.model.captions=True needs captioned data (batches with 'tokens'); "
      "set --config.data.name=captioned_fashion_mnist (or emoji) or captions=False"
    )
  return batch["tokens"]


def _infer(
  hp: ml_collections.FrozenConfigDict,
  params: Any,
  x_BxHxWxC: jax.Array,
  tokens: jax.Array | None,
  key: jax.Array,
) -> dict:
  return common.apply(_model(hp), params, {}, x_BxHxWxC, tokens, train=False, rngs={"latent": key})[
    0
  ]


def kl_per_step(hp: ml_collections.FrozenConfigDict, out: dict) -> jax.Array:
  """KL(q(z_t|.) || p(z_t|.)) of each step, summed over latent units, nats [T, B]."""
  if hp.learned_prior:
    kl = losses.gaussian_kl_between(out["q_mean"], out["q_logvar"], out["p_mean"], out["p_logvar"])
  else:
    kl = losses.gaussian_kl(out["q_mean"], out["q_logvar"])
  return jnp.sum(kl, axis=-1)


def _posterior_pass(
  hp: ml_collections.FrozenConfigDict, params: Any, batch: dict, key: jax.Array
) -> tuple[jax.Array, dict]:
  """(x as training sees it, the inference network's outputs) for batch["image"], with z_1..T
  from the posterior; the binarisation and z drawn from `key`."""
  bin_key, z_key = jax.random.split(key)
  x = observed(hp, bin_key, batch["image"])
  return x, _infer(hp, params, x, _tokens(hp, batch), z_key)


def _negative_elbo(
  params: Any, state: DRAWState, batch: dict, key: jax.Array
) -> tuple[jax.Array, dict]:
  """(-ELBO averaged over the batch, metrics): one sample of z_1..T, each KL in closed form."""
  hp = state.hp
  x, out = _posterior_pass(hp, params, batch, key)
  recon_B = -losses.bernoulli_log_prob(out["canvas"], x)
  kl_B = jnp.sum(kl_per_step(hp, out), axis=0)
  return common.elbo_metrics(
    recon_B, kl_B, int(np.prod(hp.image_shape)), kl_weight(state), loss_kl=priced_kl(hp, out)
  )


def free_bits_kl(kl_TxB: jax.Array, free_bits: float) -> jax.Array:
  """The KL term the loss prices under free bits (Kingma et al. 2016): a scalar, nats per image,
  sum_t max(free_bits, mean_B KL_t) of the per-step KLs [T, B]. Steps whose batch-mean KL is
  below the allowance cost nothing more, so the encoder can put that much information into each
  z_t for free."""
  return jnp.sum(jnp.maximum(free_bits, jnp.mean(kl_TxB, axis=1)))


def priced_kl(hp: ml_collections.FrozenConfigDict, out: dict) -> jax.Array | None:
  """The KL term of the loss (a scalar, nats per image) under free bits and the posterior's
  weight hp.kl_beta, or None when neither is on (free_bits 0, kl_beta 1: the loss prices the
  whole KL). Its value is kl_beta * free_bits_kl (free bits) or kl_beta * mean_B sum_t KL_t,
  from `out`'s per-step means and log-variances [T, B, Z].
  With a learned prior both hold for the posterior only: the posterior's gradient comes from
  that term with KL(q || stop_gradient(p)), the prior's from the whole KL(stop_gradient(q) || p),
  so the prior is fitted to wherever the posterior goes (a step below the allowance, or a
  posterior priced at kl_beta < 1, still teaches the prior all of it). Only q's outputs are
  stopped there: p_t reads h^dec_{t-1}, which depends on z_<t, so the encoder still gets part
  of its gradient from the prior's term at full weight (its effective weight lies between
  kl_beta and 1). KL warm-up scales the whole term, the prior's part included."""
  beta = hp.kl_beta
  if hp.free_bits <= 0 and beta == 1.0:
    return None

  def posterior_term(kl_TxB: jax.Array) -> jax.Array:
    if hp.free_bits > 0:
      return beta * free_bits_kl(kl_TxB, hp.free_bits)
    return beta * jnp.mean(jnp.sum(kl_TxB, axis=0))

  if not hp.learned_prior:
    return posterior_term(kl_per_step(hp, out))
  sg = jax.lax.stop_gradient
  fixed = lambda *names: {**out, **{k: sg(out[k]) for k in names}}
  posterior = posterior_term(kl_per_step(hp, fixed("p_mean", "p_logvar")))
  prior = jnp.mean(jnp.sum(kl_per_step(hp, fixed("q_mean", "q_logvar")), axis=0))
  return posterior + (prior - sg(prior))  # + 0 in value; the prior's gradient


def kl_weight(state: DRAWState) -> jax.Array:
  """The KL term's weight in the loss at this step: 1, or min(1, (step + 1) / kl_warmup_steps)."""
  n = state.hp.kl_warmup_steps
  return jnp.minimum(1.0, (state.step + 1) / n) if n > 0 else jnp.ones(())


def train_step(state: DRAWState, batch: dict, key: jax.Array) -> tuple[DRAWState, dict]:
  """One optimizer step on `_negative_elbo`'s loss (-ELBO, or with KL warm-up, free bits or
  kl_beta < 1 the KL priced as they say); metrics in nats/image (`loss`, `elbo`, `recon`,
  `kl`), `bpd`, the learning rate `lr` and the gradients' global norm `grad_norm` (before
  clipping)."""
  step_key = jax.random.fold_in(key, state.step)

  def grads_fn(stats, micro_batch, micro_key):
    (_, metrics), grads = common.value_and_grad(_negative_elbo, state.draw)(
      state.draw.params, state, micro_batch, micro_key
    )
    return grads, stats, metrics

  grads, _, metrics = common.accumulate(grads_fn, {}, batch, step_key, state.hp.accum_steps)
  draw, logged = common.apply_gradients(state.draw, grads)
  return state.replace(step=state.step + 1, draw=draw), {**metrics, **logged}


def eval_step(state: DRAWState, batch: dict, key: jax.Array) -> dict:
  """The training metrics on a batch without updating (binarisation and z drawn from `key`)."""
  return _negative_elbo(state.draw.params, state, batch, key)[1]


# ------------------------------------------------------------------ sampling


def tokenize(state: DRAWState, caption: str) -> np.ndarray:
  """Token ids int32 [L] of a caption for this run's vocabulary (CaptionError lists it)."""
  hp = state.hp
  if not hp.vocabulary:
    raise UserError(
      "this DRAW run is not caption-conditioned; train one with "
      "experiments/configs/aligndraw_captions.py to sample from captions"
    )
  return captions.tokenize(caption, hp.vocabulary, hp.max_tokens)


def caption_tokens(state: DRAWState, num: int, conditioning: Any = None) -> jax.Array | None:
  """Tokens [num, L] for `num` samples: a caption (str) or tokens [L] for all of them, tokens
  [num, L], or None: hp.example_captions in equal consecutive runs. None for an unconditional
  run."""
  hp = state.hp
  if not hp.vocabulary:
    return None
  if conditioning is None:
    table = np.stack([tokenize(state, c) for c in hp.example_captions])
    return jnp.asarray(table[(np.arange(num) * len(table)) // num])
  if isinstance(conditioning, str):
    conditioning = tokenize(state, conditioning)
  tokens = jnp.asarray(conditioning, jnp.int32)
  return jnp.broadcast_to(tokens, (num, hp.max_tokens)) if tokens.ndim == 1 else tokens


def sample_frames(
  state: DRAWState, key: jax.Array, num: int, conditioning: Any = None
) -> jax.Array:
  """The canvas after every step, [T, num, H, W, C] in [-1, 1] (2 sigmoid(c_t) - 1), with
  z_t drawn from the prior at the state's sample temperature (`with_temperature`);
  `conditioning` as in `caption_tokens`."""
  hp = state.hp
  out = common.apply(
    _model(hp),
    state.draw.params,
    {},
    None,
    caption_tokens(state, num, conditioning),
    num=num,
    train=False,
    rngs={"latent": key},
  )[0]
  return 2.0 * jax.nn.sigmoid(out["canvas"]) - 1.0


def reconstruct(state: DRAWState, batch: dict, key: jax.Array) -> jax.Array:
  """Reconstructions [B, H, W, C] in [-1, 1] of batch["image"] (with its "tokens" for alignDRAW):
  z_1..T drawn from the posterior, the final canvas's Bernoulli means; the images are seen as
  training sees them (`observed`, binarised from `key`)."""
  _, out = _posterior_pass(state.hp, state.draw.params, batch, key)
  return 2.0 * jax.nn.sigmoid(out["canvas"]) - 1.0


def sample(state: DRAWState, key: jax.Array, num: int, conditioning: Any = None) -> jax.Array:
  """`num` images [num, H, W, C] in [-1, 1]: the final canvas's Bernoulli means."""
  return sample_frames(state, key, num, conditioning)[-1]


# ------------------------------------------------------------------ likelihood bounds


def log_likelihood_bounds(
  state: DRAWState, batch: dict, key: jax.Array, num_samples: int, chunk_images: int = 1024
) -> dict[str, jax.Array]:
  """Lower bounds on log p(x) per test image, nats [B]: {"elbo": ..., "iwae": ...}.

  Each of the `num_samples` importance samples is a whole latent sequence z_1..T ~ q, with
  log w = log p(x | z) + sum_t [log p(z_t | z_<t) - log q(z_t | x, z_<t)];
  iwae = log mean_i w_i (Burda et al. 2016), elbo = mean_i log w_i. Sequences run
  `max(1, chunk_images // B)` at a time in a lax.scan; sample i uses fold_in(key, i), so the
  result does not depend on the chunk size. The batch is binarised once, from `key`.
  Static: num_samples, chunk_images.
  """
  hp = state.hp
  bin_key, z_key = jax.random.split(key)
  x = common.binarize(bin_key, batch["image"])
  tokens = _tokens(hp, batch)
  b = x.shape[0]
  chunk = max(1, min(num_samples, chunk_images // b))
  num_chunks = -(-num_samples // chunk)

  def log_weight_B(i: jax.Array) -> jax.Array:
    out = _infer(hp, state.draw.params, x, tokens, jax.random.fold_in(z_key, i))
    log_p_TxB = losses.diag_gaussian_log_prob(out["z"], out["p_mean"], out["p_logvar"])
    log_q_TxB = losses.diag_gaussian_log_prob(out["z"], out["q_mean"], out["q_logvar"])
    return (
      losses.bernoulli_log_prob(out["canvas"], x)
      + jnp.sum(log_p_TxB, axis=0)
      - jnp.sum(log_q_TxB, axis=0)
    )

  def one_chunk(_, c):
    return None, jax.vmap(log_weight_B)(c * chunk + jnp.arange(chunk))

  _, log_w = jax.lax.scan(one_chunk, None, jnp.arange(num_chunks))
  log_w_KxB = log_w.reshape(-1, b)[:num_samples]
  return {"elbo": jnp.mean(log_w_KxB, axis=0), "iwae": losses.iwae_bound(log_w_KxB)}
