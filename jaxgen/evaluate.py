"""Evaluation of trained runs: sample metrics in a classifier's feature space, against a floor.

    jaxgen evaluate --workdir RUN [--num_samples 10000] [--seed 0] [--extractor DIR] [--num_importance K]
    jaxgen evaluate --compare RUN1 RUN2 ...

The feature extractor is a parameter: any `features_fn(images_BxHxWxC in [-1, 1]) ->
(features_BxD, logits_BxK)`. By default it is the jaxgen classifier trained on the run's
data set, found at (first that is set) --extractor, $JAXGEN_EXTRACTOR, or
runs/classifier_<data.name> relative to the working directory.

Every number is shown beside its floor: the same metric between real train images (as
if they were samples) and the real test images, with the same counts. The floor's test
features and numbers are cached next to the extractor's checkpoint (floor/*.npz, *.json).
Flags (`sample_flags`) say what the numbers show: recall, coverage or sample diversity below
COLLAPSE_FRACTION of the floor is "low diversity or coverage" (blurry samples show it too);
"possible mode collapse" is kept for its own signs: near-duplicate samples
(metrics.duplicate_rate far above its floor) or high precision with low recall.
Families with `log_likelihood_bounds(state, batch, key, num_samples)` also get ELBO / IWAE
bounds on the test split, in nats per image and bits per dimension; their batches carry
every feature the loader yields (image, label, caption tokens, ...). They need no
extractor: without one (at the default place) only the bounds are computed, with a note
saying how to get the sample metrics.

Caption-conditioned runs (data.name "captioned_*", or test items with "tokens" and a family
with `tokenize`) draw canvases the 28 x 28 metrics do not apply to. They get caption accuracy
instead: a sample for each of the first num_samples test captions, correct where the items'
data-set classifier (fashion_mnist's, for captioned Fashion-MNIST) recognises every item the
caption names at its place; over all captions, the held-out combinations and the seen ones.
Its floor (a ceiling) is the same accuracy of the real test canvases.
Evaluation runs on every process of a run (features are gathered to every host for the metrics).
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxgen import losses, metrics, parallel, steps, trainer
from jaxgen.data import captions, idx, pipeline
from jaxgen.errors import UserError
from jaxgen.steps import classifier as classifier_steps

DEFAULT_NUM_SAMPLES = 10_000
IN_TRAINING_NUM_SAMPLES = 2_000  # config.eval_num_samples overrides
DEFAULT_NUM_IMPORTANCE = 100  # IWAE k; --num_importance or config.num_importance overrides
BATCH_SIZE = 500  # images per sampler / extractor call (rounded to the devices)
LIKELIHOOD_IMAGES_PER_CALL = 8192  # batch x k for likelihood bounds
EXTRACTOR_ENV = "JAXGEN_EXTRACTOR"
CLASSIFIER_CONFIG = "experiments/configs/classifier_fashion.py"
COLLAPSE_FRACTION = 0.5  # recall, coverage, diversity under this x floor: "low"
COLLAPSE_METRICS = ("recall", "coverage", "diversity")
HIGH_PRECISION_FRACTION = 0.75  # precision at least this x floor counts as high
# Duplicate rates over DUPLICATE_FACTOR x floor (and over DUPLICATE_MIN_RATE, since a floor of
# about 1% of a few hundred samples can be 0) suggest collapse.
DUPLICATE_FACTOR, DUPLICATE_MIN_RATE = 3.0, 0.05
LOW_COVERAGE, MODE_COLLAPSE = "low diversity or coverage", "possible mode collapse"
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
PRECISION_RECALL_K, DENSITY_COVERAGE_K, IS_SPLITS = 3, 5, 10
DIVERSITY_POINTS = 2000
CAPTIONED_PREFIX = "captioned_"  # data sets of captioned canvases (jaxgen.data.captions)
ITEM_DATA = "fashion_mnist"  # where their items come from: whose extractor scores them

FeaturesFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


class ExtractorNotFound(UserError, FileNotFoundError):
  """No trained feature extractor where evaluation looks for one."""


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A feature extractor and what the protocol says about it.

  features_fn: images_BxHxWxC in [-1, 1] -> (features_BxD, logits_BxK).
  cache_dir: where floors are cached (None: recomputed every time).
  """

  name: str
  features_fn: FeaturesFn
  test_accuracy: float | None = None
  checkpoint_step: int | None = None
  cache_dir: Path | None = None


# ------------------------------------------------------------------- extractor


