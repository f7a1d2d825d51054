"""Fault injection on the real loop: kills, signals, damaged checkpoints, full disks, concurrent
runs, config drift, divergence and bad input. After each, the run resumes to the same bits as
an uninterrupted one wherever that is the promise (exact equality, never a tolerance)."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, free_port, process_flags

from jaxgen import checkpoint, trainer
from jaxgen import config as config_lib
from jaxgen import lock as lock_lib
from jaxgen.errors import ConfigError, UserError

DCGAN = REPO / "experiments/configs/dcgan_fashion.py"
N, EVERY = 40, 4  # the reference run: 40 steps, a checkpoint every 4, the last 3 kept


def _overrides(fashion_slice: Path, tfds_dir: Path, **extra) -> dict[str, str]:
  o = {
    "data.name": "idx",
    "data.source_dir": fashion_slice,
    "data.data_dir": tfds_dir,
    "model.width": 8,
    "model.latent_dim": 16,
    "batch_size": 32,
    "num_steps": N,
    "log_every": 1,
    "checkpoint_every": EVERY,
    "keep_checkpoints": 3,
    "sample_every": 0,
    "num_grid_samples": 4,
    **extra,
  }
  return {k: str(v) for k, v in o.items()}


@pytest.fixture(scope="module")
def make_config(fashion_slice, tfds_dir):
  return lambda **extra: config_lib.load(DCGAN, _overrides(fashion_slice, tfds_dir, **extra))


@pytest.fixture(scope="module")
def cli_args(fashion_slice, tfds_dir):
  def args(**extra):
    return ["--config", str(DCGAN)] + [
      f"--config.{k}={v}" for k, v in _overrides(fashion_slice, tfds_dir, **extra).items()
    ]

  return args


def _start(*args: str, out: Path) -> subprocess.Popen:
  """`jaxgen ARGS` in a subprocess (8 devices, as in-process), its output into `out`."""
  with out.open("w") as f:
    return subprocess.Popen(
      [sys.executable, "-m", "jaxgen.cli", *args],
      cwd=REPO,
      stdout=f,
      stderr=subprocess.STDOUT,
      text=True,
    )


def _finish(p: subprocess.Popen, out: Path, timeout: float = 240) -> tuple[int, list[str]]:
  rc = p.wait(timeout=timeout)
  return rc, out.read_text().strip().splitlines()


def _wait_for(predicate, p: subprocess.Popen, timeout: float = 120, poll: float = 0.001) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    assert p.poll() is None, "the run ended before the fault could be injected"
    assert time.monotonic() < deadline, "timed out waiting to inject the fault"
    time.sleep(poll)


def _printed_step(out: Path, step: int) -> bool:
  return f" step {step}/" in out.read_text()


def _partial_saves(workdir: Path) -> list[Path]:
  return list((workdir / "checkpoints").glob(f"*{checkpoint.TMP_MARKER}*"))


def _log_rows(workdir: Path) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "d_loss" in r]


def _listing(path: Path) -> dict[str, bytes]:
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(make_config, tmp_path_factory):
  """An uninterrupted run: its workdir and final state on the host."""
  workdir = tmp_path_factory.mktemp("faults") / "reference"
  state = trainer.train_and_evaluate(make_config(), workdir)
  return workdir, jax.device_get(state)


def _assert_same_run(workdir: Path, reference) -> None:
  """Final state bit for bit, one metrics row per step with the same losses, no leftovers."""
  ref_dir, ref_state = reference
  _, _, state = trainer.load_run(workdir)
  # leaves only: the state's static fields (modules, hyperparameters) differ in identity
  chex.assert_trees_all_equal(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(ref_state))
  rows, ref_rows = _log_rows(workdir), _log_rows(ref_dir)
  assert [r["step"] for r in rows] == list(range(1, N + 1))
  for r, ref in zip(rows, ref_rows):
    assert {k: r[k] for k in ("d_loss", "g_loss")} == {k: ref[k] for k in ("d_loss", "g_loss")}
  assert not _partial_saves(workdir)
  assert not (workdir / "lock").exists()


# ------------------------------------------------------------ kills and signals


def _interrupt(
  workdir: Path, args: list[str], out: Path, rng: random.Random, fault: str, rival: Path
) -> tuple[int, list[str], int]:
  """Starts a run and injects `fault` at a random moment; (exit code, output lines, pid)."""
  p = _start("train", "--workdir", str(workdir), *args, out=out)
  _wait_for(lambda: "compiled train_step" in out.read_text(), p)  # leftovers are gone by then
  if fault == "kill9_mid_save":  # as soon as a save's temporary folder appears
    _wait_for(lambda: _partial_saves(workdir), p)
    p.send_signal(signal.SIGKILL)
    return (*_finish(p, out), p.pid)
  time.sleep(rng.uniform(0, 0.15))
  p.send_signal(signal.SIGSTOP)  # frozen at a random step, holding the workdir
  if fault == "kill9":
    p.send_signal(signal.SIGKILL)
  elif fault == "concurrent_then_SIGTERM":
    rc, lines = _finish(_start("train", "--workdir", str(workdir), *args, out=rival), rival)
    assert rc == 1 and len(lines) == 1, lines
    assert lines[0].startswith(f"jaxgen train: error: {workdir} is in use by another run (host "), (
      lines
    )
    assert f", pid {p.pid}, since " in lines[0], lines
    p.send_signal(signal.SIGTERM)
  elif fault == "SIGINT":
    p.send_signal(signal.SIGINT)
  elif fault == "second_signal_mid_save":
    p.send_signal(signal.SIGTERM)
    p.send_signal(signal.SIGCONT)
    while not _partial_saves(workdir) and p.poll() is None:
      time.sleep(0.0002)
    p.send_signal(signal.SIGINT)
  p.send_signal(signal.SIGCONT)
  return (*_finish(p, out), p.pid)


FAULTS = ["kill9_mid_save", "kill9", "concurrent_then_SIGTERM", "SIGINT", "second_signal_mid_save"]


def _check_interrupted(
  workdir: Path,
  fault: str,
  rc: int,
  lines: list[str],
  previous: str | None,
  previous_pid: int | None,
) -> None:
  text = "\n".join(lines)
  assert "Traceback" not in text
  if previous and previous.startswith("kill9"):  # the killed run's lock is found stale
    assert f"took over the stale lock of pid {previous_pid} " in text, text
  if previous == "kill9_mid_save":  # and its unfinished save removed
    assert "the unfinished save of an interrupted run" in text, text
  if fault.startswith("kill9"):
    assert rc == -signal.SIGKILL, text
  elif fault == "second_signal_mid_save":  # the second signal lands in the save, or after it
    assert (rc, lines[-1][:29]) in (
      (130, "jaxgen train: second SIGINT: "),
      (143, "jaxgen train: stopped by SIGT"),
    ), text
  else:
    name = fault.split("_")[-1]
    assert rc == 128 + getattr(signal, name), text
    assert lines[-1].startswith(f"jaxgen train: stopped by {name} at step "), text
    step = int(lines[-1].split(" at step ")[1].split(":")[0])
    assert lines[-1].endswith(
      f"saved {workdir / 'checkpoints' / str(step)}; run the same command to resume"
    )
    assert checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).latest_step() == step
    assert [r["step"] for r in _log_rows(workdir)][-1] == step  # every step done is kept
    assert step < N


def _interrupted_runs(reference, args, tmp_path, seed: int, faults: list[str]) -> None:
  rng = random.Random(seed)
  workdir = tmp_path / "run"
  previous, previous_pid = None, None
  for i, fault in enumerate(faults):
    out = tmp_path / f"{i}_{fault}.txt"
    rc, lines, pid = _interrupt(workdir, args, out, rng, fault, tmp_path / f"{i}_rival.txt")
    _check_interrupted(workdir, fault, rc, lines, previous, previous_pid)
    if fault == "kill9_mid_save":
      assert _partial_saves(workdir), "the kill did not land inside a save"
    previous, previous_pid = fault, pid
  rc, lines = _finish(
    _start("train", "--workdir", str(workdir), *args, out=tmp_path / "end.txt"),
    tmp_path / "end.txt",
  )
  assert rc == 0, lines
  _assert_same_run(workdir, reference)


def test_kills_and_signals_resume_to_the_same_bits(reference, cli_args, tmp_path):
  """One run interrupted five ways at random moments (kill -9 in and out of saves, a second run
  on its workdir then SIGTERM, SIGINT, a second signal inside the stop's save), then completed."""
  _interrupted_runs(reference, cli_args(), tmp_path, 12, FAULTS)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4))
