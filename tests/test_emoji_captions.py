"""Text-to-image on emoji names: the training split's vocabulary (test-only words read as
<unk>), held-out names, tokenising unknown words, a tiny aligndraw_emoji run sampled from
`jaxgen sample --caption`, and group accuracy for seen and held-out names in `jaxgen evaluate`."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DRAW_TINY, REPO, draw_config
from PIL import Image

from jaxgen import cli, evaluation, pictures, trainer
from jaxgen import config as config_lib
from jaxgen import data as data_lib
from jaxgen.data import captions, emoji
from jaxgen.steps import draw


def test_training_vocabulary_maps_test_only_words_to_unk():
  vocab = emoji.training_vocabulary(["red heart", "grinning face", "flag: St. Lucia"])
  assert vocab == (emoji.PAD, emoji.UNK, "face", "flag", "grinning", "heart", "lucia", "red", "st")
  data_vocab = emoji.vocabulary(
    [emoji.Entry((0,), "Symbols", "heart", n) for n in ("red heart", "blue heart", "grinning face")]
  )  # every name's words, as the builder's metadata holds them
  table = emoji.token_map(data_vocab, vocab)
  assert [vocab[table[data_vocab.index(w)]] for w in ("red", "blue", "heart")] == [
    "red",
    emoji.UNK,
    "heart",
  ]
  assert table[0] == 0  # padding stays padding
  items = [{"tokens": emoji.tokenize("blue heart", data_vocab), "label": 7}]
  retok = emoji.Retokenized(items, table)
  assert len(retok) == 1 and retok.__getitems__([0])[0]["label"] == 7
  np.testing.assert_array_equal(retok[0]["tokens"][:3], [1, vocab.index("heart"), 0])


def test_unknown_words_give_one_line_errors_pointing_to_the_vocabulary():
  vocab = emoji.training_vocabulary([f"name {i} heart" for i in range(300)])
  with pytest.raises(captions.CaptionError) as e:
    captions.tokenize("red hearts", vocab, emoji.MAX_TOKENS)
  message = str(e.value)
  assert "\n" not in message and "unknown words 'red', 'hearts'" in message
  assert "303-word vocabulary" in message and "data.vocabulary in its config.json" in message
  assert message.endswith("near: heart")
  # a small vocabulary (captioned Fashion-MNIST's) is still listed in full
  with pytest.raises(captions.CaptionError, match="; the vocabulary is: ankle at bag boot"):
    captions.tokenize("the sneaker is on the left of the hat")
  # emoji names split as the builder splits them
  tokens = captions.tokenize("Flag: St. Lucia", vocab[:2] + ("flag", "lucia", "st"), 16)
  np.testing.assert_array_equal(tokens[:4], [2, 4, 3, 0])


def test_real_vocabulary_is_the_training_splits_and_test_names_are_held_out(real_base32, tfds_dir):
  train, info = data_lib.load("emoji/base32", "train", data_dir=str(tfds_dir))
  test, test_info = data_lib.load("emoji/base32", "test", data_dir=str(tfds_dir))
  train_names = emoji.split_names(real_base32, "train")
  held = emoji.held_out_names(real_base32)
  assert info.vocabulary == test_info.vocabulary == emoji.training_vocabulary(train_names)
  assert info.max_tokens == emoji.MAX_TOKENS
  assert len(held) == len(test) == 199 and not set(held) & set(train_names)
  assert "red heart" in held  # held out, but both its words are seen: it can be asked for
  unseen = {w for n in held for w in emoji.words(n)} - set(info.vocabulary)
  assert unseen and not unseen & {w for n in train_names for w in emoji.words(n)}
  for i in range(len(test)):  # the test split's tokens: seen words kept, the others <unk>
    got = [info.vocabulary[t] for t in test[i]["tokens"] if t]
    want = [w if w in info.vocabulary else emoji.UNK for w in emoji.words(held[i])]
    assert got == want
  got = [info.vocabulary[t] for t in train[5]["tokens"] if t]
  assert got == emoji.words(train_names[5])


def tiny_config(tfds_dir):
  c = config_lib.load(REPO / "experiments/configs/aligndraw_emoji.py")
  c.model.update(DRAW_TINY)
  c.data.data_dir = str(tfds_dir)
  c.batch_size, c.num_steps, c.log_every = 8, 2, 1
  c.checkpoint_every, c.sample_every, c.num_grid_samples = 2, 0, 8
  return c


@pytest.fixture(scope="module")
def tiny_run(real_base32, tfds_dir, tmp_path_factory):
  """aligndraw_emoji at DRAW_TINY's sizes, 2 steps on the real emoji/base32."""
  workdir = tmp_path_factory.mktemp("aligndraw_emoji")
  trainer.train_and_evaluate(tiny_config(tfds_dir), workdir)
  return workdir


