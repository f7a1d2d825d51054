"""Captioned canvases for text-to-image: one or two Fashion-MNIST items placed where a caption
says, after alignDRAW's MNIST-with-captions (Mansimov et al. 2016).

Each example is a blank S x S canvas (default 60 x 60) holding 28 x 28 items at one of nine
places (a 3 x 3 grid of corners 0, (S-28)/2, S-28), with a caption from two templates:

    "the coat is at the top right of the image"        one item at one of PLACES
    "the sandal is on the left of the bag"              two items, one of RELATIONS

Some item/place combinations never occur in the train split (`is_held_out`); the test split
draws from every combination and flags the held-out ones, to measure generalisation. Captions
are tokenised with a vocabulary of every word the templates can produce (index 0 pads).
Everything is deterministic in the config's seed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxgen.data import idx
from jaxgen.errors import UserError

ITEMS = (
  "t-shirt",
  "trouser",
  "pullover",
  "dress",
  "coat",
  "sandal",
  "shirt",
  "sneaker",
  "bag",
  "ankle boot",
)  # Fashion-MNIST's classes, in label order, as caption words
PLACES = (
  "top left",
  "top",
  "top right",
  "left",
  "centre",
  "right",
  "bottom left",
  "bottom",
  "bottom right",
)  # place p is row p // 3, column p % 3 of the 3 x 3 grid
RELATIONS = {  # relation -> (place of the first item, place of the second)
  "on the left of": (3, 5),
  "on the right of": (5, 3),
  "at the top of": (1, 7),
  "at the bottom of": (7, 1),
}
ITEM_SIZE = 28
PAD = "<pad>"
NONE = -1  # class and position of the missing second item of a one-item canvas


class CaptionError(UserError, ValueError):
  """A caption the vocabulary cannot express; the message lists the vocabulary."""


# ------------------------------------------------------------------ captions


def caption(classes: tuple[int, ...], where: int) -> str:
  """The caption of one item (classes=(a,), where = place) or two (a, b), where = relation."""
  if len(classes) == 1:
    return f"the {ITEMS[classes[0]]} is at the {PLACES[where]} of the image"
  return f"the {ITEMS[classes[0]]} is {list(RELATIONS)[where]} the {ITEMS[classes[1]]}"


def positions_of(classes: tuple[int, ...], where: int) -> tuple[int, int]:
  """The places of the caption's items (NONE for a missing second item)."""
  return (where, NONE) if len(classes) == 1 else list(RELATIONS.values())[where]


def is_held_out(classes: tuple[int, ...], where: int) -> bool:
  """Whether a combination is kept out of the train split: item c never at place c mod 9, and
  one pair/relation combination in eight (e.g. "the sneaker is on the left of the trouser")."""
  if len(classes) == 1:
    return where == classes[0] % len(PLACES)
  return (classes[0] + classes[1] + where) % 8 == 0


def combinations() -> Iterator[tuple[tuple[int, ...], int]]:
  """Every (classes, where) the templates express: 90 one-item and 360 two-item captions."""
  for a in range(len(ITEMS)):
    for p in range(len(PLACES)):
      yield (a,), p
  for a in range(len(ITEMS)):
    for b in range(len(ITEMS)):
      if a != b:
        for r in range(len(RELATIONS)):
          yield (a, b), r


_WORD = re.compile(r"[^\s:,.()“”!]+")  # also splits emoji names ("flag: St. Lucia")
LISTED_WORDS = 200  # a vocabulary up to this size is listed in full by CaptionError


def words(text: str) -> list[str]:
  """Lower-case words of a caption; whitespace, commas, full stops, colons, brackets, curly
  quotes and "!" separate them."""
  return _WORD.findall(text.lower())


def _vocabulary() -> tuple[str, ...]:
  found = {w for classes, where in combinations() for w in words(caption(classes, where))}
  return (PAD, *sorted(found))