def test_many_random_kills_resume_to_the_same_bits(reference, cli_args, tmp_path, seed):
  faults = random.Random(seed).choices(FAULTS, k=6)
  _interrupted_runs(reference, cli_args(), tmp_path, seed, faults)


# ----------------------------------------------------------- damaged checkpoints


def _damage(step_dir: Path, how: str, where: float = 0.5) -> None:
  """Overwrites 4 bytes at `where` of, or truncates, the checkpoint's largest array data file."""
  data = max(
    (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"),
    key=lambda p: p.stat().st_size,
  )
  raw = bytearray(data.read_bytes())
  if how == "overwrite":
    middle = int(len(raw) * where)
    raw[middle : middle + 4] = bytes(b ^ 0xFF for b in raw[middle : middle + 4])
  else:
    raw = raw[: len(raw) // 2]
  data.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_damaged_checkpoints_are_skipped_and_the_run_resumes_to_the_same_bits(
  reference, make_config, tmp_path, capsys, how
):
  # The data files are compressed: 4 flipped bytes may break a compressed block (a decode
  # error, "cannot be restored") or decode to wrong values, which only the checksums catch.
  # Which one depends on where the bytes fall, and the compressed layout moves with the float32
  # values (they differ between CPUs), so "overwrite" tries places until one decodes; that one
  # must then be caught by its SHA-256.
  why = (
    "is damaged: 1 array leaves fail their SHA-256" if how == "overwrite" else "cannot be restored"
  )
  for where in (0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9) if how == "overwrite" else (0.5,):
    workdir = tmp_path / f"run_{where}"
    shutil.copytree(reference[0], workdir)
    _damage(workdir / f"checkpoints/{N}", how, where)
    before = _listing(workdir)
    capsys.readouterr()
    _, _, state = trainer.load_run(workdir)  # what sample / evaluate / report use
    out = capsys.readouterr().out.splitlines()
    if how == "truncate" or not out or "cannot be restored" not in out[0]:
      break
  assert out[0].startswith(f"skipping checkpoint {workdir / 'checkpoints' / str(N)} {why}"), out
  assert out[1] == f"using {workdir / 'checkpoints' / str(N - EVERY)}, the newest good checkpoint"
  assert len(out) == 2 and int(state.step) == N - EVERY
  assert _listing(workdir) == before  # nothing on disk changed

  state = trainer.train_and_evaluate(make_config(), workdir)
  out = capsys.readouterr().out
  assert f"resumed from {workdir / 'checkpoints' / str(N - EVERY)}\n" in out
  assert f"moved the damaged checkpoint aside to {workdir / 'damaged_checkpoints' / str(N)}" in out
  assert int(state.step) == N
  _assert_same_run(workdir, reference)
  assert (workdir / "damaged_checkpoints" / str(N) / "state").is_dir()  # kept for inspection


def test_no_good_checkpoint_is_one_line_and_changes_nothing(
  reference, make_config, tmp_path, capsys
):
  workdir = tmp_path / "run"
  shutil.copytree(reference[0], workdir)
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [N - 2 * EVERY, N - EVERY, N]
  for step in steps:
    _damage(workdir / f"checkpoints/{step}", "overwrite")
  before = _listing(workdir)
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"none of the checkpoints in .* restores "
    r"and verifies; move that folder aside",
  ) as e:
    trainer.train_and_evaluate(make_config(num_steps=N + 4), workdir)
  assert "\n" not in str(e.value)
  assert len(capsys.readouterr().out.splitlines()) == 3  # one "skipping" line each
  assert _listing(workdir) == before


# ------------------------------------------------------------------- full disk


def test_full_disk_during_a_save_is_one_line_and_the_run_resumes(
  reference, make_config, tmp_path, monkeypatch
):
  workdir = tmp_path / "run"
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 2 * EVERY:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory / str(step)))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(checkpoint.CheckpointError) as e:
    trainer.train_and_evaluate(make_config(), workdir)
  assert str(e.value).startswith(
    f"cannot write a checkpoint ({workdir / 'checkpoints' / str(2 * EVERY)}: No space left on "
    f"device); the checkpoints of steps [{EVERY}] are intact; free space"
  )
  assert checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == [EVERY]
  assert not (workdir / "lock").exists()

  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)  # space freed
  trainer.train_and_evaluate(make_config(), workdir)
  _assert_same_run(workdir, reference)


