"""The one training loop, shared by every family.

    train_and_evaluate(config, workdir)

builds the mesh, the data iterator and the family's state (already sharded), compiles
the family's `train_step` once ahead of time, then loops: step, log, sample grid,
checkpoint. Running it again on the same workdir resumes from the last checkpoint,
data position included, so a resumed run sees the batches an uninterrupted one would.
"""

import collections
import functools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import checkpoint, data, ops, parallel, runlog, steps, viz
from jaxgen import config as config_lib
from jaxgen import lock as lock_lib
from jaxgen.errors import ConfigError, Preempted, UserError

# Steps dispatched and not yet finished when the loop moves on. Two keep the device busy while
# the next batch is read; unbounded, the loop would queue up to log_every steps (metrics are
# read only then) and a SIGTERM's save would wait for all of them, on a slow step for longer
# than a preemption's grace period (30 s on Cloud TPU VMs).
MAX_STEPS_AHEAD = 2


class TrainingDiverged(UserError, FloatingPointError):
  """A loss became NaN, infinite or larger than config.max_loss, or the state non-finite."""


# --------------------------------------------------------------------- set-up


def _data_kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(
    source_dir=config.data.source_dir or None,
    data_dir=config.data.data_dir or None,
    label_feature=config.data.get("label_feature", "label"),
  )


def load_data(config: ml_collections.ConfigDict, split: str) -> tuple[Any, data.DatasetInfo]:
  """The split's source and info; checks the config's image shape against the data."""
  source, info = data.load(config.data.name, split, **_data_kwargs(config))
  want = config.data.image_shape
  if want is not None and tuple(want) != tuple(info.image_shape):
    raise ConfigError(
      f"config.data.image_shape {tuple(want)} does not match {config.data.name!r}, whose images "
      f"are {tuple(info.image_shape)}; set --config.data.image_shape="
      f"'{tuple(info.image_shape)}' or choose the data set the config was written for"
    )
  return source, info


def train_loader(config: ml_collections.ConfigDict, source: Any) -> data.Loader:
  """The loader `jaxgen train` reads: this process's slice of each shuffled global batch, with
  config.data's worker threads and prefetch depth, cut from the split in memory unless
  config.data.in_memory is False."""
  if config.data.get("in_memory", True):
    source = data.in_memory(source)
  return data.make_loader(
    source,
    batch_size=config.batch_size,
    seed=config.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_workers=config.data.get("num_workers", 0),
    prefetch=config.data.get("prefetch", 4),
  )


def example_batch(config: ml_collections.ConfigDict) -> dict:
  """A one-example batch of the right shapes, to initialise models without data."""
  return {
    "image": jnp.zeros((1, *config.data.image_shape), jnp.float32),
    "label": jnp.zeros((1,), jnp.int32),
  }


def _init_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array], Any]:
  family = steps.get_family(config.model.family)
  return functools.partial(family.init_state, config, sample_batch=example_batch(config))


def abstract_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
  """The state as ShapeDtypeStructs replicated over `mesh` (no compute): what restores fill."""
  abstract = jax.eval_shape(_init_fn(config), jax.random.key(0))
  return checkpoint.abstract_like(abstract, parallel.replicated(mesh))


def create_state(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, key: jax.Array
) -> tuple[Any, Any]:
  """(state, its sharding): the family's state initialised directly replicated over `mesh`.

  The sharding is one NamedSharding, a pytree prefix for the whole (replicated) state.
  """
  sharding = parallel.replicated(mesh)
  return jax.jit(_init_fn(config), out_shardings=sharding)(key), sharding


