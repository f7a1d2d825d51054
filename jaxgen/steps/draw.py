"""DRAW / alignDRAW family: the ELBO with a KL per step, IWAE bounds and the canvas over time.

Images are binarised afresh every time they are seen (dynamic binarisation, as the VAE family)
and modelled as independent Bernoulli(sigmoid(final canvas)) pixels. Every likelihood number is
in nats per image; `bpd` is the same number in bits per dimension.

    -ELBO = -log p(x | z_1..T) + sum_t KL(q(z_t | x, z_<t) || p(z_t | z_<t [, caption]))

With config.model.captions the model reads a caption (alignDRAW); batches then carry "tokens"
int32 [B, L] (jaxgen.data.captions) and `sample`'s conditioning is a caption or its tokens.
"""

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from PIL import Image, ImageDraw

from jaxgen import config as config_lib
from jaxgen import losses, viz
from jaxgen.data import captions
from jaxgen.errors import ConfigError, UserError
from jaxgen.models import draw as draw_models
from jaxgen.steps import common
from jaxgen.steps.vae import binarize


@struct.dataclass
class DRAWState:
  step: jax.Array
  draw: common.ModelState
  hp: ml_collections.FrozenConfigDict = struct.field(pytree_node=False)


def _model(hp: ml_collections.FrozenConfigDict) -> draw_models.DRAW:
  return draw_models.DRAW(
    image_shape=tuple(hp.image_shape),
    num_steps=hp.num_steps,
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
    dtype=common.compute_dtype(hp),
  )


