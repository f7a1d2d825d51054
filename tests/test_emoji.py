"""The emoji data set: table parsing, variants, split, captions and the builder on a font-free
fixture; the real font's glyphs; the emoji configs' parameter counts; a short real DCGAN run."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from jaxgen import cli, data, steps, trainer
from jaxgen import config as config_lib
from jaxgen.data import emoji
from jaxgen.data.idx import DataError

# A tiny emoji-test.txt: a component, unqualified and minimally-qualified lines (all dropped),
# a skin-tone variant and a hair variant of the same person, and a flag.
FAKE_TABLE = """\
# group: Smileys & Emotion

# subgroup: face-smiling
1F600                                  ; fully-qualified     # 😀 E1.0 grinning face
1F601                                  ; fully-qualified     # 😁 E0.6 beaming face with smiling eyes
263A FE0F                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                   ; unqualified         # ☺ E0.6 smiling face

# group: People & Body

# subgroup: hand-fingers-open
1F44B                                  ; fully-qualified     # 👋 E0.6 waving hand
1F44B 1F3FD                            ; fully-qualified     # 👋🏽 E1.0 waving hand: medium skin tone

# subgroup: person
1F9D1                                  ; fully-qualified     # 🧑 E5.0 person
1F9D1 200D 1F9B0                       ; fully-qualified     # 🧑‍🦰 E12.1 person: red hair
1F9D1 1F3FB 200D 1F9B0                 ; fully-qualified     # 🧑🏻‍🦰 E12.1 person: light skin tone, red hair

# group: Component

# subgroup: skin-tone
1F3FB                                  ; component           # 🏻 E1.0 light skin tone

# subgroup: hair-style
1F9B0                                  ; fully-qualified     # 🦰 E11.0 red hair

# group: Flags

# subgroup: country-flag
1F1FA 1F1F8                            ; fully-qualified     # 🇺🇸 E2.0 flag: United States
1F1EF 1F1F5                            ; fully-qualified     # 🇯🇵 E0.6 flag: Japan
"""
MISSING = (0x1F1EF, 0x1F1F5)  # the stub font "lacks" the Japanese flag


def stub_renderer(font_path):
  """make_renderer's stand-in: a CELL x CELL square whose colour is a function of the text."""
  del font_path

  def render(text):
    cps = tuple(map(ord, text))
    if cps == MISSING:
      return None
    colour = (sum(cps) % 256, len(cps) * 40 % 256, cps[0] % 251, 255)
    return Image.new("RGBA", (emoji.CELL, emoji.CELL), colour)

  return render


@pytest.fixture
def fake_source(tmp_path, monkeypatch) -> Path:
  """A folder with the fake table and an (empty) font file, rendered by stub_renderer."""
  (tmp_path / emoji.TABLE_FILE).write_text(FAKE_TABLE, encoding="utf-8")
  (tmp_path / emoji.FONT_FILE).write_bytes(b"")
  monkeypatch.setattr(emoji, "make_renderer", stub_renderer)
  return tmp_path


def test_table_parsing_variants_and_split(fake_source):
  entries = emoji.parse_table(fake_source / emoji.TABLE_FILE)
  names = [e.name for e in entries]
  # fully-qualified only, Component group dropped, file order kept
  assert names == [
    "grinning face",
    "beaming face with smiling eyes",
    "smiling face",
    "waving hand",
    "waving hand: medium skin tone",
    "person",
    "person: red hair",
    "person: light skin tone, red hair",
    "flag: United States",
    "flag: Japan",
  ]
  assert entries[4].codepoints == (0x1F44B, 0x1F3FD)
  assert [e.group for e in entries[2:5]] == [
    "Smileys & Emotion",
    "People & Body",
    "People & Body",
  ]
  assert emoji.subgroups(entries) == ("face-smiling", "hand-fingers-open", "person", "country-flag")
  base = emoji.select(entries, "base")
  assert [e.name for e in base] == [n for n in names if ":" not in n or n.startswith("flag")]
  assert emoji.select(entries, "all") == entries
  # every variant shares its base emoji's split key, hence its split
  assert entries[4].split_key == entries[3].split_key == (0x1F44B,)
  assert entries[5].split_key == entries[6].split_key == entries[7].split_key == (0x1F9D1,)
  assert entries[2].split_key == (0x263A,)  # VS16 dropped
  assert [e.split for e in entries[:2]] == ["train", "test"]  # SHA-256 of "1F600", "1F601"
  assert [e.split for e in emoji.parse_table(fake_source / emoji.TABLE_FILE)] == [
    e.split for e in entries
  ]


