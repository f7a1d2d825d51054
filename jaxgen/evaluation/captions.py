"""Caption accuracy of text-to-image runs: is every item a caption names recognised at its place,
for a sample drawn per caption; its floor (a ceiling) is the same of the real canvases."""

from collections.abc import Callable
from typing import Any

import jax
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

  batch: tokens [N, L], classes and positions [N, 2], image [N, S, S, C]. The canvases scored are
  the batch's own, or, given `sample_fn(i, tokens_BxL) -> images [B, S, S, C]`, samples drawn
  for the captions, B at a time (block i). classify_fn: crops [M, 28, 28, C] -> logits [M, K].
  """
  n = len(batch["tokens"])
  keys = ("image", "tokens", "classes", "positions")

  def fn(i: int, block: dict, size: int) -> jax.Array:
    images = block["image"] if sample_fn is None else sample_fn(i, block["tokens"])
    return caption_data.caption_accuracy(images, block["classes"], block["positions"], classify_fn)

  return sharded.map_batches(fn, {k: batch[k] for k in keys}, n, mesh, min(batch_size, n))


def caption_summary(correct_N: np.ndarray, held_out_N: np.ndarray) -> dict[str, float | None]:
  """Mean caption accuracy over all captions, the held-out combinations and the seen ones
  (None where there are none)."""
  held = np.asarray(held_out_N).astype(bool)
  mean = lambda x: float(np.mean(x)) if len(x) else None
  return dict(
    caption_accuracy=mean(correct_N),
    caption_accuracy_held_out=mean(correct_N[held]),
    caption_accuracy_seen=mean(correct_N[~held]),
  )


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
  real canvases. batch as in `caption_correct`, plus held_out [N] (else all count as seen)."""
  mesh = mesh or parallel.make_mesh()
  sample = sharded.jit_sample(family.sample, parallel.data_sharding(mesh))
  sample_fn = lambda i, tokens: sample(state, jax.random.fold_in(key, i), len(tokens), tokens)
  held = batch.get("held_out", np.zeros(len(batch["tokens"]), np.int32))
  correct = lambda fn: caption_correct(batch, classify_fn, fn, mesh, batch_size)
  return caption_summary(correct(sample_fn), held), caption_summary(correct(None), held)


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
  (the real test canvases) and protocol."""
  test_n = splits.split_size(config, "test")
  batch = splits.read_batch(config, "test", np.arange(min(num_samples, test_n)))
  classify_fn = lambda crops: extractor.features_fn(crops)[1]
  values, floor = caption_metrics(family, state, batch, classify_fn, jax.random.key(seed), mesh)
  n = len(batch["tokens"])
  held_out = int(np.sum(batch["held_out"])) if "held_out" in batch else 0
  return dict(
    family=config.model.family,
    dataset=config.data.name,
    metrics=values,
    floor=floor,
    flags=[],
    protocol=dict(
      extractor=extractor.protocol(),
      captions=dict(num=n, held_out=held_out, split="test", first=True),
      num_samples=n,
      seed=seed,
      checkpoint_step=step,
      floor=f"the {n} real test canvases scored the same way",
    ),
  )