def compile_train_step(
  family: Any,
  state: Any,
  shardings: Any,
  batch: dict,
  mesh: jax.sharding.Mesh,
  eigen_convs: bool = True,
  variant: dict | None = None,
) -> tuple[Callable, dict]:
  """Lowers and compiles `family.train_step` once for these shapes (AOT, state donated);
  on CPU, with convolutions on XLA's Eigen path unless `eigen_convs` is False (ops.compile).
  `variant`: static keyword arguments of the step (one entry of `step_variants`).

  Returns (compiled step, stats with compile seconds, FLOPs and memory per step).
  """
  repl = parallel.replicated(mesh)
  step = jax.jit(
    functools.partial(family.train_step, **(variant or {})),
    in_shardings=(shardings, parallel.data_sharding(mesh), repl),
    out_shardings=(shardings, repl),
    donate_argnums=0,
  )
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):  # lets steps constrain arrays they create (common.shard_batch_axis)
    compiled = ops.compile(
      step.lower(state, batch, jax.random.key(0)), mesh.devices.flat[0].platform, eigen_convs
    )
  stats = {"compile_s": time.perf_counter() - t0}
  cost = compiled.cost_analysis()
  if isinstance(cost, list):  # older jax returned one dict per device
    cost = cost[0] if cost else {}
  stats["flops_per_step"] = float((cost or {}).get("flops", float("nan")))
  memory = compiled.memory_analysis()
  if memory is not None:
    stats["temp_bytes"] = int(memory.temp_size_in_bytes)
    stats["argument_bytes"] = int(memory.argument_size_in_bytes)
  return compiled, stats


def step_variants(family: Any, state: Any) -> tuple[dict, ...]:
  """The family's `step_variants(state)` (static train_step arguments over a cycle of steps,
  e.g. the GAN's lazy R1), or ({},): one step for every step number."""
  fn = getattr(family, "step_variants", None)
  return tuple(fn(state)) if fn else ({},)


def compile_train_steps(
  family: Any,
  state: Any,
  shardings: Any,
  batch: dict,
  mesh: jax.sharding.Mesh,
  eigen_convs: bool = True,
) -> tuple[list[Callable], dict]:
  """One compiled step per distinct entry of `step_variants`, listed over the cycle (step n runs
  entry n % len); stats: compile seconds summed, FLOPs per step averaged over the cycle, memory
  the largest variant's, and the counts of variants and of steps in the cycle."""
  cycle = step_variants(family, state)
  key = lambda variant: tuple(sorted(variant.items()))
  compiled = {}
  for variant in cycle:
    if key(variant) not in compiled:
      compiled[key(variant)] = compile_train_step(
        family, state, shardings, batch, mesh, eigen_convs, variant=variant
      )
  steps = [compiled[key(v)] for v in cycle]
  stats = {
    "compile_s": sum(s["compile_s"] for _, s in compiled.values()),
    "flops_per_step": sum(s["flops_per_step"] for _, s in steps) / len(steps),
    "variants": len(compiled),
    "cycle": len(cycle),
  }
  for name in ("temp_bytes", "argument_bytes"):
    if all(name in s for _, s in steps):
      stats[name] = max(s[name] for _, s in steps)
  return [step for step, _ in steps], stats


# ---------------------------------------------------------------------- logging


def smoothed(previous: float | None, current: float, weight: float = 0.3) -> float:
  """Exponential moving average (tqdm's `smoothing`): `weight` on the current value."""
  return current if previous is None else weight * current + (1.0 - weight) * previous


def progress_line(
  step: int, total: int, steps_per_s: float, elapsed_s: float, ips: float, metrics: dict
) -> str:
  """Step, smoothed steps/s, elapsed and remaining time, images/s and the latest losses."""
  from tqdm import tqdm

  remaining = tqdm.format_interval((total - step) / steps_per_s) if steps_per_s > 0 else "?"
  losses = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
  return (
    f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)  {steps_per_s:.2f} step/s  "
    f"elapsed {tqdm.format_interval(elapsed_s)}  remaining {remaining}  "
    f"{ips:.1f} img/s  {losses}"
  )


class _Progress:
  """Progress with an ETA (process 0 only): a tqdm bar on a terminal, plain lines otherwise
  (CI logs), both with steps/s smoothed the same way and the latest losses."""

  def __init__(self, total: int, enabled: bool, start: int = 0):
    # a terminal of no width (e.g. a pty nobody sized) would show tqdm as nothing at all
    self.tty = sys.stdout.isatty() and shutil.get_terminal_size((0, 0)).columns > 0
    self.total, self.enabled = total, enabled
    self.t0 = self.t_last = time.perf_counter()
    self.step_last, self.rate = start, None
    self.bar = None
    if enabled and self.tty:
      from tqdm import tqdm

      self.bar = tqdm(
        total=total, initial=start, unit="step", smoothing=0.3, file=sys.stdout, dynamic_ncols=True
      )

  def update(self, step: int, ips: float, metrics: dict) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if step > self.step_last and now > self.t_last:
      self.rate = smoothed(self.rate, (step - self.step_last) / (now - self.t_last))
    self.t_last, self.step_last = now, step
    if self.bar is not None:
      losses = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
      self.bar.set_postfix_str(f"{ips:.0f} img/s {losses}", refresh=False)
      self.bar.update(step - self.bar.n)
    else:
      print(
        progress_line(step, self.total, self.rate or 0.0, now - self.t0, ips, metrics), flush=True
      )

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def save_samples(
  family: Any, state: Any, key: jax.Array, num: int, path: Path, write: bool = True
) -> Path:
  """Draws `num` samples (every process takes part) and writes their grid to `path`."""
  images = jax.jit(family.sample, static_argnums=2)(state, key, num)
  if write:
    viz.save_grid(np.asarray(jax.device_get(images)), path)
  return path


