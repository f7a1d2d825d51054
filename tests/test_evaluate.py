"""Evaluation: collapse flags against the floor, protocol in metrics.json, likelihood bounds,
the missing-extractor error, the classifier family through the loop, compare tables; captioned
runs: every batch feature reaches the bounds, caption accuracy against the real canvases."""

import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DRAW_TINY, REPO

from jaxgen import cli, evaluation, trainer
from jaxgen import config as config_lib
from jaxgen.data import captions, pipeline
from jaxgen.steps import draw, vae

N = 128  # samples and test images: the whole test split of the fashion slice


@pytest.fixture(scope="module")
def slice_data(fashion_slice, tfds_dir):
  c = config_lib.base_config()
  c.data.name, c.data.source_dir, c.data.data_dir = "idx", str(fashion_slice), str(tfds_dir)
  return c.data


def gen_config(data, num_classes=0):
  c = config_lib.base_config()
  c.data = data
  c.model.family, c.model.num_classes = "fake", num_classes
  return c


def projection_extractor(cache_dir=None):
  """A plug-in extractor: random projection of the pixels (features) and a grey-level reader
  (logits: class k for images of constant level (k - 4.5) / 5)."""
  w_PxD = jax.random.normal(jax.random.key(0), (784, 32)) / 28.0

  @jax.jit
  def features_fn(x_BxHxWxC):
    level_B = jnp.mean(x_BxHxWxC, axis=(1, 2, 3)) * 5 + 4.5
    logits_BxK = -((level_B[:, None] - jnp.arange(10)) ** 2)
    return x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1) @ w_PxD, logits_BxK

  return evaluation.Extractor(
    "random projection", features_fn, test_accuracy=0.5, checkpoint_step=7, cache_dir=cache_dir
  )


def image_family(collapsed):
  """Samples: distinct real train images drawn at random, or the first one repeated (collapse)."""

  def sample(state, key, num, conditioning=None):
    idx = (
      jnp.zeros((num,), jnp.int32)
      if collapsed
      else jax.random.permutation(key, state.shape[0])[:num]
    )
    return state[idx]

  return types.SimpleNamespace(sample=sample)


@pytest.fixture(scope="module")
def two_runs(slice_data, tmp_path_factory):
  """metrics.json of a good and of a collapsed generator, in two run folders."""
  root = tmp_path_factory.mktemp("runs")
  train_images, _ = evaluation.read_split(gen_config(slice_data), "train")
  ext = projection_extractor(root / "floor")
  out = {}
  for name, collapsed in (("good", False), ("collapsed", True)):
    results = evaluation.evaluate_state(
      gen_config(slice_data),
      image_family(collapsed),
      jnp.asarray(train_images),
      ext,
      num_samples=N,
      seed=1,
      step=3,
    )
    results["run"] = str(root / name)
    (root / name).mkdir()
    (root / name / "metrics.json").write_text(json.dumps(results))
    out[name] = results
  return root, out


def test_collapsed_generator_is_flagged_and_real_one_is_not(two_runs):
  _, r = two_runs
  good, bad = r["good"]["metrics"], r["collapsed"]["metrics"]
  floor = r["good"]["floor"]
  assert floor == r["collapsed"]["floor"]
  assert floor["recall"] > 0.3 and floor["coverage"] > 0.3
  assert bad["recall"] < 0.05 and bad["coverage"] < 0.05 and bad["diversity"] == 0.0
  assert good["recall"] > 0.5 * floor["recall"] and good["coverage"] > 0.5 * floor["coverage"]
  assert bad["fd"] > 5 * good["fd"]
  # One image repeated: every sample's nearest other sample is at distance 0.
  assert bad["duplicate_rate"] == 1.0 and floor["duplicate_rate"] < 0.05
  assert good["duplicate_rate"] < 0.05
  assert good["duplicate_threshold"] == floor["duplicate_threshold"]
  assert r["good"]["flags"] == []
  kinds = [evaluation.flag_kind_and_evidence(f) for f in r["collapsed"]["flags"]]
  assert [(k, e.split()[0]) for k, e in kinds] == [
    ("low diversity or coverage", "recall"),
    ("low diversity or coverage", "coverage"),
    ("low diversity or coverage", "diversity"),
    ("possible mode collapse", "recall"),
    ("possible mode collapse", "duplicate_rate"),
  ]
  assert f"with precision {bad['precision']:.3g} >=" in kinds[3][1]
  table = evaluation.format_table([r["collapsed"]])
  recall_row = next(line for line in table.splitlines() if line.startswith("recall"))
  assert recall_row.split()[-2:] == ["!", f"{floor['recall']:.3f}"]
  dup_row = next(line for line in table.splitlines() if line.startswith("duplicates"))
  assert dup_row.split()[1:] == ["1.000", "!", f"{floor['duplicate_rate']:.3f}"]
  assert "low diversity or coverage: recall" in table
  assert "possible mode collapse: duplicate_rate 1 > 3 x floor" in table


