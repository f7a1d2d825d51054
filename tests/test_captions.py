"""Captioned canvases: vocabulary and tokens, held-out combinations, determinism, the TFDS
builder through the loader, and conditional accuracy."""

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import read_real

from jaxgen import data
from jaxgen.data import captions


def test_vocabulary_tokens_and_parsing_round_trip():
  vocab = captions.VOCABULARY
  assert vocab[0] == captions.PAD and list(vocab[1:]) == sorted(vocab[1:])
  assert {"t-shirt", "ankle", "boot", "left", "centre", "image"} <= set(vocab)
  combos = list(captions.combinations())
  assert len(combos) == 10 * 9 + 10 * 9 * 4
  for classes, where in combos:
    text = captions.caption(classes, where)
    tokens = captions.tokenize(text)
    assert tokens.shape == (captions.MAX_TOKENS,) and tokens.dtype == np.int32
    assert captions.detokenize(tokens) == text
    assert captions.parse(text) == (classes, where)
  assert captions.caption((4,), 2) == "the coat is at the top right of the image"
  assert captions.caption((5, 8), 0) == "the sandal is on the left of the bag"
  assert captions.positions_of((5, 8), 0) == (3, 5)  # left and right of the middle row
  np.testing.assert_array_equal(
    captions.tokenize("The Sandal is on the left of the bag."),
    captions.tokenize("the sandal is on the left of the bag"),
  )


def test_unknown_words_and_long_captions_are_clear_errors():
  with pytest.raises(
    captions.CaptionError,
    match="unknown word 'hat'.*the vocabulary is: ankle at bag boot bottom centre",
  ) as e:
    captions.tokenize("the hat is on the left of the bag")
  assert "\n" not in str(e.value)
  with pytest.raises(captions.CaptionError, match="unknown words 'red', 'hat'"):
    captions.tokenize("the red hat")
  with pytest.raises(captions.CaptionError, match="has 12 words; give 1 to 11"):
    captions.tokenize("the bag " * 6)
  with pytest.raises(captions.CaptionError, match="not a template caption"):
    captions.parse("the bag the bag")


def test_held_out_combinations():
  held = [c for c in captions.combinations() if captions.is_held_out(*c)]
  singles = [c for c in held if len(c[0]) == 1]
  assert len(singles) == 10 and len(held) == 10 + 44  # one place per item; 44 of 360 pairs
  assert captions.parse("the sneaker is on the left of the trouser") in held
  assert captions.parse("the sandal is on the left of the bag") not in held


@pytest.fixture(scope="module")
def items():
  images, labels = read_real("train", 512)
  return images, labels


def test_canvases_are_deterministic_and_hold_what_the_caption_says(items):
  images, labels = items
  a = captions.make_canvases(images, labels, 200, seed=3, train=True)
  b = captions.make_canvases(images, labels, 200, seed=3, train=True)
  c = captions.make_canvases(images, labels, 200, seed=4, train=True)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["image"], c["image"])
  assert a["image"].shape == (200, 60, 60, 1) and a["held_out"].sum() == 0
  assert 60 < (a["classes"][:, 1] == captions.NONE).sum() < 140  # about half hold one item
  corners = captions.place_corners(60)
  bank = {img.tobytes(): int(line) for img, line in zip(images, labels)}
  for i in range(200):
    text = captions.detokenize(a["tokens"][i])
    classes, where = captions.parse(text)
    assert (
      tuple(a["positions"][i][: len(classes)])
      == captions.positions_of(classes, where)[: len(classes)]
    )
    mask = np.zeros((60, 60), bool)
    for cls, place in zip(classes, a["positions"][i]):
      y, x = corners[place]
      assert (
        bank[a["image"][i, y : y + 28, x : x + 28, 0].tobytes()] == cls
      )  # a real item of that class
      mask[y : y + 28, x : x + 28] = True
    assert not a["image"][i, ~mask].any()  # blank elsewhere
  test = captions.make_canvases(images, labels, 400, seed=3, train=False)
  assert 10 < test["held_out"].sum() < 120


def test_builder_and_loader_pass_captions_through(fashion_slice, tfds_dir):
  source, info = data.load(
    "captioned_fashion_mnist/small", "test", source_dir=str(fashion_slice), data_dir=str(tfds_dir)
  )
  assert len(source) == 500 and info.image_shape == (60, 60, 1) and info.num_classes == 10
  batch = next(data.make_loader(source, batch_size=16, seed=0, shuffle=False))
  assert batch["image"].shape == (16, 60, 60, 1) and batch["image"].dtype == np.float32
  assert batch["tokens"].shape == (16, captions.MAX_TOKENS) and batch["tokens"].dtype == np.int32
  for k in ("classes", "positions"):
    assert batch[k].shape == (16, 2) and batch[k].dtype == np.int32
  np.testing.assert_array_equal(batch["label"], batch["classes"][:, 0])
  images, labels = read_real("t10k", 128)
  expect = captions.make_canvases(images, labels, 500, seed=0, train=False)
  np.testing.assert_array_equal(batch["tokens"], expect["tokens"][:16])
  np.testing.assert_allclose(batch["image"], expect["image"][:16] / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(captions.UserError, match="captioned_fashion_mnist/.canvas60,small"):
    data.load(
      "captioned_fashion_mnist/huge", "test", source_dir=str(fashion_slice), data_dir=str(tfds_dir)
    )


def test_building_canvases_says_what_happens_and_claims_no_download(fashion_slice, tmp_path, capfd):
  config = dataclasses.replace(
    captions.SMALL, name="tiny", num_train=16, num_test=8, source_dir=str(fashion_slice)
  )
  builder = captions.prepare(config, str(tmp_path))
  out, err = capfd.readouterr()
  lines = out.splitlines()
  assert lines[0] == (
    "tiny: building 16 + 8 captioned 60x60 canvases (train + test) from the IDX "
    f"files in {fashion_slice} into array_record in {builder.data_dir}, once"
  )
  assert re.fullmatch(
    r"tiny: prepared in \d+\.\ds \(train 16, test 8\); later runs read it "
    r"from there",
    lines[1],
  )
  assert "download" not in (out + err).lower()


def test_caption_accuracy_with_a_nearest_neighbour_classifier(items):
  images, labels = items
  canv = captions.make_canvases(images, labels, 64, seed=0, train=True)
  bank = jnp.asarray(images.reshape(len(images), -1) / 127.5 - 1.0)

  def classify(crops_Mx28x28x1):  # exact copies of bank items: the nearest is the item itself
    d2 = jnp.sum(
      jnp.square(crops_Mx28x28x1.reshape(len(crops_Mx28x28x1), -1)[:, None] - bank[None]), -1
    )
    return jnp.asarray(np.eye(10))[labels][jnp.argmin(d2, axis=1)]  # one-hot logits

  x = jnp.asarray(canv["image"] / 127.5 - 1.0, jnp.float32)
  acc = captions.caption_accuracy(x, canv["classes"], canv["positions"], classify)
  assert acc.shape == (64,) and float(acc.mean()) == 1.0
  crops = captions.item_crops(x, canv["positions"])
  assert crops.shape == (64, 2, 28, 28, 1)
  # the same canvases with the caption's places swapped (two-item captions with two classes)
  two = canv["classes"][:, 1] != captions.NONE
  swapped = canv["positions"][:, ::-1].copy()
  acc_swapped = captions.caption_accuracy(
    x, canv["classes"], np.where(two[:, None], swapped, canv["positions"]), classify
  )
  assert float(acc_swapped[two].max()) == 0.0 and float(acc_swapped[~two].min()) == 1.0
