"""Caption accuracy of text-to-image runs, for a sample drawn per caption; its floor (a ceiling)
is the same of the real images.

Captioned canvases (data.name "captioned_*"): is every item a caption names recognised at its
place; held-out combinations vs seen ones, all from the test split.
Named images (emoji: a caption is the name, the label its group): group accuracy, whether the
extractor gives the image the name's group; held-out names (the test split's) vs seen names (as
many of the training split's, evenly spaced through it so every group is represented).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import parallel, trainer
from jaxgen.data import captions as caption_data
from jaxgen.evaluation import sharded, splits
from jaxgen.evaluation.extractor import CAPTIONED_PREFIX, Extractor


def is_captioned(config: ml_collections.ConfigDict, family: Any) -> bool:
  """Whether a run draws captioned canvases: data.name "captioned_*", or a family that reads
  captions (`tokenize`) on data whose test items carry "tokens"."""
  if config.data.name.startswith(CAPTIONED_PREFIX):
    return True
  return hasattr(family, "tokenize") and "tokens" in trainer.load_data(config, "test")[0][0]


def caption_correct(
  batch: dict,
  classify_fn: Callable[[jax.Array], jax.Array],
  sample_fn: Callable[[int, jax.Array], jax.Array] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = sharded.BATCH_SIZE,
) -> np.ndarray:
  """1.0 / 0.0 per caption of `batch`, [N]: whether every item it names is recognised at its place.

  batch: tokens [N, L], image [N, S, S, C], and classes and positions [N, 2] (canvases: crops
  at the places are classified) or else label [N] (named images: the whole image is classified,
  right when its argmax is the label). The images scored are the batch's own, or, given
  `sample_fn(i, tokens_BxL) -> images [B, S, S, C]`, samples drawn for the captions, B at a time
  (block i). classify_fn: crops [M, 28, 28, C] or images [M, S, S, C] -> logits [M, K].
  """
  if "positions" in batch:
    images_fn = None if sample_fn is None else lambda i, block: sample_fn(i, block["tokens"])
    predicted_Nx2 = canvas_item_predictions(batch, classify_fn, images_fn, mesh, batch_size)
    return np.asarray(caption_data.all_named_right(predicted_Nx2, batch["classes"]))
  n = len(batch["tokens"])

  def fn(i: int, block: dict, size: int) -> jax.Array:
    images = block["image"] if sample_fn is None else sample_fn(i, block["tokens"])
    return (jnp.argmax(classify_fn(images), axis=-1) == block["label"]).astype(jnp.float32)

  keys = ("image", "tokens", "label")
  return sharded.map_batches(fn, {k: batch[k] for k in keys}, n, mesh, min(batch_size, n))


def canvas_item_predictions(
  batch: dict,
  classify_fn: Callable[[jax.Array], jax.Array],
  images_fn: Callable[[int, dict], jax.Array] | None = None,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = sharded.BATCH_SIZE,
) -> np.ndarray:
  """The class `classify_fn` sees at each of the two places of every canvas, int [N, 2]
  (jaxgen.data.captions.item_predictions; place NONE: ignore it).

  batch: tokens [N, L], image [N, S, S, C] and positions [N, 2]. The canvases classified are the
  batch's own, or `images_fn(i, block) -> images [B, S, S, C]` for block i (the batch's rows
  i*B..(i+1)*B, zero-padded), e.g. samples drawn for block["tokens"].
  """
  n = len(batch["tokens"])

  def fn(i: int, block: dict, size: int) -> jax.Array:
    images = block["image"] if images_fn is None else images_fn(i, block)
    return caption_data.item_predictions(images, block["positions"], classify_fn)

  inputs = {k: batch[k] for k in ("image", "tokens", "positions")}
  return sharded.map_batches(fn, inputs, n, mesh, min(batch_size, n))


def caption_summary(
  correct_N: np.ndarray, held_out_N: np.ndarray, name: str = "caption_accuracy"
) -> dict[str, float | None]:
  """Mean accuracy over all captions, the held-out ones and the seen ones (None where there are
  none), as `name`, `name`_held_out, `name`_seen."""
  held = np.asarray(held_out_N).astype(bool)
  mean = lambda x: float(np.mean(x)) if len(x) else None
  return {
    name: mean(correct_N),
    f"{name}_held_out": mean(correct_N[held]),
    f"{name}_seen": mean(correct_N[~held]),
  }


def caption_metrics(
  family: Any,
  state: Any,
  batch: dict,
  classify_fn: Callable[[jax.Array], jax.Array],
  key: jax.Array,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = sharded.BATCH_SIZE,
) -> tuple[dict, dict]:
  """(metrics, floor): `caption_summary` of one sample per caption of `batch`
  (family.sample(state, fold_in(key, block), B, conditioning=tokens_BxL)) and of the batch's
  real images. batch as in `caption_correct`, plus held_out [N] (else all count as seen); named
  images' metrics are group_accuracy*, canvases' caption_accuracy*."""
  mesh = mesh or parallel.make_mesh()
  sample = sharded.jit_sample(family.sample, parallel.data_sharding(mesh))
  sample_fn = lambda i, tokens: sample(state, jax.random.fold_in(key, i), len(tokens), tokens)
  held = batch.get("held_out", np.zeros(len(batch["tokens"]), np.int32))
  correct = lambda fn: caption_correct(batch, classify_fn, fn, mesh, batch_size)
  name = "caption_accuracy" if "positions" in batch else "group_accuracy"
  return caption_summary(correct(sample_fn), held, name), caption_summary(correct(None), held, name)


def named_batch(config: ml_collections.ConfigDict, num: int) -> dict:
  """Named images to score: the first `num` test names (held out) and as many training names
  evenly spaced through the training split (seen), with held_out [N] 1 / 0."""
  n_test = min(num, splits.split_size(config, "test"))
  n_train = splits.split_size(config, "train")
  seen = np.unique(np.linspace(0, n_train - 1, min(n_test, n_train)).round().astype(int))
  test = splits.read_batch(config, "test", np.arange(n_test))
  train = splits.read_batch(config, "train", seen)
  batch = {k: np.concatenate([train[k], test[k]]) for k in ("image", "tokens", "label")}
  batch["held_out"] = np.repeat(np.array([0, 1], np.int32), [len(seen), n_test])
  return batch


def caption_results(
  config: ml_collections.ConfigDict,
  family: Any,
  state: Any,
  extractor: Extractor,
  num_samples: int,
  seed: int,
  step: int,
  mesh: jax.sharding.Mesh,
) -> dict:
  """Caption accuracy on the first num_samples test captions (at most the split), its floor
  (the real test canvases) and protocol; for named images (data not "captioned_*") group
  accuracy on `named_batch(config, num_samples)`, the floor its real images."""
  canvases = config.data.name.startswith(CAPTIONED_PREFIX)
  config = splits.own_labels(config)  # the classifier's classes: the data's own labels
  if canvases:
    test_n = splits.split_size(config, "test")
    batch = splits.read_batch(config, "test", np.arange(min(num_samples, test_n)))
  else:
    batch = named_batch(config, num_samples)
  classify_fn = lambda images: extractor.features_fn(images)[1]
  values, floor = caption_metrics(family, state, batch, classify_fn, jax.random.key(seed), mesh)
  n = len(batch["tokens"])
  held_out = int(np.sum(batch["held_out"])) if "held_out" in batch else 0
  if canvases:
    described = dict(num=n, held_out=held_out, split="test", first=True)
    floor_text = f"the {n} real test canvases scored the same way"
  else:
    described = dict(num=n, held_out=held_out, split="train+test", first=False, score="group")
    floor_text = f"the {n} real images ({n - held_out} train, {held_out} test) scored the same way"
  return dict(
    family=config.model.family,
    dataset=config.data.name,
    metrics=values,
    floor=floor,
    flags=[],
    protocol=dict(
      extractor=extractor.protocol(),
      captions=described,
      num_samples=n,
      seed=seed,
      checkpoint_step=step,
      floor=floor_text,
    ),
  )