VOCABULARY = _vocabulary()
MAX_TOKENS = max(len(words(caption(*c))) for c in combinations())
# Shown in sample grids: the examples, seen and held-out combinations.
EXAMPLE_CAPTIONS = (
  "the sneaker is on the left of the trouser",  # held out
  "the sandal is on the left of the bag",
  "the coat is at the top right of the image",
  "the coat is at the centre of the image",  # held out
  "the trouser is at the top of the bag",
  "the dress is on the right of the sneaker",
  "the bag is at the bottom left of the image",
  "the ankle boot is at the bottom of the t-shirt",
)


def tokenize(
  text: str, vocabulary: tuple[str, ...] = VOCABULARY, length: int = MAX_TOKENS
) -> np.ndarray:
  """Token ids int32 [length] of a caption, padded with 0; unknown words raise CaptionError."""
  ws = words(text)
  unknown = [w for w in ws if w not in vocabulary[1:]]
  if unknown:
    known = vocabulary[1:]
    if len(known) <= LISTED_WORDS:
      where = f"the vocabulary is: {' '.join(known)}"
    else:  # e.g. emoji names: point to the run's vocabulary, with the nearest words
      near = sorted({m for w in unknown for m in difflib.get_close_matches(w, known, 3)})
      where = (
        f"the run's {len(known)}-word vocabulary (the training captions' words) is "
        f"data.vocabulary in its config.json" + (f"; near: {' '.join(near)}" if near else "")
      )
    raise CaptionError(
      f"unknown word{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
      f"in caption {text!r}; {where}"
    )
  if not ws or len(ws) > length:
    raise CaptionError(
      f"caption {text!r} has {len(ws)} words; give 1 to {length}, e.g. {EXAMPLE_CAPTIONS[1]!r}"
    )
  out = np.zeros(length, np.int32)
  out[: len(ws)] = [vocabulary.index(w) for w in ws]
  return out


def detokenize(tokens_L: np.ndarray, vocabulary: tuple[str, ...] = VOCABULARY) -> str:
  """The caption of token ids [L] (padding dropped)."""
  return " ".join(vocabulary[t] for t in np.asarray(tokens_L) if t > 0)


def parse(text: str) -> tuple[tuple[int, ...], int]:
  """(classes, where) of a caption the templates produce; CaptionError for any other text."""
  ws = words(text)
  for classes, where in combinations():
    if words(caption(classes, where)) == ws:
      return classes, where
  raise CaptionError(
    f"{text!r} is not a template caption; e.g. {EXAMPLE_CAPTIONS[1]!r} or {EXAMPLE_CAPTIONS[2]!r}"
  )


# ------------------------------------------------------------------ canvases