def test_captions_vocabulary_and_tokens(fake_source):
  entries = emoji.parse_table(fake_source / emoji.TABLE_FILE)
  assert emoji.words("flag: St. Vincent & Grenadines") == [
    "flag",
    "st",
    "vincent",
    "&",
    "grenadines",
  ]
  assert emoji.words("waving hand: medium skin tone") == [
    "waving",
    "hand",
    "medium",
    "skin",
    "tone",
  ]
  vocab = emoji.vocabulary(entries)
  assert vocab[0] == emoji.PAD and list(vocab[1:]) == sorted(set(vocab[1:]))
  assert {"grinning", "face", "red", "hair", "united", "states", "japan"} <= set(vocab)
  tokens = emoji.tokenize("person: light skin tone, red hair", vocab)
  assert tokens.shape == (emoji.MAX_TOKENS,) and tokens.dtype == np.int32
  assert [vocab[t] for t in tokens if t] == ["person", "light", "skin", "tone", "red", "hair"]
  assert not tokens[6:].any()
  with pytest.raises(DataError, match="MAX_TOKENS"):
    emoji.tokenize(" ".join(["face"] * (emoji.MAX_TOKENS + 1)), vocab)


def test_missing_font_or_table_is_a_one_line_error_naming_the_package(tmp_path):
  (tmp_path / emoji.TABLE_FILE).write_text(FAKE_TABLE, encoding="utf-8")
  with pytest.raises(DataError) as e:
    emoji.check_sources(str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and emoji.FONT_FILE in msg and "fonts-noto-color-emoji" in msg
  assert "apt-get install fonts-noto-color-emoji unicode-data" in msg and "data.source_dir" in msg
  with pytest.raises(DataError, match=r"emoji-test.txt not found \(Debian package unicode-data\)"):
    emoji.check_sources(str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match="unknown emoji data set 'emoji/huge'"):
    emoji.emoji_config("emoji/huge")


@pytest.mark.parametrize(
  "name, variant, size", [("emoji/base32", "base", 32), ("emoji/all64", "all", 64)]
)
def test_builder_on_a_font_free_fixture(fake_source, tmp_path, name, variant, size):
  entries = emoji.select(emoji.parse_table(fake_source / emoji.TABLE_FILE), variant)
  drawn = [e for e in entries if e.codepoints != MISSING]
  data_dir = str(tmp_path / "tfds")
  seen = {}
  for split in ("train", "test"):
    want = [e for e in drawn if e.split == split]
    source, info = data.load(name, split, source_dir=str(fake_source), data_dir=data_dir)
    assert info.image_shape == (size, size, 3) and info.class_names == emoji.GROUPS
    assert len(source) == info.num_examples[split] == len(want)
    for e, item in zip(want, (source[i] for i in range(len(source)))):
      assert item["image"].shape == (size, size, 3) and item["image"].dtype == np.uint8
      assert item["caption"].decode() == e.name
      assert item["codepoints"].decode() == " ".join(f"{c:X}" for c in e.codepoints)
      assert emoji.GROUPS[item["label"]] == e.group
      seen[e.name] = item
  assert len(seen) == len(drawn)  # every drawn emoji in exactly one split, none twice
  builder = emoji.prepare(emoji.emoji_config(name, str(fake_source)), data_dir)
  meta = builder.info.metadata
  assert meta["skipped"] == ["1F1EF 1F1F5"]
  subs, vocab = meta["subgroups"], meta["vocabulary"]
  assert subs == list(emoji.subgroups(entries))
  assert vocab == list(emoji.vocabulary(entries))  # every name's words
  person = seen["person"]
  assert subs[person["subgroup"]] == "person"
  # loaded tokens index the training split's vocabulary; words only test names use are <unk>
  train_names = [e.name for e in drawn if e.split == "train"]
  assert info.vocabulary == emoji.training_vocabulary(train_names)
  in_train = "person" in {w for n in train_names for w in emoji.words(n)}
  assert [info.vocabulary[t] for t in person["tokens"] if t] == [
    "person" if in_train else emoji.UNK
  ]
  # the stub's flat colour, composited on the opaque background, survives the resize
  e = entries[0]
  np.testing.assert_array_equal(
    seen[e.name]["image"][size // 2, size // 2],
    (sum(e.codepoints) % 256, 40, e.codepoints[0] % 251),
  )
  # the loader passes group labels, subgroups and tokens through and drops the strings
  source, _ = data.load(name, "train", source_dir=str(fake_source), data_dir=data_dir)
  batch = next(data.make_loader(source, batch_size=2, seed=0))
  assert batch["image"].shape == (2, size, size, 3) and batch["tokens"].shape == (
    2,
    emoji.MAX_TOKENS,
  )
  assert set(batch) == {"image", "label", "subgroup", "tokens"}


def test_subgroups_as_labels_on_a_font_free_fixture(fake_source, tmp_path):
  """data.label_feature="subgroup": the loader's labels are the subgroups, named, each with its
  group; a feature that is not an integer class is a one-line error naming those that are."""
  entries = emoji.select(emoji.parse_table(fake_source / emoji.TABLE_FILE), "base")
  subs = emoji.subgroups(entries)
  assert subs == ("face-smiling", "hand-fingers-open", "person", "country-flag")
  kw = dict(source_dir=str(fake_source), data_dir=str(tmp_path / "tfds"))
  for split in ("train", "test"):
    plain, _ = data.load("emoji/base32", split, **kw)
    source, info = data.load("emoji/base32", split, label_feature="subgroup", **kw)
    assert info.label_feature == "subgroup" and info.num_classes == 4 and info.class_names == subs
    assert info.group_names == emoji.GROUPS
    assert info.class_groups == (0, 1, 1, 8)  # Smileys, People, People, Flags
    for i in range(len(source)):
      item, own = source[i], plain[i]
      assert item["label"] == own["subgroup"] and info.class_groups[item["label"]] == own["label"]
      np.testing.assert_array_equal(item["image"], own["image"])
  batch = next(data.make_loader(source, batch_size=len(source), seed=0, shuffle=False))
  np.testing.assert_array_equal(batch["label"], batch["subgroup"])
  with pytest.raises(DataError, match=r"label_feature='caption'.*one of \['label', 'subgroup'\]$"):
    data.load("emoji/base32", "train", label_feature="caption", **kw)


# ------------------------------------------------------------------ the real font and table

FONT, TABLE = emoji.source_paths()
needs_real = pytest.mark.skipif(
  not (FONT.is_file() and TABLE.is_file()),
  reason=f"{FONT} / {TABLE} not installed: apt-get install fonts-noto-color-emoji unicode-data "
  "(make data does so as root)",
)


@needs_real
def test_real_glyphs_are_colour_centred_on_white():
  render = emoji.make_renderer(FONT)
  for text in ("\U0001f600", "\U0001f1fa\U0001f1f8"):  # grinning face, flag: United States
    glyph = render(text)
    image = emoji.to_array(glyph, 64).astype(int)
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners >= 250).all(), corners  # white background (glyph antialiasing aside)
    ink = np.argwhere((image < 240).any(-1))
    centre = (ink.min(0) + ink.max(0)) / 2
    assert np.abs(centre - 31.5).max() <= 1.0, centre
    spread = image.max(-1) - image.min(-1)  # 0 for grey
    assert spread.max() > 100  # in colour
  # a code point the font lacks, and a sequence it has no single glyph for, are skipped
  assert render("\U0010fffd") is None
  assert render("\U0001f600\U0001f600") is None


@needs_real
def test_real_build_counts_and_split(real_base32):
  entries = emoji.select(emoji.parse_table(TABLE), "base")
  splits = real_base32.info.splits
  skipped = real_base32.info.metadata["skipped"]
  n_train, n_test = splits["train"].num_examples, splits["test"].num_examples
  assert n_train + n_test + len(skipped) == len(entries)
  assert len(skipped) < 0.01 * len(entries)  # the font covers the table it ships beside
  assert 0.07 < n_test / (n_train + n_test) < 0.13  # ~1 in TEST_MODULUS by hash
  test = real_base32.as_data_source(split="test")
  names = {test[i]["caption"].decode() for i in range(len(test))}
  drawn = [e for e in entries if " ".join(f"{c:X}" for c in e.codepoints) not in skipped]
  assert names == {e.name for e in drawn if e.split == "test"}  # exactly the hash rule's
  assert all(test[i]["image"].shape == (32, 32, 3) for i in range(3))


# ------------------------------------------------------------------ the configs' models


def _init(config_name: str, image_shape=(64, 64, 3), num_classes: int = 9):
  c = config_lib.load(REPO / "experiments/configs" / config_name)
  c.data.num_classes = num_classes
  batch = {"image": np.zeros((1, *image_shape), np.float32), "label": np.zeros((1,), np.int32)}
  init = steps.get_family(c.model.family).init_state
  return c, jax.eval_shape(lambda key: init(c, key, batch), jax.random.key(0))  # shapes only


def num_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def conv(k: int, c_in: int, c_out: int, bias: bool) -> int:
  return k * k * c_in * c_out + bias * c_out


def bn(ch: int) -> int:
  return 2 * ch  # BatchNorm's scale and bias


def test_dcgan_emoji_is_the_reference_architecture():
  c, state = _init("dcgan_emoji.py")
  z, k, ncls = c.model.latent_dim, 4, 9
  assert (z, c.model.width, c.model.kernel_size, c.model.num_classes) == (100, 64, 4, ncls)
  g = (
    (z + ncls) * 4 * 4 * 512 + bn(512)  # dense to 4x4x512 (no bias: BatchNorm follows)
    + conv(k, 512, 256, False) + bn(256)
    + conv(k, 256, 128, False) + bn(128)
    + conv(k, 128, 64, False) + bn(64)
    + conv(k, 64, 3, True)  # to the image, tanh
    + ncls * (bn(512) + bn(256) + bn(128) + bn(64))  # class_bn: per-group scale and bias offsets
  )  # fmt: skip
  d = (
    conv(k, 3, 64, True)  # no BatchNorm on the first layer
    + conv(k, 64, 128, False) + bn(128)
    + conv(k, 128, 256, False) + bn(256)
    + conv(k, 256, 512, False) + bn(512)
    + 4 * 4 * 512 + 1  # logit
    + ncls * 4 * 4 * 512  # projection of the group
  )  # fmt: skip
  assert (g, d) == (3_667_715, 2_839_361)
  assert num_params(state.g.params) == g
  assert num_params(state.d.params) == d
  shapes = jax.tree.map(lambda x: x.shape, state.g.params)
  assert shapes["dense"]["kernel"] == (109, 8192)
  assert [shapes[f"deconv{i}"]["kernel"] for i in range(3)] == [
    (4, 4, 512, 256),
    (4, 4, 256, 128),
    (4, 4, 128, 64),
  ]
  d_shapes = jax.tree.map(lambda x: x.shape, state.d.params)
  assert [d_shapes[f"conv{i}"]["kernel"][-1] for i in range(4)] == [64, 128, 256, 512]
  assert "bn0" not in d_shapes and {"bn1", "bn2", "bn3"} <= set(d_shapes)


def test_the_30_minute_config_is_dcgan_emoji_at_32x32_on_subgroups_with_mode_seeking():
  """dcgan_emoji_sub32.py is what README's session-34 runs measured: dcgan_emoji.py at 32x32 on
  the 99 subgroups with lr 1e-3, lazy R1 and mode seeking, nothing else changed but the run's
  length and checkpoints; its model is the reference one without the 64x64 layer."""
  ref = config_lib.load(REPO / "experiments/configs/dcgan_emoji.py")
  sub = config_lib.load(REPO / "experiments/configs/dcgan_emoji_sub32.py")
  config_lib.validate(sub)
  changes = {
    "data.name": "emoji/base32",
    "data.image_shape": [32, 32, 3],  # flatten: tuples as lists, as config.json holds them
    "data.label_feature": "subgroup",
    "model.num_classes": 99,
    "optim.g_lr": 1e-3,
    "optim.d_lr": 1e-3,
    "model.r1_gamma": 0.1,
    "model.r1_every": 4,
    "model.mode_seeking": 1.0,
    "num_steps": 4500,
    "checkpoint_every": 500,
    "keep_checkpoints": 10,
  }
  assert config_lib.flatten(sub) == {**config_lib.flatten(ref), **changes}

  c, state = _init("dcgan_emoji_sub32.py", image_shape=(32, 32, 3), num_classes=99)
  z, k, ncls = c.model.latent_dim, 4, 99
  g = (
    (z + ncls) * 4 * 4 * 512 + bn(512)
    + conv(k, 512, 256, False) + bn(256)
    + conv(k, 256, 128, False) + bn(128)
    + conv(k, 128, 3, True)  # 16x16x128 to the image: the 64-channel 32x32 layer is gone
    + ncls * (bn(512) + bn(256) + bn(128))
  )  # fmt: skip
  d = (
    conv(k, 3, 128, True)  # 32x32 -> 16x16 at the width the 64x64 model has there
    + conv(k, 128, 256, False) + bn(256)
    + conv(k, 256, 512, False) + bn(512)
    + 4 * 4 * 512 + 1
    + ncls * 4 * 4 * 512
  )  # fmt: skip
  assert (g, d) == (4_436_995, 3_448_449)
  assert (num_params(state.g.params), num_params(state.d.params)) == (g, d)


def test_vae_and_classifier_emoji_parameter_counts():
  c, state = _init("vae_emoji.py")
  assert c.model.likelihood == "logistic"
  w, z, k = c.model.width, c.model.latent_dim, 4
  enc = (
    conv(k, 3, w, True) + conv(k, w, 2 * w, True) + conv(k, 2 * w, 4 * w, True)
    + conv(k, 4 * w, 8 * w, True)
    + 4 * 4 * 8 * w * 2 * z + 2 * z  # to (mean, log-variance)
  )  # fmt: skip
  dec = (
    z * 4 * 4 * 8 * w + 4 * 4 * 8 * w
    + conv(k, 8 * w, 4 * w, True) + conv(k, 4 * w, 2 * w, True) + conv(k, 2 * w, w, True)
    + conv(k, w, 2 * 3, True)  # a logistic's location and log-scale per RGB channel
  )  # fmt: skip
  assert (enc, dec) == (1_738_976, 1_219_814)
  assert num_params(state.vae.params) == enc + dec

  c, state = _init("classifier_emoji.py")
  w, f = c.model.width, c.model.feature_dim
  n = (
    conv(3, 3, w, False) + 2 * w + conv(3, w, 2 * w, False) + 2 * 2 * w
    + conv(3, 2 * w, 4 * w, False) + 2 * 4 * w
    + 16 * 16 * 4 * w * f + f  # two 2x2 poolings: 64 -> 16
    + f * 9 + 9
  )  # fmt: skip
  assert n == 4_289_065
  assert num_params(state.net.params) == n


@needs_real
@pytest.mark.parametrize(
  "config_name, label_feature", [("dcgan_emoji.py", "label"), ("dcgan_emoji_sub32.py", "subgroup")]
)
def test_dcgan_emoji_trains_on_real_emoji(real_base32, tfds_dir, tmp_path, config_name, label_feature):  # fmt: skip
  """The real-training test: a few steps of dcgan_emoji (narrowed, at 32x32) on real glyphs,
  conditioned on the groups, and of the 30-minute config (narrowed) on the 99 subgroups, with its
  lazy R1 and mode-seeking term."""
  c = config_lib.load(REPO / "experiments/configs" / config_name)
  c.data.name, c.data.data_dir, c.data.image_shape = "emoji/base32", str(tfds_dir), (32, 32, 3)
  assert c.data.label_feature == label_feature
  assert c.model.num_classes == (9 if label_feature == "label" else 99)
  c.model.width, c.model.latent_dim = 8, 16
  c.batch_size, c.num_steps, c.log_every = 16, 3, 1
  c.checkpoint_every, c.sample_every, c.num_grid_samples = 3, 0, 9
  trainer.train_and_evaluate(c, tmp_path)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  rows = [r for r in map(json.loads, lines) if "d_loss" in r]
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in rows)
  if label_feature == "subgroup":  # the term is 1 / (E|dG| / E|dz| + 1e-5): positive, finite
    assert all(0 < r["g_mode_seeking"] < 1e5 for r in rows)
    assert [r["d_r1"] > 0 for r in rows] == [True, False, False]  # lazy: D updates 0, 4, 8, ...
  grid = np.asarray(Image.open(tmp_path / "samples" / "step_0000003.png"))
  assert grid.ndim == 3 and grid.shape[-1] in (3, 4)  # colour samples
  if label_feature == "subgroup":  # the run keeps each subgroup's group, from Unicode's table
    entries = emoji.select(emoji.parse_table(TABLE), "base")
    group_of = {e.subgroup: emoji.GROUPS.index(e.group) for e in entries}
    stored = json.loads((tmp_path / "config.json").read_text())["data"]
    assert stored["class_groups"] == [group_of[s] for s in emoji.subgroups(entries)]
    out = tmp_path / "rows.png"  # a group's row cycles through its subgroups
    cli.main(["sample", "--workdir", str(tmp_path), "--num", "6", "--out", str(out),
              "--label", "Food & Drink,country-flag", "--upscale", "1"])  # fmt: skip
    assert np.asarray(Image.open(out)).shape[:2] == (2 * 34 + 2, 3 * 34 + 2)
