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

TINY = ["--batch_sizes", "8", "--repeats", "2", "--steps", "1", "--warmup", "1", "--quiet"]


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
    s = r["images_per_s_spread"]  # over the repeats; the median is the row's figure
    assert s["min"] <= s["median"] == r["images_per_s"] <= s["max"]
    assert set(r["load"]) == {"before", "during", "after"} and isinstance(r["loaded"], bool)
    assert r["other_cores"] == max(x["other_cores"] for x in r["load"].values())
  # the GAN step (D and G passes) costs several times the VAE's at these sizes
  assert rows["gan"]["gflop_per_step"] > 2 * rows["vae"]["gflop_per_step"]
  table = capsys.readouterr().out
  assert "img/s" in table and "GFLOP/s" in table and "matmul peak" in table


@pytest.mark.slow  # a subprocess per device count, each compiling every family (~1 min)
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
  argv = ["--configs", "vae_fashion", "--steps", "4", "--repeats", "2", "--out", str(out)]
  argv += ["--quiet", "--workdir", str(tmp_path / "runs")]
  result = loop.main(argv + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")])
  assert json.loads(out.read_text()) == result
  assert result["notes"] == [] and result["goal"] == 0.95
  (row,) = result["rows"]
  assert row["config"] == "vae_fashion" and row["family"] == "vae" and row["batch"] == 8
  assert row["devices"] == jax.device_count() and row["num_workers"] == 0 and row["in_memory"]
  # a warm-up session to step 2, then one resumed session per round (to 8, then to 14), each
  # timed from its first log point
  assert row["warmup"] == 4 and row["steps"] == 4
  sessions = runlog.read_provenance(tmp_path / "runs/vae_fashion")
  assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 2), (2, 8), (8, 14)]
  assert [(s["loop"]["from_step"], s["loop"]["to_step"]) for s in sessions[1:]] == [
    (4, 8),
    (10, 14),
  ]
  rounds = row["rounds"]
  for r, s in zip(rounds, sessions[1:]):
    assert r["loop_ms_per_step"] == pytest.approx(1e3 * s["loop"]["seconds"] / 4)
    assert r["ratio"] == pytest.approx(r["step_ms_per_step"] / r["loop_ms_per_step"])
  assert row["loop_ms_per_step"] == pytest.approx(
    np.median([r["loop_ms_per_step"] for r in rounds])
  )
  assert row["ratio_min"] == min(r["ratio"] for r in rounds) <= row["ratio_max"]
  for what in ("loop", "step"):
    assert row[f"{what}_images_per_s"] == pytest.approx(8e3 / row[f"{what}_ms_per_step"])
  assert row["ratio"] == pytest.approx(np.median([r["ratio"] for r in rounds]))
  assert row["meets_goal"] == ("yes" if row["ratio"] >= 0.95 else "no")
  table = capsys.readouterr().out.splitlines()
  header = next(i for i, line in enumerate(table) if "loop/step" in line)
  assert (
    table[header].split()
    == "config batch dev steps loop img/s step img/s loop/step min max >=95%".split()
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


@pytest.mark.slow  # the benchmark's fairness, not jaxgen's behaviour (~1 min for the four)
@pytest.mark.parametrize("family", ["gan", "vae", "classifier", "draw"])
def test_torch_peers_train_the_same_architecture(family):
  pytest.importorskip("torch")
  from benchmarks import torch_peer
  from jaxgen import steps

  path = throughput.family_configs([family])[0][family]
  config = throughput.load_config(path, (28, 28, 1), 4, {})
  batch = {"image": jnp.zeros((4, 28, 28, 1)), "label": jnp.zeros((4,), jnp.int32)}
  state = steps.get_family(family).init_state(config, jax.random.key(0), batch)
  shapes = _flax_param_shapes(state)
  # every variant builds the same modules (the compile variant compiles the eager one's step,
  # see test_compile_peer_compiles_the_same_step): layer by layer, in flax's layout
  for variant in ("eager", "fused"):
    step = torch_peer.PEERS[family](config, 4, torch_peer.options(family, variant))
    assert step.param_shapes == shapes, variant
    assert step.num_params == sum(int(np.prod(s)) for s in shapes) > 0
  r = torch_peer.measure(family, config, 4, repeats=3, steps=1, warmup=1, variant="fused")
  assert r["images_per_s"] == pytest.approx(4e3 / r["ms_per_step"], rel=1e-9)
  s = r["ms_per_step_spread"]
  assert s["min"] <= s["median"] == r["ms_per_step"] <= s["max"]
  assert r["threads"] >= 1 and r["setup_s"] > 0
  fused = "fused" if torch_peer.fused_optimizer_supported() else "foreach"
  assert r["optimizer"] == {fused: True}
  assert r["channels_last"] == torch_peer.CHANNELS_LAST[family]


def _tiny_vae():
  path = throughput.family_configs(["vae"])[0]["vae"]
  return throughput.load_config(path, (28, 28, 1), 4, {"model.width": "8", "model.latent_dim": "4"})


def test_peer_variants_match_the_benchmarks_names():
  pytest.importorskip("torch")
  from benchmarks import torch_peer

  assert throughput.PEER_VARIANTS == torch_peer.VARIANTS
  assert torch_peer.options("vae", "eager") == torch_peer.Options()  # PyTorch's defaults
  assert torch_peer.options("draw", "compile").optimizer == (("foreach", True),)
  assert not torch_peer.options("draw", "fused").channels_last  # no convolutions
  with pytest.raises(ValueError, match="unknown PyTorch peer variant 'jit': choose from eager"):
    torch_peer.options("vae", "jit")


def test_compile_peer_compiles_the_same_step(monkeypatch):
  """Structure, without inductor's minutes on a loaded CPU: the compile variant hands the
  very step function the other variants run (same modules, same parameters) to
  torch.compile with the chosen mode, and warms it up at least twice before timing."""
  torch = pytest.importorskip("torch")
  from benchmarks import torch_peer

  compiled, calls = [], []

  def fake_compile(fn, mode):
    compiled.append((fn, mode))
    return lambda: (calls.append(1), fn())[1]

  monkeypatch.setattr(torch, "compile", fake_compile)
  monkeypatch.setattr(torch_peer, "compile_unavailable", lambda: None)
  config = _tiny_vae()
  run = torch_peer.runner(
    "vae", config, 4, warmup=1, variant="compile", compile_mode="max-autotune"
  )
  ((step, mode),) = compiled
  eager = torch_peer.PEERS["vae"](config, 4)
  assert mode == "max-autotune" and run.facts["compile_mode"] == "max-autotune"
  assert (step.num_params, step.param_shapes) == (eager.num_params, eager.param_shapes)
  assert len(calls) == 2 and run.setup_s > 0  # the compiling calls are warm-up, not timed
  run(3)
  assert len(calls) == 5


def test_compile_peer_without_a_compiler_is_skipped_with_the_reason(monkeypatch):
  pytest.importorskip("torch")
  from benchmarks import torch_peer

  if torch_peer.device().type != "cpu":
    pytest.skip("the C++ compiler check is for the CPU")
  monkeypatch.setattr(torch_peer.shutil, "which", lambda name: None)
  with pytest.raises(NotImplementedError, match="needs a C\\+\\+ compiler"):
    torch_peer.runner("vae", _tiny_vae(), 4, variant="compile")
  args = throughput.parse_args(["--peers", "eager,compile", "--warmup", "1"])
  runs, facts = throughput.torch_runners("vae", _tiny_vae(), args)
  assert list(runs) == ["eager"] and "C++ compiler" in facts["torch_compile_note"]
  assert throughput.torch_runners("nonesuch", _tiny_vae(), args) == (
    {},
    {"torch_note": "no PyTorch peer for nonesuch"},
  )


@pytest.mark.slow
def test_compile_peer_matches_the_eager_peer_after_one_step():
  """A real torch.compile of the VAE step (~80 s of inductor C++ builds on a loaded 2-core
  VM; less once inductor's on-disk cache holds them). Same seed, so the same weights, batch and noise (inductor draws eager's random
  numbers with fallback_random); the losses before and after one Adam step agree to float32
  summation error: the loss sums 4 x 784 per-pixel terms, whose reordering by the compiler
  moves the sum by about sqrt(n) ulps relative, n = 3136 (56 * 2^-23 = 6.7e-6)."""
  torch = pytest.importorskip("torch")
  from benchmarks import torch_peer

  if why := torch_peer.compile_unavailable():
    pytest.skip(why)
  config, losses = _tiny_vae(), {}
  for variant in ("eager", "compile"):
    torch.manual_seed(0)
    step = torch_peer.PEERS["vae"](config, 4, torch_peer.options("vae", variant))
    if variant == "compile":
      step = torch.compile(step, mode=torch_peer.COMPILE_MODE)
    torch.manual_seed(1)
    with torch._inductor.config.patch(fallback_random=True):
      losses[variant] = [step().item() for _ in range(2)]
  rtol = np.sqrt(4 * 28 * 28) * np.finfo(np.float32).eps
  np.testing.assert_allclose(losses["compile"], losses["eager"], rtol=rtol)
  assert losses["eager"][1] != losses["eager"][0]  # the second loss is after an update


# -------------------------------------------------------------------- load and spread


def test_machine_load_returns_sane_numbers():
  import os
  import time

  from benchmarks import timing

  sample = timing.machine_load(0.2)
  assert sample["window_s"] >= 0.2 and sample["other_cores"] >= 0
  if "busy_cores" not in sample:
    pytest.skip("no /proc/stat: only the load average is known here")
  tick = os.sysconf("SC_CLK_TCK")
  slack = 2 / tick / sample["window_s"]  # each counter is read to the tick, twice
  assert 0 <= sample["own_cores"] <= sample["busy_cores"] + slack
  assert sample["busy_cores"] <= sample["cores"] + slack
  assert sample["other_cores"] == pytest.approx(
    max(sample["busy_cores"] - sample["own_cores"], 0), abs=1e-9
  )
  assert all(c >= timing.BUSY_PROCESS_CORES for _, c in sample["busy_processes"])
  # this process's own work is counted as its own, not as another's
  snap, cpu0 = timing.load_snapshot(), time.process_time()
  t_end = time.perf_counter() + 0.3
  while time.perf_counter() < t_end:
    pass
  spun = timing.machine_load(since=snap)
  own = (time.process_time() - cpu0) / spun["window_s"]
  assert spun["own_cores"] >= own - 2 / tick / spun["window_s"]
  assert timing.is_loaded(dict(other_cores=0.6)) and not timing.is_loaded(dict(other_cores=0.4))


def test_step_runner_runs_a_cycle_of_steps_in_turn_across_calls():
  """As the loop runs a family's step_variants: step n is cycle[n % len], phase kept."""
  import jax.numpy as jnp

  from benchmarks import timing

  calls = []
  variant = lambda v: lambda s, b, k: (calls.append(v) or s + 1, {})
  run = timing.step_runner([variant("r1"), variant("plain")], jnp.int32(0), None, None)
  run(3)
  run(2)
  assert calls == ["r1", "plain", "r1", "plain", "r1"]
  single = timing.step_runner(variant("one"), jnp.int32(0), None, None)
  single(2)
  assert calls[-2:] == ["one", "one"]


def test_spread_is_min_median_max():
  from benchmarks import timing

  assert timing.spread([3.0, 1.0, 2.0, 10.0]) == dict(min=1.0, median=2.5, max=10.0)


def _sample(other: float) -> dict:
  return dict(
    window_s=0.5,
    loadavg=3.5,
    cores=2,
    busy_cores=other + 0.1,
    own_cores=0.1,
    other_cores=other,
    busy_processes=[["stress", other]],
  )


def _fake_bench(monkeypatch, other_cores: float) -> None:
  """throughput.main without compiling or timing anything: fixed step times (jaxgen 8, 10,
  12 ms; the eager peer 20 ms; the compile peer 15, 16, 20 ms) and a simulated machine load."""
  from benchmarks import timing

  load = lambda window_s=0.5, since=None: _sample(other_cores)
  monkeypatch.setattr(timing, "machine_load", load)
  monkeypatch.setattr(throughput, "machine_load", load)
  monkeypatch.setattr(
    throughput, "jax_runner", lambda *a: (None, dict(compile_s=1.0, gflop_per_step=0.5))
  )
  monkeypatch.setattr(
    throughput,
    "torch_runners",
    lambda family, config, args, dtype: (
      {v: None for v in args.peers},
      {"torch_compile_setup_s": 42.0} if "compile" in args.peers else {},
    ),
  )
  times = dict(jax=[0.010, 0.008, 0.012], torch_eager=[0.02] * 3)
  times["torch_compile"] = [0.016, 0.015, 0.020]
  monkeypatch.setattr(
    throughput, "interleaved", lambda runners, r, s: {k: times[k] for k in runners}
  )
  peak = lambda dtype, size: dict(
    matmul_size=8, matmul_peak_gflops=100.0, matmul_peak_load=timing.watched(lambda: None)[1]
  )
  monkeypatch.setattr(throughput, "matmul_peak_gflops", peak)


BENCH = ["--families", "vae", "--batch_sizes", "8", "--peers", "eager,compile", "--quiet"]


def test_rows_show_each_peer_variant_and_jaxgen_over_the_best(tmp_path, monkeypatch, capsys):
  _fake_bench(monkeypatch, other_cores=0.1)
  result = throughput.main([*BENCH, "--json", str(tmp_path / "t.json")])
  (row,) = result["rows"]
  assert row["images_per_s_spread"] == pytest.approx(dict(min=8 / 0.012, median=800, max=1000))
  assert row["ms_per_step_spread"] == pytest.approx(dict(min=8, median=10, max=12))
  assert row["torch_eager_images_per_s"] == pytest.approx(400)
  assert row["torch_compile_images_per_s"] == pytest.approx(500)
  assert row["torch_best"] == "compile" and row["ratio"] == pytest.approx(1.6)
  assert row["ratio_eager"] == pytest.approx(2.0) and row["ratio_compile"] == pytest.approx(1.6)
  assert row["loaded"] is False and set(row["load"]) == {"before", "during", "after"}
  assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["load"]["during"] == _sample(0.1)
  out, err = capsys.readouterr()
  lines = out.splitlines()
  head = next(i for i, x in enumerate(lines) if "jax/best torch" in x)
  assert lines[head - 1] == throughput.TABLE_NOTE
  for column in ("torch eager img/s", "torch compile img/s", "torch compile s", "other cores"):
    assert column in lines[head]
  assert "800 (667-1000)" in lines[head + 1] and "400 (400-400)" in lines[head + 1]
  assert lines[head + 1].split()[-2:] == ["compile", "0.1"] and "1.60x" in lines[head + 1]
  assert "42.0" in lines[head + 1]  # the compile time, in its own column
  assert "warning" not in err and "(loaded)" not in out


def test_rows_taken_under_load_are_marked_and_warned(tmp_path, monkeypatch, capsys):
  _fake_bench(monkeypatch, other_cores=1.7)
  result = throughput.main([*BENCH, "--json", str(tmp_path / "t.json")])
  (row,) = result["rows"]
  assert row["loaded"] is True and row["other_cores"] == 1.7
  assert result["machine"]["matmul_peak_loaded"] is True
  assert result["load_at_start"]["other_cores"] == 1.7
  out, err = capsys.readouterr()
  assert "1.7 (loaded)" in out and "matmul peak float32 100 (loaded) GFLOP/s" in out
  assert "warning: starting under load (1.70 other busy cores" in err
  assert "warning: vae 28x28x1 float32 batch 8 (1 device) was measured under load (1.70" in err
  assert "busiest: stress 1.70" in err


def test_require_quiet_refuses_a_busy_machine_unless_forced(tmp_path, monkeypatch):
  _fake_bench(monkeypatch, other_cores=1.7)
  argv = [*BENCH, "--json", str(tmp_path / "t.json"), "--require_quiet"]
  with pytest.raises(SystemExit) as refused:
    throughput.main(argv)
  message = str(refused.value)
  assert "\n" not in message and message.startswith("the machine is busy: 1.70 other busy cores")
  assert "over the 0.5 allowed by --require_quiet" in message and "--force" in message
  assert not (tmp_path / "t.json").exists()
  assert throughput.main([*argv, "--force"])["rows"][0]["loaded"] is True
  _fake_bench(monkeypatch, other_cores=0.2)  # a quiet machine starts
  assert throughput.main(argv)["rows"][0]["loaded"] is False


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
  table = throughput.format_table([measured, waiting], peers=("eager",))
  note, head, row, status = table.splitlines()
  assert note == throughput.TABLE_NOTE and "python -m benchmarks.loop" in note
  assert "fixed batch" in note and "dtype" in head and "torch MiB" in head
  # XLA MiB, dev peak, torch eager img/s, torch MiB, jax/best torch, other cores
  assert row.split()[-6:] == ["-", "n/a", "-", "12", "-", "-"]
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