# ---------------------------------------------------------------- reliability


class _StopSignals:
  """SIGTERM/SIGINT ask the loop to stop at the next step boundary. A second one exits at once
  (os._exit): a save in flight is then left as a temporary folder, as after kill -9, and the
  last complete checkpoint stays the one a resume uses."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum, self._previous = 0, {}

  def __enter__(self) -> "_StopSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)

  def _handle(self, signum: int, frame: Any) -> None:
    if self.signum:
      name = signal.Signals(signum).name
      os.write(
        2,
        f"jaxgen train: second {name}: exiting at once; the last complete checkpoint "
        f"is intact\n".encode(),
      )
      os._exit(128 + signum)
    self.signum = signum


def _agree_max(value: int) -> int:
  """The largest of every process's `value` (so all stop, or all fail, at the same point)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def _is_loss(name: str) -> bool:
  return name.endswith("loss")


def _track_losses(health: tuple, metrics: dict, step: jax.Array, max_loss: float) -> tuple:
  """(first bad step, its metrics): the first step whose metrics are not finite or whose losses
  exceed `max_loss` (0 while none is). Runs on device every step, read only when logging."""
  first, then = health
  ok = jnp.all(
    jnp.stack(
      [
        jnp.all(jnp.isfinite(v) & ((jnp.abs(v) <= max_loss) | (not _is_loss(k))))
        for k, v in metrics.items()
        if not k.endswith("lr")
      ]
    )
  )  # lr: a setting
  newly = (first == 0) & ~ok
  return (
    jnp.where(newly, step, first),
    jax.tree.map(lambda old, new: jnp.where(newly, new, old), then, metrics),
  )


@jax.jit
def _add_metrics(sums: dict, metrics: dict) -> dict:
  """Running sums (float32 at least) of a step's metrics on device, for their means over a log
  interval; the first step's metrics start the sums."""
  return jax.tree.map(lambda a, b: a + jnp.asarray(b, jnp.float32), sums, metrics)


