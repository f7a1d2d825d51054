"""The one training loop, shared by every family.

    train_and_evaluate(config, workdir)

builds the mesh, the data iterator and the family's state (already sharded), compiles
the family's `train_step` once ahead of time, then loops: step, log, sample grid,
checkpoint. Running it again on the same workdir resumes from the last checkpoint,
data position included, so a resumed run sees the batches an uninterrupted one would.
"""

import functools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxgen import checkpoint, data, ops, parallel, runlog, steps, viz
from jaxgen.errors import ConfigError, UserError


class TrainingDiverged(UserError, FloatingPointError):
  """A loss became NaN or infinite."""


# --------------------------------------------------------------------- set-up


def _data_kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(source_dir=config.data.source_dir or None, data_dir=config.data.data_dir or None)


def load_data(config: ml_collections.ConfigDict, split: str) -> tuple[Any, data.DatasetInfo]:
  """The split's source and info; checks the config's image shape against the data."""
  source, info = data.load(config.data.name, split, **_data_kwargs(config))
  want = config.data.image_shape
  if want is not None and tuple(want) != tuple(info.image_shape):
    raise ConfigError(
        f"config.data.image_shape {tuple(want)} does not match {config.data.name!r}, whose images "
        f"are {tuple(info.image_shape)}; set --config.data.image_shape="
        f"'{tuple(info.image_shape)}' or choose the data set the config was written for")
  return source, info


def example_batch(config: ml_collections.ConfigDict) -> dict:
  """A one-example batch of the right shapes, to initialise models without data."""
  return {"image": jnp.zeros((1, *config.data.image_shape), jnp.float32),
          "label": jnp.zeros((1,), jnp.int32)}


def _init_fn(config: ml_collections.ConfigDict) -> Callable[[jax.Array], Any]:
  family = steps.get_family(config.model.family)
  return functools.partial(family.init_state, config, sample_batch=example_batch(config))


def abstract_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Any:
  """The state as ShapeDtypeStructs replicated over `mesh` (no compute): what restores fill."""
  abstract = jax.eval_shape(_init_fn(config), jax.random.key(0))
  return checkpoint.abstract_like(abstract, parallel.replicated(mesh))


def create_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 key: jax.Array) -> tuple[Any, Any]:
  """(state, its sharding): the family's state initialised directly replicated over `mesh`.

  The sharding is one NamedSharding, a pytree prefix for the whole (replicated) state.
  """
  sharding = parallel.replicated(mesh)
  return jax.jit(_init_fn(config), out_shardings=sharding)(key), sharding


def compile_train_step(family: Any, state: Any, shardings: Any, batch: dict,
                       mesh: jax.sharding.Mesh, eigen_convs: bool = True
                       ) -> tuple[Callable, dict]:
  """Lowers and compiles `family.train_step` once for these shapes (AOT, state donated);
  on CPU, with convolutions on XLA's Eigen path unless `eigen_convs` is False (ops.compile).

  Returns (compiled step, stats with compile seconds, FLOPs and memory per step).
  """
  repl = parallel.replicated(mesh)
  step = jax.jit(family.train_step, in_shardings=(shardings, parallel.data_sharding(mesh), repl),
                 out_shardings=(shardings, repl), donate_argnums=0)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):  # lets steps constrain arrays they create (common.shard_batch_axis)
    compiled = ops.compile(step.lower(state, batch, jax.random.key(0)),
                           mesh.devices.flat[0].platform, eigen_convs)
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


# ---------------------------------------------------------------------- logging


def smoothed(previous: float | None, current: float, weight: float = 0.3) -> float:
  """Exponential moving average (tqdm's `smoothing`): `weight` on the current value."""
  return current if previous is None else weight * current + (1.0 - weight) * previous


def progress_line(step: int, total: int, steps_per_s: float, elapsed_s: float, ips: float,
                  metrics: dict) -> str:
  """Step, smoothed steps/s, elapsed and remaining time, images/s and the latest losses."""
  from tqdm import tqdm
  remaining = tqdm.format_interval((total - step) / steps_per_s) if steps_per_s > 0 else "?"
  losses = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
  return (f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)  {steps_per_s:.2f} step/s  "
          f"elapsed {tqdm.format_interval(elapsed_s)}  remaining {remaining}  "
          f"{ips:.1f} img/s  {losses}")


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
      self.bar = tqdm(total=total, initial=start, unit="step", smoothing=0.3, file=sys.stdout,
                      dynamic_ncols=True)

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
      print(progress_line(step, self.total, self.rate or 0.0, now - self.t0, ips, metrics),
            flush=True)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _check_finite(metrics: dict, step: int, ckpt: checkpoint.Checkpointer) -> None:
  bad = [k for k, v in metrics.items() if not math.isfinite(v)]
  if bad:
    last = ckpt.latest_step()
    kept = f"the checkpoint of step {last} is kept" if last is not None else "nothing was saved"
    raise TrainingDiverged(
        f"{', '.join(bad)} became {metrics[bad[0]]} at step {step}; training stopped and {kept}; "
        f"lower the learning rate (--config.optim.*lr) or change the seed, then run again")


