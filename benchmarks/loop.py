"""Images/s of the whole training loop (`jaxgen train`) beside its train step alone.

    python -m benchmarks.loop                                   # every config, 9 rounds of 100 steps
    python -m benchmarks.loop --configs dcgan_fashion,vae_fashion --repeats 5 --out loop.json

For each config in experiments/configs/ (or those named by --configs) it runs the real loop,
jaxgen.trainer.train_and_evaluate, in a fresh workdir with the config's own batch size and
cadences (logging, checkpoints, sample grids; in-training evaluation is not part of it): a
warm-up session of log_every steps (it compiles what a run compiles once: the step, the health
checks, the sampler of a grid), then --repeats resumed sessions of log_every + --steps steps,
each timed from its first log point (its compile and first steps before that) to its last step.
The timing is the run's own (provenance.json's "loop"), so data loading, the step, logging and
any checkpoints and grids due in those steps are all in it. Beside it, the same train step,
compiled the same way (trainer.compile_train_steps: one step per step variant, e.g. lazy R1,
run in the loop's order), runs alone on the run's first real batch
kept on the device for --steps steps; each round times one loop session and one step run, in
alternating order, so a change in the machine's speed touches both. The table gives the
medians of both and loop/step, the median of the rounds' ratios (the share of the step's
throughput the loop keeps; the goal is >= 95%, GOAL), with the lowest and highest of them.
Many short rounds (default 9 x 100 steps) rather than a few long ones: on a shared 2-core VM
single rounds' ratios ranged from 65% to 111% while the loop's true cost is a few percent,
and the median of nine rounds stays within a few percent of it where three could not (3 x 300
steps gave 94.3% for the VAE, 9 x 100 steps 98.0%).

Devices come from jax: all of them, as `jaxgen train` uses them, on CPU, GPU or TPU alike.
`--set key=value` overrides every config (e.g. --set data.num_workers=0 to compare). The table
is printed and written, with the machine's description, to --out (JSON).
"""

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.throughput import CONFIGS
from benchmarks.timing import step_runner, timed_runs

GOAL = 0.95  # loop images/s over step images/s
COLUMNS = (  # (key, header, format)
  ("config", "config", "{:>18}"),
  ("batch", "batch", "{:>5}"),
  ("devices", "dev", "{:>3}"),
  ("steps", "steps", "{:>5}"),
  ("loop_images_per_s", "loop img/s", "{:.0f}"),
  ("step_images_per_s", "step img/s", "{:.0f}"),
  ("ratio", "loop/step", "{:.1%}"),
  ("ratio_min", "min", "{:.1%}"),
  ("ratio_max", "max", "{:.1%}"),
  ("meets_goal", f">={GOAL:.0%}", "{}"),
)


def config_paths(names: list[str] | None) -> list[Path]:
  """The config files named (stems of experiments/configs/*.py, or paths); default: all."""
  if not names:
    return sorted(CONFIGS.glob("*.py"))
  paths = []
  for name in names:
    path = Path(name) if name.endswith(".py") else CONFIGS / f"{name}.py"
    if not path.is_file():
      known = ", ".join(p.stem for p in sorted(CONFIGS.glob("*.py")))
      raise SystemExit(f"no config {path}; choose from {known} or give a path")
    paths.append(path)
  return paths


def loop_session(config, workdir: Path, steps: int, quiet: bool) -> dict:
  """{steps, seconds} of one timed session of the training loop in `workdir`.

  The first call runs an untimed session of log_every steps first: it compiles what the loop
  compiles once per process (the step, the health checks, the sampler of its end-of-run grid)
  and saves. Each call then resumes the run for log_every + `steps` more steps and returns the
  session's own timing (provenance.json's "loop": from its first log point, after its step's
  compile and warm-up, to its last step).
  """
  from jaxgen import runlog, trainer

  out = io.StringIO() if quiet else sys.stdout
  sessions = runlog.read_provenance(workdir) if workdir.exists() else []
  with contextlib.redirect_stdout(out):
    if not sessions:
      config.num_steps = config.log_every
      trainer.train_and_evaluate(config, workdir)
      sessions = runlog.read_provenance(workdir)
    config.num_steps = sessions[-1]["end_step"] + config.log_every + steps
    trainer.train_and_evaluate(config, workdir)
  loop = runlog.read_provenance(workdir)[-1].get("loop")
  if not loop:
    raise RuntimeError("the loop logged no two points to time between; raise --steps")
  return dict(steps=loop["to_step"] - loop["from_step"], seconds=loop["seconds"])


def step_alone(config) -> tuple[Callable[[int], None], float]:
  """(`run(k)`: k calls of the config's train step on its first real batch, kept on the device,
  then a block; the step's compile seconds), compiled as the loop compiles it."""
  import jax

  from jaxgen import parallel, trainer
  from jaxgen import steps as families

  source, info = trainer.load_data(config, "train")
  config.data.image_shape, config.data.num_classes = tuple(info.image_shape), info.num_classes
  mesh = parallel.make_mesh()
  batch = parallel.global_batch(next(trainer.train_loader(config, source)), mesh)
  state, shardings = trainer.create_state(config, mesh, jax.random.key(0))
  steps, stats = trainer.compile_train_steps(
    families.get_family(config.model.family),
    state,
    shardings,
    batch,
    mesh,
    config.get("xla_cpu_eigen_convs", True),
  )
  run = step_runner(steps, state, batch, jax.random.key(1))
  run(max(2, len(steps)))  # warm-up, every variant (e.g. lazy R1's) included
  return run, stats["compile_s"]


