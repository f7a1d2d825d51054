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


# ------------------------------------------------------------------ the accelerator check


def _fake_measure(family, config, num_devices, args, dtype="float32"):
  """A measured row's figures without compiling: the driver's structure is under test."""
  return dict(compile_s=1.0, ms_per_step=10.0, images_per_s=800.0, gflop_per_step=1, gflops=100.0)


def test_device_check_writes_one_json_with_a_row_per_family_and_dtype(tmp_path, monkeypatch):
  from benchmarks import device_check

  monkeypatch.setattr(throughput, "measure", _fake_measure)
  out = tmp_path / "check.json"
  one_test = "tests/test_gan.py::test_losses_on_hand_computed_logits"
  device_check.main(["--quick", "--tests", one_test, "--out", str(out)])
  result = json.loads(out.read_text())
  assert result["backend"] == jax.default_backend() and result["mode"] == "quick"
  assert result["device_count"] == jax.device_count() and result["device_kind"]
  assert result["versions"]["jax"] == jax.__version__
  s = result["settings"]
  assert s["matmul_precision"] == "highest" and "TF32 off" in s["precision_statement"]
  assert s["dtypes"] == ["float32", "bfloat16"] and s["xla_python_client_preallocate"]
  assert result["tests"]["rc"] == 0 and result["tests"]["counts"] == {"passed": 1}
  rows = result["throughput"]["rows"]
  from jaxgen import steps

  assert sorted((r["family"], r["dtype"]) for r in rows) == sorted(
    (f, d) for f in steps.FAMILIES for d in ("float32", "bfloat16")
  )
  peaks = result["throughput"]["machine"]["matmul_peak_gflops_by_dtype"]
  assert set(peaks) == {"float32", "bfloat16"} and min(peaks.values()) > 0
  for r in rows:
    assert r["batch"] == 8 and r["devices"] == 1
    # every family runs in bfloat16 (config.dtype); the row's % of peak is against its own
    # dtype's peak
    assert not r.get("status"), r
    assert r["peak_fraction"] == pytest.approx(100.0 / peaks[r["dtype"]], rel=1e-9)
  w = result["wall_s"]
  assert w["total"] >= w["check"] >= w["tests"] > 0 and w["throughput"] > 0


def test_load_config_sets_the_dtype_where_the_config_has_one(monkeypatch):
  from jaxgen import config as config_lib

  path = throughput.family_configs(["vae"])[0]["vae"]
  plain = config_lib.load(path)
  if "dtype" not in plain:  # until jaxgen has a computation dtype: float32 only
    assert throughput.load_config(path, (28, 28, 1), 8, {}, "bfloat16") is None
  assert throughput.load_config(path, (28, 28, 1), 8, {}, "float32").batch_size == 8
  with_dtype = plain.copy_and_resolve_references()
  with_dtype.dtype = "float32"
  monkeypatch.setattr(config_lib, "load", lambda *a, **k: with_dtype.copy_and_resolve_references())
  assert throughput.load_config(path, (32, 32, 3), 8, {}, "bfloat16").dtype == "bfloat16"


def test_bad_dtype_is_refused_naming_the_choices(capsys):
  with pytest.raises(SystemExit):
    throughput.parse_args(["--dtypes", "float32,bf16"])
  assert "unknown dtype 'bf16': choose from float32, bfloat16, float16" in capsys.readouterr().err


def test_table_shows_status_rows_and_unreported_memory():
  measured = dict(family="gan", image="28x28x1", dtype="float32", batch=8, devices=1)
  measured.update(ms_per_step=10.0, device_peak_mib=None, torch_peak_mib=12.0)
  waiting = dict(measured, dtype="bfloat16", status="not supported yet")
  del waiting["ms_per_step"]
  head, row, status = throughput.format_table([measured, waiting]).splitlines()
  assert "dtype" in head and "torch MiB" in head
  assert row.split()[-5:] == ["-", "n/a", "-", "12", "-"]  # XLA MiB, dev peak, torch img/s, ...
  assert status.split()[2:] == ["bfloat16", "8", "1", "not", "supported", "yet"]


def test_pytest_summaries_are_read():
  from benchmarks import device_check

  out = "....\nFAILED tests/x.py::t\n1 failed, 40 passed, 2 skipped, 3 deselected in 9.1s\n"
  assert device_check.summarise(out) == {"failed": 1, "passed": 40, "skipped": 2, "deselected": 3}
  assert device_check.summarise("== 1 error in 0.2s ==") == {"errors": 1}
  assert device_check.summarise("") == {}


def test_test_selection_needs_several_devices_for_device_agreement():
  from benchmarks import device_check

  one_gpu = device_check.tests_to_run("gpu", 1, quick=False)
  assert "tests/test_device_agreement.py" not in one_gpu and "golden" in one_gpu[-1]
  assert "tests/test_device_agreement.py" in device_check.tests_to_run("gpu", 8, quick=False)
  assert device_check.tests_to_run("cpu", 8, quick=True) == device_check.QUICK_TESTS


@pytest.mark.parametrize("precision, tf32", [("tf32", True), ("highest", False)])
def test_torch_peer_precision_matches_the_flag(precision, tf32):
  torch = pytest.importorskip("torch")
  from benchmarks import torch_peer

  facts = torch_peer.configure(precision)
  assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
  assert facts["torch_float32_matmul_precision"] == ("high" if tf32 else "highest")
  assert facts["torch_cudnn_benchmark"] == torch.cuda.is_available()


def test_torch_peer_runs_bfloat16_under_autocast():
  torch = pytest.importorskip("torch")
  from benchmarks import torch_peer

  path = throughput.family_configs(["vae"])[0]["vae"]
  config = throughput.load_config(path, (28, 28, 1), 4, {})
  kind, seen = torch_peer.device().type, []
  build = torch_peer.PEERS["vae"]

  def recording_build(*a):  # records the autocast state while each step runs
    step = build(*a)
    return lambda: (
      seen.append((torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))),
      step(),
    )

  with pytest.MonkeyPatch.context() as m:
    m.setitem(torch_peer.PEERS, "vae", recording_build)
    torch_peer.runner("vae", config, 4, warmup=1, dtype="bfloat16")(1)
    assert seen == [(True, torch.bfloat16)] * 2  # the warm-up step and the timed one
    seen.clear()
    torch_peer.runner("vae", config, 4, warmup=1)(1)
    assert [enabled for enabled, _ in seen] == [False, False]
  with pytest.raises(NotImplementedError, match="float32 or bfloat16"):
    torch_peer.runner("vae", config, 4, dtype="float16")


@pytest.mark.slow
def test_device_check_script_runs_on_cpu(tmp_path):
  """The whole one-command check at quick sizes, as CI runs it (minutes on a loaded 2-core VM)."""
  import subprocess

  out = tmp_path / "check.json"
  done = subprocess.run(
    [str(REPO / "benchmarks" / "device_check.sh"), "--no_install", "--quick", "--out", str(out)],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
  assert f"wrote {out}" in done.stdout
  result = json.loads(out.read_text())
  assert result["tests"]["rc"] == 0 and result["tests"]["counts"]["passed"] >= 2
  rows = result["throughput"]["rows"]
  assert len(rows) == 8 and {r["dtype"] for r in rows} == {"float32", "bfloat16"}
  for r in rows:
    assert r.get("status") == "not supported yet" or r["images_per_s"] > 0