def test_flags_tell_low_coverage_from_mode_collapse():
  floor = dict(precision=0.7, recall=0.6, coverage=0.5, diversity=10.0, duplicate_rate=0.01)
  # Blurry samples (a VAE): off the manifold (low precision), spread out (few duplicates).
  blurry = dict(precision=0.2, recall=0.1, coverage=0.2, diversity=8.0, duplicate_rate=0.02)
  assert evaluation.sample_flags(blurry, floor) == [
    "low diversity or coverage: recall 0.1 < 0.5 x floor 0.6",
    "low diversity or coverage: coverage 0.2 < 0.5 x floor 0.5",
  ]
  # On the manifold but in few places of it: collapse, though no sample repeats another.
  narrow = dict(blurry, precision=0.6)
  assert evaluation.sample_flags(narrow, floor)[2:] == [
    "possible mode collapse: recall 0.1 < 0.5 x floor 0.6 with precision 0.6 >= 0.75 x floor 0.7"
  ]
  # Repeats: over 3 x floor, and over 5% (a floor of 0 alone would flag any repeat).
  assert evaluation.sample_flags(dict(floor, duplicate_rate=0.031), floor) == []
  assert evaluation.sample_flags(dict(floor, duplicate_rate=0.06), floor) == [
    "possible mode collapse: duplicate_rate 0.06 > 3 x floor 0.01 (and > 0.05): samples "
    "repeat one another"
  ]
  no_floor = dict(floor, duplicate_rate=0.0)
  assert evaluation.sample_flags(dict(floor, duplicate_rate=0.04), no_floor) == []
  # metrics.json written before the kinds existed
  assert evaluation.flag_kind_and_evidence("recall 0.1 < 0.5 x floor 0.6") == (
    "low diversity or coverage",
    "recall 0.1 < 0.5 x floor 0.6",
  )


def test_floor_is_cached_in_the_extractors_cache_dir(two_runs, slice_data, monkeypatch):
  root, r = two_runs
  assert len(list((root / "floor").glob("*.npz"))) == 1
  monkeypatch.setattr(evaluation.sharded, "compute_features", lambda *a, **k: 1 / 0)
  ref = evaluation.real_reference(
    projection_extractor(root / "floor"), gen_config(slice_data), N, N, seed=1
  )
  assert ref.floor == r["good"]["floor"] and ref.test_features.shape == (N, 32)


def test_compare_prints_one_table_for_several_runs(two_runs, capsys):
  root, _ = two_runs
  cli.main(["evaluate", "--compare", str(root / "good"), str(root / "collapsed")])
  out = capsys.readouterr().out
  header = out.splitlines()[0].split()
  assert header[1:] == [
    str(root / "good"),
    str(root / "collapsed"),
    "floor:",
    "train",
    "vs",
    "test",
  ]
  assert "FD (lower better)" in out and out.count("low diversity or coverage") == 3
  assert out.count("possible mode collapse") == 2
  with pytest.raises(SystemExit, match="jaxgen evaluate --workdir"):
    cli.main(["evaluate", "--compare", str(root / "good"), str(root / "nothing")])


def test_real_images_are_read_exactly_as_the_loader_batches_them(slice_data):
  config = gen_config(slice_data)
  source, _ = trainer.load_data(config, "test")
  loader = pipeline.make_loader(source, batch_size=N, seed=0, shuffle=False, num_epochs=1)
  batch = evaluation.read_batch(config, "test")
  assert sorted(batch) == ["image", "label"]
  for k, v in next(loader).items():  # bit for bit: the evaluation sees what training saw
    assert batch[k].dtype == v.dtype
    np.testing.assert_array_equal(batch[k], v)
  images, labels = evaluation.read_split(config, "test", np.array([5, 2]))
  np.testing.assert_array_equal(images, batch["image"][[5, 2]])
  np.testing.assert_array_equal(labels, batch["label"][[5, 2]])


