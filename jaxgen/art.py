"""Art tools behind `jaxgen sample` and the memorisation check of `jaxgen evaluate`.

Sampling: a seed gives the same pictures on any device count (latents are drawn whole from
the key, then decoded sharded over the mesh, one image per row, so no image depends on the
others or on how rows fall on devices); `--walk N` is a closed spherical walk through N key
points per image (GIF + frame PNGs); `--label 0,3,7` (or class names) / `--caption "a;b"` give
one row per entry, the same latent down each column; `--truncation T` draws z from N(0, I)
truncated to [-T, T]; `--temperature T` scales DRAW/alignDRAW's prior noise; `--upscale K`
enlarges the written pictures K times (nearest neighbour).

Walks and truncation need a family with one latent vector per image (`sample_latents`: GAN,
VAE); DRAW/alignDRAW draws a fresh latent at every canvas step and refuses them (its
analogue is the temperature: z_t = prior mean + T * prior std * eps).
"""

import difflib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxgen import parallel, steps, viz
from jaxgen.errors import UserError
from jaxgen.metrics import memorization

WALK_STEPS = 12  # frames from one key point to the next
DECODE_BATCH = 256  # images per decoder call (rounded down to a multiple of the devices)
MEMORIZATION_PICTURE_ROWS = 16


# ------------------------------------------------------------------ flags


def parse_labels(
  text: str | None, num_classes: int, info: Callable[[], Any] | None = None
) -> list[int | tuple[int, ...]] | None:
  """ "3", "0,3,7" or names -> one entry per row: a class number, a class name's number, or for
  a model of finer classes than the data's labels (data.label_feature) a group name's classes
  (a tuple; the row cycles through them). `info()` gives the data's DatasetInfo (class names,
  group names, class_groups), read only when an entry is not a number."""
  if text is None:
    return None
  if not num_classes:
    raise UserError(
      "--label needs a class-conditional model (trained with "
      "--config.model.num_classes=N); this run is unconditional"
    )
  labels, data = [], None
  for entry in (v.strip() for v in text.split(",")):
    if entry.lstrip("-").isdigit():
      labels.append(int(entry))
      continue
    data = data or (info() if info else None)  # read once
    names = list(data.class_names) if data else []
    groups = list(data.group_names) if data and data.class_groups else []
    if not names:
      raise UserError(f"--label {text!r}: give class numbers separated by commas, e.g. 0,3,7")
    if entry in names:
      labels.append(names.index(entry))
    elif entry in groups:
      g = groups.index(entry)
      labels.append(tuple(k for k, kg in enumerate(data.class_groups) if kg == g))
    else:
      near = difflib.get_close_matches(entry, names + groups, n=3) or names[:3]
      raise UserError(
        f"--label {entry!r}: neither a class number (0..{num_classes - 1}) nor one of this "
        f"model's class{' or group' if groups else ''} names; e.g. {', '.join(near)}"
      )
  bad = [v for v in labels if isinstance(v, int) and not 0 <= v < num_classes]
  if bad:
    raise UserError(f"--label {bad[0]}: this model's classes are 0..{num_classes - 1}")
  return labels


def parse_captions(text: str | None) -> list[str] | None:
  """'red heart;grinning face' -> ['red heart', 'grinning face'] (one row each)."""
  if text is None:
    return None
  captions = [c.strip() for c in text.split(";")]
  if not all(captions):
    raise UserError(f"--caption {text!r}: an empty caption; separate captions with ';'")
  return captions


def draw_latents(key: jax.Array, shape: tuple[int, ...], truncation: float | None = None):
  """z ~ N(0, I) of `shape` float32, or truncated to [-T, T] elementwise when truncation=T.

  Drawn whole from `key` (never per device), as the families' own `sample` draws them, so a
  seed gives the same latents, and without truncation the same images as `sample`."""
  if truncation is None:
    return jax.random.normal(key, shape)
  if not truncation > 0:
    raise UserError(f"--truncation {truncation}: must be > 0 (e.g. 0.7; smaller: safer images)")
  return jax.random.truncated_normal(key, -truncation, truncation, shape)


# ------------------------------------------------------------------ decoding