@jax.jit
def _finite_leaves(tree: Any) -> jax.Array:
  """One flag per floating-point leaf of `tree`: all its entries are finite."""
  flags = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def nonfinite_leaves(state: Any) -> list[str]:
  """Paths of the floating-point leaves of `state` (params, optimiser state, EMA, BatchNorm
  statistics) holding a NaN or infinity."""
  paths = [
    jax.tree_util.keystr(p)
    for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  flags = np.asarray(jax.device_get(_finite_leaves(state)))
  return [p for p, ok in zip(paths, flags) if not ok]


def _check_health(
  health: tuple, state: Any, step: int, max_loss: float, ckpt: checkpoint.Checkpointer
) -> None:
  """Raises TrainingDiverged if a loss went bad at or before `step` or `state` is not finite."""
  first, then = jax.device_get(health)
  bad_leaves = [] if first else nonfinite_leaves(state)
  if not first and not bad_leaves:
    return
  if first:
    then = {k: float(v) for k, v in then.items()}
    bad = [
      k
      for k, v in then.items()
      if not k.endswith("lr") and (not math.isfinite(v) or (_is_loss(k) and abs(v) > max_loss))
    ]
    bad = [k for k in bad if _is_loss(k)] or bad  # the losses, when they are among them
    what = ", ".join(f"{k} became {then[k]:.4g}" for k in bad)
    if all(math.isfinite(then[k]) for k in bad):
      what += f" (above config.max_loss={max_loss:g})"
    what += f" at step {int(first)}"
  else:
    what = (
      f"the state became non-finite at step {step} ({len(bad_leaves)} leaves, first "
      f"{bad_leaves[0]})"
    )
  ckpt.wait()
  last = ckpt.latest_step()
  kept = f"the checkpoint of step {last} is kept" if last is not None else "nothing was saved"
  raise TrainingDiverged(
    f"{what}; training stopped and {kept}; lower the learning rate "
    f"(--config.optim.*lr) or change the seed, then run again"
  )


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def truncate_log(path: Path, step: int) -> int:
  """Drops metrics.jsonl rows after `step` (steps a killed run will redo) and torn lines;
  returns how many rows went."""
  if not path.is_file():
    return 0
  lines = path.read_text().splitlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
      keep.append(line)
  if len(keep) != len(lines):
    _write_atomic(path, "".join(line + "\n" for line in keep))
  return len(lines) - len(keep)


def _stored_config(workdir: Path) -> dict | None:
  path = workdir / "config.json"
  if not path.is_file():
    return None
  try:
    return config_lib.flatten(config_lib.upgrade(json.loads(path.read_text())))
  except ValueError as e:
    raise ConfigError(
      f"{path} is not valid JSON ({e}); restore it or train in a new --workdir"
    ) from None


def _lock_workdir(workdir: Path, is_main: bool) -> lock_lib.WorkdirLock:
  """Process 0 takes the workdir's lock; every process raises if it could not."""
  lock, error = lock_lib.WorkdirLock(workdir), None
  if is_main:
    try:
      note = lock.acquire()
      if note:
        print(note, flush=True)
    except UserError as e:
      error = e
    except OSError as e:
      error = UserError(
        f"cannot write to {e.filename or workdir} ({e.strerror}); choose a writable --workdir"
      )
  if _agree_max(int(error is not None)):
    raise error or lock_lib.LockError("process 0 could not lock the workdir (see its output)")
  return lock


# ------------------------------------------------------------------------- loop


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | Path,
  eval_fn: Callable[[Any, int], dict] | None = None,
) -> Any:
  """Trains `config` in `workdir` (resuming if it has checkpoints); returns the final state.

  Writes workdir/config.json, metrics.jsonl (a row per log_every steps and per save: each metric's
  mean over the steps since the row before), samples/step_*.png, checkpoints/, tb/ (TensorBoard
  events) and provenance.json (versions, devices, wall time per session).
  `eval_fn(state, step)`, if given, runs every config.eval_every steps and its numbers are logged.
  SIGTERM/SIGINT save the current step and raise Preempted.
  """
  workdir = Path(workdir)
  config = ml_collections.ConfigDict(config)  # a copy: image shape etc. are filled in below
  config_lib.validate(config)
  family = steps.get_family(config.model.family)
  is_main = jax.process_index() == 0
  parallel.check_batch_size(config.batch_size, config.get("accum_steps", 1))

  # ---- data (fails before anything is written if the data or shapes are wrong)
  source, info = load_data(config, "train")
  config.data.image_shape = tuple(info.image_shape)
  config.data.num_classes = info.num_classes
  if info.vocabulary:  # caption words of the training split: stored with the run (config.json)
    config.data.vocabulary, config.data.max_tokens = tuple(info.vocabulary), info.max_tokens
  if info.label_feature != "label":  # evaluation maps each class to its group (data's "label")
    config.data.class_groups = tuple(info.class_groups)
  if config.model.get("num_classes") and config.model.num_classes != info.num_classes:
    raise ConfigError(
      f"config.model.num_classes={config.model.num_classes} but "
      f"{config.data.name!r} has {info.num_classes} classes; set it to "
      f"{info.num_classes} (conditional) or 0"
    )
  if config.batch_size > len(source):
    raise ConfigError(
      f"batch_size {config.batch_size} exceeds the {len(source)} training "
      f"examples of {config.data.name!r}; set --config.batch_size to at most "
      f"{len(source)}"
    )
  stored = _stored_config(workdir)
  changes = config_lib.drift(stored, config) if stored is not None else []

  with _StopSignals() as signals:
    lock = _lock_workdir(workdir, is_main)
    try:
      return _train_locked(
        config, workdir, family, source, changes, stored is None, eval_fn, signals
      )
    finally:
      lock.release()


