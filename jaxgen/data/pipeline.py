"""Data sets as random-access sources, and deterministic, resumable, multi-host batch loaders."""

from __future__ import annotations

import dataclasses
import os
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
  return builder.as_data_source(split=split), _info_from_builder(name, builder.info)


def load(
  name: str, split: str, *, source_dir: str | None = None, data_dir: str | None = None
) -> tuple[Sequence[dict[str, Any]], DatasetInfo]:
  """Random-access source of {"image": uint8 [H, W, C], "label": int} items, plus its info.

  name: "fashion_mnist" (IDX files in source_dir, default /usr/share/datasets/fashion-mnist),
  "idx" (any IDX folder; source_dir required) or a stock TFDS data set already prepared in
  array_record format. IDX data sets are prepared into data_dir on first use.
  """
  data_dir = os.path.expanduser(data_dir or idx.default_data_dir())
  if (
    name.split("/")[0] == "captioned_fashion_mnist"
  ):  # text-to-image canvases (jaxgen.data.captions)
    from jaxgen.data import captions

    builder = captions.prepare(captions.caption_config(name, source_dir), data_dir)
    return builder.as_data_source(split=split), _info_from_builder(name, builder.info)
  if name.split("/")[0] == "emoji":  # colour emoji glyphs (jaxgen.data.emoji)
    from jaxgen.data import emoji

    builder = emoji.prepare(emoji.emoji_config(name, source_dir), data_dir)
    source, vocab = emoji.text_source(builder, split)  # tokens in the training split's words
    info = _info_from_builder(name, builder.info)
    return source, dataclasses.replace(info, vocabulary=vocab, max_tokens=emoji.MAX_TOKENS)
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
  return builder.as_data_source(split=split), _info_from_builder(name, builder.info)


def num_batches_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Global batches per epoch."""
  return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


def to_batch(items: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks items into {"image": float32 [L, H, W, C] in [-1, 1], "label": int32 [L], ...}."""
  images = np.stack([it["image"] for it in items])
  if images.ndim == 3:  # sources without a channel axis
    images = images[..., None]
  images = images.astype(np.float32)
  images *= 1 / 127.5
  images -= 1.0
  labels = np.array([it.get("label", 0) for it in items], np.int32)
  # Other integer features (e.g. caption tokens) pass through, stacked, as int32.
  extra = {
    k: np.stack([it[k] for it in items]).astype(np.int32)
    for k in items[0]
    if k not in ("image", "label") and np.issubdtype(np.asarray(items[0][k]).dtype, np.integer)
  }
  return {"image": images, "label": labels, **extra}


def read_items(source: Sequence[dict[str, Any]], indices: list[int]) -> list[dict[str, Any]]:
  """source[i] for each index, through the source's batched read where it has one."""
  getitems = getattr(source, "__getitems__", None)
  return list(getitems(indices)) if getitems else [source[i] for i in indices]


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
  single-process batch. Each epoch is a fresh permutation, deterministic in seed; shuffle=False
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

  # The permutation is of the source's indices: each batch then reads its items with one
  # batched read (array_record reads many records at once several times faster than one by one)
  # and holds the same items, in the same order, as shuffling the items themselves.
  ds = grain.MapDataset.range(n)
  if shuffle:
    # Hash the seed: grain reseeds epoch e with seed + e, so seeds s and s+1 would share epochs.
    ds = ds.shuffle(seed=int(np.random.SeedSequence(seed).generate_state(1)[0]))
  # Batching a MapDataset keeps epoch boundaries, and slicing maps epoch e of the slice to
  # epoch e of its parent, so the per-epoch reshuffle survives the steps below.
  ds = ds.batch(local, drop_remainder=drop_remainder, batch_fn=list)
  ds = ds.map(lambda indices: to_batch(read_items(source, indices)))
  if process_count > 1:
    ds = ds[: steps * process_count][process_index::process_count]
  ds = ds.repeat(num_epochs)
  return Loader(
    ds, steps, local, grain.ReadOptions(num_threads=num_workers, prefetch_buffer_size=prefetch)
  )