def place_corners(canvas_size: int) -> np.ndarray:
  """Top-left (y, x) of each of the nine places on a canvas, int [9, 2]."""
  offsets = (0, (canvas_size - ITEM_SIZE) // 2, canvas_size - ITEM_SIZE)
  return np.array([(offsets[p // 3], offsets[p % 3]) for p in range(len(PLACES))])


def make_canvases(
  images_Nx28x28: np.ndarray,
  labels_N: np.ndarray,
  num: int,
  seed: int,
  train: bool,
  canvas_size: int = 60,
) -> dict[str, np.ndarray]:
  """`num` captioned canvases from labelled items, deterministic in (seed, train).

  Returns image uint8 [num, S, S, 1], tokens int32 [num, MAX_TOKENS], classes and positions
  int32 [num, 2] (NONE for a missing second item), held_out int32 [num]. Half the canvases hold
  one item; the train split never holds a held-out combination.
  """
  if canvas_size < 2 * ITEM_SIZE:
    raise UserError(
      f"canvas_size {canvas_size} cannot hold two {ITEM_SIZE}-pixel items side by "
      f"side; use at least {2 * ITEM_SIZE}"
    )
  rng = np.random.default_rng([seed, int(train)])
  by_class = [np.flatnonzero(labels_N == c) for c in range(len(ITEMS))]
  present = [c for c in range(len(ITEMS)) if len(by_class[c])]
  if len(present) < 2:
    raise UserError(f"captioned canvases need items of at least two classes; found {present}")
  corners = place_corners(canvas_size)
  out = dict(
    image=np.zeros((num, canvas_size, canvas_size, 1), np.uint8),
    tokens=np.zeros((num, MAX_TOKENS), np.int32),
    classes=np.full((num, 2), NONE, np.int32),
    positions=np.full((num, 2), NONE, np.int32),
    held_out=np.zeros(num, np.int32),
  )
  for i in range(num):
    while True:
      if rng.random() < 0.5:
        classes, where = (int(rng.choice(present)),), int(rng.integers(len(PLACES)))
      else:
        classes = tuple(int(c) for c in rng.choice(present, 2, replace=False))
        where = int(rng.integers(len(RELATIONS)))
      if not (train and is_held_out(classes, where)):
        break
    positions = positions_of(classes, where)
    for k, (c, p) in enumerate(zip(classes, positions)):
      y, x = corners[p]
      item = images_Nx28x28[rng.choice(by_class[c])]
      out["image"][i, y : y + ITEM_SIZE, x : x + ITEM_SIZE, 0] = item
      out["classes"][i, k], out["positions"][i, k] = c, p
    out["tokens"][i] = tokenize(caption(classes, where))
    out["held_out"][i] = is_held_out(classes, where)
  return out


# ------------------------------------------------------------------ conditional accuracy


def item_crops(images_BxSxSxC: jnp.ndarray, positions_Bx2: jnp.ndarray) -> jnp.ndarray:
  """The 28 x 28 square at each named place, [B, 2, 28, 28, C] (place NONE gives place 0)."""
  corners_Px2 = jnp.asarray(place_corners(images_BxSxSxC.shape[1]))
  yx_Bx2x2 = corners_Px2[jnp.maximum(positions_Bx2, 0)]
  c = images_BxSxSxC.shape[-1]
  crop = lambda image, yx: jax.lax.dynamic_slice(
    image, (yx[0], yx[1], 0), (ITEM_SIZE, ITEM_SIZE, c)
  )
  return jax.vmap(jax.vmap(crop, in_axes=(None, 0)))(images_BxSxSxC, yx_Bx2x2)


def caption_accuracy(
  images_BxSxSxC: jnp.ndarray,
  item_classes_Bx2: jnp.ndarray,
  positions_Bx2: jnp.ndarray,
  classify_fn: Callable[[jnp.ndarray], jnp.ndarray],
) -> jnp.ndarray:
  """1.0 where every item the caption names is recognised at its place, else 0.0, float32 [B].

  `classify_fn` maps 28 x 28 crops [M, 28, 28, C] (the images' value range, e.g. [-1, 1]) to
  class logits [M, K]; a crop counts when its argmax is the named class. Entries NONE in
  item_classes (one-item captions) are not checked.
  """
  predicted_Bx2 = item_predictions(images_BxSxSxC, positions_Bx2, classify_fn)
  return all_named_right(predicted_Bx2, item_classes_Bx2)


def all_named_right(predicted_Bx2: jnp.ndarray, item_classes_Bx2: jnp.ndarray) -> jnp.ndarray:
  """1.0 where every named item (classes not NONE) was seen as its class, else 0.0, [B]."""
  ok_Bx2 = (predicted_Bx2 == item_classes_Bx2) | (item_classes_Bx2 == NONE)
  return jnp.all(ok_Bx2, axis=-1).astype(jnp.float32)


def item_predictions(
  images_BxSxSxC: jnp.ndarray,
  positions_Bx2: jnp.ndarray,
  classify_fn: Callable[[jnp.ndarray], jnp.ndarray],
) -> jnp.ndarray:
  """The class `classify_fn` sees in the 28 x 28 crop at each of the two places, int [B, 2]
  (place NONE: the crop at place 0, to be ignored)."""
  crops = item_crops(images_BxSxSxC, positions_Bx2)
  b = crops.shape[0]
  logits = classify_fn(crops.reshape(b * 2, *crops.shape[2:]))
  return jnp.argmax(logits, axis=-1).reshape(b, 2)


# ------------------------------------------------------------------ TFDS builder


@dataclasses.dataclass(eq=False)
class CaptionConfig(tfds.core.BuilderConfig):
  """Where the items come from, the canvas size, the split sizes and the seed."""

  source_dir: str = idx.FASHION_MNIST_DIR
  canvas_size: int = 60
  num_train: int = 20000
  num_test: int = 2000
  seed: int = 0


DEFAULT = CaptionConfig(name="canvas60", description="20000 train / 2000 test 60x60 canvases.")
SMALL = CaptionConfig(
  name="small",
  num_train=2000,
  num_test=500,
  description="2000 train / 500 test 60x60 canvases, for quick runs.",
)


class CaptionedFashionMnist(idx.LocalFilesBuilder, tfds.core.GeneratorBasedBuilder):
  """Canvases of one or two Fashion-MNIST items with captions saying where they are."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [DEFAULT, SMALL]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Nothing is downloaded; items come from the config's IDX folder."

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.canvas_size
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(idx.FASHION_MNIST_CLASSES)),  # 1st item
          "tokens": tfds.features.Tensor(shape=(MAX_TOKENS,), dtype=np.int32),
          "classes": tfds.features.Tensor(shape=(2,), dtype=np.int32),
          "positions": tfds.features.Tensor(shape=(2,), dtype=np.int32),
          "held_out": tfds.features.Tensor(shape=(), dtype=np.int32),
        }
      ),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    files = idx.split_files(cfg.source_dir)
    sizes = {"train": cfg.num_train, "test": cfg.num_test}
    return {
      split: self._generate_examples(split, *files[split], sizes[split])
      for split in files
      if sizes[split]
    }

  def _generate_examples(self, split: str, images_path, labels_path, num: int):
    cfg = self.builder_config
    images, labels = idx.read_split(images_path, labels_path, len(ITEMS))
    canvases = make_canvases(images, labels, num, cfg.seed, split == "train", cfg.canvas_size)
    for i in range(num):
      example = {k: v[i] for k, v in canvases.items()}
      yield i, dict(example, label=int(example["classes"][0]))


def caption_config(name: str, source_dir: str | None = None) -> CaptionConfig:
  """The config for "captioned_fashion_mnist[/canvas60|/small]" with items from `source_dir`."""
  _, _, which = name.partition("/")
  configs = {c.name: c for c in CaptionedFashionMnist.BUILDER_CONFIGS}
  if which and which not in configs:
    raise UserError(
      f"unknown captioned data set {name!r}; use captioned_fashion_mnist or "
      f"captioned_fashion_mnist/{{{','.join(configs)}}}"
    )
  config = configs[which or DEFAULT.name]
  if source_dir is None or os.path.abspath(source_dir) == idx.FASHION_MNIST_DIR:
    return config
  source_dir = os.path.abspath(source_dir)
  tag = hashlib.sha1(source_dir.encode()).hexdigest()[:8]  # one prepared copy per folder
  return dataclasses.replace(config, name=f"{config.name}_{tag}", source_dir=source_dir)


def prepare(config: CaptionConfig, data_dir: str | None = None) -> CaptionedFashionMnist:
  """Returns the builder for `config`, writing its array_record files into data_dir if needed."""
  data_dir = data_dir or idx.default_data_dir()
  return idx.prepare_local(
    lambda: CaptionedFashionMnist(config=config, data_dir=data_dir, file_format="array_record"),
    config.source_dir,
    f"building {config.num_train} + {config.num_test} captioned {config.canvas_size}x"
    f"{config.canvas_size} canvases (train + test)",
    lambda: idx.validate_folder(config.source_dir, idx.FASHION_MNIST),
  )