# ----------------------------------------------------------------- config drift


@pytest.fixture(scope="module")
def short_run(make_config, tmp_path_factory):
  """A finished 8-step run; each test works on a copy."""
  workdir = tmp_path_factory.mktemp("short") / "run"
  seen = {}

  def eval_fn(state, step):  # the final checkpoint must be on disk before evaluation
    seen[step] = sorted(
      int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
    )
    return {"n": 1}

  trainer.train_and_evaluate(make_config(num_steps=8, eval_every=8), workdir, eval_fn=eval_fn)
  assert seen == {8: [4, 8]}
  return workdir


@pytest.mark.parametrize(
  "field,value,stored",
  [
    ("batch_size", 16, 32),
    ("model.loss", "hinge", "'nonsaturating'"),
    ("optim.g_lr", 1e-3, 0.0002),
    ("seed", 1, 0),
    ("model.width", 16, 8),
  ],
)
def test_config_drift_is_refused_in_one_line(
  short_run, make_config, tmp_path, field, value, stored
):
  workdir = tmp_path / "run"
  shutil.copytree(short_run, workdir)
  before = _listing(workdir)
  with pytest.raises(ConfigError) as e:
    trainer.train_and_evaluate(make_config(num_steps=12, **{field: value}), workdir)
  shown = repr(value) if isinstance(value, str) else value
  assert str(e.value).startswith(
    f"config.{field} is {stored} in this run's config.json but "
    f"{shown} was requested; only step counts and cadences"
  )
  assert _listing(workdir) == before