def decode_latents(
  family: Any,
  state: Any,
  z_NxZ: np.ndarray,
  labels_N: np.ndarray | None = None,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = DECODE_BATCH,
) -> np.ndarray:
  """Images [N, H, W, C] of `family.sample_latents` for given latents (and labels), batch by
  batch, rows sharded over the mesh; the last batch is zero-padded (rows are independent)."""
  from jaxgen.evaluation.sharded import map_batches

  mesh = mesh or parallel.make_mesh()
  state = jax.device_put(state, parallel.replicated(mesh))
  decode = jax.jit(family.sample_latents, out_shardings=parallel.data_sharding(mesh))
  inputs = {"z": np.asarray(z_NxZ)}
  if labels_N is not None:
    inputs["label"] = np.asarray(labels_N, np.int32)
  fn = lambda i, block, size: decode(state, block["z"], block.get("label"))
  return map_batches(fn, inputs, len(z_NxZ), mesh, batch_size)


def _refuse_without_latents(family: Any, flag: str) -> None:
  if not hasattr(family, "sample_latents"):
    raise UserError(
      f"{flag} needs a model with one latent vector per image (GAN, VAE); this one "
      f"({family.__name__.rsplit('.', 1)[-1]}) draws a fresh latent at every canvas step"
    )


def _rows(num: int, entries: list | None) -> tuple[int, int]:
  """(rows, columns): one row per entry of a list of >= 2, else one square-ish grid."""
  if entries is None or len(entries) < 2:
    return 1, num
  return len(entries), math.ceil(num / len(entries))


def _labels(num_classes: int, entries: list | None, rows: int, cols: int):
  """Labels [rows * cols]: row r of entries[r] (a group's classes cycle along the row)."""
  if not num_classes:
    return None
  if entries is None:
    return np.arange(rows * cols) % num_classes  # as the families' `sample` cycles them
  row = lambda entry: np.resize(np.asarray(entry, np.int32).reshape(-1), cols)
  return np.concatenate([row(e) for e in entries[:rows]])


def sample_images(
  family: Any,
  state: Any,
  key: jax.Array,
  num: int,
  labels: list | None = None,
  truncation: float | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, int | None]:
  """(images [R * C, H, W, C], grid columns or None) from a latent-vector family, the same on
  any device count. `labels` of >= 2 entries: R rows of C = ceil(num / R) images, row r of
  class labels[r], column c of one latent z_c; else `num` images of one label (or cycled)."""
  rows, cols = _rows(num, labels)
  z = np.asarray(draw_latents(key, (cols, state.hp.latent_dim), truncation))
  images = decode_latents(
    family, state, np.tile(z, (rows, 1)), _labels(state.hp.num_classes, labels, rows, cols), mesh
  )
  return images, (cols if rows > 1 else None)


