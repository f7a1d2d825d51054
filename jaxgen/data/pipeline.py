"""Data sets as random-access sources, and deterministic, resumable, multi-host batch loaders."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import idx
from jaxgen.data.idx import DataError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a data set; image_shape is (H, W, C)."""

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  num_examples: dict[str, int]
  vocabulary: tuple[str, ...] = ()  # caption words the items' "tokens" index (emoji's names)
  max_tokens: int = 0
  # With a label_feature other than "label" (`relabel`): the class names above are that
  # feature's, and class_groups[k] is the data's own "label" of class k (named group_names);
  # () where a class's items carry more than one "label", or a class has none.
  label_feature: str = "label"
  class_groups: tuple[int, ...] = ()
  group_names: tuple[str, ...] = ()
  class_counts: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # per split


def _info_from_builder(name: str, info: tfds.core.DatasetInfo) -> DatasetInfo:
  label = info.features["label"] if "label" in info.features else None
  names = tuple(label.names) if label is not None else ()
  return DatasetInfo(
    name=name,
    image_shape=tuple(info.features["image"].shape),
    num_classes=len(names),
    class_names=names,
    num_examples={s: int(v.num_examples) for s, v in info.splits.items()},
  )


def _load_stock(name: str, split: str, data_dir: str):
  """A data set already prepared by TFDS (array_record) in data_dir; never downloads."""
  fix = (
    f"prepare it into {data_dir} with TFDS on a machine with TensorFlow and network "
    f"(tfds.builder('{name}', data_dir=...).download_and_prepare(file_format='array_record')), "
    f"or use data.name=fashion_mnist / idx with local IDX files"
  )
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception as e:  # unknown name, or its builder code needs TensorFlow
    raise DataError(
      f"data set '{name}' not found in {data_dir} ({type(e).__name__}); {fix}"
    ) from None
  if not prepared:
    raise DataError(f"data set '{name}' is not prepared in {data_dir}; {fix}")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise DataError(
      f"data set '{name}' in {data_dir} is stored as {builder.info.file_format.value}, "
      f"not array_record (no random access); {fix}"
    )
  if "image" not in builder.info.features:
    raise DataError(f"data set '{name}' has no 'image' feature (has {list(builder.info.features)})")
  source = builder.as_data_source(split=split)
  return source, _info_from_builder(name, builder.info), builder


def load(
  name: str,
  split: str,
  *,
  source_dir: str | None = None,
  data_dir: str | None = None,
  label_feature: str = "label",
) -> tuple[Sequence[dict[str, Any]], DatasetInfo]:
  """Random-access source of {"image": uint8 [H, W, C], "label": int} items, plus its info.

  name: "fashion_mnist" (IDX files in source_dir, default /usr/share/datasets/fashion-mnist),
  "idx" (any IDX folder; source_dir required) or a stock TFDS data set already prepared in
  array_record format. IDX data sets are prepared into data_dir on first use.
  label_feature: the integer feature the items' "label" holds (e.g. emoji's "subgroup"; see
  `relabel`).
  """
  source, info, builder = _load(name, split, source_dir, data_dir)
  if label_feature != "label":
    source, info = relabel(source, info, builder, label_feature)
  return source, info


def _load(name: str, split: str, source_dir: str | None, data_dir: str | None):
  """(source, info, builder) of `load` with the data's own labels."""
  data_dir = os.path.expanduser(data_dir or idx.default_data_dir())
  if (
    name.split("/")[0] == "captioned_fashion_mnist"
  ):  # text-to-image canvases (jaxgen.data.captions)
    from jaxgen.data import captions

    builder = captions.prepare(captions.caption_config(name, source_dir), data_dir)
    return builder.as_data_source(split=split), _info_from_builder(name, builder.info), builder
  if name.split("/")[0] == "emoji":  # colour emoji glyphs (jaxgen.data.emoji)
    from jaxgen.data import emoji

    builder = emoji.prepare(emoji.emoji_config(name, source_dir), data_dir)
    source, vocab = emoji.text_source(builder, split)  # tokens in the training split's words
    info = _info_from_builder(name, builder.info)
    info = dataclasses.replace(info, vocabulary=vocab, max_tokens=emoji.MAX_TOKENS)
    return source, info, builder
  if name == "fashion_mnist":
    if source_dir is None or os.path.abspath(source_dir) == idx.FASHION_MNIST_DIR:
      config = idx.FASHION_MNIST
    else:
      config = idx.idx_config(source_dir, idx.FASHION_MNIST_CLASSES)
  elif name == "idx":
    if source_dir is None:
      raise DataError("data set 'idx' needs data.source_dir (a folder of MNIST-format IDX files)")
    config = idx.idx_config(source_dir)
  else:
    return _load_stock(name, split, data_dir)
  builder = idx.prepare(config, data_dir)
  if split not in builder.info.splits:
    raise DataError(f"split '{split}' not in {config.source_dir} (has {list(builder.info.splits)})")
  return builder.as_data_source(split=split), _info_from_builder(name, builder.info), builder