def test_cadences_may_change_and_are_logged(short_run, make_config, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(short_run, workdir)
  capsys.readouterr()
  state = trainer.train_and_evaluate(
    make_config(num_steps=10, log_every=2, checkpoint_every=5), workdir
  )
  out = capsys.readouterr().out
  assert int(state.step) == 10
  assert (
    "resuming with config.checkpoint_every: 4 -> 5\nresuming with config.eval_every: 8 -> 0\n"
    "resuming with config.log_every: 1 -> 2\nresuming with config.num_steps: 8 -> 10\n"
  ) in out
  stored = json.loads((workdir / "config.json").read_text())
  assert (stored["num_steps"], stored["log_every"], stored["batch_size"]) == (10, 2, 32)
  assert [r["step"] for r in _log_rows(workdir)] == [1, 2, 3, 4, 5, 6, 7, 8, 10]


@pytest.mark.parametrize("num_steps", [4, 8])
def test_num_steps_at_or_below_the_run_trains_nothing(
  short_run, make_config, tmp_path, capsys, num_steps
):
  workdir = tmp_path / "run"
  shutil.copytree(short_run, workdir)
  before = _listing(workdir)
  capsys.readouterr()
  state = trainer.train_and_evaluate(make_config(num_steps=num_steps), workdir)
  out = capsys.readouterr().out.splitlines()
  assert int(state.step) == 8
  assert out[-1] == (
    f"{workdir} is at step 8 already and num_steps is {num_steps}: nothing to "
    f"train (raise --config.num_steps to continue)"
  )
  assert not any(line.startswith("done") for line in out)
  assert _listing(workdir) == before


# ------------------------------------------------------------------- divergence


def test_a_diverging_run_keeps_only_finite_checkpoints(make_config, tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(trainer.TrainingDiverged) as e:
    trainer.train_and_evaluate(
      make_config(checkpoint_every=1, **{"optim.g_lr": 1e39, "optim.d_lr": 1e39}), workdir
    )
  # the discriminator's update comes first, so the generator's loss of step 1 is already NaN
  assert str(e.value).startswith(
    "g_loss became nan at step 1; training stopped and nothing was saved; lower the learning rate"
  )
  assert checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).all_steps() == []


def test_exploding_finite_losses_stop_the_run(short_run, make_config, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(short_run, workdir)
  last = _log_rows(workdir)[-1]
  with pytest.raises(
    trainer.TrainingDiverged,
    match=r"^d_loss became [0-9.]+, g_loss became "
    r"[0-9.]+ \(above "
    r"config.max_loss=0.1\) at step 9; training stopped and the checkpoint of "
    r"step 8 is kept",
  ):
    trainer.train_and_evaluate(make_config(num_steps=12, max_loss=0.1), workdir)
  assert min(last["d_loss"], last["g_loss"]) > 0.1
  steps = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True).all_steps()
  assert steps == [8, 4]
  for step in steps:
    _, _, state = trainer.load_run(workdir, step)
    assert trainer.nonfinite_leaves(state) == []


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("num_steps", 0, "config.num_steps=0: must be positive"),
    ("num_steps", -5, "config.num_steps=-5: must be positive"),
    ("checkpoint_every", 0, "config.checkpoint_every=0: must be positive"),
    ("log_every", 0, "config.log_every=0: must be positive"),
    ("batch_size", 0, "config.batch_size=0: must be positive"),
    ("batch_size", "devices + 1", "batch_size {b} does not divide over {n} devices"),
    ("batch_size", 1024, "batch_size 1024 exceeds the 512 training examples of 'idx'"),
    ("sample_every", -1, "config.sample_every=-1: must be >= 0"),
    ("max_loss", 0.0, "config.max_loss=0.0: must be positive"),
  ],
)
def test_bad_config_is_one_line_before_anything_is_written(
  make_config, tmp_path, field, value, message
):
  if value == "devices + 1":  # indivisible by whatever device count the suite runs on
    n = jax.device_count()
    value, message = n + 1, message.format(b=n + 1, n=n)
  with pytest.raises(ConfigError) as e:
    trainer.train_and_evaluate(make_config(**{field: value}), tmp_path / "run")
  assert str(e.value).startswith(message) and "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir_is_one_line(make_config, tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(
    UserError,
    match=r"^cannot write to .*/file/run \(Not a directory\); "
    r"choose a writable --workdir$",
  ):
    trainer.train_and_evaluate(make_config(), tmp_path / "file" / "run")


