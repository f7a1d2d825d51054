"""Real examples for evaluation: whole splits or subsets, as the loader batches them."""

import ml_collections
import numpy as np

from jaxgen import trainer
from jaxgen.data import pipeline


def own_labels(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` reading the data's own labels ("label"). Evaluation scores in those classes (the
  extractor's), whichever feature a run was conditioned on (data.label_feature)."""
  if config.data.get("label_feature", "label") == "label":
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.label_feature = "label"
  return config


def split_size(config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in a split of `config`'s data set."""
  return len(trainer.load_data(config, split)[0])


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The data set's label names (label k is the k-th); () if it has no labels."""
  return trainer.load_data(config, "test")[1].class_names


def class_counts(config: ml_collections.ConfigDict, split: str) -> np.ndarray:
  """How many examples of each class [K] a split of a data set loaded with data.label_feature
  holds (counted when the loader first read it)."""
  return np.asarray(trainer.load_data(config, split)[1].class_counts[split], np.int64)


def read_batch(
  config: ml_collections.ConfigDict, split: str, indices: np.ndarray | None = None
) -> dict[str, np.ndarray]:
  """A split's examples (all, or `indices`) as one batch, scaled as the loader scales them
  (`pipeline.to_batch`): image float32 [N, H, W, C] in [-1, 1], label int32 [N] and any other
  integer feature (caption tokens, ...)."""
  source, _ = trainer.load_data(config, split)
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  return pipeline.read_batch(source, indices)


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