def measure(path: Path, args) -> dict:
  """One row: the loop's and the step's images/s for the config at `path`, from --repeats
  rounds that each time one loop session and one run of the step alone, in alternating order
  (so a change in the machine's speed touches both alike); medians, and each round's ratio."""
  import jax

  from jaxgen import config as config_lib

  config = config_lib.load(path, args.overrides)
  row = dict(
    config=path.stem,
    family=config.model.family,
    batch=config.batch_size,
    devices=jax.device_count(),
    warmup=2 * config.log_every,
    log_every=config.log_every,
    checkpoint_every=config.checkpoint_every,
    sample_every=config.sample_every,
    num_workers=config.data.get("num_workers"),
    device_prefetch=config.data.get("device_prefetch"),
    in_memory=config.data.get("in_memory"),
  )
  run_step, row["step_compile_s"] = step_alone(config_lib.load(path, args.overrides))
  rounds = []
  with tempfile.TemporaryDirectory(prefix="jaxgen_loop_") as tmp:
    workdir = Path(args.workdir) / path.stem if args.workdir else Path(tmp) / path.stem
    if workdir.exists():
      raise RuntimeError(
        f"{workdir} exists (a resumed run would not be timed); use a new --workdir"
      )
    for i in range(args.repeats):
      times = {}
      for what in ("loop", "step") if i % 2 == 0 else ("step", "loop"):
        if what == "loop":
          loop = loop_session(config, workdir, args.steps, args.quiet)
          times["loop"] = loop["seconds"] / loop["steps"]
        else:
          times["step"] = timed_runs(run_step, 1, args.steps)[0]
      rounds.append(
        dict(
          steps=loop["steps"],
          loop_ms_per_step=1e3 * times["loop"],
          step_ms_per_step=1e3 * times["step"],
          ratio=times["step"] / times["loop"],
        )
      )
  median = lambda key: statistics.median(r[key] for r in rounds)
  row.update(
    steps=rounds[0]["steps"],
    rounds=rounds,
    loop_ms_per_step=median("loop_ms_per_step"),
    step_ms_per_step=median("step_ms_per_step"),
    ratio_min=min(r["ratio"] for r in rounds),
    ratio_max=max(r["ratio"] for r in rounds),
  )
  row["loop_images_per_s"] = 1e3 * config.batch_size / row["loop_ms_per_step"]
  row["step_images_per_s"] = 1e3 * config.batch_size / row["step_ms_per_step"]
  # The median of the rounds' own ratios: each pairs two measurements taken minutes apart at
  # most, where the machine's speed (which moved by a quarter between rounds here) is alike.
  row["ratio"] = median("ratio")
  row["meets_goal"] = "yes" if row["ratio"] >= GOAL else "no"
  return row


def format_table(rows: list[dict], header: bool = True) -> str:
  """Fixed-width text table of COLUMNS; '-' where a value is missing."""
  cells = [
    [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in COLUMNS] for r in rows
  ]
  widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(COLUMNS)]
  line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
  return "\n".join([line([h for _, h, _ in COLUMNS])] * header + [line(c) for c in cells])


def machine() -> dict:
  """The devices jax uses and the host."""
  import jax

  d = jax.devices()[0]
  return dict(
    platform=d.platform,
    device_kind=d.device_kind,
    device_count=jax.device_count(),
    process_count=jax.process_count(),
    cpu_count=os.cpu_count(),
    processor=platform.processor() or platform.machine(),
    jax=jax.__version__,
    load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
  )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument(
    "--configs",
    type=lambda t: [v for v in t.split(",") if v],
    default=None,
    help="comma-separated config names or paths (default: every experiments/configs/*.py)",
  )
  p.add_argument("--steps", type=int, default=100, help="timed steps, loop and step alike")
  p.add_argument(
    "--repeats", type=int, default=9, help="rounds of one loop session and one step run; medians"
  )
  p.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    help="config override key=value for every config, e.g. data.num_workers=0",
  )
  p.add_argument(
    "--workdir", default=None, help="a new folder to keep the loop runs in (default: deleted)"
  )
  p.add_argument("--out", default="runs/benchmarks/loop.json", help="where to write results")
  p.add_argument("--quiet", action="store_true", help="hide the loop's own output")
  args = p.parse_args(argv)
  if args.steps < 1 or args.repeats < 1:
    p.error("--steps and --repeats must be positive")
  args.overrides = dict(kv.split("=", 1) for kv in args.overrides)
  return args


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  rows, notes = [], []
  for path in config_paths(args.configs):
    try:
      rows.append(measure(path, args))
    except Exception as e:  # e.g. a data set not prepared here: the others still run
      notes.append(f"{path.stem}: failed ({type(e).__name__}: {str(e)[:200]})")
      continue
    if not args.quiet:
      print(format_table(rows[-1:], header=len(rows) == 1), flush=True)
  result = dict(machine=machine(), goal=GOAL, rows=rows, notes=notes)
  m = result["machine"]
  print()
  print(
    f"{m['device_count']} x {m['device_kind']} ({m['platform']}), {m['cpu_count']} CPU cores; "
    f"jax {m['jax']}"
  )
  print(format_table(rows))
  for note in notes:
    print("note:", note)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
