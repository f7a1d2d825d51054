"""The feature extractor: where it is found, whether it fits the run, its test accuracy."""

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import losses, steps, trainer
from jaxgen.data import idx
from jaxgen.errors import UserError
from jaxgen.evaluation import sharded, splits
from jaxgen.steps import classifier as classifier_steps

EXTRACTOR_ENV = "JAXGEN_EXTRACTOR"
CLASSIFIER_CONFIG = "experiments/configs/classifier_fashion.py"
CAPTIONED_PREFIX = "captioned_"  # data sets of captioned canvases (jaxgen.data.captions)
ITEM_DATA = "fashion_mnist"  # where their items come from: whose extractor scores them


class ExtractorNotFound(UserError, FileNotFoundError):
  """No trained feature extractor where evaluation looks for one."""


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A feature extractor and what the protocol says about it.

  features_fn: images_BxHxWxC in [-1, 1] -> (features_BxD, logits_BxK).
  cache_dir: where floors are cached (None: recomputed every time).
  """

  name: str
  features_fn: sharded.FeaturesFn
  test_accuracy: float | None = None
  checkpoint_step: int | None = None
  cache_dir: Path | None = None

  def protocol(self) -> dict:
    """What metrics.json records of the extractor."""
    return dict(
      name=self.name, checkpoint_step=self.checkpoint_step, test_accuracy=self.test_accuracy
    )


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
  family = config.data.name.split("/")[0]
  own = Path(f"experiments/configs/classifier_{family}.py")  # a data set's own classifier
  classifier, its_data = (
    (str(own), family) if own.exists() else (CLASSIFIER_CONFIG, "fashion_mnist")
  )
  cmd = f"jaxgen train --config {classifier} --workdir {workdir}"
  if config.data.name != its_data or config.data.source_dir:
    cmd += f" --config.data.name={config.data.name}"
    if own.exists() and config.data.get("image_shape"):  # e.g. emoji/base32 with a base64 config
      cmd += f" --config.data.image_shape='{tuple(config.data.image_shape)}'"
  if config.data.source_dir:
    cmd += f" --config.data.source_dir={config.data.source_dir}"
  if config.data.data_dir:
    cmd += f" --config.data.data_dir={config.data.data_dir}"
  return cmd


def data_key(data: ml_collections.ConfigDict) -> tuple[str, str]:
  """(name, absolute source folder) of a data config; "" for the default Fashion-MNIST files."""
  source = os.path.abspath(data.source_dir) if data.source_dir else ""
  if data.name == "fashion_mnist" and source == idx.FASHION_MNIST_DIR:
    source = ""
  return data.name, source


_classifier_features = jax.jit(classifier_steps.features)


def classifier_features_fn(state: Any) -> sharded.FeaturesFn:
  """features_fn of a classifier state (its params are arguments of the jitted call, not constants)."""
  return functools.partial(_classifier_features, state)


def classifier_accuracy(
  features_fn: sharded.FeaturesFn,
  images: np.ndarray,
  labels: np.ndarray,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
  """Accuracy and mean cross-entropy (nats) of the extractor's logits on labelled images."""
  _, logits = sharded.compute_features(features_fn, images, mesh)
  return dict(
    accuracy=float(np.mean(np.argmax(logits, -1) == labels)),
    loss=float(losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))),
  )


def extractor_cache_dir(cache_dir: Path, workdir: Path) -> Path:
  """The folder under `cache_dir` for the extractor trained in `workdir` (its name and a hash of
  its absolute path: two extractors never share one)."""
  digest = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:8]
  return cache_dir / f"extractor_{workdir.name}_{digest}"


def write_json(path: Path, value: Any) -> None:
  """`value` as indented JSON at `path` (folders made, replaced atomically), by process 0 only."""
  if jax.process_index() != 0:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(value, indent=2))
  tmp.replace(path)


def load_extractor(
  config: ml_collections.ConfigDict,
  extractor: str | Path | None = None,
  mesh: jax.sharding.Mesh | None = None,
  cache_dir: str | Path | None = None,
) -> Extractor:
  """The jaxgen classifier for `config`'s data set (see `extractor_dir`), with its test accuracy.

  The accuracy on the full test split is computed once per checkpoint and, with `cache_dir`,
  cached in cache_dir/extractor_<name>_<hash>/extractor.json beside the floors (floor/); the
  extractor's own folder is only read. Raises ExtractorNotFound naming the command that trains
  it. Captioned data sets use their items' classifier (`extractor_config`).
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
  ext_config = trainer.load_run_config(workdir)
  if ext_config.model.family != "classifier":
    raise UserError(
      f"extractor {workdir} is a {ext_config.model.family!r} run, not a classifier; "
      f"train one with `{train_command(config, workdir)}`"
    )
  if data_key(ext_config.data) != data_key(config.data):
    raise UserError(
      f"extractor {workdir} was trained on {data_key(ext_config.data)}, the run on "
      f"{data_key(config.data)}; train one for this data set with "
      f"`{train_command(config, 'DIR')}` and pass --extractor DIR"
    )
  ext_config, _, state = trainer.load_run(workdir)
  step = int(jax.device_get(state.step))
  features_fn = classifier_features_fn(state)
  cache = extractor_cache_dir(Path(cache_dir), workdir) if cache_dir else None
  info_path = cache / "extractor.json" if cache else None
  info = json.loads(info_path.read_text()) if info_path and info_path.is_file() else {}
  if info.get("checkpoint_step") != step:
    images, labels = splits.read_split(ext_config, "test")
    acc = classifier_accuracy(features_fn, images, labels, mesh)
    info = dict(
      checkpoint_step=step,
      test_accuracy=acc["accuracy"],
      test_loss=acc["loss"],
      num_test=len(labels),
    )
    if info_path:
      write_json(info_path, info)
  return Extractor(
    name=str(workdir),
    features_fn=features_fn,
    test_accuracy=info["test_accuracy"],
    checkpoint_step=step,
    cache_dir=cache / "floor" if cache else None,
  )


def optional_extractor(
  config: ml_collections.ConfigDict,
  extractor: str | Path | None = None,
  mesh: jax.sharding.Mesh | None = None,
  cache_dir: str | Path | None = None,
) -> tuple[Extractor | None, str]:
  """(extractor, "") as `load_extractor`; or (None, a one-line note naming the command that
  trains it) where the family has likelihood bounds, no extractor was named (--extractor,
  $JAXGEN_EXTRACTOR) and none is at the default place. Raises ExtractorNotFound otherwise."""
  try:
    return load_extractor(config, extractor, mesh, cache_dir), ""
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