def save_samples(family: Any, state: Any, key: jax.Array, num: int, path: Path,
                 write: bool = True) -> Path:
  """Draws `num` samples (every process takes part) and writes their grid to `path`."""
  images = jax.jit(family.sample, static_argnums=2)(state, key, num)
  if write:
    viz.save_grid(np.asarray(jax.device_get(images)), path)
  return path


# ------------------------------------------------------------------------- loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       eval_fn: Callable[[Any, int], dict] | None = None) -> Any:
  """Trains `config` in `workdir` (resuming if it has checkpoints); returns the final state.

  Writes workdir/config.json, metrics.jsonl, samples/step_*.png, checkpoints/, tb/ (TensorBoard
  events) and provenance.json (versions, devices, wall time per session).
  `eval_fn(state, step)`, if given, runs every config.eval_every steps and its numbers are logged.
  """
  workdir = Path(workdir)
  config = ml_collections.ConfigDict(config)  # a copy: image shape etc. are filled in below
  family = steps.get_family(config.model.family)
  is_main = jax.process_index() == 0
  parallel.check_batch_size(config.batch_size)

  # ---- data (fails before anything is written if the data or shapes are wrong)
  source, info = load_data(config, "train")
  config.data.image_shape = tuple(info.image_shape)
  config.data.num_classes = info.num_classes
  if config.model.get("num_classes") and config.model.num_classes != info.num_classes:
    raise ConfigError(f"config.model.num_classes={config.model.num_classes} but "
                     f"{config.data.name!r} has {info.num_classes} classes; set it to "
                     f"{info.num_classes} (conditional) or 0")
  loader = data.make_loader(source, batch_size=config.batch_size, seed=config.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())

  # ---- state, resumed from the latest checkpoint if there is one
  mesh = parallel.make_mesh()
  init_key, train_key, sample_key = jax.random.split(jax.random.key(config.seed), 3)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  if ckpt.latest_step() is None:
    state, shardings = create_state(config, mesh, init_key)
  else:
    shardings = parallel.replicated(mesh)
    state, data_state, restored = ckpt.restore(abstract_state(config, mesh))
    loader.set_state(data_state)
    if is_main:
      print(f"resumed from {ckpt.directory / str(restored)}", flush=True)
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

  # ---- compile once
  batch = parallel.global_batch(next(loader), mesh)
  train_step, compile_stats = compile_train_step(family, state, shardings, batch, mesh,
                                                 config.get("xla_cpu_eigen_convs", True))
  if is_main:
    print(f"compiled train_step in {compile_stats['compile_s']:.1f}s on {jax.device_count()} "
          f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es); "
          f"{compile_stats['flops_per_step'] / 1e9:.2f} GFLOP/step", flush=True)

  # ---- loop
  step = int(jax.device_get(state.step))
  progress = _Progress(config.num_steps, is_main, start=step)
  log = (workdir / "metrics.jsonl").open("a") if is_main else None
  # purge_step: steps an interrupted session logged after its last checkpoint are dropped
  tb = runlog.TensorBoard(workdir, purge_step=step + 1 if step else None) if is_main else None
  session = runlog.Session(workdir, step, is_main)
  t_last, step_last = time.perf_counter(), step
  eval_every = config.get("eval_every", 0)
  try:
    while step < config.num_steps:
      state, metrics = train_step(state, batch, train_key)
      step += 1
      is_last = step == config.num_steps
      save_now = step % config.checkpoint_every == 0 or is_last
      if step % config.log_every == 0 or save_now:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        _check_finite(metrics, step, ckpt)
        now = time.perf_counter()
        ips = (step - step_last) * config.batch_size / (now - t_last)
        t_last, step_last = now, step
        progress.update(step, ips, metrics)
        if log:
          log.write(json.dumps({"step": step, "images_per_s": round(ips, 1), **metrics}) + "\n")
          log.flush()
          tb.scalars(step, {"images_per_s": round(ips, 1), **metrics}, "train/")
      if eval_fn and eval_every and (step % eval_every == 0 or is_last):
        results = eval_fn(state, step)
        if log:
          log.write(json.dumps({"step": step, "eval": results}) + "\n")
          log.flush()
          tb.scalars(step, results, "eval/")
      grid_now = (config.sample_every and step % config.sample_every == 0) or is_last
      if grid_now and config.num_grid_samples:
        grid = save_samples(family, state, sample_key, config.num_grid_samples,
                            workdir / "samples" / f"step_{step:07d}.png", write=is_main)
        if tb:
          tb.image_file("samples", grid, step)
      if save_now:
        ckpt.save(step, state, loader.get_state())
      if not is_last:
        batch = parallel.global_batch(next(loader), mesh)
  finally:
    progress.close()
    session.end(step)
    if tb:
      tb.close()
    ckpt.wait()
    ckpt.close()
    if log:
      log.close()
  return state


# ----------------------------------------------------------------- trained runs


def load_run(workdir: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, Any, Any]:
  """(config, family module, state) of a trained run, restored from its checkpoint (latest by default)."""
  workdir = Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise UserError(f"{workdir} holds no jaxgen run ({config_path} is missing); train one "
                            f"with `jaxgen train --config CONFIG --workdir {workdir}`")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  config.data.image_shape = tuple(config.data.image_shape)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", async_save=False)
  try:
    state, _, _ = ckpt.restore(abstract_state(config, parallel.make_mesh()), step)
  finally:
    ckpt.close()
  return config, steps.get_family(config.model.family), state
