"""MNIST-format IDX files: a strict reader and a TFDS builder that prepares them.

Nothing is ever downloaded: the builder reads IDX files already on disk (e.g. the
`dataset-fashion-mnist` package's /usr/share/datasets/fashion-mnist) and writes an
array_record copy into a TFDS data_dir once.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxgen.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
DIGITS = tuple(str(i) for i in range(10))
# IDX magic -> number of dims; third byte 0x08 = uint8.
_MAGIC_NDIM = {0x00000801: 1, 0x00000803: 3}
# File stems per split, e.g. train-images-idx3-ubyte(.gz) or train-images.idx3-ubyte.
_PREFIX = {"train": "train", "test": "t10k"}
_REINSTALL = (
  "re-install it (apt-get install --reinstall dataset-fashion-mnist) "
  "or point data.source_dir at a complete copy"
)
_INSTALL = (
  "put the IDX files there (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
  "t10k-...; gzipped or raw), install Fashion-MNIST with "
  "`apt-get install dataset-fashion-mnist`, or set data.source_dir to a folder holding them"
)


class DataError(UserError, ValueError):
  """A data set is missing, malformed or unprepared; the message says how to fix it."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads a uint8 IDX file (gzipped if it ends in .gz): labels [N] or images [N, H, W]."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path} not found; {_INSTALL}")
  try:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise DataError(f"{path} is corrupt or truncated ({e}); {_REINSTALL}") from None
  if len(data) < 4:
    raise DataError(f"{path} is truncated (only {len(data)} bytes, no IDX header); {_REINSTALL}")
  magic = int.from_bytes(data[:4], "big")
  if magic not in _MAGIC_NDIM:
    raise DataError(
      f"{path} is not a uint8 IDX labels/images file (magic 0x{magic:08x}, "
      f"expected 0x00000801 or 0x00000803); {_REINSTALL}"
    )
  ndim = _MAGIC_NDIM[magic]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(
      f"{path} is truncated (header needs {header} bytes, found {len(data)}); {_REINSTALL}"
    )
  dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  expected, found = int(np.prod(dims)), len(data) - header
  what = "labels" if ndim == 1 else "pixels"
  if found < expected:
    raise DataError(
      f"{path} is truncated (expected {expected} bytes of {what}, found {found}); {_REINSTALL}"
    )
  if found > expected:
    raise DataError(
      f"{path} has {found - expected} trailing bytes after {expected} bytes of {what} "
      f"(not an IDX file?); {_REINSTALL}"
    )
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def find_idx_file(source_dir: str | os.PathLike, split: str, kind: str) -> Path | None:
  """The IDX file for split ("train"/"test") and kind ("images"/"labels"), or None."""
  ndim = 3 if kind == "images" else 1
  stem = f"{_PREFIX[split]}-{kind}"
  for name in (
    f"{stem}-idx{ndim}-ubyte.gz",
    f"{stem}-idx{ndim}-ubyte",
    f"{stem}.idx{ndim}-ubyte.gz",
    f"{stem}.idx{ndim}-ubyte",
  ):
    if (p := Path(source_dir) / name).is_file():
      return p
  return None