def _train_locked(
  config: ml_collections.ConfigDict,
  workdir: Path,
  family: Any,
  source: Any,
  changes: list[str],
  new_run: bool,
  eval_fn: Callable | None,
  signals: _StopSignals,
) -> Any:
  is_main = jax.process_index() == 0
  say = functools.partial(print, flush=True) if is_main else (lambda *a, **k: None)
  loader = train_loader(config, source)

  # ---- state, resumed from the newest good checkpoint if there is one
  mesh = parallel.make_mesh()
  init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
  if is_main:
    for p in checkpoint.remove_partial_saves(workdir / "checkpoints"):
      say(f"removed {p}, the unfinished save of an interrupted run")
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  restored = 0
  if not ckpt.all_steps():
    state, shardings = create_state(config, mesh, init_key)
  else:
    shardings = parallel.replicated(mesh)
    state, data_state, restored, bad = ckpt.restore_newest_good(abstract_state(config, mesh), say)
    loader.set_state(data_state)
    say(f"resumed from {ckpt.directory / str(restored)}")
    if bad:  # this run writes those steps again
      for p in ckpt.move_aside(bad, workdir / "damaged_checkpoints"):
        say(f"moved the damaged checkpoint aside to {p}")
  if restored >= config.num_steps:
    ckpt.close()
    say(
      f"{workdir} is at step {restored} already and num_steps is {config.num_steps}: nothing "
      f"to train (raise --config.num_steps to continue)"
    )
    return state
  if is_main:
    for line in changes:
      say(f"resuming with {line}")
    if new_run or changes:
      workdir.mkdir(parents=True, exist_ok=True)
      _write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2))
    dropped = truncate_log(workdir / "metrics.jsonl", restored)
    if dropped:
      say(f"dropped {dropped} metrics.jsonl rows after step {restored} (they are redone)")

  # ---- logs (process 0), then compile once; the compile line is the last before the loop
  step = restored
  progress = _Progress(config.num_steps, is_main, start=step)
  log = (workdir / "metrics.jsonl").open("a") if is_main else None
  # purge_step: steps an interrupted session logged after its last checkpoint are dropped
  tb = runlog.TensorBoard(workdir, purge_step=step + 1 if step else None) if is_main else None
  session = runlog.Session(workdir, step, is_main)
  eval_every = config.get("eval_every", 0)
  max_loss = config.get("max_loss", math.inf)
  track = jax.jit(functools.partial(_track_losses, max_loss=max_loss), donate_argnums=0)
  health, grid = None, None
  try:
    # (global batch, data position after it): the loop saves the position of the batch its last
    # step consumed, however far ahead the loader and the device prefetch have read.
    batches = parallel.prefetch_to_device(loader, mesh, config.data.get("device_prefetch", 2))
    batch, position = next(batches)
    train_steps, compile_stats = compile_train_steps(
      family, state, shardings, batch, mesh, config.get("xla_cpu_eigen_convs", True)
    )
    variants = (
      f" ({compile_stats['variants']} variants over a {compile_stats['cycle']}-step cycle, "
      "e.g. lazy R1; FLOPs averaged over it)"
      if compile_stats["variants"] > 1
      else ""
    )
    say(
      f"compiled train_step{variants} in {compile_stats['compile_s']:.1f}s on {jax.device_count()} "
      f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es); "
      f"{compile_stats['flops_per_step'] / 1e9:.2f} GFLOP/step; jaxgen.ops fast paths "
      f"{'on' if ops.use_fast_ops(config.get('fast_ops', 'auto')) else 'off'} "
      f"(fast_ops={config.get('fast_ops', 'auto')}); compute dtype "
      f"{config.get('dtype', 'float32')} (params, optimizer state and losses float32"
      f"{'; dynamic loss scaling' if config.get('dtype') == 'float16' else ''})"
    )

    # ---- loop
    t_last, step_last = time.perf_counter(), step
    stop = _agree_max(signals.signum)
    if stop:  # a signal before the first step: nothing new to save
      raise Preempted(
        f"stopped by {signal.Signals(stop).name} before step {step + 1}: nothing "
        f"new to save; run the same command to resume",
        stop,
      )
    in_flight = collections.deque()
    sums, summed = None, 0
    while step < config.num_steps:
      train_step = train_steps[step % len(train_steps)]
      state, metrics = train_step(state, batch, train_key)  # dispatched; runs asynchronously
      in_flight.append(metrics)
      if len(in_flight) > MAX_STEPS_AHEAD:
        jax.block_until_ready(in_flight.popleft())
      consumed = position
      step += 1
      is_last = step == config.num_steps
      if not is_last:  # the next batch is read and sent while this step computes
        batch, position = next(batches)
      if health is None:
        health = jax.jit(lambda m, s: (jnp.zeros_like(s), m), out_shardings=shardings)(
          metrics, state.step
        )
      health = track(health, metrics, state.step)
      # logged rows are means over the steps since the last row: a metric that only some steps
      # compute (lazy R1's d_r1) shows in every row whatever log_every is
      sums = metrics if sums is None else _add_metrics(sums, metrics)
      summed += 1
      stop = _agree_max(signals.signum)
      save_now = step % config.checkpoint_every == 0 or is_last or stop
      if step % config.log_every == 0 or save_now:
        _check_health(health, state, step, max_loss, ckpt)  # never log or keep a bad state
        metrics = {k: float(v) / summed for k, v in jax.device_get(sums).items()}
        sums, summed = None, 0
        now = time.perf_counter()
        ips = (step - step_last) * config.batch_size / (now - t_last)
        t_last, step_last = now, step
        session.log_point(step)
        progress.update(step, ips, metrics)
        if log:
          log.write(json.dumps({"step": step, "images_per_s": round(ips, 1), **metrics}) + "\n")
          log.flush()
          tb.scalars(step, {"images_per_s": round(ips, 1), **metrics}, "train/")
      if save_now:
        ckpt.save(step, state, consumed)
        if stop or is_last:
          ckpt.wait()
      if stop:
        progress.close()
        raise Preempted(
          f"stopped by {signal.Signals(stop).name} at step {step}: saved "
          f"{ckpt.directory / str(step)}; run the same command to resume",
          stop,
        )
      if eval_fn and eval_every and (step % eval_every == 0 or is_last):
        results = eval_fn(state, step)
        if log:
          log.write(json.dumps({"step": step, "eval": results}) + "\n")
          log.flush()
          tb.scalars(step, results, "eval/")
      grid_now = (config.sample_every and step % config.sample_every == 0) or is_last
      if grid_now and config.num_grid_samples:
        grid = save_samples(
          family,
          state,
          sample_key,
          config.num_grid_samples,
          workdir / "samples" / f"step_{step:07d}.png",
          write=is_main,
        )
        if tb:
          tb.image_file("samples", grid, step)
  finally:
    progress.close()
    session.end(step)
    if tb:
      tb.close()
    try:
      ckpt.wait()
    finally:
      ckpt.close()
      if log:
        log.close()
  say(
    f"done: samples {grid or '-'}\n      metrics {workdir / 'metrics.jsonl'}\n"
    f"      checkpoints {ckpt.directory}"
  )
  return state