class MappedSource(Sequence):
  """A source whose items are another's passed through `_map` (a subclass's), reading through
  its batched read where it has one. A class, not a function argument, so it pickles for
  grain's worker processes."""

  def __init__(self, source: Sequence[dict[str, Any]]):
    self.source = source

  def _map(self, item: dict) -> dict:
    raise NotImplementedError

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> dict:
    return self._map(self.source[i])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    return [self._map(item) for item in read_items(self.source, list(indices))]


class Relabelled(MappedSource):
  """A source whose items' "label" is another of their integer features (`relabel`)."""

  def __init__(self, source: Sequence[dict[str, Any]], feature: str):
    super().__init__(source)
    self.feature = feature

  def _map(self, item: dict) -> dict:
    return dict(item, label=item[self.feature])


@dataclasses.dataclass(frozen=True)
class _Classes:
  groups: tuple[int, ...]  # the "label" of each class; () unless each class has exactly one
  counts: dict[str, tuple[int, ...]]  # examples of each class, per split


_CLASSES: dict[tuple[str, str], _Classes] = {}  # (prepared data set's folder, feature)


def _feature_classes(builder: Any, feature: str, num_classes: int) -> _Classes:
  """Each class of `feature`: its "label" and its count in every split of the builder, read
  once per prepared data set."""
  key = (str(builder.data_dir), feature)
  if key not in _CLASSES:
    pairs, counts = set(), {}
    for split in builder.info.splits:
      source = builder.as_data_source(split=split)
      items = read_items(source, range(len(source)))
      fine = np.asarray([int(it[feature]) for it in items], np.int64)
      counts[split] = tuple(np.bincount(fine, minlength=num_classes).tolist())
      if "label" in builder.info.features:
        pairs |= {(int(f), int(it["label"])) for f, it in zip(fine, items)}
    groups = dict(sorted(pairs))
    single = len(groups) == len(pairs) and set(groups) == set(range(num_classes))
    _CLASSES[key] = _Classes(tuple(groups[k] for k in range(num_classes)) if single else (), counts)
  return _CLASSES[key]


def relabel(
  source: Sequence[dict[str, Any]], info: DatasetInfo, builder: Any, feature: str
) -> tuple[Sequence[dict[str, Any]], DatasetInfo]:
  """`source` with each item's integer `feature` as its label (emoji: "subgroup", 99 classes
  within the 9 groups), and its info: that feature's class names (a ClassLabel's, else the
  builder's metadata["<feature>s"]), and the data's own labels as the classes' groups."""
  features = builder.info.features
  integer = [
    k
    for k, f in features.items()
    if k != "image"
    and np.issubdtype(np.dtype(f.np_dtype), np.integer)
    and getattr(f, "shape", None) == ()
  ]
  if feature not in integer:
    raise DataError(
      f"data.label_feature={feature!r}: {info.name!r} has no integer feature of that name; "
      f"set it to one of {integer}"
    )
  names = getattr(features[feature], "names", None) or builder.info.metadata.get(f"{feature}s")
  if not names:
    raise DataError(
      f"data.label_feature={feature!r}: {info.name!r} does not name that feature's classes "
      f"(neither a ClassLabel nor metadata[{feature + 's'!r}]); use a labelled feature"
    )
  names = tuple(names)
  classes = _feature_classes(builder, feature, len(names))
  info = dataclasses.replace(
    info,
    num_classes=len(names),
    class_names=names,
    label_feature=feature,
    class_groups=classes.groups,
    class_counts=classes.counts,
    group_names=info.class_names,
  )
  return Relabelled(source, feature), info


def num_batches_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Global batches per epoch."""
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def _keep(name: str, value: Any) -> bool:
  """Features a batch carries: image, label and other integer features (caption tokens, ...)."""
  return name in ("image", "label") or np.issubdtype(np.asarray(value).dtype, np.integer)


def _converted(columns: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
  """Stacked features [n, ...] as a batch: image float32 in [-1, 1] with a channel axis, label
  int32 (0 where the data has none) and the other integer features int32."""
  images = columns["image"]
  if images.ndim == 3:  # sources without a channel axis
    images = images[..., None]
  images = images.astype(np.float32)
  images *= 1 / 127.5
  images -= 1.0
  labels = columns["label"].astype(np.int32) if "label" in columns else np.zeros(n, np.int32)
  extra = {k: v.astype(np.int32) for k, v in columns.items() if k not in ("image", "label")}
  return {"image": images, "label": labels, **extra}


def _stacked(items: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """The features a batch carries, each stacked as stored [L, ...]."""
  first = items[0]
  return {k: np.stack([it[k] for it in items]) for k in first if _keep(k, first[k])}


def to_batch(items: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks items into {"image": float32 [L, H, W, C] in [-1, 1], "label": int32 [L], ...}."""
  return _converted(_stacked(items), len(items))


def read_items(source: Sequence[dict[str, Any]], indices: list[int]) -> list[dict[str, Any]]:
  """source[i] for each index, through the source's batched read where it has one."""
  getitems = getattr(source, "__getitems__", None)
  return list(getitems(indices)) if getitems else [source[i] for i in indices]