def init_state(config: ml_collections.ConfigDict, key: jax.Array, sample_batch: dict) -> DRAWState:
  """Initial state for images shaped like `sample_batch["image"]` [B, H, W, C]."""
  m = config.model
  text = m.get("captions", False)
  hp = ml_collections.FrozenConfigDict(
    dict(
      image_shape=tuple(sample_batch["image"].shape[1:]),
      num_steps=m.num_steps,
      latent_dim=m.latent_dim,
      enc_features=m.enc_features,
      dec_features=m.dec_features,
      read_n=m.read_n,
      write_n=m.write_n,
      cell=m.cell,
      learned_prior=m.learned_prior,
      vocabulary=captions.VOCABULARY if text else (),
      max_tokens=captions.MAX_TOKENS if text else 0,
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


def _tokens(hp: ml_collections.FrozenConfigDict, batch: dict) -> jax.Array | None:
  if not hp.vocabulary:
    return None
  if "tokens" not in batch:
    raise ConfigError(
      "config.model.captions=True needs captioned data (batches with 'tokens'); "
      "set --config.data.name=captioned_fashion_mnist or captions=False"
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


def _negative_elbo(
  params: Any, state: DRAWState, batch: dict, key: jax.Array
) -> tuple[jax.Array, dict]:
  """(-ELBO averaged over the batch, metrics): one sample of z_1..T, each KL in closed form."""
  hp = state.hp
  bin_key, z_key = jax.random.split(key)
  x = binarize(bin_key, batch["image"])
  out = _infer(hp, params, x, _tokens(hp, batch), z_key)
  recon_B = -losses.bernoulli_log_prob(out["canvas"], x)
  kl_B = jnp.sum(kl_per_step(hp, out), axis=0)
  loss = jnp.mean(recon_B + kl_B)
  return loss, dict(
    loss=loss,
    elbo=-loss,
    recon=jnp.mean(recon_B),
    kl=jnp.mean(kl_B),
    bpd=losses.bits_per_dim(loss, int(np.prod(hp.image_shape))),
  )


def train_step(state: DRAWState, batch: dict, key: jax.Array) -> tuple[DRAWState, dict]:
  """One optimizer step on -ELBO; metrics in nats/image (`loss`, `elbo`, `recon`, `kl`), `bpd`,
  the learning rate `lr` and the gradients' global norm `grad_norm` (before clipping)."""
  step_key = jax.random.fold_in(key, state.step)

  def grads_fn(stats, micro_batch, micro_key):
    grads, metrics = jax.grad(_negative_elbo, has_aux=True)(
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
  [num, L], or None: EXAMPLE_CAPTIONS in equal consecutive runs. None for an unconditional run."""
  hp = state.hp
  if not hp.vocabulary:
    return None
  if conditioning is None:
    table = np.stack([tokenize(state, c) for c in captions.EXAMPLE_CAPTIONS])
    return jnp.asarray(table[(np.arange(num) * len(table)) // num])
  if isinstance(conditioning, str):
    conditioning = tokenize(state, conditioning)
  tokens = jnp.asarray(conditioning, jnp.int32)
  return jnp.broadcast_to(tokens, (num, hp.max_tokens)) if tokens.ndim == 1 else tokens


def sample_frames(
  state: DRAWState, key: jax.Array, num: int, conditioning: Any = None
) -> jax.Array:
  """The canvas after every step, [T, num, H, W, C] in [-1, 1] (2 sigmoid(c_t) - 1), with
  z_t drawn from the prior; `conditioning` as in `caption_tokens`."""
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
  x = binarize(bin_key, batch["image"])
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


# ------------------------------------------------------------------ pictures


def save_captioned_grid(
  images_NxHxWxC: np.ndarray, texts: list[str], path: Path, ncols: int, scale: int = 2
) -> Path:
  """A grid PNG (as viz.save_grid) with text row r written to the left of row r."""
  picture = viz.grid(images_NxHxWxC, ncols)
  grid_img = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
  grid_img = grid_img.resize((grid_img.width * scale, grid_img.height * scale), Image.NEAREST)
  measure = ImageDraw.Draw(grid_img)
  margin = int(max(measure.textlength(t) for t in texts)) + 12
  out = Image.new(grid_img.mode, (margin + grid_img.width, grid_img.height), "white")
  out.paste(grid_img, (margin, 0))
  draw = ImageDraw.Draw(out)
  row = (images_NxHxWxC.shape[1] + 2) * scale  # viz.grid pads cells by 2 pixels
  for r, text in enumerate(texts):
    draw.text((6, 2 * scale + r * row + row // 2 - 6), text, fill="black")
  path.parent.mkdir(parents=True, exist_ok=True)
  out.save(path)
  return path


def _caption_pictures(
  state: DRAWState, frames: np.ndarray, batch: dict, key: jax.Array, frames_fn: Any, outdir: Path
) -> list[Path]:
  """example_captions.png from `frames` (samples of EXAMPLE_CAPTIONS, 8 per caption), and
  test_captions.png: per row, a test image then 7 samples for its caption."""
  hp, cols = state.hp, 8
  rows = [
    c + " (held out)" * captions.is_held_out(*captions.parse(c)) for c in captions.EXAMPLE_CAPTIONS
  ]
  paths = [save_captioned_grid(frames[-1], rows, outdir / "example_captions.png", cols)]
  n = min(len(batch["image"]), cols)
  tokens_NxL = np.asarray(batch["tokens"][:n])
  held = np.asarray(batch.get("held_out", np.zeros(n)))[:n]
  texts = [
    captions.detokenize(t, hp.vocabulary) + " (held out)" * bool(h)
    for t, h in zip(tokens_NxL, held)
  ]
  # 64 samples, as for `frames`, so the sampler compiles once
  tokens = tokens_NxL[(np.arange(cols * cols) // cols) % n]
  samples = np.asarray(frames_fn(state, key, cols * cols, jnp.asarray(tokens))[-1])
  table = np.concatenate(
    [
      np.asarray(batch["image"][:n])[:, None],
      samples.reshape(cols, cols, *samples.shape[1:])[:n, : cols - 1],
    ],
    axis=1,
  )
  paths.append(
    save_captioned_grid(
      table.reshape(-1, *table.shape[2:]), texts, outdir / "test_captions.png", cols
    )
  )
  return paths


def pictures(state: DRAWState, batch: dict, key: jax.Array, outdir: Path) -> list[Path]:
  """Writes the family's pictures to `outdir`; returns their paths.

  canvas.gif: 64 samples drawn step by step; samples.png: their final canvases;
  steps.png: 8 samples (rows) after each of the T steps (columns). For a caption-conditioned
  run the 64 samples are 8 per example caption, and it adds example_captions.png (the same
  samples, captions written beside the rows, held-out ones marked) and test_captions.png (a
  test image of the batch, then 7 samples for its caption, per row).
  """
  outdir = Path(outdir)
  frames_fn = jax.jit(sample_frames, static_argnums=2)
  sample_key, test_key = jax.random.split(key)
  frames = np.asarray(frames_fn(state, sample_key, 64, caption_tokens(state, 64)))
  paths = [
    viz.save_animation(frames, outdir / "canvas.gif", ncols=8),
    viz.save_grid(frames[-1], outdir / "samples.png", ncols=8),
  ]
  steps = np.swapaxes(frames[:, ::8], 0, 1)  # [8 samples, T, H, W, C]
  paths.append(
    viz.save_grid(steps.reshape(-1, *steps.shape[2:]), outdir / "steps.png", ncols=frames.shape[0])
  )
  if state.hp.vocabulary:
    paths += _caption_pictures(state, frames, jax.device_get(batch), test_key, frames_fn, outdir)
  return paths