def test_tiny_run_stores_its_vocabulary_and_samples_from_a_caption(tiny_run):
  stored = json.loads((tiny_run / "config.json").read_text())
  _, info = data_lib.load("emoji/base32", "train", data_dir=stored["data"]["data_dir"])
  assert tuple(stored["data"]["vocabulary"]) == info.vocabulary
  assert stored["data"]["max_tokens"] == emoji.MAX_TOKENS
  out = tiny_run / "red_heart.png"
  cli.main(["sample", "--workdir", str(tiny_run), "--caption", "red heart", "--num", "4",
            "--out", str(out)])  # fmt: skip
  assert np.asarray(Image.open(out)).shape[-1] in (3, 4)  # a colour grid
  _, _, state = trainer.load_run(tiny_run)
  np.testing.assert_array_equal(
    draw.tokenize(state, "Red heart")[:3],
    [info.vocabulary.index("red"), info.vocabulary.index("heart"), 0],
  )
  batch = evaluation.splits.read_batch(trainer.load_run_config(tiny_run), "test", np.arange(8))
  paths = pictures.draw_pictures(state, batch, jax.random.key(0), tiny_run / "pictures")
  assert {p.name for p in paths} >= {"example_captions.png", "test_captions.png"}
  with pytest.raises(SystemExit) as e:  # one line, exit status 1
    cli.main(["sample", "--workdir", str(tiny_run), "--caption", "crimson heart"])
  err = str(e.value.code)
  assert err.startswith("jaxgen sample: error: unknown word 'crimson' in caption")
  assert "\n" not in err and "data.vocabulary in its config.json" in err


def stub_group_extractor(group: int):
  """An extractor whose logits always pick `group`."""
  fn = lambda x: (x.reshape(len(x), -1)[:, :4], jax.nn.one_hot(jnp.full(len(x), group), 9))
  return evaluation.Extractor("always " + emoji.GROUPS[group], fn, test_accuracy=0.2)


def test_group_accuracy_of_seen_and_held_out_names(tiny_run):
  config, family, state = trainer.load_run(tiny_run)
  batch = evaluation.captions.named_batch(config, 16)
  held = batch["held_out"] == 1
  assert held.sum() == (~held).sum() == 16
  assert len(set(batch["label"][~held])) > 3  # seen names spread through the training split
  # an oracle sampler (the real image of each caption) scores exactly the floor
  table = (jnp.asarray(batch["tokens"]), jnp.asarray(batch["image"]))

  def oracle(state, key, num, conditioning=None):
    match_NxM = jnp.all(conditioning[:, None] == state[0][None], axis=-1)
    return state[1][jnp.argmax(match_NxM, axis=1)]

  smileys = batch["label"] == 0
  classify = lambda x: stub_group_extractor(0).features_fn(x)[1]
  values, floor = evaluation.caption_metrics(
    types.SimpleNamespace(sample=oracle), table, batch, classify, jax.random.key(0), batch_size=8
  )
  want = dict(
    group_accuracy=smileys.mean(),
    group_accuracy_held_out=smileys[held].mean(),
    group_accuracy_seen=smileys[~held].mean(),
  )
  assert values == pytest.approx(want) and floor == pytest.approx(want)
  # the tiny run through `evaluate_state`: the rows, their floor, the table and protocol
  results = evaluation.evaluate_state(
    config, family, state, stub_group_extractor(0), num_samples=16, seed=1, num_importance=2
  )
  rows = {"group_accuracy", "group_accuracy_held_out", "group_accuracy_seen"}
  assert set(results["metrics"]) == rows and results["floor"] == pytest.approx(want)
  assert results["metrics"] == pytest.approx(want)  # the stub ignores the pictures
  p = results["protocol"]
  assert p["captions"] == dict(num=32, held_out=16, split="train+test", first=False, score="group")
  text = evaluation.format_table([dict(results, run="tiny")])
  header, _, *body = text.splitlines()
  assert header.split()[-3:] == ["floor:", "real", "images"]
  assert [line.split()[0] for line in body[:3]] == ["group", "held-out", "seen"]
  assert "16 held out: test split" in text and "caption accuracy" not in text


def test_captioned_fashion_runs_keep_the_template_vocabulary():
  """Without config.data.vocabulary (captioned Fashion-MNIST, and runs stored before it) the
  family reads captions.VOCABULARY, as before; with it, the data set's."""
  config = draw_config(text=True)
  example = {"image": jnp.zeros((1, 60, 60, 1))}
  init = lambda c: jax.eval_shape(lambda k: draw.init_state(c, k, example), jax.random.key(0))
  hp = init(config).hp
  assert (hp.vocabulary, hp.max_tokens) == (captions.VOCABULARY, captions.MAX_TOKENS)
  assert hp.example_captions == captions.EXAMPLE_CAPTIONS
  config.data.vocabulary, config.data.max_tokens = ("<pad>", "<unk>", "red", "heart"), 5
  config.model.example_captions = ("red heart",)
  state = init(config)
  assert state.hp.vocabulary == ("<pad>", "<unk>", "red", "heart")
  assert state.draw.params["caption"]["embed"]["embedding"].shape[0] == 4
  np.testing.assert_array_equal(draw.caption_tokens(state, 2), [[2, 3, 0, 0, 0]] * 2)