class ArraySource(Sequence):
  """A split held in host memory as stacked features {name: [N, ...]} (as stored: uint8 images).

  A batch is one fancy index per feature, microseconds where decoding a TFDS record costs tens
  of them per example; `read_batch` gives the same batches as from the source it was read from.
  """

  def __init__(self, columns: dict[str, np.ndarray]):
    self.columns = columns

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self.columns.items()}


def read_batch(
  source: Sequence[dict[str, Any]], indices: Sequence[int] | np.ndarray
) -> dict[str, np.ndarray]:
  """The items at `indices` as one batch (`to_batch`)."""
  if isinstance(source, ArraySource):
    idx = np.asarray(indices)
    return _converted({k: v[idx] for k, v in source.columns.items()}, len(idx))
  return to_batch(read_items(source, [int(i) for i in indices]))


def in_memory(
  source: Sequence[dict[str, Any]], max_bytes: int | None = None, chunk: int = 1024
) -> ArraySource:
  """Every item of `source`, read once into an ArraySource (the features batches carry).

  Refuses (DataError) a split whose features would take more than `max_bytes` (default: a
  quarter of this host's memory).
  """
  if isinstance(source, ArraySource):
    return source
  n = len(source)
  first = _stacked([source[0]])
  need = n * sum(v.nbytes for v in first.values())
  if max_bytes is None:
    max_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
  if need > max_bytes:
    raise DataError(
      f"the split's {n} examples take {need / 2**30:.1f} GiB, more than the {max_bytes / 2**30:.1f}"
      f" GiB allowed in memory; set --config.data.in_memory=false to stream them from disk"
    )
  columns = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in first.items()}
  for start in range(0, n, chunk):
    part = _stacked(read_items(source, list(range(start, min(n, start + chunk)))))
    for k, column in columns.items():
      column[start : start + len(part[k])] = part[k]
  return ArraySource(columns)


class Loader:
  """Iterator of local batches with JSON-serialisable get_state() / set_state()."""

  def __init__(
    self,
    dataset: grain.MapDataset,
    batches_per_epoch: int,
    local_batch_size: int,
    read_options: grain.ReadOptions,
  ):
    self.dataset = dataset
    self.batches_per_epoch = batches_per_epoch  # global (= local) steps per epoch
    self.local_batch_size = local_batch_size
    self._it = iter(dataset.to_iter_dataset(read_options))

  def __iter__(self) -> Loader:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict:
    return dict(self._it.get_state())

  def set_state(self, state: dict) -> None:
    self._it.set_state(dict(state))


def epoch_order(n: int, seed: int, shuffle: bool, epoch: int) -> np.ndarray:
  """The order [n] in which epoch `epoch` visits a data set of n examples: a permutation drawn
  from (seed, epoch), so every epoch and every seed has its own; 0..n-1 without shuffle."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed, epoch]).permutation(n)


def make_loader(
  source: Sequence[dict[str, Any]],
  *,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
  num_epochs: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
  drop_remainder: bool = True,
  num_workers: int = 2,
  prefetch: int = 4,
) -> Loader:
  """Loader of this process's slice of each global batch.

  Global batch b of an epoch holds the examples at permuted positions [b*B, (b+1)*B); process p
  gets rows [p*L, (p+1)*L) with L = B // P, so the processes' batches concatenated equal the
  single-process batch. Epoch e's permutation is epoch_order(n, seed, shuffle, e); shuffle=False
  keeps source order. num_epochs=None repeats forever.

  num_workers threads (grain's read threads) build whole batches ahead of the caller, keeping up
  to `prefetch` ready; 0 (or prefetch=0) builds each batch in the caller's thread. Batch b is
  always the b-th index of the same map, so the batches, their order and get_state() (the index
  of the next batch) do not depend on either setting.
  """
  n = len(source)
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
      f"batch_size {batch_size} must be a positive multiple of process_count {process_count}"
    )
  if num_workers < 0 or prefetch < 0:
    raise ValueError(f"num_workers {num_workers} and prefetch {prefetch} must be >= 0")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if not drop_remainder and process_count > 1:
    raise ValueError(
      "drop_remainder=False would give processes unequal batches; use it with process_count=1"
    )
  steps = num_batches_per_epoch(n, batch_size, drop_remainder)
  if steps == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {n} examples of the data set")
  local = batch_size // process_count

  # Each batch is a slice of its epoch's permutation, read with one batched read (array_record
  # reads many records at once several times faster than one by one) or one fancy index (in
  # memory); the permutation is one numpy call per epoch, not a Python call per example.
  order = functools.lru_cache(maxsize=2)(functools.partial(epoch_order, n, seed, shuffle))

  def batch(i: int) -> dict[str, np.ndarray]:
    epoch, b = divmod(i, steps)
    start = b * batch_size + process_index * local
    return read_batch(source, order(epoch)[start : start + local])

  total = sys.maxsize if num_epochs is None else steps * num_epochs
  ds = grain.MapDataset.range(total).map(batch)
  return Loader(
    ds, steps, local, grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=prefetch)
  )
