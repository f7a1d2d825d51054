"""The floor: real train images scored as if they were samples, against the real test images;
and the test features the samples are compared with. Cached per extractor (Extractor.cache_dir)."""

import dataclasses
import hashlib
import json

import jax
import ml_collections
import numpy as np

from jaxgen.evaluation import quality, sharded, splits
from jaxgen.evaluation.extractor import Extractor, data_key, write_json


@dataclasses.dataclass
class Reference:
  """Real test features the samples are compared with, and the floor (train vs test)."""

  test_features: np.ndarray  # [num_real, D]
  floor: dict
  protocol: dict
  test_labels: np.ndarray | None = None  # [num_real]: coverage per class


def real_reference(
  extractor: Extractor,
  config: ml_collections.ConfigDict,
  num_real: int,
  num_fake: int,
  seed: int = 0,
  mesh: jax.sharding.Mesh | None = None,
) -> Reference:
  """Test features (num_real images) and the floor: num_fake train images scored as samples.

  Cached in extractor.cache_dir per (data set, counts, seed, extractor step). Labels are the
  data's own (`splits.own_labels`).
  """
  config = splits.own_labels(config)
  _, source = data_key(config.data)
  # v5: the test labels and the floor's coverage per class; v4: the floor's conditional accuracy
  # per class and the data set's class names (v3: test images scaled as the loader scales them;
  # v2 differed in the last bit)
  key = (
    f"v5_{config.data.name}_{hashlib.sha1(source.encode()).hexdigest()[:8]}_step"
    f"{extractor.checkpoint_step}_real{num_real}_fake{num_fake}_seed{seed}"
  )
  cache = extractor.cache_dir / key if extractor.cache_dir else None
  if cache and cache.with_suffix(".json").is_file() and cache.with_suffix(".npz").is_file():
    saved = json.loads(cache.with_suffix(".json").read_text())
    arrays = np.load(cache.with_suffix(".npz"))
    return Reference(
      arrays["test_features"], saved["floor"], saved["protocol"], arrays["test_labels"]
    )
  test_n, train_n = splits.split_size(config, "test"), splits.split_size(config, "train")
  test_images, test_labels = splits.read_split(
    config, "test", splits.subset_indices(test_n, num_real, seed)
  )
  train_images, train_labels = splits.read_split(
    config, "train", splits.subset_indices(train_n, num_fake, seed)
  )
  test_feats, _ = sharded.compute_features(extractor.features_fn, test_images, mesh)
  train_feats, train_logits = sharded.compute_features(extractor.features_fn, train_images, mesh)
  floor = quality.sample_metrics(
    test_feats, train_feats, train_logits, train_labels, seed, real_labels_N=test_labels
  )
  protocol = dict(
    num_real=len(test_feats),
    real_split="test",
    floor_num_train=len(train_feats),
    floor=f"{len(train_feats)} real train images scored as samples",
    seed=seed,
    class_names=list(splits.class_names(config)),  # the label names, for per-class rows
  )
  if cache and jax.process_index() == 0:
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache.with_suffix(".npz"), test_features=test_feats, test_labels=test_labels)
    write_json(cache.with_suffix(".json"), dict(floor=floor, protocol=protocol))
  return Reference(test_feats, floor, protocol, np.asarray(test_labels))