def walk_frames(
  family: Any,
  state: Any,
  key: jax.Array,
  num: int,
  num_keys: int,
  labels: list | None = None,
  truncation: float | None = None,
  steps: int = WALK_STEPS,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[np.ndarray, int | None]:
  """(frames [num_keys * steps, R * C, H, W, C], grid columns or None): each grid cell walks
  through its own `num_keys` key latents (viz.walk_path), rows and columns as in
  `sample_images`; frame k * steps is key point k."""
  if num_keys < 2:
    raise UserError(f"--walk {num_keys}: a walk needs at least 2 key points")
  rows, cols = _rows(num, labels)
  keys_KxCxZ = np.asarray(draw_latents(key, (num_keys, cols, state.hp.latent_dim), truncation))
  path_TxCxZ = viz.walk_path(keys_KxCxZ, steps)
  t = len(path_TxCxZ)
  z = np.tile(path_TxCxZ, (1, rows, 1)).reshape(t * rows * cols, -1)
  labels_N = _labels(state.hp.num_classes, labels, rows, cols)
  labels_N = None if labels_N is None else np.tile(labels_N, t)
  images = decode_latents(family, state, z, labels_N, mesh)
  return images.reshape(t, rows * cols, *images.shape[1:]), (cols if rows > 1 else None)


# ------------------------------------------------------------------ `jaxgen sample`


def write_samples(
  workdir: str | Path,
  out: str | Path | None = None,
  *,
  num: int = 64,
  seed: int = 0,
  step: int | None = None,
  label: str | None = None,
  caption: str | None = None,
  walk: int | None = None,
  truncation: float | None = None,
  upscale: int = 2,
  mesh: jax.sharding.Mesh | None = None,
  temperature: float | None = None,
) -> list[Path]:
  """Writes the pictures of `jaxgen sample` (flags as strings, see the module docstring);
  returns their paths: a grid PNG (recurrent models: and the canvas over time as GIF), or with
  `walk` a GIF and its frames as OUT_frames/frame_NNNN.png."""
  from jaxgen import trainer

  if upscale < 1:
    raise UserError(f"--upscale {upscale}: must be at least 1 (1: the model's own size)")
  config, family, state = trainer.load_run(workdir, step)
  state = steps.at_temperature(family, state, temperature)
  out = Path(out) if out else Path(workdir) / "samples" / "sample.png"
  info = lambda: trainer.load_data(config, "test")[1]
  labels = parse_labels(label, config.model.get("num_classes") or 0, info)
  captions = parse_captions(caption)
  key = jax.random.key(seed)
  if captions is not None and not hasattr(family, "tokenize"):
    raise UserError(
      f"--caption needs a caption-conditioned model; this run is {config.model.family!r}"
    )
  for flag, value in (("--walk", walk), ("--truncation", truncation)):
    if value is not None:
      _refuse_without_latents(family, flag)
  if walk is not None:
    frames, ncols = walk_frames(family, state, key, num, walk, labels, truncation, mesh=mesh)
    frame_dir = out.parent / f"{out.stem}_frames"
    paths = [viz.save_animation(frames, out.with_suffix(".gif"), ncols, scale=upscale)]
    paths += [
      viz.save_grid(f, frame_dir / f"frame_{t:04d}.png", ncols, scale=upscale)
      for t, f in enumerate(frames)
    ]
    return paths
  if hasattr(family, "sample_latents"):
    images, ncols = sample_images(family, state, key, num, labels, truncation, mesh)
    return [viz.save_grid(images, out, ncols, scale=upscale)]
  frames, ncols = recurrent_frames(family, state, key, num, labels, captions)
  paths = []
  if frames.shape[0] > 1:  # recurrent models: also the canvas being drawn, as a GIF
    paths.append(viz.save_animation(frames, out.with_suffix(".gif"), ncols, scale=upscale))
  return [*paths, viz.save_grid(frames[-1], out, ncols, scale=upscale)]


def recurrent_frames(
  family: Any,
  state: Any,
  key: jax.Array,
  num: int,
  labels: list | None = None,
  captions: list[str] | None = None,
) -> tuple[np.ndarray, int | None]:
  """(canvases [T, R * C, H, W, C] (T = 1 for a family without `sample_frames`), grid columns
  or None) of a family that draws its latents inside the model: `captions` of >= 2 entries
  give R rows of C = ceil(num / R). The call runs replicated on every device, so it too does
  not depend on the device count."""
  rows, cols = _rows(num, captions)
  conditioning = _labels(1, labels[:1], 1, rows * cols) if labels else None
  if captions is not None:
    tokens = np.stack([family.tokenize(state, c) for c in captions])
    conditioning = np.repeat(tokens, cols, axis=0) if rows > 1 else tokens[0]
  if hasattr(family, "sample_frames"):
    fn = family.sample_frames
  else:
    fn = lambda *args: family.sample(*args)[None]
  frames = np.asarray(jax.jit(fn, static_argnums=2)(state, key, rows * cols, conditioning))
  return frames, (cols if rows > 1 else None)


# ------------------------------------------------------------------ memorisation


def memorization_check(
  sample_fn: Callable[[jax.Array, int], np.ndarray],
  features_fn: Callable[[np.ndarray], np.ndarray],
  train_images: np.ndarray,
  test_images: np.ndarray,
  key: jax.Array,
  num_samples: int,
  quantile: float = memorization.MEMORIZATION_QUANTILE,
  picture_rows: int = MEMORIZATION_PICTURE_ROWS,
) -> tuple[dict, np.ndarray]:
  """(results, picture) of the memorisation check (metrics/memorization.py defines the rate).

  sample_fn(key, n): n images [n, H, W, C] in [-1, 1]; features_fn: images -> features [n, D].
  results: {"features": {rate, floor, threshold, ...}, "pixels": {...}, "protocol": {...}};
  picture: rows of (sample, its nearest training image in feature space, in pixel space),
  [3 * picture_rows, H, W, C], the samples nearest to the training set (in features) first.
  """
  samples = np.asarray(sample_fn(key, num_samples))
  results = {}
  neighbours = {}
  for space, embed in (("features", features_fn), ("pixels", memorization.flatten_pixels)):
    train_f, sample_f, test_f = (embed(x) for x in (train_images, samples, test_images))
    results[space] = memorization.memorization_rate(train_f, sample_f, test_f, quantile=quantile)
    neighbours[space] = memorization.nearest_neighbours(sample_f, train_f)
  order = np.argsort(neighbours["features"][0], kind="stable")[:picture_rows]
  picture = memorization.side_by_side(
    samples[order], train_images, *(neighbours[s][1][order] for s in ("features", "pixels"))
  )
  results["protocol"] = dict(
    num_samples=len(samples),
    num_train=len(train_images),
    num_test=len(test_images),
    quantile=quantile,
    definition=(
      "rate: fraction of samples whose distance to the nearest training image is below the "
      f"{quantile:g}-quantile of the training images' distances to their nearest other "
      "training image; floor: the same fraction for held-out real test images"
    ),
  )
  return results, picture


def check_run(
  workdir: str | Path,
  extractor: str | Path | None = None,
  *,
  num_samples: int = 1000,
  seed: int = 0,
  step: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
  temperature: float | None = None,
) -> tuple[dict, list[Path]]:
  """The memorisation check of a trained run against its training split (all of it) and
  `num_samples` test images: writes WORKDIR/memorization.json and WORKDIR/memorization.png
  (never into the extractor's run); returns (results, [json path, png path]). `temperature`
  as for `write_samples`."""
  from jaxgen import evaluation, trainer

  mesh = mesh or parallel.make_mesh()
  config, family, state = trainer.load_run(workdir, step)
  state = steps.at_temperature(family, state, temperature)
  if evaluation.is_captioned(config, family):
    raise UserError(
      "the memorisation check compares whole images with the training images; captioned "
      "canvases are not supported (use a class-conditional or unconditional run)"
    )
  ext = evaluation.load_extractor(
    config, extractor, mesh, cache_dir=Path(workdir) / evaluation.CACHE_DIR
  )
  train, _ = evaluation.read_split(config, "train")
  test, _ = evaluation.read_split(config, "test")
  test = test[evaluation.subset_indices(len(test), num_samples, seed)]
  results, picture = memorization_check(
    lambda key, n: (
      sample_images(family, state, key, n, mesh=mesh)[0]
      if hasattr(family, "sample_latents")
      else recurrent_frames(family, state, key, n)[0][-1]
    ),
    lambda x: evaluation.compute_features(ext.features_fn, x, mesh)[0],
    train,
    test,
    jax.random.key(seed),
    num_samples,
  )
  results["protocol"].update(
    extractor=ext.name, checkpoint_step=int(jax.device_get(state.step)), seed=seed
  )
  if (t := steps.sample_temperature(family, state)) is not None:
    results["protocol"]["sample_temperature"] = t
  workdir = Path(workdir)
  paths = [workdir / "memorization.json", workdir / "memorization.png"]
  if jax.process_index() == 0:
    paths[0].write_text(json.dumps(results, indent=2))
    viz.save_grid(picture, paths[1], ncols=3)
  return results, paths


def format_memorization(results: dict) -> str:
  """Two lines: the rate beside its floor in each space."""
  return "\n".join(
    f"memorization ({space}): {r['rate']:.3f} of samples closer to a training image than "
    f"the training images' {r['quantile']:g}-quantile (floor, real test images: {r['floor']:.3f})"
    for space, r in results.items()
    if space != "protocol"
  )