def split_files(source_dir: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
  """{split: (images, labels)} for the splits present; raises DataError without a train split."""
  source_dir = Path(source_dir)
  if not source_dir.is_dir():
    raise DataError(f"IDX folder {source_dir} does not exist; {_INSTALL}")
  out = {}
  for split in _PREFIX:
    images, labels = (
      find_idx_file(source_dir, split, "images"),
      find_idx_file(source_dir, split, "labels"),
    )
    if images and labels:
      out[split] = (images, labels)
    elif images or labels:
      missing = f"{_PREFIX[split]}-{'labels-idx1' if images else 'images-idx3'}-ubyte[.gz]"
      raise DataError(f"{source_dir} has {(images or labels).name} but no {missing}; {_INSTALL}")
  if "train" not in out:
    raise DataError(
      f"{source_dir} has no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]; {_INSTALL}"
    )
  return out


def read_split(
  images_path: Path, labels_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and cross-checks one split: images uint8 [N, H, W], labels uint8 [N]."""
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.ndim != 1:
    raise DataError(
      f"{images_path} / {labels_path} are swapped or not images/labels IDX files; {_REINSTALL}"
    )
  if len(images) != len(labels):
    raise DataError(
      f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
      f"{_REINSTALL}"
    )
  if len(labels) and int(labels.max()) >= num_classes:
    raise DataError(
      f"{labels_path} has label {int(labels.max())} but only {num_classes} class names "
      f"were given; pass the full class_names list"
    )
  return images, labels


def validate_folder(source_dir: str | os.PathLike, config: IdxConfig) -> dict[str, int]:
  """Fully reads and checks every IDX file in source_dir; returns {split: num_examples}."""
  counts = {}
  for split, (images_path, labels_path) in split_files(source_dir).items():
    images, _ = read_split(images_path, labels_path, len(config.class_names))
    if images.shape[1:] + (1,) != tuple(config.image_shape):
      raise DataError(
        f"{images_path} holds {images.shape[1]}x{images.shape[2]} images but the config "
        f"expects {config.image_shape}; use one image size per folder"
      )
    counts[split] = len(images)
  return counts


@dataclasses.dataclass(eq=False)
class IdxConfig(tfds.core.BuilderConfig):
  """Which folder of IDX files to prepare, its class names and image shape (H, W, 1)."""

  source_dir: str = FASHION_MNIST_DIR
  class_names: tuple[str, ...] = DIGITS
  image_shape: tuple[int, int, int] = (28, 28, 1)


FASHION_MNIST = IdxConfig(
  name="fashion_mnist",
  source_dir=FASHION_MNIST_DIR,
  class_names=FASHION_MNIST_CLASSES,
  image_shape=(28, 28, 1),
  description="Fashion-MNIST from local IDX files.",
)


def idx_config(
  source_dir: str | os.PathLike, class_names: tuple[str, ...] | None = None, name: str | None = None
) -> IdxConfig:
  """A config for any IDX folder; image shape read from its train header, digits if no class names.

  The default name includes a hash of the absolute path, so different folders never share a
  prepared copy in the same data_dir.
  """
  source_dir = os.path.abspath(os.fspath(source_dir))
  images_path, _ = split_files(source_dir)["train"]
  with (gzip.open if images_path.suffix == ".gz" else open)(images_path, "rb") as f:
    header = f.read(16)
  if len(header) < 16 or int.from_bytes(header[:4], "big") != 0x00000803:
    read_idx(images_path)  # raises the precise DataError
  h, w = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
  if name is None:
    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(source_dir).lower()).strip("_") or "idx"
    name = f"{slug}_{hashlib.sha1(source_dir.encode()).hexdigest()[:8]}"
  return IdxConfig(
    name=name,
    source_dir=source_dir,
    class_names=tuple(class_names or DIGITS),
    image_shape=(h, w, 1),
    description=f"IDX files from {source_dir}.",
  )


class LocalFilesBuilder:
  """Mixin for TFDS builders that convert local files: silences TFDS's "Downloading and
  preparing dataset Unknown size ..." and "... downloaded and prepared" lines (its
  _log_download_bytes / _log_download_done hooks), which claim a download that never
  happens; `prepare_local` prints what does happen."""

  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


class IdxImages(LocalFilesBuilder, tfds.core.GeneratorBasedBuilder):
  """Labelled uint8 images from a folder of MNIST-format IDX files (splits train / test)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [FASHION_MNIST]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Nothing is downloaded. Put train-{images-idx3,labels-idx1}-ubyte[.gz] and "
    "t10k-{images-idx3,labels-idx1}-ubyte[.gz] in the config's source_dir "
    "(Fashion-MNIST: `apt-get install dataset-fashion-mnist`)."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=tuple(cfg.image_shape), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,  # keep IDX order, so an unshuffled loader reads the file order
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the folder comes from the config; nothing is downloaded
    return {
      split: self._generate_examples(*paths)
      for split, paths in split_files(self.builder_config.source_dir).items()
    }

  def _generate_examples(self, images_path: Path, labels_path: Path):
    images, labels = read_split(images_path, labels_path, len(self.builder_config.class_names))
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


def default_data_dir() -> str:
  """Where prepared data sets live: $JAXGEN_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("JAXGEN_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_local(
  make_builder: Callable[[], tfds.core.DatasetBuilder],
  source_dir: str,
  what: str,
  validate: Callable[[], object] = lambda: None,
  files: str = "the IDX files",
) -> tfds.core.DatasetBuilder:
  """The builder `make_builder()` returns, prepared from the files in source_dir if it is not.

  Preparing runs `validate()` first (precise errors before TFDS starts), then prints
  "<name>: <what> from <files> in <source_dir> into array_record in <dir>, once" and,
  when done, the time it took.
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  validate()
  name = builder.builder_config.name
  print(
    f"{name}: {what} from {files} in {source_dir} into array_record in {builder.data_dir}, once",
    flush=True,
  )
  t0 = time.perf_counter()
  try:
    # TFDS writes into an `incomplete.*` sibling and renames it when done, so an
    # interrupted run never looks prepared.
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=source_dir)
    )
  except Exception:
    # Another process (e.g. another host on a shared disk) may have won the final rename.
    builder = make_builder()
    if not builder.is_prepared():
      raise
  counts = ", ".join(
    f"{s} {v.num_examples}" for s, v in sorted(builder.info.splits.items(), reverse=True)
  )
  print(
    f"{name}: prepared in {time.perf_counter() - t0:.1f}s ({counts}); later runs read "
    f"it from there",
    flush=True,
  )
  return builder


def prepare(config: IdxConfig, data_dir: str | None = None) -> IdxImages:
  """Returns the builder for config, preparing it into data_dir first if needed (validated)."""
  data_dir = data_dir or default_data_dir()
  return prepare_local(
    lambda: IdxImages(config=config, data_dir=data_dir, file_format="array_record"),
    config.source_dir,
    "converting the images and labels",
    lambda: validate_folder(config.source_dir, config),
  )