def test_cli_bad_input_is_one_line_and_exit_1(short_run, cli_args, tmp_path):
  p = _start(
    "train", "--workdir", str(tmp_path / "run"), *cli_args(num_steps=0), out=tmp_path / "train.txt"
  )
  rc, lines = _finish(p, tmp_path / "train.txt")
  assert (rc, lines) == (
    1,
    ["jaxgen train: error: config.num_steps=0: must be positive; set --config.num_steps=..."],
  )
  assert not (tmp_path / "run").exists()
  for num in ("0", "-1"):
    p = _start("sample", "--workdir", str(short_run), "--num", num, out=tmp_path / "sample.txt")
    rc, lines = _finish(p, tmp_path / "sample.txt")
    assert (rc, lines) == (1, [f"jaxgen sample: error: --num {num}: must be at least 1"])


# ------------------------------------------------------------------------ lock


def _dead_pid() -> int:
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
  first = lock_lib.WorkdirLock(tmp_path)
  assert first.acquire() is None
  holder = json.loads((tmp_path / "lock").read_text())
  assert holder["pid"] == os.getpid()
  with pytest.raises(
    lock_lib.LockError,
    match=rf"^{tmp_path} is in use by another run \(host "
    rf"{holder['host']}, pid {os.getpid()}, since ",
  ):
    lock_lib.WorkdirLock(tmp_path).acquire()
  first.release()
  assert not (tmp_path / "lock").exists()

  dead = _dead_pid()  # a lock file left by a killed run: no flock, a pid that is gone
  (tmp_path / "lock").write_text(json.dumps({"host": holder["host"], "pid": dead}))
  second = lock_lib.WorkdirLock(tmp_path)
  assert second.acquire() == (
    f"took over the stale lock of pid {dead} on {holder['host']} (no longer running)"
  )
  second.release()

  (tmp_path / "lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
  with pytest.raises(lock_lib.LockError, match=r"names a run on host elsewhere \(pid 1\)"):
    lock_lib.WorkdirLock(tmp_path).acquire()


# ------------------------------------------------------------- several processes


def _two_processes(workdir: Path, args: list[str], out: Path) -> list[subprocess.Popen]:
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = []
  for i in range(2):
    with out.with_suffix(f".{i}.txt").open("w") as f:
      procs.append(
        subprocess.Popen(
          [
            sys.executable,
            "-m",
            "jaxgen.cli",
            "train",
            "--workdir",
            str(workdir),
            *args,
            *process_flags(port, i),
          ],
          cwd=REPO,
          env=env,
          stdout=f,
          stderr=subprocess.STDOUT,
          text=True,
        )
      )
  return procs


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(cli_args, tmp_path):
  args = cli_args()
  for p in _two_processes(tmp_path / "straight", args, tmp_path / "straight"):
    assert p.wait(timeout=600) == 0
  procs = _two_processes(tmp_path / "run", args, tmp_path / "cut")
  _wait_for(lambda: _printed_step(tmp_path / "cut.0.txt", 3), procs[0], timeout=600)
  procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
  assert [p.wait(timeout=600) for p in procs] == [143, 143]
  last = {(tmp_path / f"cut.{i}.txt").read_text().strip().splitlines()[-1] for i in range(2)}
  assert len(last) == 1 and last.pop().startswith("jaxgen train: stopped by SIGTERM at step ")
  for p in _two_processes(tmp_path / "run", args, tmp_path / "end"):
    assert p.wait(timeout=600) == 0
  _, _, a = trainer.load_run(tmp_path / "straight")
  _, _, b = trainer.load_run(tmp_path / "run")
  chex.assert_trees_all_equal(
    jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
  )
  assert [r["step"] for r in _log_rows(tmp_path / "run")] == list(range(1, N + 1))


# -------------------------------------------------------------- stop latency


def test_the_loop_runs_at_most_max_steps_ahead_of_the_device(make_config, tmp_path, monkeypatch):
  """Steps are dispatched asynchronously and metrics read only every log_every steps; a loop
  that ran ahead without bound would queue up to log_every steps, and a SIGTERM's save would
  wait for all of them (on a slow step, past a preemption's grace period). Each step here
  carries a long sequential computation so the device lags the Python loop, which must wait."""
  from jaxgen import steps

  real = steps.get_family("gan")

  def slow(state, batch, key):
    state, metrics = real.train_step(state, batch, key)
    # a chain of 10^6 dependent scalar steps: ~18 ns each here, so ~20 ms per device whatever the
    # core count (no thread can share it), against ~1 ms of the loop's own work per step; a host
    # callback would not do, since it makes XLA:CPU's dispatch synchronous
    lag = jax.lax.fori_loop(0, 10**6, lambda i, x: jnp.sin(x), metrics["d_loss"])
    return state, {**metrics, "lag": lag}

  family = types.ModuleType("slow_gan")
  family.__dict__.update({k: getattr(real, k) for k in steps.CONTRACT}, train_step=slow)
  monkeypatch.setattr(steps, "get_family", lambda name: family)
  compile_real, pending, in_flight = trainer.compile_train_step, [], []

  def compile_counting(*args, **kwargs):
    step, stats = compile_real(*args, **kwargs)

    def counted(state, batch, key):
      state, metrics = step(state, batch, key)
      pending.append(metrics["lag"])
      in_flight.append(sum(not m.is_ready() for m in pending))
      return state, metrics

    return counted, stats

  monkeypatch.setattr(trainer, "compile_train_step", compile_counting)
  config = make_config(num_steps=30, log_every=100, checkpoint_every=100)
  trainer.train_and_evaluate(config, tmp_path / "run")
  # == rather than <=: the device must have lagged, or the test would not test the bound
  assert len(in_flight) == 30 and max(in_flight) == trainer.MAX_STEPS_AHEAD + 1, in_flight