# ----------------------------------------------------------------- trained runs


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
  """The config a run was trained with (its config.json); raises UserError if there is none."""
  config_path = Path(workdir) / "config.json"
  if not config_path.is_file():
    raise UserError(
      f"{workdir} holds no jaxgen run ({config_path} is missing); train one "
      f"with `jaxgen train --config CONFIG --workdir {workdir}`"
    )
  config = ml_collections.ConfigDict(config_lib.upgrade(json.loads(config_path.read_text())))
  if config.data.get("image_shape") is not None:  # None in configs never trained
    config.data.image_shape = tuple(config.data.image_shape)
  return config


def load_run(
  workdir: str | Path, step: int | None = None
) -> tuple[ml_collections.ConfigDict, Any, Any]:
  """(config, family module, state) of a trained run, restored from its checkpoint (by default
  the newest one that restores and verifies; each one skipped is reported in one line)."""
  workdir = Path(workdir)
  config = load_run_config(workdir)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False, read_only=True)
  abstract = abstract_state(config, parallel.make_mesh())
  try:
    if step is None:
      say = print if jax.process_index() == 0 else (lambda *a: None)
      state, _, restored, bad = ckpt.restore_newest_good(abstract, say)
      if bad:
        say(f"using {ckpt.directory / str(restored)}, the newest good checkpoint")
    else:
      state, _, _ = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  return config, steps.get_family(config.model.family), state
