"""Art tools: latent walks (slerp), seeds independent of the device count, per-row labels,
truncation, the `jaxgen sample` flags; the memorisation rate on a generator that returns
training images against real held-out images and noise."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import (
  FASHION,
  REPO,
  X64_RTOL,
  assert_close_to_scale,
  draw_config,
  random_batch,
  read_real,
  to_float64,
)
from PIL import Image

from jaxgen import art, cli, evaluation, parallel, trainer, viz
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.metrics import memorization
from jaxgen.steps import draw, gan, vae

# ------------------------------------------------------------------ walks


def test_slerp_keeps_gaussian_norms_and_walk_passes_through_every_key_point():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, 64)), rng.normal(size=(5, 64))
  t = np.linspace(0, 1, 9)
  path = viz.slerp(a, b, t)
  np.testing.assert_allclose(path[0], a, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(path[-1], b, rtol=1e-12, atol=1e-12)
  # The norm moves linearly from |a| to |b| (a straight line through two nearly orthogonal
  # 64-d Gaussian vectors sags to ~|a| / sqrt(2) halfway).
  na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
  np.testing.assert_allclose(np.linalg.norm(path, axis=-1), (1 - t[:, None]) * na + t[:, None] * nb)
  # Constant angular speed: equal angles between consecutive frames.
  u = path / np.linalg.norm(path, axis=-1, keepdims=True)
  angles = np.arccos(np.clip(np.sum(u[1:] * u[:-1], -1), -1, 1))
  np.testing.assert_allclose(angles, np.broadcast_to(angles[:1], angles.shape), rtol=1e-6)
  # Parallel end points (no unique great circle): a straight line, no NaN.
  np.testing.assert_allclose(viz.slerp(a[:1], 2 * a[:1], np.array([0.5]))[0, 0], 1.5 * a[0])

  keys = rng.normal(size=(4, 3, 8)).astype(np.float32)
  walk = viz.walk_path(keys, 5)
  assert walk.shape == (20, 3, 8) and walk.dtype == np.float32
  np.testing.assert_allclose(walk[::5], keys, rtol=1e-6)
  # Closed: the step from the last frame back to the first is as small as any other step.
  steps = np.linalg.norm(np.diff(np.concatenate([walk, walk[:1]]), axis=0), axis=-1)
  assert steps.max() < 1.5 * np.median(steps)
  with pytest.raises(ValueError, match="2 key points"):
    viz.walk_path(keys[:1], 5)


# ------------------------------------------------------------------ sampling


def tiny_state(family, num_classes=0):
  name = {gan: "dcgan", vae: "vae"}[family]
  c = config_lib.load(REPO / f"experiments/configs/{name}_fashion.py")
  c.model.num_classes, c.model.latent_dim, c.model.width = num_classes, 8, 8
  return family.init_state(c, jax.random.key(0), random_batch(4))


@pytest.mark.parametrize("family", [gan, vae], ids=["gan", "vae"])
def test_a_seed_gives_the_same_images_on_1_and_8_devices(family):
  devices = jax.devices()
  assert len(devices) > 1, "conftest simulates several CPU devices"
  state, key = tiny_state(family), jax.random.key(4)
  # float64: both device counts run the same per-image sums, but XLA may block them
  # differently for a batch of 9 vs a shard of 2; in float64 that moves results by ~1e-14 of
  # their scale (conftest.X64_RTOL), while images depending on the device count (per-device
  # latents, a shard's own batch statistics) differ by O(1).
  with jax.enable_x64(True):
    state64 = to_float64(state)
    one, _ = art.sample_images(family, state64, key, 9, mesh=parallel.make_mesh(devices[:1]))
    many, _ = art.sample_images(family, state64, key, 9, mesh=parallel.make_mesh(devices))
    own = family.sample(state64, key, 9)  # the family's own sample, same seed
  assert one.shape == (9, 28, 28, 1) and one.dtype == np.float64
  assert_close_to_scale(many, one, X64_RTOL)
  assert_close_to_scale(np.asarray(own), one, X64_RTOL)
  assert np.std(one, axis=0).mean() > 1e-3  # 9 different images, not one repeated


def test_label_rows_share_the_latent_down_each_column_and_truncation_bounds_z():
  state, key = tiny_state(gan, num_classes=10), jax.random.key(2)
  images, ncols = art.sample_images(gan, state, key, 8, labels=[0, 3, 7], truncation=0.5)
  assert ncols == 3 and images.shape == (9, 28, 28, 1)
  z = art.draw_latents(key, (3, 8), 0.5)
  assert float(jnp.max(jnp.abs(z))) <= 0.5
  want = gan.sample_latents(state, jnp.tile(z, (3, 1)), jnp.repeat(jnp.array([0, 3, 7]), 3))
  assert_close_to_scale(images, np.asarray(want), 1e-5)
  assert not np.allclose(images[:3], images[3:6])  # another class, another image
  with pytest.raises(UserError, match="--truncation 0.0: must be > 0"):
    art.draw_latents(key, (3, 8), 0.0)
  assert art.parse_labels("0, 3,7", 10) == [0, 3, 7]
  with pytest.raises(UserError, match="--label 12: this model's classes are 0..9"):
    art.parse_labels("1,12", 10)
  with pytest.raises(UserError, match="class numbers separated by commas"):
    art.parse_labels("shirt", 10)  # a model without class names
  info = types.SimpleNamespace(class_names=("T-shirt/top", "Trouser", "Pullover"), class_groups=())
  assert art.parse_labels("Trouser, 0,Pullover", 3, lambda: info) == [1, 0, 2]
  with pytest.raises(UserError, match=r"'Trousers': neither .* class names; e.g. Trouser$"):
    art.parse_labels("Trousers", 3, lambda: info)
  # finer classes than the data's labels (emoji's subgroups): a group's name is its classes
  fine = types.SimpleNamespace(
    class_names=("face-smiling", "person", "family", "flag"),
    group_names=("Smileys & Emotion", "People & Body", "Flags"),
    class_groups=(0, 1, 1, 2),
  )
  assert art.parse_labels("People & Body,flag,0", 4, lambda: fine) == [(1, 2), 3, 0]
  assert list(art._labels(4, [(1, 2), 3], 2, 3)) == [1, 2, 1, 3, 3, 3]
  with pytest.raises(UserError, match=r"class or group names; e.g. Flags"):
    art.parse_labels("Flag", 4, lambda: fine)
  with pytest.raises(UserError, match="class-conditional"):
    art.parse_labels("1", 0)
  assert art.parse_captions("red heart; grinning face") == ["red heart", "grinning face"]


def test_walk_frames_pass_through_the_key_latents_and_draw_refuses_walks():
  state, key = tiny_state(vae), jax.random.key(3)
  frames, ncols = art.walk_frames(vae, state, key, 4, num_keys=3, steps=4)
  assert frames.shape == (12, 4, 28, 28, 1) and ncols is None
  keys = art.draw_latents(key, (3, 4, 8))
  for k in range(3):  # frame 4k is key point k, decoded
    assert_close_to_scale(frames[4 * k], np.asarray(vae.sample_latents(state, keys[k])), 1e-5)
  assert np.abs(frames[1] - frames[0]).mean() < np.abs(frames[4] - frames[0]).mean()
  with pytest.raises(UserError, match="--walk needs a model with one latent vector per image"):
    art._refuse_without_latents(draw, "--walk")


def test_caption_rows_draw_one_row_per_caption():
  config, batch = draw_config(text=True), random_batch(4, text=True)  # conftest's tiny alignDRAW
  state = jax.jit(lambda key: draw.init_state(config, key, batch))(jax.random.key(0))
  texts = ["the sneaker is on the left of the trouser", "the bag is on the right of the coat"]
  assert art.parse_captions(";".join(texts)) == texts
  frames, ncols = art.recurrent_frames(draw, state, jax.random.key(0), 5, captions=texts)
  assert ncols == 3 and frames.shape[1:] == (6, 60, 60, 1)
  tokens = np.repeat(np.stack([draw.tokenize(state, t) for t in texts]), 3, axis=0)
  want = draw.sample_frames(state, jax.random.key(0), 6, tokens)
  assert_close_to_scale(frames, np.asarray(want), 1e-5)


@pytest.fixture(scope="module")
def gan_run(fashion_slice, tfds_dir, tmp_path_factory):
  """A 2-step class-conditional DCGAN on the real slice (its pictures, not its quality)."""
  c = config_lib.load(REPO / "experiments/configs/dcgan_fashion.py")
  c.data.source_dir, c.data.data_dir = str(fashion_slice), str(tfds_dir)  # with class names
  c.model.width, c.model.latent_dim, c.model.num_classes = 8, 16, 10
  c.batch_size, c.num_steps, c.log_every = 32, 2, 1
  c.checkpoint_every, c.sample_every, c.num_grid_samples = 2, 0, 16
  run = tmp_path_factory.mktemp("art") / "gan"
  trainer.train_and_evaluate(c, run)
  return run, c


def test_sample_cli_writes_a_walk_gif_with_frames_label_rows_and_upscaled_pictures(
  gan_run, tmp_path, capsys
):
  run, _ = gan_run
  out = tmp_path / "art.png"
  cli.main(["sample", "--workdir", str(run), "--num", "4", "--out", str(out), "--walk", "3",
            "--label", "1,5", "--truncation", "0.7", "--upscale", "3", "--seed", "7"])  # fmt: skip
  frames = sorted((tmp_path / "art_frames").glob("frame_*.png"))
  assert len(frames) == 3 * art.WALK_STEPS
  gif = Image.open(out.with_suffix(".gif"))
  assert gif.n_frames == 3 * art.WALK_STEPS
  # 2 rows (labels 1, 5) x 2 columns of 28-pixel images with 2-pixel gaps, times 3.
  assert Image.open(frames[0]).size == gif.size == (3 * (2 * 30 + 2), 3 * (2 * 30 + 2))
  assert f"wrote {frames[-1]}" in capsys.readouterr().out
  # The same seed writes the same grid again; another seed does not.
  grid = lambda seed: (
    cli.main(
      [
        "sample",
        "--workdir",
        str(run),
        "--num",
        "9",
        "--out",
        str(out),
        "--seed",
        seed,
        "--upscale",
        "1",
      ]
    ),  # fmt: skip
    np.asarray(Image.open(out)),
  )[1]
  a, b, c = grid("1"), grid("1"), grid("2")
  assert a.shape == (3 * 30 + 2, 3 * 30 + 2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  # --label takes the data's class names as well as numbers
  rows = lambda label: (
    cli.main(["sample", "--workdir", str(run), "--num", "4", "--out", str(out), "--label", label]),
    np.asarray(Image.open(out)),
  )[1]
  np.testing.assert_array_equal(rows("Trouser,Bag"), rows("1,8"))
  with pytest.raises(SystemExit, match="--upscale 0: must be at least 1"):
    cli.main(["sample", "--workdir", str(run), "--upscale", "0"])


# ------------------------------------------------------------------ memorisation


@pytest.fixture(scope="module")
def real():
  if not (FASHION / "train-images-idx3-ubyte.gz").exists():
    pytest.skip(f"real Fashion-MNIST not in {FASHION}")
  to_images = lambda u8: u8[..., None].astype(np.float32) / 127.5 - 1.0
  train, _ = read_real("train", 600)
  test, _ = read_real("t10k", 200)
  return to_images(train[:512]), to_images(test[:200])


def projection(x_NxHxWxC):
  """A stand-in extractor: a fixed random projection of the pixels to 32 features."""
  w = jax.random.normal(jax.random.key(0), (784, 32)) / 28.0
  return np.asarray(jnp.reshape(jnp.asarray(x_NxHxWxC), (len(x_NxHxWxC), -1)) @ w)


def test_nearest_neighbours_match_brute_force_in_float64():
  rng = np.random.default_rng(1)
  ref, query = rng.normal(size=(300, 20)) + 5.0, rng.normal(size=(70, 20)) + 5.0
  d, i = memorization.nearest_neighbours(query, ref, chunk_size=32)  # several chunks, padded
  brute = np.linalg.norm(query[:, None] - ref[None], axis=-1)
  np.testing.assert_array_equal(i, np.argmin(brute, axis=1))
  # float32 distances of centred unit-scale points: ~1e-6 relative.
  np.testing.assert_allclose(d, brute.min(axis=1), rtol=1e-5)


def test_memorization_rate_is_one_for_copies_about_the_floor_for_real_images_zero_for_noise(
  real,
):
  train, test = real
  q = memorization.MEMORIZATION_QUANTILE
  noise = np.random.default_rng(0).uniform(-1, 1, size=(200, 28, 28, 1)).astype(np.float32)
  for embed in (memorization.flatten_pixels, projection):
    rate = lambda samples, embed=embed: memorization.memorization_rate(
      embed(train), embed(samples), embed(test)
    )
    copies = rate(train[::2])
    assert copies["rate"] == 1.0
    # A copy's distance is 0 up to float32 cancellation in |a|^2 + |b|^2 - 2ab: sqrt of a few
    # eps * |x|^2 (|x|^2 <= 784 pixels), ~0.01, far below the threshold between images.
    assert copies["median_distance"] < np.sqrt(8 * np.finfo(np.float32).eps * 784)
    held_out = rate(test)
    assert held_out["rate"] == held_out["floor"]
    # A held-out image's distance to the training set is distributed like a training image's
    # to the others, so the floor is ~q: binomial over 200 images, sd sqrt(q(1-q)/200) = 0.015;
    # allow 4 sd either side.
    sd = np.sqrt(q * (1 - q) / len(test))
    assert abs(held_out["floor"] - q) < 4 * sd, held_out
    assert rate(noise)["rate"] == 0.0
    # Half copies, half real: the rate moves halfway.
    mixed = rate(np.concatenate([train[:100], test[:100]]))["rate"]
    assert 0.5 <= mixed < 0.5 + q + 4 * sd


def test_memorization_check_pictures_each_sample_beside_its_nearest_training_images(real):
  train, test = real
  copier = lambda key, n: train[jax.random.permutation(key, len(train))[:n]]
  results, picture = art.memorization_check(
    copier, projection, train, test, jax.random.key(0), 64, picture_rows=5
  )
  assert results["features"]["rate"] == results["pixels"]["rate"] == 1.0
  assert results["pixels"]["floor"] < 0.2 and results["protocol"]["num_samples"] == 64
  assert picture.shape == (15, 28, 28, 1)
  # A copy's nearest training image, in both spaces, is itself.
  np.testing.assert_array_equal(picture[0::3], picture[1::3])
  np.testing.assert_array_equal(picture[0::3], picture[2::3])
  honest = lambda key, n: test[:n]
  results, picture = art.memorization_check(
    honest, projection, train, test, jax.random.key(0), 64, picture_rows=5
  )
  assert results["pixels"]["rate"] < 0.2 and not np.array_equal(picture[0::3], picture[2::3])
  assert "floor, real test images" in art.format_memorization(results)


def test_evaluate_memorization_flag_writes_json_and_png_into_the_run(gan_run, monkeypatch, capsys):
  run, _ = gan_run
  ext = evaluation.Extractor("projection", lambda x: (projection(x), np.zeros((len(x), 10))))
  monkeypatch.setattr(evaluation, "load_extractor", lambda config, extractor, mesh, **kw: ext)
  cli.main(["evaluate", "--workdir", str(run), "--memorization", "--num_samples", "40"])
  results = json.loads((run / "memorization.json").read_text())
  assert results["protocol"]["num_samples"] == results["protocol"]["num_test"] == 40
  assert (
    results["protocol"]["num_train"] == 512 and results["protocol"]["extractor"] == "projection"
  )
  # A 2-step GAN draws blobs, not copies of the training images.
  assert results["pixels"]["rate"] <= results["pixels"]["floor"] + 0.1
  assert Image.open(run / "memorization.png").size[0] > 3 * 28
  assert "memorization (pixels)" in capsys.readouterr().out