def test_protocol_likelihood_bounds_and_conditional_accuracy(slice_data):
  calls = []

  def sample(state, key, num, conditioning=None):
    level = (conditioning.astype(jnp.float32) - 4.5) / 5  # class k -> the reader's class k
    return jnp.broadcast_to(level[:, None, None, None], (num, 28, 28, 1)) + state

  def log_likelihood_bounds(state, batch, key, num_samples):
    calls.append(num_samples)  # static: recorded once per trace
    n = batch["image"].shape[0]
    return {"elbo": jnp.full((n,), -100.0), "iwae": jnp.full((n,), -90.0 + 1.0 / num_samples)}

  family = types.SimpleNamespace(sample=sample, log_likelihood_bounds=log_likelihood_bounds)
  config = gen_config(slice_data, num_classes=10)
  config.eval = {"num_test_images": 40, "seed": 5}
  results = evaluation.evaluate_state(
    config,
    family,
    jnp.zeros(()),
    projection_extractor(),
    num_samples=N,
    seed=1,
    num_importance=4,
    step=11,
  )
  assert results["metrics"]["conditional_accuracy"] == 1.0
  p = results["protocol"]
  assert p["extractor"] == dict(
    name="random projection", checkpoint_step=7, test_accuracy=0.5, feature_dim=32
  )
  assert (p["num_samples"], p["num_real"], p["real_split"], p["seed"]) == (N, N, "test", 1)
  assert (p["checkpoint_step"], p["conditional"], p["floor_num_train"]) == (11, True, N)
  assert p["likelihood"] == dict(
    num_importance=4,
    num_images=40,
    split="test",
    first_images=True,
    checkpoint_step=11,
    seed=5,
    model_likelihood="bernoulli",
    binarisation="each test image binarised once, Bernoulli(pixel), from seed 5",
    units="nats per image; bits/dim = nats / (H*W*C ln 2)",
  )
  lk = results["likelihood"]
  assert lk["nll_elbo"] == pytest.approx(100.0) and lk["nll_iwae"] == pytest.approx(89.75)
  assert lk["bpd_iwae"] == pytest.approx(89.75 / (784 * math.log(2)))
  assert calls == [4]
  table = evaluation.format_table([dict(results, run="vae")])
  assert "-IWAE nats/image" in table and "89.75" in table and "k=4" in table
  # one row per class under the overall accuracy, named by the data set's labels
  assert results["metrics"]["conditional_accuracy_per_class"] == [1.0] * 10
  assert p["class_names"] == list("0123456789")  # the IDX slice's labels
  lines = table.splitlines()
  at = next(i for i, line in enumerate(lines) if line.startswith("cond. accuracy"))
  assert [line.split()[:2] for line in lines[at + 1 : at + 11]] == [
    [c, "1.000"] for c in "0123456789"
  ]
  # coverage too: of the real test images of each class (their labels), sample and floor
  per_class = results["metrics"]["coverage_per_class"]
  assert len(per_class) == 10 and len(results["floor"]["coverage_per_class"]) == 10
  _, test_labels = evaluation.read_split(config, "test")
  counts = np.bincount(test_labels[:N], minlength=10)  # the N test images of the protocol
  covered = sum(c * n for c, n in zip(per_class, counts) if c is not None)
  assert covered / N == pytest.approx(results["metrics"]["coverage"])
  at = next(i for i, line in enumerate(lines) if line.startswith("coverage"))
  assert [line.split()[0] for line in lines[at + 1 : at + 11]] == list("0123456789")
  # beside a run without per-class figures (an old metrics.json) and one missing a class
  old = dict(results, run="old", metrics={"conditional_accuracy": 0.5}, protocol={})
  part = dict(results, run="part", metrics={"conditional_accuracy_per_class": [0.25, None]})
  lines = evaluation.format_table([old, part]).splitlines()
  at = next(i for i, line in enumerate(lines) if line.startswith("cond. accuracy"))
  assert lines[at].split()[2:4] == ["0.500", "-"]
  assert lines[at + 1].split()[:3] == ["0", "-", "0.250"]  # names from the first that has them
  assert lines[at + 2].split()[:3] == ["1", "-", "-"]
  assert not lines[at + 3].startswith("  2")  # the rows stop at the longest list


