"""benchmarks/: a tiny run of the throughput script (and the PyTorch peers, if installed)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not part of the package
  sys.path.insert(0, str(REPO))
from benchmarks import loop, throughput  # noqa: E402
from jaxgen import runlog  # noqa: E402

TINY = ["--batch_sizes", "8", "--repeats", "1", "--steps", "1", "--warmup", "1", "--quiet"]


def test_throughput_smoke(tmp_path, capsys):
  out = tmp_path / "t.json"
  result = throughput.main(["--families", "gan,vae", "--no_torch", "--json", str(out), *TINY])
  rows = {r["family"]: r for r in result["rows"]}
  assert set(rows) == {"gan", "vae"}, result["notes"]
  peak = json.loads(out.read_text())["machine"]["matmul_peak_gflops"]
  assert peak > 0
  for r in rows.values():
    assert r["batch"] == 8 and r["devices"] == 1 and r["image"] == "28x28x1"
    assert r["compile_s"] > 0 and r["memory_mib"] > 0 and r["gflop_per_step"] > 0
    # the derived columns are the definitions applied to the measured step time
    sec = r["ms_per_step"] / 1e3
    assert r["images_per_s"] == pytest.approx(8 / sec, rel=1e-9)
    assert r["gflops"] == pytest.approx(r["gflop_per_step"] / sec, rel=1e-9)
    assert r["peak_fraction"] == pytest.approx(r["gflops"] / peak, rel=1e-9)
  # the GAN step (D and G passes) costs several times the VAE's at these sizes
  assert rows["gan"]["gflop_per_step"] > 2 * rows["vae"]["gflop_per_step"]
  table = capsys.readouterr().out
  assert "img/s" in table and "GFLOP/s" in table and "matmul peak" in table


def test_device_counts_run_in_their_own_processes(tmp_path):
  result = throughput.main(
    [
      "--families",
      "gan",
      "--devices",
      "1,2",
      "--no_torch",
      "--json",
      str(tmp_path / "t.json"),
      *TINY,
    ]
  )
  assert [r["devices"] for r in result["rows"]] == [1, 2], result["notes"]


def test_loop_benchmark_smoke(fashion_slice, tfds_dir, tmp_path, capsys):
  out = tmp_path / "loop.json"
  sets = dict(
    batch_size=8,
    log_every=2,
    checkpoint_every=4,
    sample_every=0,
    num_grid_samples=0,
    **{"data.name": "idx", "data.source_dir": fashion_slice, "data.data_dir": tfds_dir},
    **{"model.width": 8, "model.latent_dim": 4},
  )
  argv = ["--configs", "vae_fashion", "--steps", "4", "--repeats", "1", "--out", str(out)]
  argv += ["--quiet", "--workdir", str(tmp_path / "runs")]
  result = loop.main(argv + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
  assert json.loads(out.read_text()) == result
  assert result["notes"] == [] and result["goal"] == 0.95
  (row,) = result["rows"]
  assert row["config"] == "vae_fashion" and row["family"] == "vae" and row["batch"] == 8
  assert row["devices"] == jax.device_count() and row["num_workers"] == 2
  # a warm-up session to step 2, then a resumed one to 8, timed after its first log point (4)
  assert row["warmup"] == 4 and row["steps"] == 4
  sessions = runlog.read_provenance(tmp_path / "runs/vae_fashion")
  assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 2), (2, 8)]
  assert sessions[1]["loop"]["from_step"] == 4 and sessions[1]["loop"]["to_step"] == 8
  assert row["loop_ms_per_step"] == pytest.approx(1e3 * sessions[1]["loop"]["seconds"] / 4)
  for what in ("loop", "step"):
    assert row[f"{what}_images_per_s"] == pytest.approx(8e3 / row[f"{what}_ms_per_step"])
  assert row["ratio"] == pytest.approx(row["loop_images_per_s"] / row["step_images_per_s"])
  assert row["meets_goal"] == ("yes" if row["ratio"] >= 0.95 else "no")
  table = capsys.readouterr().out.splitlines()
  header = next(i for i, line in enumerate(table) if "loop/step" in line)
  assert (
    table[header].split() == "config batch dev steps loop img/s step img/s loop/step >=95%".split()
  )
  assert table[header + 1].split()[:4] == ["vae_fashion", "8", str(jax.device_count()), "4"]


def test_loop_benchmark_refuses_unknown_configs():
  with pytest.raises(SystemExit, match="no config .*nonesuch.py; choose from .*dcgan_fashion"):
    loop.config_paths(["nonesuch"])


def test_child_argv_replaces_devices_and_output():
  argv = ["--families", "gan", "--devices=1,2", "--json", "a.json", "--quiet"]
  assert throughput._child_argv(argv, 2, "b.json") == [
    "--families",
    "gan",
    "--devices",
    "2",
    "--json",
    "b.json",
    "--quiet",
    "--here",
  ]


def test_missing_family_is_a_note_not_an_error(monkeypatch):
  monkeypatch.setattr(
    throughput.importlib.util,
    "find_spec",
    lambda name: None if name.endswith(".draw") else object(),
  )
  chosen, notes = throughput.family_configs(["gan", "draw"])
  assert list(chosen) == ["gan"] and "draw: skipped" in notes[0]


def _flax_param_shapes(state) -> list[tuple[int, ...]]:
  """Shapes of a family's trainable parameters (leaves under a ModelState's `params`), sorted."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return sorted(
    tuple(x.shape)
    for path, x in leaves
    if any(getattr(k, "name", None) == "params" for k in path)
    and not any(getattr(k, "name", None) in ("opt_state", "ema_params") for k in path)
  )


@pytest.mark.parametrize("family", ["gan", "vae", "classifier", "draw"])
def test_torch_peers_train_the_same_architecture(family):
  pytest.importorskip("torch")
  from benchmarks import torch_peer
  from jaxgen import steps

  path = throughput.family_configs([family])[0][family]
  config = throughput.load_config(path, (28, 28, 1), 4, {})
  step = torch_peer.PEERS[family](config, 4)
  batch = {"image": jnp.zeros((4, 28, 28, 1)), "label": jnp.zeros((4,), jnp.int32)}
  state = steps.get_family(family).init_state(config, jax.random.key(0), batch)
  shapes = _flax_param_shapes(state)
  assert step.param_shapes == shapes  # layer by layer, in flax's layout
  assert step.num_params == sum(int(np.prod(s)) for s in shapes) > 0
  r = torch_peer.measure(family, config, 4, repeats=1, steps=1, warmup=1)
  assert r["images_per_s"] == pytest.approx(4e3 / r["ms_per_step"], rel=1e-9)
  assert r["threads"] >= 1
