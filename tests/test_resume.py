"""Resuming through the shared loop is bit-exact for every family: a run stopped at a
checkpoint and resumed ends with the uninterrupted run's state (parameters, optimizer
state, EMA, BatchNorm statistics, step), every leaf equal, and logs the same losses."""

import json
import shutil

import jax
import numpy as np
import pytest
from conftest import DRAW_TINY, experiment_config

from jaxgen import trainer

# name: (config file, model overrides, data set)
CASES = {
  "gan": ("dcgan_fashion.py", dict(width=8, latent_dim=16, num_classes=10), "idx"),
  # ADA's probability is state: with target 0.01 and 10 images per crossing it moves every step
  "gan_ada": (
    "dcgan_fashion.py",
    dict(width=8, latent_dim=16, augment="translation", ada_target=0.01, ada_kimg=0.01),
    "idx",
  ),
  "vae": ("vae_fashion.py", dict(width=8, latent_dim=8), "idx"),
  "draw": ("draw_fashion.py", DRAW_TINY, "idx"),
  "aligndraw": ("aligndraw_captions.py", DRAW_TINY, "captioned_fashion_mnist/small"),
  "classifier": ("classifier_fashion.py", dict(width=8, feature_dim=16), "idx"),
}


def _leaves(state) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(path): np.asarray(x)
    for path, x in jax.tree_util.tree_leaves_with_path(jax.device_get(state))
  }


def _losses(workdir) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


@pytest.mark.parametrize("case", CASES)
def test_resume_is_bit_exact(case, fashion_slice, tfds_dir, tmp_path):
  name, model, data_name = CASES[case]
  c = experiment_config(name, **model)
  c.data.name, c.data.source_dir, c.data.data_dir = data_name, str(fashion_slice), str(tfds_dir)
  c.batch_size, c.num_steps, c.checkpoint_every, c.log_every = 16, 6, 3, 1
  c.sample_every, c.num_grid_samples, c.eval_every, c.keep_checkpoints = 0, 0, 0, 2
  # 6 steps straight, saving at 3 and 6; then a copy with step 6 removed (a run stopped
  # after step 3) resumes to step 6.
  straight = _leaves(trainer.train_and_evaluate(c, tmp_path / "straight"))
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
  log = tmp_path / "resumed" / "metrics.jsonl"
  log.write_text("".join(log.read_text().splitlines(keepends=True)[:3]))
  resumed = _leaves(trainer.train_and_evaluate(c, tmp_path / "resumed"))
  assert straight.keys() == resumed.keys()
  assert any("opt_state" in k for k in straight) and straight[".step"] == 6
  assert (".aug_p" in straight) == (case == "gan_ada")
  for k in straight:  # bit for bit: the same program on the same inputs
    np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
  assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
  assert [r["step"] for r in _losses(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