def test_a_run_conditioned_on_finer_classes_is_scored_by_their_groups(slice_data, monkeypatch):
  """data.label_feature (e.g. emoji's subgroups): the data's own classes are requested in turn,
  each as one of its finer classes in proportion to their training counts, and scored as that
  group, which the extractor reads; classes without a group each are not scored."""

  def sample(state, key, num, conditioning=None):
    level = ((conditioning // 2).astype(jnp.float32) - 4.5) / 5  # fine k: group k // 2's level
    return jnp.broadcast_to(level[:, None, None, None], (num, 28, 28, 1)) + state

  family = types.SimpleNamespace(sample=sample)
  config = gen_config(config_lib.base_config().data, num_classes=20)
  config.data.update(slice_data.to_dict())  # a copy: the fixture is shared
  config.data.label_feature, config.data.class_groups = "fine", tuple(k // 2 for k in range(20))
  counts = np.array([3, 1] * 9 + [0, 2])  # group 9's first class has no training examples
  monkeypatch.setattr(evaluation.splits, "class_counts", lambda *a: counts)
  model, groups = evaluation.requested_labels(config, 400, 10)
  np.testing.assert_array_equal(groups, np.arange(400) % 10)
  np.testing.assert_array_equal(model // 2, groups)  # each request is a class of its group
  assert np.bincount(model, minlength=20).tolist() == [30, 10] * 9 + [0, 40]
  assert evaluation.weighted_cycle(np.array([3, 1]), 4).tolist() == [0, 0, 1, 0]
  assert evaluation.weighted_cycle(np.ones(3), 5).tolist() == [0, 1, 2, 0, 1]
  score = lambda: evaluation.evaluate_state(
    config, family, jnp.zeros(()), projection_extractor(), num_samples=N, seed=1, step=3
  )
  results = score()
  assert results["metrics"]["conditional_accuracy"] == 1.0
  assert results["metrics"]["conditional_accuracy_per_class"] == [1.0] * 10  # per group
  p = results["protocol"]
  assert (p["conditioned_on"], p["conditional_accuracy_by"]) == ("fine", "each class's group")
  assert p["class_names"] == list("0123456789")  # the data's own labels, read as "label"
  assert slice_data.label_feature == "label"
  config.data.class_groups = ()  # classes that are not each within one group
  results = score()
  assert "conditional_accuracy" not in results["metrics"]
  assert results["protocol"]["conditional_accuracy_by"] == "not scored"


def test_missing_extractor_names_the_command(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(evaluation.EXTRACTOR_ENV, raising=False)
  run = tmp_path / "gan"
  run.mkdir()
  run.joinpath("config.json").write_text(
    config_lib.load(REPO / "experiments/configs/dcgan_fashion.py").to_json()
  )
  with pytest.raises(SystemExit) as e:
    cli.main(["evaluate", "--workdir", str(run)])
  msg = str(e.value)
  assert "no trained feature extractor in runs/classifier_fashion_mnist" in msg
  assert (
    "`jaxgen train --config experiments/configs/classifier_fashion.py --workdir "
    "runs/classifier_fashion_mnist`"
  ) in msg
  assert len(msg.splitlines()) == 1


def fake_likelihood_family(nll_elbo=100.0, nll_iwae=90.0):
  def log_likelihood_bounds(state, batch, key, num_samples):
    n = batch["image"].shape[0]
    return {"elbo": jnp.full((n,), -nll_elbo), "iwae": jnp.full((n,), -nll_iwae)}

  return types.SimpleNamespace(sample=None, log_likelihood_bounds=log_likelihood_bounds)


def test_likelihood_families_need_no_extractor_and_say_how_to_get_sample_metrics(
  slice_data, tmp_path, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(evaluation.EXTRACTOR_ENV, raising=False)
  vae = config_lib.load(REPO / "experiments/configs/vae_fashion.py")
  ext, note = evaluation.optional_extractor(vae)
  assert ext is None and len(note.splitlines()) == 1
  assert note == (
    "sample metrics (FD, KID, precision/recall, ...) skipped: no trained feature "
    "extractor in runs/classifier_fashion_mnist; train it with `jaxgen train "
    "--config experiments/configs/classifier_fashion.py --workdir "
    "runs/classifier_fashion_mnist` and evaluate again"
  )
  draw_config = config_lib.load(REPO / "experiments/configs/aligndraw_captions.py")
  assert evaluation.optional_extractor(draw_config)[1] == note  # its items' classifier
  # A GAN has nothing to evaluate without one; an extractor named by the user must exist.
  gan = config_lib.load(REPO / "experiments/configs/dcgan_fashion.py")
  with pytest.raises(evaluation.ExtractorNotFound, match="train it with `jaxgen train"):
    evaluation.optional_extractor(gan)
  with pytest.raises(
    evaluation.ExtractorNotFound, match="no trained feature extractor in elsewhere"
  ):
    evaluation.optional_extractor(vae, "elsewhere")
  monkeypatch.setenv(evaluation.EXTRACTOR_ENV, "from_env")
  with pytest.raises(
    evaluation.ExtractorNotFound, match="no trained feature extractor in from_env"
  ):
    evaluation.optional_extractor(vae)

  config = gen_config(slice_data)
  config.eval = {"num_test_images": 16, "num_importance": 3}
  results = evaluation.evaluate_state(
    config, fake_likelihood_family(), None, None, step=9, note=note
  )
  assert (results["metrics"], results["floor"], results["flags"]) == ({}, {}, [])
  assert results["protocol"]["sample_metrics"] == note
  assert results["protocol"]["likelihood"]["num_images"] == 16
  assert results["likelihood"]["nll_elbo"] == pytest.approx(100.0)
  table = evaluation.format_table([dict(results, run="vae")])
  assert table.splitlines()[0].split() == ["metric", "vae"]  # no floor column
  assert "-IWAE nats/image" in table and "FD" not in table
  assert "vae: fake at step 9; bounds on 16 test images, k=3; no sample metrics" in table
  with pytest.raises(ValueError, match="needs a feature extractor"):
    evaluation.evaluate_state(config, image_family(False), None, None, step=0)


def test_in_training_evaluation_of_a_vae_without_an_extractor_gives_the_bounds(
  slice_data, tmp_path, monkeypatch, capsys
):
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(evaluation.EXTRACTOR_ENV, raising=False)
  config = config_lib.load(REPO / "experiments/configs/vae_fashion.py")
  config.data, config.eval_every = slice_data, 10
  config.model.width, config.model.latent_dim = 4, 4
  config.eval.update(dict(num_importance=2, num_test_images=16, batch_size=8))
  eval_fn = evaluation.make_eval_fn(config)
  assert capsys.readouterr().out.startswith(
    "evaluation every 10 steps: likelihood bounds only; sample metrics (FD, KID, "
  )
  example = {"image": jnp.zeros((1, 28, 28, 1)), "label": jnp.zeros((1,), jnp.int32)}
  state = jax.jit(lambda key: vae.init_state(config, key, example))(jax.random.key(0))
  values = eval_fn(state, 10)
  assert sorted(values) == ["bpd_elbo", "bpd_iwae", "flags", "nll_elbo", "nll_iwae"]
  # An untrained Bernoulli decoder (logits near 0) costs about ln 2 nats per pixel.
  assert values["flags"] == [] and 0.5 < values["bpd_elbo"] < 1.5


@pytest.fixture(scope="module")
def classifier_run(slice_data, tmp_path_factory):
  c = config_lib.load(REPO / "experiments/configs/classifier_fashion.py")
  c.data = slice_data
  c.model.width, c.model.feature_dim = 8, 32
  c.batch_size, c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 64, 24, 8, 24, 24
  workdir = tmp_path_factory.mktemp("classifier")
  trainer.train_and_evaluate(c, workdir, eval_fn=evaluation.make_eval_fn(c))
  return c, workdir


def folder_state(path):
  """Every entry under `path` with its size and modification time (ns)."""
  return {
    str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
  }


def test_classifier_trains_through_the_loop_and_serves_as_extractor(
  classifier_run, slice_data, tmp_path, monkeypatch
):
  config, workdir = classifier_run
  log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r["eval"] for r in log if "eval" in r]
  assert len(evals) == 1 and evals[0]["test_accuracy"] > 0.4  # chance: 0.1
  assert not (workdir / "samples").exists()
  before = folder_state(workdir)
  ext = evaluation.load_extractor(config, workdir, cache_dir=tmp_path)
  assert ext.test_accuracy == evals[0]["test_accuracy"] and ext.checkpoint_step == 24
  # Its accuracy and the floors are cached in the cache folder given, never in the extractor's.
  (info,) = tmp_path.glob(f"extractor_{workdir.name}_*/extractor.json")
  assert json.loads(info.read_text())["num_test"] == N and ext.cache_dir == info.parent / "floor"
  evaluation.real_reference(ext, gen_config(slice_data), 16, 16, seed=0)
  assert len(list(ext.cache_dir.glob("*.npz"))) == 1
  assert folder_state(workdir) == before
  monkeypatch.setattr(evaluation.extractor, "classifier_accuracy", lambda *a, **k: 1 / 0)
  again = evaluation.load_extractor(config, workdir, cache_dir=tmp_path)  # read from the cache
  assert again.test_accuracy == ext.test_accuracy
  with pytest.raises(ZeroDivisionError):  # another cache folder: computed afresh
    evaluation.load_extractor(config, workdir, cache_dir=tmp_path / "elsewhere")
  feats, logits = evaluation.compute_features(ext.features_fn, np.zeros((5, 28, 28, 1), np.float32))
  assert feats.shape == (5, 32) and logits.shape == (5, 10)


@pytest.mark.slow  # trains a tiny VAE, then evaluates it twice (~30 s)
def test_jaxgen_evaluate_caches_in_the_run_and_leaves_the_extractor_alone(
  classifier_run, slice_data, tmp_path, capsys
):
  _, extractor = classifier_run
  c = config_lib.load(REPO / "experiments/configs/vae_fashion.py")
  c.data, c.model.width, c.model.latent_dim = slice_data, 4, 4
  c.batch_size, c.num_steps, c.checkpoint_every, c.sample_every, c.eval_every = 64, 2, 2, 0, 0
  c.eval.update(dict(num_importance=2, num_test_images=16, batch_size=8))
  run = tmp_path / "vae"
  trainer.train_and_evaluate(c, run)
  before = folder_state(extractor)
  argv = ["evaluate", "--workdir", str(run), "--extractor", str(extractor), "--num_samples", "32"]
  cli.main(argv)
  (cache,) = (run / "eval").glob(f"extractor_{extractor.name}_*")
  files = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
  assert files[0] == "extractor.json" and len(files) == 3
  assert all(f.startswith("floor/v5_idx_") and "_real32_fake32_seed0." in f for f in files[1:])
  assert folder_state(extractor) == before
  first = json.loads((run / "metrics.json").read_text())
  assert first["protocol"]["extractor"]["name"] == str(extractor) and "fd" in first["metrics"]
  cli.main([*argv, "--cache_dir", str(tmp_path / "shared")])  # the user's cache folder
  assert len(list((tmp_path / "shared").glob("extractor_*/floor/*.npz"))) == 1
  assert folder_state(extractor) == before
  second = json.loads((run / "metrics.json").read_text())
  assert second["metrics"] == first["metrics"]  # cached or not, the same numbers
  assert "wrote " + str(run / "metrics.json") in capsys.readouterr().out


# ------------------------------------------------------------------ captions


def test_likelihood_bounds_pass_every_batch_feature_to_the_family():
  seen = []

  def log_likelihood_bounds(state, batch, key, num_samples):
    seen.append(sorted(batch))
    score = jnp.sum(batch["tokens"], axis=-1) + 10 * batch["held_out"]
    return {"elbo": -score.astype(jnp.float32), "iwae": -score.astype(jnp.float32) + 1.0}

  n = 13  # two batches of 8 (one per simulated device), the second padded
  tokens = np.arange(n * 3, dtype=np.int32).reshape(n, 3)
  held = np.arange(n, dtype=np.int32) % 2
  batch = dict(
    image=np.zeros((n, 4, 4, 1), np.float32),
    label=np.zeros(n, np.int32),
    tokens=tokens,
    held_out=held,
  )
  family = types.SimpleNamespace(log_likelihood_bounds=log_likelihood_bounds)
  lk = evaluation.likelihood_bounds(family, None, batch, num_importance=3, batch_size=8)
  assert seen == [["held_out", "image", "label", "tokens"]]  # traced once, every key
  expect = float(np.mean(tokens.sum(-1) + 10 * held))
  assert lk["nll_elbo"] == pytest.approx(expect) and lk["nll_iwae"] == pytest.approx(expect - 1)
  assert lk["bpd_elbo"] == pytest.approx(expect / (16 * math.log(2)))


def level_items():
  """Two 28 x 28 items per class, class k of constant grey level (k - 4.5) / 5 in [-1, 1]: what
  `projection_extractor`'s logits read back as class k."""
  levels = np.round((np.arange(10) + 0.5) * 25.5).astype(np.uint8)
  labels = np.repeat(np.arange(10), 2)
  return np.broadcast_to(levels[labels][:, None, None], (20, 28, 28)).copy(), labels


@pytest.fixture(scope="module")
def canvases():
  images, labels = level_items()
  canv = captions.make_canvases(images, labels, 48, seed=0, train=False)
  assert 0 < canv["held_out"].sum() < 48
  return canv


def as_batch(canv):
  return dict(canv, image=canv["image"] / 127.5 - 1.0)


def test_caption_metrics_score_samples_per_caption_against_the_real_canvases(canvases):
  batch = as_batch(canvases)
  reader = projection_extractor().features_fn
  classify = lambda crops: reader(crops)[1]

  def oracle(state, key, num, conditioning=None):  # the real canvas of each caption
    match_NxM = jnp.all(conditioning[:, None] == state[0][None], axis=-1)
    return state[1][jnp.argmax(match_NxM, axis=1)]

  blank = lambda state, key, num, conditioning=None: -jnp.ones((num, 60, 60, 1))
  table = (jnp.asarray(batch["tokens"]), jnp.asarray(batch["image"], jnp.float32))
  ones = dict(caption_accuracy=1.0, caption_accuracy_held_out=1.0, caption_accuracy_seen=1.0)
  values, floor = evaluation.caption_metrics(
    types.SimpleNamespace(sample=oracle), table, batch, classify, jax.random.key(0), batch_size=16
  )
  assert values == floor == ones
  # blank crops read as class 0: only one-item captions of class 0 are right
  values, floor = evaluation.caption_metrics(
    types.SimpleNamespace(sample=blank), None, batch, classify, jax.random.key(0), batch_size=16
  )
  right = (batch["classes"][:, 0] == 0) & (batch["classes"][:, 1] == captions.NONE)
  held = batch["held_out"] == 1
  assert floor == ones and right.any()
  assert values == pytest.approx(
    dict(
      caption_accuracy=right.mean(),
      caption_accuracy_held_out=right[held].mean(),
      caption_accuracy_seen=right[~held].mean(),
    )
  )


def test_tiny_aligndraw_gets_caption_rows_a_real_canvas_floor_and_bounds(canvases, monkeypatch):
  config = config_lib.load(REPO / "experiments/configs/aligndraw_captions.py")
  config.model.update({**DRAW_TINY, "draw_steps": 2})
  config.data.name = "captioned_fashion_mnist/small"
  config.eval = {"num_test_images": 16, "num_importance": 2, "batch_size": 8, "seed": 0}
  n = len(canvases["tokens"])
  items = [{k: v[i] for k, v in canvases.items()} for i in range(n)]
  monkeypatch.setattr(trainer, "load_data", lambda config, split: (items, None))  # in memory
  example = {"image": jnp.zeros((1, 60, 60, 1)), "tokens": jnp.asarray(canvases["tokens"][:1])}
  state = jax.jit(lambda key: draw.init_state(config, key, example))(jax.random.key(0))
  assert evaluation.is_captioned(config, draw)
  results = evaluation.evaluate_state(
    config, draw, state, projection_extractor(), num_samples=1000, seed=2, step=5
  )  # capped at the split
  rows = {"caption_accuracy", "caption_accuracy_held_out", "caption_accuracy_seen"}
  assert set(results["metrics"]) == rows and "fd" not in results["metrics"]
  assert results["floor"] == dict.fromkeys(rows, 1.0) and results["flags"] == []
  m, held = results["metrics"], int(canvases["held_out"].sum())
  assert m["caption_accuracy"] * n == pytest.approx(
    m["caption_accuracy_held_out"] * held + m["caption_accuracy_seen"] * (n - held)
  )
  p = results["protocol"]
  assert p["captions"] == dict(num=n, held_out=held, split="test", first=True)
  assert (p["seed"], p["checkpoint_step"], p["extractor"]["name"]) == (2, 5, "random projection")
  assert p["sample_temperature"] == 0.5  # the config's: jaxgen evaluate --temperature sets it
  assert p["likelihood"]["num_images"] == 16
  lk = results["likelihood"]  # the bounds read the captions (tokens) of the test batch
  assert 0 < lk["nll_iwae"] <= lk["nll_elbo"] + 1e-3
  assert lk["bpd_elbo"] == pytest.approx(lk["nll_elbo"] / (3600 * math.log(2)))
  table = evaluation.format_table([dict(results, run="aligndraw")])
  header, _, *body = table.splitlines()
  assert header.split()[-4:] == ["floor:", "real", "test", "canvases"]
  assert next(line for line in body if line.startswith("caption accuracy")).split()[-1] == "1.000"
  assert any(line.strip().startswith("held-out captions") for line in body)
  assert "FD" not in table and "-IWAE nats/image" in table and f"({held} held out)" in table


def _diagnosis_module():
  import importlib.util

  path = REPO / "experiments/aligndraw_diagnosis.py"
  spec = importlib.util.spec_from_file_location("aligndraw_diagnosis", path)
  diagnosis = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(diagnosis)
  return diagnosis


def test_item_summary_counts_each_named_class_and_its_commonest_confusion():
  none = captions.NONE
  classes = np.array([[5, 9], [5, none], [5, 7], [3, 5], [1, none], [7, 1]])
  predicted = np.array([[9, 9], [9, 0], [7, 7], [3, 5], [2, 4], [7, 2]])
  # class 5: rows 0, 1, 2 (seen 9, 9, 7) and row 3 (seen 5): accuracy 1/4, mistaken for 9
  # class 9: row 0 (seen 9): 1.0, never wrong; class 7: row 2 (seen 7), row 5 (seen 7): 1.0
  # class 3: 1.0; class 1: rows 4 and 5, seen 2 both times: 0.0, mistaken for 2
  # the second place of rows 1 and 4 names nothing: its predictions 0 and 4 are not counted
  summary = _diagnosis_module().item_summary(predicted, classes)
  acc, mistaken = summary["accuracy"], summary["mistaken_for"]
  assert acc.shape == mistaken.shape == (10,)
  assert [acc[k] for k in (5, 9, 7, 3, 1)] == [0.25, 1.0, 1.0, 1.0, 0.0]
  assert [mistaken[k] for k in (5, 9, 7, 3, 1)] == [9, -1, -1, -1, 2]
  for k in (0, 2, 4, 6, 8):  # never named
    assert np.isnan(acc[k]) and mistaken[k] == -1
  # a tie between two wrong classes goes to the lower
  tie = _diagnosis_module().item_summary(
    np.array([[4, none], [2, none]]), np.array([[6, none]] * 2)
  )
  assert tie["accuracy"][6] == 0.0 and tie["mistaken_for"][6] == 2


def test_kind_summary_splits_held_out_single_items_by_whether_training_has_them_there():
  none, c = captions.NONE, captions.PLACES.index("centre")
  # (classes, positions, held out, right): two seen singles, a seen pair, a held-out pair, a
  # held-out single at "left" (a pair place) and two at the centre (no pair puts an item there)
  rows = [
    ((0, none), (1, none), 0, 1),
    ((1, none), (2, none), 0, 0),
    ((2, 3), (3, 5), 0, 1),
    ((4, 5), (1, 7), 1, 0),
    ((3, none), (3, none), 1, 1),
    ((4, none), (c, none), 1, 0),
    ((4, none), (c, none), 1, 1),
  ]
  batch = {
    "classes": np.array([r[0] for r in rows]),
    "positions": np.array([r[1] for r in rows]),
    "held_out": np.array([r[2] for r in rows]),
  }
  kinds = _diagnosis_module().kind_summary(np.array([r[3] for r in rows], np.float32), batch)
  assert kinds == {
    "seen, one item": (0.5, 2),
    "seen, two items": (1.0, 1),
    "held-out, two items": (0.0, 1),
    "held-out, one item where pairs put it": (1.0, 1),
    "held-out, one item where training never has it": (0.5, 2),
  }


def test_aligndraw_diagnosis_scores_real_reconstructed_and_sampled_canvases(canvases):
  """experiments/aligndraw_diagnosis.py: the three rows, with blocks of 20 so the last of the 48
  canvases' blocks is padded. The level items read back exactly (real canvases 1.0); a classifier
  that always says class 0 gives every row the share of captions naming class 0 alone."""
  diagnosis = _diagnosis_module()
  config = config_lib.load(REPO / "experiments/configs/aligndraw_captions.py")
  config.model.update({**DRAW_TINY, "draw_steps": 2})
  example = {"image": jnp.zeros((1, 60, 60, 1)), "tokens": jnp.asarray(canvases["tokens"][:1])}
  state = jax.jit(lambda key: draw.init_state(config, key, example))(jax.random.key(0))
  batch, key = as_batch(canvases), jax.random.key(1)
  reader = projection_extractor().features_fn
  rows = diagnosis.diagnose(state, batch, lambda crops: reader(crops)[1], key, batch_size=20)
  assert tuple(rows) == diagnosis.ROWS
  assert set(rows["real canvases"]["caption"].values()) == {1.0}
  named = np.unique(batch["classes"][batch["classes"] != captions.NONE])
  items = rows["real canvases"]["items"]
  np.testing.assert_array_equal(items["accuracy"][named], 1.0)
  np.testing.assert_array_equal(items["mistaken_for"][named], -1)
  always_0 = lambda crops: jnp.tile(jnp.eye(10)[0], (len(crops), 1))
  rows = diagnosis.diagnose(state, batch, always_0, key, batch_size=20)
  right = (batch["classes"][:, 0] == 0) & (batch["classes"][:, 1] == captions.NONE)
  held = batch["held_out"] == 1
  want = [right.mean(), right[held].mean(), right[~held].mean()]
  others = named[named != 0]
  assert len(others) and 0 in named  # the fixture names class 0 and others
  for row in diagnosis.ROWS:
    assert list(rows[row]["caption"].values()) == pytest.approx(want), row
    items = rows[row]["items"]
    assert items["accuracy"][0] == 1.0 and items["mistaken_for"][0] == -1
    np.testing.assert_array_equal(items["accuracy"][others], 0.0)
    np.testing.assert_array_equal(items["mistaken_for"][others], 0)


def test_captioned_runs_use_their_items_classifier(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(evaluation.EXTRACTOR_ENV, raising=False)
  config = config_lib.load(REPO / "experiments/configs/aligndraw_captions.py")
  assert evaluation.extractor_config(config).data.name == "fashion_mnist"
  assert config.data.name == "captioned_fashion_mnist"  # not changed in place
  with pytest.raises(evaluation.ExtractorNotFound) as e:
    evaluation.load_extractor(config)
  assert str(e.value).startswith("no trained feature extractor in runs/classifier_fashion_mnist ")
  assert str(e.value).endswith("classifier_fashion.py --workdir runs/classifier_fashion_mnist`")


# ------------------------------------------------------------------ a real extractor


def real_image_family(shift: int):
  """Samples are real train images of class (requested + shift) % 10, drawn at random."""

  def sample(state, key, num, conditioning=None):
    images, labels = state
    want_N = (jnp.asarray(conditioning) + shift) % 10
    score_NxM = jax.random.uniform(key, (num, labels.shape[0])) + (labels[None] == want_N[:, None])
    return images[jnp.argmax(score_NxM, axis=1)]  # a random image among those of the class

  return types.SimpleNamespace(sample=sample)


def test_a_real_imperfect_extractor_scores_real_images_of_the_requested_class(
  classifier_run, slice_data
):
  # The classifier trained above on 512 real images is an imperfect extractor (test accuracy
  # well below 1): conditional accuracy of real images of the requested class is its accuracy
  # on them, and of images of another class about its error rate spread over 9 classes.
  config, workdir = classifier_run
  ext = evaluation.load_extractor(config, workdir)
  assert 0.4 < ext.test_accuracy < 0.95
  images, labels = evaluation.read_split(gen_config(slice_data), "train")
  state = (jnp.asarray(images), jnp.asarray(labels))
  right, wrong = (
    evaluation.evaluate_state(
      gen_config(slice_data, num_classes=10),
      real_image_family(shift),
      state,
      ext,
      num_samples=N,
      seed=1,
      step=1,
    )
    for shift in (0, 3)
  )
  train_accuracy = evaluation.classifier_accuracy(ext.features_fn, images, labels)["accuracy"]
  m, w = right["metrics"], wrong["metrics"]
  assert 0.4 < m["conditional_accuracy"] < 1.0
  # 128 samples: a binomial standard error of at most 0.045 around the train accuracy
  assert abs(m["conditional_accuracy"] - train_accuracy) < 4 * 0.045
  assert w["conditional_accuracy"] < 0.3 < m["conditional_accuracy"]
  # both are real images spread over all classes: near the floor, not collapsed
  floor = right["floor"]
  for k in ("recall", "coverage"):
    assert m[k] > 0.5 * floor[k] and w[k] > 0.5 * floor[k]


# ------------------------------------------------------------------ sharded passes


@pytest.mark.parametrize("num,batch_size", [(13, 8), (3, 8), (21, 5), (16, 16)])
def test_map_batches_pads_to_the_devices_and_returns_only_real_rows(num, batch_size):
  devices = jax.device_count()
  size = max(devices, batch_size // devices * devices)  # rows per call, a device multiple
  x_N = np.arange(1, num + 1, dtype=np.float32)
  calls = []

  def fn(i, block, n):
    calls.append((i, n, block["x"].shape, len(block["x"].sharding.device_set)))
    return {"twice": 2 * block["x"], "block": jnp.full((n,), i), "x": block["x"]}

  out = evaluation.sharded.map_batches(fn, {"x": x_N}, num, batch_size=batch_size)
  blocks = -(-num // size)
  assert calls == [(i, size, (size,), devices) for i in range(blocks)]
  np.testing.assert_array_equal(out["twice"], 2 * x_N)
  np.testing.assert_array_equal(out["block"], np.arange(num) // size)
  # the last block was padded with zeros, which the caller never sees
  np.testing.assert_array_equal(out["x"], x_N)
  assert evaluation.sharded.pad_rows(x_N, size * blocks)[num:].tolist() == [0.0] * (
    size * blocks - num
  )