def extractor_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` as the extractor sees it: captioned canvases are scored item by item, by the
  classifier of their items' data set (ITEM_DATA at the same data.source_dir)."""
  if not config.data.name.startswith(CAPTIONED_PREFIX):
    return config
  config = config.copy_and_resolve_references()
  config.data.name = ITEM_DATA
  return config


def extractor_dir(config: ml_collections.ConfigDict, extractor: str | Path | None = None) -> Path:
  """The extractor's workdir: `extractor`, else $JAXGEN_EXTRACTOR, else runs/classifier_<data.name>."""
  return Path(extractor or os.environ.get(EXTRACTOR_ENV) or f"runs/classifier_{config.data.name}")


def train_command(config: ml_collections.ConfigDict, workdir: str | Path) -> str:
  """The `jaxgen train` command that trains the extractor for `config`'s data set into `workdir`."""
  cmd = f"jaxgen train --config {CLASSIFIER_CONFIG} --workdir {workdir}"
  if config.data.name != "fashion_mnist" or config.data.source_dir:
    cmd += f" --config.data.name={config.data.name}"
    if config.data.source_dir:
      cmd += f" --config.data.source_dir={config.data.source_dir}"
  if config.data.data_dir:
    cmd += f" --config.data.data_dir={config.data.data_dir}"
  return cmd


def _data_key(data: ml_collections.ConfigDict) -> tuple[str, str]:
  source = os.path.abspath(data.source_dir) if data.source_dir else ""
  if data.name == "fashion_mnist" and source == idx.FASHION_MNIST_DIR:
    source = ""
  return data.name, source


_classifier_features = jax.jit(classifier_steps.features)


def classifier_features_fn(state: Any) -> FeaturesFn:
  """features_fn of a classifier state (its params are arguments of the jitted call, not constants)."""
  return functools.partial(_classifier_features, state)


def load_extractor(
  config: ml_collections.ConfigDict,
  extractor: str | Path | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Extractor:
  """The jaxgen classifier for `config`'s data set (see `extractor_dir`), with its test accuracy.

  The accuracy on the full test split is computed once per checkpoint and cached in
  DIR/extractor.json. Raises ExtractorNotFound naming the command that trains it. Captioned
  data sets use their items' classifier (`extractor_config`).
  """
  config = extractor_config(config)
  workdir = extractor_dir(config, extractor)
  ckpts = workdir / "checkpoints"
  if not (workdir / "config.json").is_file() or not any(
    p.name.isdigit() for p in (ckpts.iterdir() if ckpts.is_dir() else ())
  ):
    raise ExtractorNotFound(
      f"no trained feature extractor in {workdir} (looked at --extractor, ${EXTRACTOR_ENV}, "
      f"then runs/classifier_<data.name>); train it with `{train_command(config, workdir)}`"
    )
  ext_config = _run_config(workdir)
  if ext_config.model.family != "classifier":
    raise UserError(
      f"extractor {workdir} is a {ext_config.model.family!r} run, not a classifier; "
      f"train one with `{train_command(config, workdir)}`"
    )
  if _data_key(ext_config.data) != _data_key(config.data):
    raise UserError(
      f"extractor {workdir} was trained on {_data_key(ext_config.data)}, the run on "
      f"{_data_key(config.data)}; train one for this data set with "
      f"`{train_command(config, 'DIR')}` and pass --extractor DIR"
    )
  ext_config, _, state = trainer.load_run(workdir)
  step = int(jax.device_get(state.step))
  features_fn = classifier_features_fn(state)
  info_path = workdir / "extractor.json"
  info = json.loads(info_path.read_text()) if info_path.is_file() else {}
  if info.get("checkpoint_step") != step:
    images, labels = read_split(ext_config, "test")
    acc = classifier_accuracy(features_fn, images, labels, mesh)
    info = dict(
      checkpoint_step=step,
      test_accuracy=acc["accuracy"],
      test_loss=acc["loss"],
      num_test=len(labels),
    )
    if jax.process_index() == 0:
      info_path.write_text(json.dumps(info, indent=2))
  return Extractor(
    name=str(workdir),
    features_fn=features_fn,
    test_accuracy=info["test_accuracy"],
    checkpoint_step=step,
    cache_dir=workdir / "floor",
  )


# --------------------------------------------------------------- data, features


def read_batch(
  config: ml_collections.ConfigDict, split: str, indices: np.ndarray | None = None
) -> dict[str, np.ndarray]:
  """A split's examples (all, or `indices`) as one batch with the loader's keys: image float32
  [N, H, W, C] in [-1, 1], label int32 [N] and any other integer feature (caption tokens, ...)."""
  source, _ = trainer.load_data(config, split)
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  getitems = getattr(source, "__getitems__", None) or (lambda ii: [source[i] for i in ii])
  items = getitems([int(i) for i in indices])
  images = np.stack([it["image"] for it in items]).astype(np.float32)
  if images.ndim == 3:
    images = images[..., None]
  # Images scaled as evaluation always has (the loader's x * (1 / 127.5) differs in the last bit).
  return dict(pipeline._to_batch(items), image=images / 127.5 - 1.0)


def read_split(
  config: ml_collections.ConfigDict, split: str, indices: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Images [N, H, W, C] float32 in [-1, 1] and labels [N] of a split (all, or `indices`)."""
  batch = read_batch(config, split, indices)
  return batch["image"], batch["label"]


def subset_indices(total: int, num: int, seed: int) -> np.ndarray:
  """All of 0..total-1 when num >= total, else `num` of them drawn without replacement (sorted)."""
  if num >= total:
    return np.arange(total)
  return np.sort(np.random.default_rng(seed).choice(total, num, replace=False))


def _batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  n = mesh.size
  return max(n, batch_size // n * n)


def _to_host(tree: Any) -> Any:
  """Whole host copies of (possibly several processes') arrays, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  return (
    np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) if len(x) < size else x
  )


def compute_features(
  features_fn: FeaturesFn,
  images_NxHxWxC: np.ndarray,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], logits [N, K]) of host images, batch by batch, sharded over the mesh."""
  mesh = mesh or parallel.make_mesh()
  bs = _batch_size(batch_size, mesh)
  feats, logits = [], []
  for start in range(0, len(images_NxHxWxC), bs):
    block = images_NxHxWxC[start : start + bs]
    x = jax.device_put(_pad(block, bs), parallel.data_sharding(mesh))
    f, lg = _to_host(features_fn(x))
    feats.append(np.asarray(f)[: len(block)])
    logits.append(np.asarray(lg)[: len(block)])
  return np.concatenate(feats), np.concatenate(logits)


@functools.cache
def _jit_sample(sample_fn: Callable, sharding: jax.sharding.Sharding) -> Callable:
  return jax.jit(sample_fn, static_argnums=2, out_shardings=sharding)


def generate_features(
  family: Any,
  state: Any,
  features_fn: FeaturesFn,
  key: jax.Array,
  num: int,
  num_classes: int = 0,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Features [num, D], logits [num, K] and requested labels [num] (or None) of `num` samples.

  Samples are drawn `batch_size` at a time (key folded with the batch index) and never leave
  the devices; class-conditional models get labels 0..K-1 cycled.
  """
  mesh = mesh or parallel.make_mesh()
  bs = _batch_size(batch_size, mesh)
  sharding = parallel.data_sharding(mesh)
  sample = _jit_sample(family.sample, sharding)
  feats, logits = [], []
  labels = np.arange(num) % num_classes if num_classes else None
  for i, start in enumerate(range(0, num, bs)):
    cond = None
    if num_classes:
      cond = jax.device_put(_pad(labels[start : start + bs].astype(np.int32), bs), sharding)
    images = sample(state, jax.random.fold_in(key, i), bs, cond)
    f, lg = _to_host(features_fn(images))
    n = min(bs, num - start)
    feats.append(np.asarray(f)[:n])
    logits.append(np.asarray(lg)[:n])
  return np.concatenate(feats), np.concatenate(logits), labels


def classifier_accuracy(
  features_fn: FeaturesFn,
  images: np.ndarray,
  labels: np.ndarray,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
  """Accuracy and mean cross-entropy (nats) of the extractor's logits on labelled images."""
  _, logits = compute_features(features_fn, images, mesh)
  return dict(
    accuracy=float(np.mean(np.argmax(logits, -1) == labels)),
    loss=float(losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))),
  )


# ---------------------------------------------------------------------- metrics


def mean_pairwise_distance(feats_NxD: np.ndarray, max_points: int = DIVERSITY_POINTS) -> float:
  """Sample diversity: mean Euclidean distance between distinct points (first `max_points`)."""
  x = np.asarray(feats_NxD[:max_points], np.float32)
  n = len(x)
  x = x - x.mean(0)
  d = np.sqrt(np.asarray(metrics.pairwise_sq_distances(x, x), np.float64))
  return float(d.sum() / max(n * (n - 1), 1))


def sample_metrics(
  real_NxD: np.ndarray,
  fake_MxD: np.ndarray,
  fake_logits_MxK: np.ndarray,
  fake_labels_M: np.ndarray | None = None,
  seed: int = 0,
) -> dict[str, float]:
  """FD, KID, IS, precision/recall, density/coverage, diversity (and conditional accuracy)."""
  kid = metrics.kernel_inception_distance(
    real_NxD, fake_MxD, num_subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=seed
  )
  inception = metrics.inception_score(fake_logits_MxK, num_splits=min(IS_SPLITS, len(fake_MxD)))
  out = dict(
    fd=metrics.frechet_distance_from_features(real_NxD, fake_MxD),
    kid=kid["mean"],
    kid_std=kid["std"],
    inception_score=inception["mean"],
    inception_score_std=inception["std"],
    **metrics.precision_recall(real_NxD, fake_MxD, k=PRECISION_RECALL_K),
    **metrics.density_coverage(real_NxD, fake_MxD, k=DENSITY_COVERAGE_K),
    diversity=mean_pairwise_distance(fake_MxD),
    **metrics.duplicate_rate(real_NxD, fake_MxD),
  )
  if fake_labels_M is not None:
    out["conditional_accuracy"] = metrics.conditional_accuracy(fake_logits_MxK, fake_labels_M)
  return out


def sample_flags(values: dict, floor: dict, fraction: float = COLLAPSE_FRACTION) -> list[str]:
  """ "kind: evidence" lines, the evidence starting with the metric it marks in the table.

  LOW_COVERAGE: one line per metric of COLLAPSE_METRICS below `fraction` x its floor.
  MODE_COLLAPSE: recall low while precision stays high (>= HIGH_PRECISION_FRACTION x floor:
  samples on the real manifold, but few places of it); or a duplicate rate above
  DUPLICATE_FACTOR x its floor and DUPLICATE_MIN_RATE (samples repeat one another).
  """
  low = lambda k: k in values and floor.get(k) and values[k] < fraction * floor[k]
  flags = [
    f"{LOW_COVERAGE}: {k} {values[k]:.3g} < {fraction:g} x floor {floor[k]:.3g}"
    for k in COLLAPSE_METRICS
    if low(k)
  ]
  if (
    low("recall")
    and floor.get("precision")
    and (values.get("precision", 0) >= HIGH_PRECISION_FRACTION * floor["precision"])
  ):
    flags.append(
      f"{MODE_COLLAPSE}: recall {values['recall']:.3g} < {fraction:g} x floor "
      f"{floor['recall']:.3g} with precision {values['precision']:.3g} >= "
      f"{HIGH_PRECISION_FRACTION:g} x floor {floor['precision']:.3g}"
    )
  dup, dup_floor = values.get("duplicate_rate"), floor.get("duplicate_rate")
  if (
    dup is not None
    and dup_floor is not None
    and dup > max(DUPLICATE_FACTOR * dup_floor, DUPLICATE_MIN_RATE)
  ):
    flags.append(
      f"{MODE_COLLAPSE}: duplicate_rate {dup:.3g} > {DUPLICATE_FACTOR:g} x floor "
      f"{dup_floor:.3g} (and > {DUPLICATE_MIN_RATE:g}): samples repeat one another"
    )
  return flags


def flag_kind_and_evidence(flag: str) -> tuple[str, str]:
  """(kind, evidence) of a flag; flags written before the kinds existed read as LOW_COVERAGE."""
  for kind in (LOW_COVERAGE, MODE_COLLAPSE):
    if flag.startswith(kind + ": "):
      return kind, flag[len(kind) + 2 :]
  return LOW_COVERAGE, flag


@dataclasses.dataclass
class Reference:
  """Real test features the samples are compared with, and the floor (train vs test)."""

  test_features: np.ndarray  # [num_real, D]
  floor: dict
  protocol: dict


def real_reference(
  extractor: Extractor,
  config: ml_collections.ConfigDict,
  num_real: int,
  num_fake: int,
  seed: int = 0,
  mesh: jax.sharding.Mesh | None = None,
) -> Reference:
  """Test features (num_real images) and the floor: num_fake train images scored as samples.

  Cached in extractor.cache_dir per (data set, counts, seed, extractor step).
  """
  _, source = _data_key(config.data)
  key = (
    f"v2_{config.data.name}_{hashlib.sha1(source.encode()).hexdigest()[:8]}_step"
    f"{extractor.checkpoint_step}_real{num_real}_fake{num_fake}_seed{seed}"
  )
  cache = extractor.cache_dir / key if extractor.cache_dir else None
  if cache and cache.with_suffix(".json").is_file() and cache.with_suffix(".npz").is_file():
    saved = json.loads(cache.with_suffix(".json").read_text())
    return Reference(
      np.load(cache.with_suffix(".npz"))["test_features"], saved["floor"], saved["protocol"]
    )
  test_n = len(trainer.load_data(config, "test")[0])
  train_n = len(trainer.load_data(config, "train")[0])
  test_images, _ = read_split(config, "test", subset_indices(test_n, num_real, seed))
  train_images, train_labels = read_split(config, "train", subset_indices(train_n, num_fake, seed))
  test_feats, _ = compute_features(extractor.features_fn, test_images, mesh)
  train_feats, train_logits = compute_features(extractor.features_fn, train_images, mesh)
  floor = sample_metrics(test_feats, train_feats, train_logits, train_labels, seed)
  protocol = dict(
    num_real=len(test_feats),
    real_split="test",
    floor_num_train=len(train_feats),
    floor=f"{len(train_feats)} real train images scored as samples",
    seed=seed,
  )
  if cache and jax.process_index() == 0:
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache.with_suffix(".npz"), test_features=test_feats)
    cache.with_suffix(".json").write_text(
      json.dumps(dict(floor=floor, protocol=protocol), indent=2)
    )
  return Reference(test_feats, floor, protocol)


# -------------------------------------------------------------------- captions


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
  batch_size: int = BATCH_SIZE,
) -> np.ndarray:
  """1.0 / 0.0 per caption of `batch`, [N]: whether every item it names is recognised at its place.

  batch: tokens [N, L], classes and positions [N, 2], image [N, S, S, C]. The canvases scored are
  the batch's own, or, given `sample_fn(i, tokens_BxL) -> images [B, S, S, C]`, samples drawn
  for the captions, B at a time (block i). classify_fn: crops [M, 28, 28, C] -> logits [M, K].
  """
  mesh = mesh or parallel.make_mesh()
  n = len(batch["tokens"])
  bs = _batch_size(min(batch_size, n), mesh)
  sharding = parallel.data_sharding(mesh)
  out = []
  for i, start in enumerate(range(0, n, bs)):
    block = jax.device_put(
      {
        k: _pad(np.asarray(batch[k][start : start + bs]), bs)
        for k in ("image", "tokens", "classes", "positions")
      },
      sharding,
    )
    images = block["image"] if sample_fn is None else sample_fn(i, block["tokens"])
    ok = captions.caption_accuracy(images, block["classes"], block["positions"], classify_fn)
    out.append(np.asarray(_to_host(ok))[: min(bs, n - start)])
  return np.concatenate(out)


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
  batch_size: int = BATCH_SIZE,
) -> tuple[dict, dict]:
  """(metrics, floor): `caption_summary` of one sample per caption of `batch`
  (family.sample(state, fold_in(key, block), B, conditioning=tokens_BxL)) and of the batch's
  real canvases. batch as in `caption_correct`, plus held_out [N] (else all count as seen)."""
  mesh = mesh or parallel.make_mesh()
  sample = _jit_sample(family.sample, parallel.data_sharding(mesh))
  sample_fn = lambda i, tokens: sample(state, jax.random.fold_in(key, i), len(tokens), tokens)
  held = batch.get("held_out", np.zeros(len(batch["tokens"]), np.int32))
  correct = lambda fn: caption_correct(batch, classify_fn, fn, mesh, batch_size)
  return caption_summary(correct(sample_fn), held), caption_summary(correct(None), held)


def eval_setting(config: ml_collections.ConfigDict, name: str, default: Any = None) -> Any:
  """config.eval.<name> (the family configs' evaluation block), else `default`."""
  value = config.get("eval", {}).get(name)
  return default if value is None else value


def likelihood_bounds(
  family: Any,
  state: Any,
  batch: dict[str, np.ndarray],
  *,
  num_importance: int,
  seed: int = 0,
  batch_size: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
  """Test-set bounds from `family.log_likelihood_bounds`: -ELBO, -IWAE_k (nats/image, bits/dim).

  batch: image [N, H, W, C] and every other feature the family may read (label, tokens, ...),
  each [N, ...]; the family gets them all, `batch_size` rows at a time. The family binarises
  (or not) with the fixed key it is given; batch b uses fold_in(key(seed), b).
  """
  mesh = mesh or parallel.make_mesh()
  bs = _batch_size(batch_size or max(LIKELIHOOD_IMAGES_PER_CALL // num_importance, 1), mesh)
  bounds = jax.jit(family.log_likelihood_bounds, static_argnames="num_samples")
  key = jax.random.fold_in(jax.random.key(seed), 1)
  sharding = parallel.data_sharding(mesh)
  out = {"elbo": [], "iwae": []}
  num = len(batch["image"])
  for i, start in enumerate(range(0, num, bs)):
    n = min(bs, num - start)
    block = {k: _pad(np.asarray(v[start : start + bs]), bs) for k, v in batch.items()}
    result = _to_host(
      bounds(
        state,
        jax.device_put(block, sharding),
        jax.random.fold_in(key, i),
        num_samples=num_importance,
      )
    )
    for k in out:
      out[k].append(np.asarray(result[k], np.float64)[:n])
  dims = math.prod(batch["image"].shape[1:]) * math.log(2)
  nats = {k: -float(np.mean(np.concatenate(v))) for k, v in out.items()}
  return dict(
    nll_elbo=nats["elbo"],
    nll_iwae=nats["iwae"],
    bpd_elbo=nats["elbo"] / dims,
    bpd_iwae=nats["iwae"] / dims,
  )


# ------------------------------------------------------------------------ runs


def _sample_results(
  config: ml_collections.ConfigDict,
  family: Any,
  state: Any,
  extractor: Extractor,
  num_samples: int,
  seed: int,
  step: int,
  mesh: jax.sharding.Mesh,
  reference: "Reference | None",
) -> dict:
  """Sample metrics of `num_samples` samples vs the test split, the floor, flags and protocol."""
  ref = reference or real_reference(extractor, config, num_samples, num_samples, seed, mesh)
  num_classes = config.model.get("num_classes") or 0
  feats, logits, labels = generate_features(
    family, state, extractor.features_fn, jax.random.key(seed), num_samples, num_classes, mesh
  )
  values = sample_metrics(ref.test_features, feats, logits, labels, seed)
  return dict(
    family=config.model.family,
    dataset=config.data.name,
    metrics=values,
    floor=ref.floor,
    flags=sample_flags(values, ref.floor),
    protocol=dict(
      extractor=dict(
        name=extractor.name,
        checkpoint_step=extractor.checkpoint_step,
        test_accuracy=extractor.test_accuracy,
        feature_dim=int(feats.shape[1]),
      ),
      num_samples=num_samples,
      **ref.protocol,
      checkpoint_step=step,
      conditional=bool(num_classes),
      kid=dict(
        subsets=KID_SUBSETS, subset_size=min(KID_SUBSET_SIZE, num_samples, ref.protocol["num_real"])
      ),
      precision_recall_k=PRECISION_RECALL_K,
      density_coverage_k=DENSITY_COVERAGE_K,
      inception_score_splits=min(IS_SPLITS, num_samples),
      diversity_points=min(DIVERSITY_POINTS, num_samples),
      collapse_fraction=COLLAPSE_FRACTION,
      duplicates=dict(
        percentile=metrics.duplicates.DUPLICATE_PERCENTILE,
        factor=DUPLICATE_FACTOR,
        min_rate=DUPLICATE_MIN_RATE,
      ),
      high_precision_fraction=HIGH_PRECISION_FRACTION,
    ),
  )


def _caption_results(
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
  test_n = len(trainer.load_data(config, "test")[0])
  batch = read_batch(config, "test", np.arange(min(num_samples, test_n)))
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
      extractor=dict(
        name=extractor.name,
        checkpoint_step=extractor.checkpoint_step,
        test_accuracy=extractor.test_accuracy,
      ),
      captions=dict(num=n, held_out=held_out, split="test", first=True),
      num_samples=n,
      seed=seed,
      checkpoint_step=step,
      floor=f"the {n} real test canvases scored the same way",
    ),
  )


def _bounds_only_results(config: ml_collections.ConfigDict, step: int, note: str) -> dict:
  """The result skeleton of a run evaluated without an extractor: no sample metrics, a note."""
  return dict(
    family=config.model.family,
    dataset=config.data.name,
    metrics={},
    floor={},
    flags=[],
    protocol=dict(checkpoint_step=step, sample_metrics=note),
  )


def evaluate_state(
  config: ml_collections.ConfigDict,
  family: Any,
  state: Any,
  extractor: Extractor | None,
  *,
  num_samples: int = DEFAULT_NUM_SAMPLES,
  seed: int = 0,
  num_importance: int | None = None,
  step: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
  reference: "Reference | None" = None,
  likelihood_seed: int | None = None,
  note: str = "",
) -> dict:
  """All metrics of a generative `state` vs the test split, its floor, flags and protocol.

  Sample metrics, or for captioned runs (`is_captioned`) caption accuracy; with `extractor`
  None neither (families with likelihood bounds only) and protocol.sample_metrics = `note`,
  which should say how to get them. `reference`: a precomputed `real_reference` for these
  counts and seed (else computed or read from the cache; unused for captioned runs).
  Likelihood bounds (families with `log_likelihood_bounds`) use `num_importance` and
  `likelihood_seed` where given, else config.eval.num_importance / seed, on the first
  config.eval.num_test_images test examples (default: num_samples).
  """
  t0 = time.perf_counter()
  mesh = mesh or parallel.make_mesh()
  step = int(jax.device_get(state.step)) if step is None else step
  if extractor is None:
    if not hasattr(family, "log_likelihood_bounds"):
      raise ValueError(
        f"the {config.model.family!r} family has no likelihood bounds: its "
        "evaluation needs a feature extractor"
      )
    results = _bounds_only_results(config, step, note or "not computed: no feature extractor")
  elif is_captioned(config, family):
    results = _caption_results(config, family, state, extractor, num_samples, seed, step, mesh)
  else:
    results = _sample_results(
      config, family, state, extractor, num_samples, seed, step, mesh, reference
    )
  if hasattr(family, "log_likelihood_bounds"):
    # k, image count, batch and seed: arguments, else config.eval.*, else defaults.
    k = int(num_importance or eval_setting(config, "num_importance", DEFAULT_NUM_IMPORTANCE))
    lk_seed = eval_setting(config, "seed", seed) if likelihood_seed is None else likelihood_seed
    test_n = len(trainer.load_data(config, "test")[0])
    num_images = min(eval_setting(config, "num_test_images", num_samples), test_n)
    batch = read_batch(config, "test", np.arange(num_images))  # the first N, every feature
    results["likelihood"] = likelihood_bounds(
      family,
      state,
      batch,
      num_importance=k,
      seed=lk_seed,
      batch_size=eval_setting(config, "batch_size"),
      mesh=mesh,
    )
    likelihood = config.model.get("likelihood", "bernoulli")
    results["protocol"]["likelihood"] = dict(
      num_importance=k,
      num_images=num_images,
      split="test",
      first_images=True,
      checkpoint_step=step,
      seed=lk_seed,
      model_likelihood=likelihood,
      binarisation=(
        f"each test image binarised once, Bernoulli(pixel), from seed {lk_seed}"
        if likelihood == "bernoulli"
        else "none (8-bit grey levels)"
      ),
      units="nats per image; bits/dim = nats / (H*W*C ln 2)",
    )
  results["protocol"]["seconds"] = round(time.perf_counter() - t0, 1)
  return results


def optional_extractor(
  config: ml_collections.ConfigDict,
  extractor: str | Path | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> tuple[Extractor | None, str]:
  """(extractor, "") as `load_extractor`; or (None, a one-line note naming the command that
  trains it) where the family has likelihood bounds, no extractor was named (--extractor,
  $JAXGEN_EXTRACTOR) and none is at the default place. Raises ExtractorNotFound otherwise."""
  try:
    return load_extractor(config, extractor, mesh), ""
  except ExtractorNotFound:
    family = steps.get_family(config.model.family)
    if extractor or os.environ.get(EXTRACTOR_ENV) or not hasattr(family, "log_likelihood_bounds"):
      raise
    ext_config = extractor_config(config)
    return None, (
      f"sample metrics (FD, KID, precision/recall, ...) skipped: no trained feature "
      f"extractor in {extractor_dir(ext_config)}; train it with "
      f"`{train_command(ext_config, extractor_dir(ext_config))}` and evaluate again"
    )


def _run_config(workdir: Path) -> ml_collections.ConfigDict:
  path = workdir / "config.json"
  if not path.is_file():
    raise UserError(
      f"{workdir} holds no jaxgen run ({path} is missing); train one with "
      f"`jaxgen train --config CONFIG --workdir {workdir}`"
    )
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def evaluate_run(
  workdir: str | Path,
  *,
  num_samples: int = DEFAULT_NUM_SAMPLES,
  seed: int | None = None,
  extractor: str | Path | None = None,
  num_importance: int | None = None,
  step: int | None = None,
) -> dict:
  """Evaluates a run's checkpoint (latest by default) and writes workdir/metrics.json.

  `seed` (default 0) draws the samples and real subsets; likelihood bounds use it where
  given, else config.eval.seed.
  """
  t0 = time.perf_counter()
  workdir = Path(workdir)
  config = _run_config(workdir)
  mesh = parallel.make_mesh()
  if config.model.family == "classifier":
    config, _, state = trainer.load_run(workdir, step)
    values = make_eval_fn(config, mesh=mesh)(state, 0)
    results = dict(
      family="classifier",
      dataset=config.data.name,
      metrics=values,
      floor={},
      flags=[],
      protocol=dict(
        split="test", checkpoint_step=int(state.step), seconds=round(time.perf_counter() - t0, 1)
      ),
    )
  else:
    # Before the run is loaded: a missing extractor fails fast (or, for families with
    # likelihood bounds, leaves only them to compute).
    ext, note = optional_extractor(config, extractor, mesh)
    config, family, state = trainer.load_run(workdir, step)
    results = evaluate_state(
      config,
      family,
      state,
      ext,
      num_samples=num_samples,
      seed=seed or 0,
      num_importance=num_importance,
      mesh=mesh,
      likelihood_seed=seed,
      note=note,
    )
  results["run"] = str(workdir)
  if jax.process_index() == 0:
    (workdir / "metrics.json").write_text(json.dumps(results, indent=2))
  return results


def load_results(workdir: str | Path) -> dict:
  """A run's metrics.json (written by `jaxgen evaluate --workdir`)."""
  path = Path(workdir) / "metrics.json"
  if not path.is_file():
    raise UserError(
      f"{path} not found; evaluate the run first with `jaxgen evaluate --workdir {workdir}`"
    )
  return json.loads(path.read_text())


def make_eval_fn(
  config: ml_collections.ConfigDict,
  extractor: str | Path | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Callable[[Any, int], dict]:
  """`eval_fn(state, step) -> {metric: value}` for the trainer (every config.eval_every steps).

  Classifiers: test-split accuracy and loss. Generative families: the sample metrics on
  config.eval_num_samples (default IN_TRAINING_NUM_SAMPLES) samples vs as many test images
  (captioned runs: caption accuracy on as many test captions), flags and, where the family
  has them, likelihood bounds. The extractor and the real features are loaded here, so a
  missing extractor fails before training starts (families with likelihood bounds get only
  those, see `optional_extractor`).
  """
  mesh = mesh or parallel.make_mesh()
  if config.model.family == "classifier":
    images, labels = read_split(config, "test")
    return lambda state, step: {
      f"test_{k}": v
      for k, v in classifier_accuracy(classifier_features_fn(state), images, labels, mesh).items()
    }
  family = steps.get_family(config.model.family)
  ext, note = optional_extractor(config, extractor, mesh)
  if note and jax.process_index() == 0:
    print(f"evaluation every {config.eval_every} steps: likelihood bounds only; {note}", flush=True)
  num = config.get("eval_num_samples") or IN_TRAINING_NUM_SAMPLES
  ref = None
  if ext is not None and not is_captioned(config, family):
    ref = real_reference(ext, config, num, num, config.seed, mesh)

  def eval_fn(state: Any, step: int) -> dict:
    results = evaluate_state(
      config,
      family,
      state,
      ext,
      num_samples=num,
      seed=config.seed,
      step=step,
      mesh=mesh,
      reference=ref,
      note=note,
    )
    return dict(results["metrics"], **results.get("likelihood", {}), flags=results["flags"])

  return eval_fn


# ----------------------------------------------------------------------- tables


ROWS = (  # key, label, format[, key of its std over subsets]; metrics, then likelihood bounds
  ("fd", "FD (lower better)", "{:.2f}"),
  ("kid", "KID (lower)", "{:.4g}", "kid_std"),  # its scale follows the features' (cubic kernel)
  ("inception_score", "IS (higher)", "{:.2f}", "inception_score_std"),
  ("precision", "precision", "{:.3f}"),
  ("recall", "recall", "{:.3f}"),
  ("density", "density", "{:.3f}"),
  ("coverage", "coverage", "{:.3f}"),
  ("diversity", "diversity", "{:.2f}"),
  ("duplicate_rate", "duplicates", "{:.3f}"),  # metrics.duplicate_rate
  ("conditional_accuracy", "cond. accuracy", "{:.3f}"),
  ("caption_accuracy", "caption accuracy", "{:.3f}"),
  ("caption_accuracy_held_out", "  held-out captions", "{:.3f}"),
  ("caption_accuracy_seen", "  seen captions", "{:.3f}"),
  ("test_accuracy", "test accuracy", "{:.4f}"),
  ("test_loss", "test loss", "{:.4f}"),
  ("nll_elbo", "-ELBO nats/image", "{:.2f}"),
  ("nll_iwae", "-IWAE nats/image", "{:.2f}"),
  ("bpd_elbo", "-ELBO bits/dim", "{:.4f}"),
  ("bpd_iwae", "-IWAE bits/dim", "{:.4f}"),
)


def format_cell(row: tuple, values: dict, flags: list[str] = ()) -> str:
  """One table cell: the value of ROWS entry `row` in `values` (± its std where it has one),
  marked "!" when one of `flags` gives that metric as its evidence; "-" if absent."""
  key, _, fmt, *std = row
  if values.get(key) is None:
    return "-"
  text = fmt.format(values[key])
  if std and values.get(std[0]) is not None:
    text += f" ±{values[std[0]]:.2g}"
  flagged = any(flag_kind_and_evidence(f)[1].startswith(key + " ") for f in flags)
  return text + (" !" if flagged else "")


def _protocol_line(r: dict) -> str:
  p = r["protocol"]
  if "extractor" not in p and "likelihood" in p:  # bounds only, no extractor
    lk = p["likelihood"]
    return (
      f"{r['run']}: {r['family']} at step {p['checkpoint_step']}; bounds on "
      f"{lk['num_images']} {lk['split']} images, k={lk['num_importance']}; no sample metrics"
    )
  if "extractor" not in p:
    return f"{r['run']}: {r['family']} at step {p.get('checkpoint_step')}, {p.get('split')} split"
  e = p["extractor"]
  acc = f"{e['test_accuracy']:.2%}" if e.get("test_accuracy") is not None else "?"
  if "captions" in p:
    c = p["captions"]
    line = (
      f"{r['run']}: step {p['checkpoint_step']}, a sample for each of the first {c['num']} "
      f"{c['split']} captions ({c['held_out']} held out), seed {p['seed']}; items at the "
      f"captions' places classified by {e['name']} (step {e['checkpoint_step']}, test "
      f"accuracy {acc}); floor: {p['floor']}"
    )
  else:
    line = (
      f"{r['run']}: step {p['checkpoint_step']}, {p['num_samples']} samples vs "
      f"{p['num_real']} {p['real_split']} images, seed {p['seed']}; extractor {e['name']} "
      f"(step {e['checkpoint_step']}, test accuracy {acc}, {e['feature_dim']}-d)"
    )
  if "likelihood" in p:
    lk = p["likelihood"]
    line += f"; bounds on {lk['num_images']} {lk['split']} images, k={lk['num_importance']}"
  return line


def format_table(results: list[dict]) -> str:
  """Metric rows x run columns, then the floor of the first run (real train vs test, or for
  captioned runs the real test canvases).

  A value carries a "!" where a flag's evidence starts with its metric (`sample_flags`).
  """
  floor = results[0].get("floor") or {}
  merged = [dict(r.get("metrics", {}), **r.get("likelihood", {})) for r in results]
  rows = [row for row in ROWS if any(m.get(row[0]) is not None for m in merged)]
  names = [r.get("run", f"run{i}") for i, r in enumerate(results)]
  captioned = "captions" in results[0].get("protocol", {})
  floor_name = "real test canvases" if captioned else "train vs test"
  header = ["metric", *names] + ([f"floor: {floor_name}"] if floor else [])
  body = []
  for row in rows:
    cells = [format_cell(row, m, r.get("flags", [])) for m, r in zip(merged, results)]
    body.append([row[1], *cells] + ([format_cell(row, floor)] if floor else []))
  widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
  fmt = lambda line: "  ".join(
    c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
  ).rstrip()
  out = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
  for name, r in zip(names, results):
    for flag in r.get("flags", []):
      out.append(f"! {name}: {': '.join(flag_kind_and_evidence(flag))}")
  out.append("protocol:")
  out += [f"  {_protocol_line(r)}" for r in results]
  keys = {json.dumps(_comparable(r), sort_keys=True) for r in results}
  if len(keys) > 1:
    out.append("  note: the runs differ in extractor, counts or seed; the floor is the first run's")
  return "\n".join(out)


def _comparable(r: dict) -> dict:
  p = r.get("protocol", {})
  e = p.get("extractor", {})
  return dict(
    extractor=e.get("name"),
    step=e.get("checkpoint_step"),
    n=p.get("num_samples"),
    real=p.get("num_real"),
    seed=p.get("seed"),
    data=r.get("dataset"),
  )
