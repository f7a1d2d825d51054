"""The shared loop: resume, bad input, divergence, the CLI and a 2-process run (real data slice)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from conftest import REPO, free_port, process_flags

from jaxgen import checkpoint, data, parallel, trainer
from jaxgen import config as config_lib
from jaxgen.errors import ConfigError

DCGAN = REPO / "experiments/configs/dcgan_fashion.py"


@pytest.fixture
def slice_config(fashion_slice, tfds_dir):
  """A tiny DCGAN on the 512-image real slice: 8 batches of 64 per epoch."""
  c = config_lib.load(DCGAN)
  c.data.name, c.data.source_dir, c.data.data_dir = "idx", str(fashion_slice), str(tfds_dir)
  c.model.width, c.model.latent_dim = 8, 16
  c.batch_size, c.num_steps, c.log_every = 64, 10, 1
  c.checkpoint_every, c.sample_every, c.num_grid_samples = 5, 0, 16
  return c


def read_log(workdir: Path) -> dict[int, dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r for r in rows if "d_loss" in r}


def tree_listing(path: Path) -> dict[str, int]:
  return {
    str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()
  }


def test_resume_matches_uninterrupted_run(slice_config, tmp_path):
  slice_config.keep_checkpoints = 2
  straight = trainer.train_and_evaluate(slice_config, tmp_path / "a")
  slice_config.num_steps = 7  # stop inside the first epoch, resume across the epoch boundary
  trainer.train_and_evaluate(slice_config, tmp_path / "b")
  slice_config.num_steps = 10
  resumed = trainer.train_and_evaluate(slice_config, tmp_path / "b")
  assert int(resumed.step) == int(straight.step) == 10
  chex.assert_trees_all_equal(jax.device_get(straight.g.params), jax.device_get(resumed.g.params))
  chex.assert_trees_all_equal(
    jax.device_get(straight.d.batch_stats), jax.device_get(resumed.d.batch_stats)
  )
  a, b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
  for step in (8, 9, 10):  # the same batches after the restore, so the same losses
    assert a[step]["d_loss"] == b[step]["d_loss"]
  # saved at 5, 7 (the stop) and 10; keep_checkpoints=2 keeps the last two
  assert sorted(p.name for p in (tmp_path / "b/checkpoints").iterdir() if p.name.isdigit()) == [
    "10",
    "7",
  ]
  assert (tmp_path / "b/samples/step_0000010.png").is_file()


def test_logged_rows_are_means_over_the_steps_since_the_row_before(slice_config, tmp_path):
  slice_config.num_steps, slice_config.checkpoint_every = 7, 7
  trainer.train_and_evaluate(slice_config, tmp_path / "every")  # a row per step
  slice_config.log_every = 3
  trainer.train_and_evaluate(slice_config, tmp_path / "mean")  # the same steps, bit for bit
  every, mean = read_log(tmp_path / "every"), read_log(tmp_path / "mean")
  assert sorted(mean) == [3, 6, 7]  # 7: the last step's save starts its own row
  for step, first in ((3, 1), (6, 4), (7, 7)):
    assert mean[step].keys() == every[step].keys()
    for k in set(mean[step]) - {"step", "images_per_s"}:
      terms = [every[s][k] for s in range(first, step + 1)]
      # the loop adds up to 3 float32 terms in float32 (2 roundings, each within 2^-24 of a sum
      # <= 3 max|term|) and divides in float64: the mean is within 2 * 2^-24 * max|term| of the
      # exact one on any CPU; the tolerance is the sum's bound, 3x that
      np.testing.assert_allclose(
        mean[step][k], np.mean(terms), rtol=0, atol=6 * 2**-24 * max(map(abs, terms)), err_msg=k
      )
  assert len({every[s]["d_loss"] for s in (4, 5, 6)}) == 3  # a mean of three different values


def test_checkpoints_keep_the_consumed_position_and_input_settings_change_no_bits(
  slice_config, tmp_path
):
  slice_config.num_steps, slice_config.checkpoint_every = 6, 3
  straight = trainer.train_and_evaluate(slice_config, tmp_path / "a")  # 2 workers, 2 on device
  # The loader had read past batch 3 when step 3 was saved; the checkpoint holds batch 3's end.
  config, _, _ = trainer.load_run(tmp_path / "a")
  ckpt = checkpoint.Checkpointer(tmp_path / "a/checkpoints", async_save=False, read_only=True)
  _, position, _ = ckpt.restore(trainer.abstract_state(config, parallel.make_mesh()), 3)
  ckpt.close()
  assert position == {"next_index": 3}
  # the same run without workers or lookahead, stopped at 3, resumed with more of both
  slice_config.num_steps = 3
  slice_config.data.update(num_workers=0, prefetch=0, device_prefetch=1)
  trainer.train_and_evaluate(slice_config, tmp_path / "b")
  slice_config.num_steps = 6
  slice_config.data.update(num_workers=3, prefetch=8, device_prefetch=3)
  resumed = trainer.train_and_evaluate(slice_config, tmp_path / "b")
  chex.assert_trees_all_equal(  # every leaf, bit for bit (the static model fields differ)
    jax.tree.leaves(jax.device_get(straight)), jax.tree.leaves(jax.device_get(resumed))
  )
  losses = lambda w: {s: {k: v for k, v in r.items() if k != "images_per_s"} for s, r in w.items()}
  assert losses(read_log(tmp_path / "a")) == losses(read_log(tmp_path / "b"))
  assert sorted(read_log(tmp_path / "b")) == [1, 2, 3, 4, 5, 6]


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_lost(slice_config, tmp_path, capsys):
  slice_config.num_steps = 5
  trainer.train_and_evaluate(slice_config, tmp_path)
  state_dir = tmp_path / "checkpoints/5/state"
  for f in [p for p in state_dir.rglob("*") if p.is_file()]:
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # truncate every file
  before = tree_listing(tmp_path)
  slice_config.num_steps = 8
  capsys.readouterr()
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"none of the checkpoints .* \(steps \[5\]\) "
    "restores and verifies",
  ) as e:
    trainer.train_and_evaluate(slice_config, tmp_path)
  assert "\n" not in str(e.value)
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 1 and re.match(
    r"skipping checkpoint .*/checkpoints/5 cannot be restored", out[0]
  )
  assert tree_listing(tmp_path) == before


def test_missing_data_is_a_clear_error(slice_config, tmp_path):
  slice_config.data.source_dir = str(tmp_path / "empty")
  (tmp_path / "empty").mkdir()
  with pytest.raises(data.DataError, match="train-images-idx3-ubyte") as e:
    trainer.train_and_evaluate(slice_config, tmp_path / "run")
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_image_shape_mismatch_is_caught_before_anything_is_written(slice_config, tmp_path):
  slice_config.num_steps = 5
  trainer.train_and_evaluate(slice_config, tmp_path)
  before = tree_listing(tmp_path)
  slice_config.data.image_shape = (64, 64, 3)
  slice_config.num_steps = 8
  with pytest.raises(ConfigError, match=r"\(64, 64, 3\) does not match .* \(28, 28, 1\)"):
    trainer.train_and_evaluate(slice_config, tmp_path)
  assert tree_listing(tmp_path) == before


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(slice_config, tmp_path):
  slice_config.num_steps = 5
  trainer.train_and_evaluate(slice_config, tmp_path)
  # max_loss may change on resume; 0.5 is below every loss of this run, so step 6 "diverges"
  slice_config.num_steps, slice_config.max_loss = 10, 0.5
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"loss became [0-9.]+ \(above config.max_loss=0.5\) at step 6; .*step 5 is kept",
  ):
    trainer.train_and_evaluate(slice_config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == 5
  assert max(read_log(tmp_path)) == 5  # the bad step is not logged


def test_nan_state_is_never_saved(slice_config, tmp_path):
  # the generator's update comes last in a step: its losses are finite, its new params are not
  slice_config.optim.g_lr, slice_config.checkpoint_every = float("nan"), 1
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"the state became non-finite at step 1 \(\d+ leaves, first \.g\.params\[.*"
    r"nothing was saved",
  ):
    trainer.train_and_evaluate(slice_config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps() == []


def _cli(*args, devices=2, **popen):
  env = dict(
    os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu"
  )
  return subprocess.Popen(
    [sys.executable, "-m", "jaxgen.cli", *args],
    env=env,
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **popen,
  )


def _overrides(c) -> list[str]:
  return [
    "--config.data.name=idx",
    f"--config.data.source_dir={c.data.source_dir}",
    f"--config.data.data_dir={c.data.data_dir}",
    "--config.model.width=8",
    "--config.model.latent_dim=16",
    "--config.batch_size=32",
    "--config.log_every=1",
    "--config.num_steps=4",
    "--config.checkpoint_every=2",
    "--config.sample_every=2",
    "--config.num_grid_samples=16",
  ]


def test_cli_trains_samples_and_reports_bad_flags(slice_config, tmp_path):
  run = tmp_path / "run"
  p = _cli("train", "--config", str(DCGAN), "--workdir", str(run), *_overrides(slice_config))
  out = p.communicate(timeout=300)[0]
  assert p.returncode == 0, out
  assert "compiled train_step" in out and "step 4/4" in out
  assert sorted(read_log(run)) == [1, 2, 3, 4]
  assert (run / "samples/step_0000002.png").is_file() and (
    run / "samples/step_0000004.png"
  ).is_file()
  assert (run / "checkpoints/4").is_dir()

  p = _cli("sample", "--workdir", str(run), "--num", "9", "--out", str(tmp_path / "grid.png"))
  out = p.communicate(timeout=300)[0]
  assert p.returncode == 0, out
  from PIL import Image

  assert Image.open(tmp_path / "grid.png").size == (2 * (3 * 30 + 2),) * 2  # 3x3 of 28+2 pad, x2

  p = _cli("report", "--workdir", str(run), "--num", "8")
  out = p.communicate(timeout=300)[0]
  assert p.returncode == 0, out
  assert (run / "report/interpolations.png").is_file()

  p = _cli("train", "--config", str(DCGAN), "--workdir", str(run), "--config.model.widht=8")
  out = p.communicate(timeout=300)[0]
  assert p.returncode != 0
  assert out.strip().splitlines()[-1].startswith("jaxgen train: error: --config.model.widht")


def test_two_processes_match_one_process(slice_config, tmp_path):
  """2 processes x 2 devices (jax.distributed, gloo) == 1 process x 4 devices, step by step."""
  data.load(
    "idx", "train", source_dir=slice_config.data.source_dir, data_dir=slice_config.data.data_dir
  )  # prepare once, not by two processes at once
  args = ["train", "--config", str(DCGAN), *_overrides(slice_config)]
  single = _cli(*args, "--workdir", str(tmp_path / "one"), devices=4)
  out = single.communicate(timeout=300)[0]
  assert single.returncode == 0, out

  port = free_port()
  procs = [
    _cli(
      *args,
      "--workdir",
      str(tmp_path / "two"),
      *process_flags(port, i),
      devices=2,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert "4 cpu device(s), 2 process(es)" in outs[0]
  one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  for step in one:
    for k in ("d_loss", "g_loss"):
      np.testing.assert_allclose(one[step][k], two[step][k], rtol=1e-5, err_msg=f"{k}@{step}")


@pytest.mark.slow
def test_two_process_evaluate_matches_one_process(slice_config, tmp_path):
  """`jaxgen evaluate` over 2 processes x 2 devices gives one process's numbers."""
  from jaxgen import evaluation

  trainer.train_and_evaluate(slice_config, tmp_path / "gan")
  c = config_lib.load(REPO / "experiments/configs/classifier_fashion.py")
  c.data = slice_config.data
  c.model.width, c.batch_size, c.num_steps, c.eval_every = 8, 64, 10, 0
  trainer.train_and_evaluate(c, tmp_path / "cls")
  one = evaluation.evaluate_run(tmp_path / "gan", num_samples=96, extractor=tmp_path / "cls")
  (tmp_path / "gan/metrics.json").unlink()
  port = free_port()
  procs = [
    _cli(
      "evaluate",
      "--workdir",
      str(tmp_path / "gan"),
      "--extractor",
      str(tmp_path / "cls"),
      "--num_samples",
      "96",
      *process_flags(port, i),
      devices=2,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  two = json.loads((tmp_path / "gan/metrics.json").read_text())
  for k, v in one["metrics"].items():
    if isinstance(v, float):
      np.testing.assert_allclose(two["metrics"][k], v, rtol=1e-4, err_msg=k)
