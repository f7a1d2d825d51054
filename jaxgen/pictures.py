"""Each family's report pictures, drawn from a trained state and a test batch.

    paths = pictures.write(config.model.family, state, batch, key, outdir)

BY_FAMILY maps a family's name to its function (state, batch, key, outdir) -> written paths; a
family without an entry (the classifier) draws none. The arrays come from the families' pure
functions (jaxgen.steps); the drawing helpers from jaxgen.viz.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import viz
from jaxgen.data import captions
from jaxgen.steps import draw as draw_steps
from jaxgen.steps import gan as gan_steps
from jaxgen.steps import vae as vae_steps

# ------------------------------------------------------------------ GAN


def gan_pictures(state: Any, batch: dict, key: jax.Array, outdir: Path) -> list[Path]:
  """interpolations.png: 8 latent pairs x 10 steps; classes.png (conditional models): one row
  per class, the same 10 latents down each column."""
  del batch  # a GAN's pictures need no test images
  outdir = Path(outdir)
  hp, steps = state.hp, 10
  z = np.asarray(jax.random.normal(key, (16, hp.latent_dim)))
  path_z = viz.interpolation_path(z[:8], z[8:], steps)
  # a conditional model holds the class fixed along each row
  labels = jnp.repeat(jnp.arange(8) % hp.num_classes, steps) if hp.num_classes else None
  paths = [
    viz.save_grid(
      np.asarray(gan_steps.generate(state, jnp.asarray(path_z), labels)),
      outdir / "interpolations.png",
      ncols=steps,
    )
  ]
  if hp.num_classes:
    z_col = jnp.tile(jnp.asarray(z[:steps]), (hp.num_classes, 1))  # same z down each column
    by_class = jnp.repeat(jnp.arange(hp.num_classes), steps)
    paths.append(
      viz.save_grid(
        np.asarray(gan_steps.generate(state, z_col, by_class)), outdir / "classes.png", ncols=steps
      )
    )
  return paths


# ------------------------------------------------------------------ VAE


def vae_pictures(state: Any, batch: dict, key: jax.Array, outdir: Path) -> list[Path]:
  """Writes the VAE's pictures of a test batch (B >= 2) to `outdir`; returns their paths.

  reconstructions.png: up to 16 inputs (top rows) above their reconstructions (bottom rows);
  interpolations.png: one row per pair (image i, image i + B/2), up to 8 pairs x 10 steps;
  kl_per_unit.png / kl_per_unit.json: the batch-mean KL of each latent unit in nats, and the
  number of active units (KL > vae_steps.ACTIVE_UNIT_NATS), which is also printed.
  """
  outdir = Path(outdir)
  hp = state.hp
  rec_key, int_key, kl_key = jax.random.split(key, 3)
  batch = jax.device_get(batch)
  b = batch["image"].shape[0]
  n = min(b, 16)
  first = {k: v[:n] for k, v in batch.items()}
  recon = jax.jit(vae_steps.reconstruct)(state, first, rec_key)
  ncols = min(n, 8)
  rows = -(-n // ncols)
  pad_to = rows * ncols - n  # blank (white) cells so reconstructions start on a fresh row
  blank = np.ones((pad_to, *hp.image_shape), np.float32)
  top = np.concatenate([first["image"], blank])
  bottom = np.concatenate([np.asarray(recon), blank])
  paths = [viz.save_grid(np.concatenate([top, bottom]), outdir / "reconstructions.png", ncols)]

  p = min(b // 2, 8)
  half = b // 2
  pair_a = {k: v[:p] for k, v in batch.items()}
  pair_b = {k: v[half : half + p] for k, v in batch.items()}
  frames = jax.jit(vae_steps.interpolate, static_argnums=4)(state, pair_a, pair_b, int_key, 10)
  frames = np.asarray(frames)
  paths.append(
    viz.save_grid(
      frames.reshape(-1, *frames.shape[2:]), outdir / "interpolations.png", frames.shape[1]
    )
  )

  threshold = vae_steps.ACTIVE_UNIT_NATS
  kl_Z = np.asarray(jax.jit(vae_steps.kl_per_unit)(state, batch, kl_key))
  active = int(np.sum(kl_Z > threshold))
  title = (
    f"KL per latent unit, nats (mean over {b} images; max {kl_Z.max():.2f})\n"
    f"{active}/{len(kl_Z)} active (> {threshold} nats), total {kl_Z.sum():.1f} nats"
  )
  paths.append(viz.bar_chart(kl_Z, outdir / "kl_per_unit.png", title, threshold))
  info = dict(
    kl_per_unit_nats=[round(float(v), 5) for v in kl_Z],
    active_units=active,
    active_threshold_nats=threshold,
    num_images=b,
    total_kl_nats=float(kl_Z.sum()),
  )
  (outdir / "kl_per_unit.json").write_text(json.dumps(info, indent=1))
  paths.append(outdir / "kl_per_unit.json")
  print(
    f"active latent units: {active}/{len(kl_Z)} (KL > {threshold} nats, mean over {b} test images)"
  )
  return paths


# ------------------------------------------------------------------ DRAW / alignDRAW


def _caption_pictures(
  state: Any,
  frames: np.ndarray,
  batch: dict,
  key: jax.Array,
  frames_fn: Callable[..., jax.Array],
  outdir: Path,
) -> list[Path]:
  """example_captions.png from `frames` (samples of hp.example_captions, 8 per caption), and
  test_captions.png: per row, a test image then 7 samples for its caption."""
  hp, cols = state.hp, 8
  # captioned Fashion-MNIST's own examples say which are held out of training
  marked = lambda c: c in captions.EXAMPLE_CAPTIONS and captions.is_held_out(*captions.parse(c))
  rows = [c + " (held out)" * marked(c) for c in hp.example_captions]
  paths = [viz.save_captioned_grid(frames[-1], rows, outdir / "example_captions.png", cols)]
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
    viz.save_captioned_grid(
      table.reshape(-1, *table.shape[2:]), texts, outdir / "test_captions.png", cols
    )
  )
  return paths


def draw_pictures(state: Any, batch: dict, key: jax.Array, outdir: Path) -> list[Path]:
  """Writes DRAW's pictures to `outdir`; returns their paths.

  canvas.gif: 64 samples drawn step by step; samples.png: their final canvases;
  steps.png: 8 samples (rows) after each of the T steps (columns). For a caption-conditioned
  run the 64 samples are 8 per example caption, and it adds example_captions.png (the same
  samples, captions written beside the rows, held-out ones marked) and test_captions.png (a
  test image of the batch, then 7 samples for its caption, per row).
  """
  outdir = Path(outdir)
  frames_fn = jax.jit(draw_steps.sample_frames, static_argnums=2)
  sample_key, test_key = jax.random.split(key)
  frames = np.asarray(frames_fn(state, sample_key, 64, draw_steps.caption_tokens(state, 64)))
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


# ------------------------------------------------------------------ by family

PictureFn = Callable[[Any, dict, jax.Array, Path], list[Path]]
BY_FAMILY: dict[str, PictureFn] = {"gan": gan_pictures, "vae": vae_pictures, "draw": draw_pictures}


def write(family: str, state: Any, batch: dict, key: jax.Array, outdir: str | Path) -> list[Path]:
  """The pictures of family `family` (config.model.family) in `outdir`: their paths, [] for a
  family that draws none."""
  fn = BY_FAMILY.get(family)
  return list(fn(state, batch, key, Path(outdir))) if fn else []
