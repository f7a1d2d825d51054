"""Train-step throughput of every jaxgen family, with FLOP utilisation and a PyTorch peer.

    python -m benchmarks.throughput                      # all families, default batch sizes
    python -m benchmarks.throughput --families gan --batch_sizes 32,64,128 --devices 1,2,4,8 \\
        --image_shapes 28x28x1,32x32x3,64x64x3 --set model.width=64 --json out.json

For each family (its config in experiments/configs/, *_fashion.py first), image shape, batch
size (default: the config's, half and double it) and device count it compiles the family's
`train_step` once ahead of time (jaxgen.trainer's `compile_train_steps`, state donated, batch
sharded over a "data" mesh; a family's step variants, e.g. lazy R1's, each compiled and run in
turn as the loop runs them, FLOPs averaged over their cycle) and reports: compile seconds; ms per step and images/s (median of
`--repeats` timed runs of `--steps` steps after warm-up, each ended by block_until_ready; the
images/s cells show median (min-max) over the repeats, the JSON all three of both);
GFLOP per step from XLA's cost analysis (all devices together); achieved GFLOP/s and its
ratio to the measured matmul peak in the row's dtype (of the host's cores on CPU, of one
device x devices elsewhere); memory per device (XLA's arguments + temporaries of the compiled
step, and, where the backend reports one, the device's peak in use so far in the process:
"n/a" on CPU); and, on one device, the PyTorch peer's images/s in each variant of
`--peers` (eager, fused optimizer + channels_last, torch.compile of the whole step; its
compile time in a column of its own, never in the timed runs) and, on CUDA, the peak
allocated memory of the row's peer steps (the largest variant's) (benchmarks/torch_peer.py, if torch is installed: `pip install -e
".[bench]"`; it runs only where it sees the same kind of device as JAX), and the ratio
jaxgen / the fastest variant of the row (named beside it). All are timed in turn, run for
run, so that a change in the machine's load touches them alike.

What is timed: the train step alone, called again and again on one fixed batch already on
the device; data loading, logging and checkpoints are not in it (python -m benchmarks.loop
times the whole loop beside the step).

Load. Other processes on the machine take cores from the benchmark, and PyTorch's spinning
worker threads lose far more to them than XLA does, so ratios taken under load mislead. The
CPU time other processes use (benchmarks.timing.machine_load: /proc/stat less this process
and its children) is measured before the run, and before, during and after every row and the
matmul peak; over QUIET_CORES (0.5) cores the row is marked "(loaded)" and a warning is
printed. `--require_quiet` refuses to start on a busy machine (`--force` measures anyway).

Precision. `--dtypes float32,bfloat16` sets each config's `dtype` (jaxgen's computation
dtype, see README "Mixed precision"; float16 with its dynamic loss scaling; a config without
that key runs float32 only, and its other rows say "not supported yet") and runs the PyTorch
peer under bfloat16 autocast (the peer has no float16 variant: its cells say so). `--matmul_precision` sets float32
matmuls and convolutions on both sides alike: "highest" (the default) is IEEE float32 (JAX's
`jax_default_matmul_precision=highest`; PyTorch's TF32 off for matmuls and cuDNN), "tf32"
lets both use TF32 tensor cores. The two libraries' own defaults differ on GPU (XLA may use
TF32 for float32 dots, PyTorch uses it for cuDNN convolutions but not for matmuls), so
leaving them would compare different arithmetic. JAX's GPU memory preallocation is turned off
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set) so that PyTorch fits beside it.

On CPU the step is compiled with XLA's Eigen convolutions (jaxgen.ops.compile);
`--set xla_cpu_eigen_convs=false` measures XLA's default (YNNPACK) convolutions instead.

Random batches: no data set is needed. Each device count runs in its own process, because
the CPU's simulated device count (XLA_FLAGS=--xla_force_host_platform_device_count) must be
set before JAX starts; on GPU/TPU hosts the first N real devices are used. The table is
printed and written, with the machine's description, to `--json`.
"""

import argparse
import importlib.util
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import (
  QUIET_CORES,
  describe_load,
  interleaved,
  is_loaded,
  machine_load,
  matmul_peak_gflops,
  spread,
  step_runner,
  watched,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
MEMORY = ("device_peak_mib", "torch_peak_mib")  # "n/a" where the backend reports none
NOT_SUPPORTED = "not supported yet"
DTYPES = ("float32", "bfloat16", "float16")  # --dtypes (the PyTorch peer: the first two)
JAX_PRECISION = {"highest": "highest", "tf32": "tensorfloat32"}  # --matmul_precision -> jax
# the PyTorch peer's variants (benchmarks/torch_peer.VARIANTS; torch itself is optional here)
PEER_VARIANTS = ("eager", "fused", "compile")
TABLE_NOTE = (
  "Times the train step alone, run again and again on one fixed batch already on the device"
  " (no data loading, logging, checkpoints); the whole training loop: python -m benchmarks.loop"
)
SPREAD = "{median:.0f} ({min:.0f}-{max:.0f})"  # images/s: median (min-max) over the repeats


def columns(peers: tuple[str, ...] = PEER_VARIANTS) -> tuple:
  """(key, header, format) of each column, a pair per PyTorch peer variant in `peers`."""
  cols = [
    ("family", "family", "{}"),
    ("image", "image", "{}"),
    ("dtype", "dtype", "{}"),
    ("batch", "batch", "{}"),
    ("devices", "dev", "{}"),
    ("compile_s", "compile s", "{:.1f}"),
    ("ms_per_step", "ms/step", "{:.1f}"),
    ("images_per_s_spread", "img/s med (min-max)", SPREAD),
    ("gflop_per_step", "GFLOP/step", "{:.2f}"),
    ("gflops", "GFLOP/s", "{:.1f}"),
    ("peak_fraction", "% peak", "{:.0%}"),
    ("memory_mib", "XLA MiB", "{:.0f}"),
    ("device_peak_mib", "dev peak MiB", "{:.0f}"),
  ]
  for v in peers:
    cols.append((f"torch_{v}_images_per_s_spread", f"torch {v} img/s", SPREAD))
    if v == "compile":  # compiling is paid once, in the untimed warm-up: shown on its own
      cols.append(("torch_compile_setup_s", "torch compile s", "{:.1f}"))
  cols += [
    ("torch_peak_mib", "torch MiB", "{:.0f}"),
    ("ratio_best", "jax/best torch", "{}"),
    ("other_cores", "other cores", "{:.1f}"),
  ]
  return tuple(cols)


COLUMNS = columns()


# ------------------------------------------------------------------ what to measure


def family_configs(families: list[str] | None) -> tuple[dict[str, Path], list[str]]:
  """({family: its config file}, notes on requested families left out)."""
  from jaxgen import config as config_lib
  from jaxgen import steps

  found: dict[str, Path] = {}
  # Fashion-MNIST configs first: they need no extra batch fields (e.g. caption tokens).
  for path in sorted(CONFIGS.glob("*.py"), key=lambda p: ("fashion" not in p.stem, p.name)):
    try:
      found.setdefault(config_lib.load(path).model.family, path)
    except Exception:  # a config being written elsewhere must not stop the benchmark
      continue
  notes, chosen = [], {}
  for family in families or steps.FAMILIES:
    if family not in steps.FAMILIES:
      raise SystemExit(f"unknown family {family!r}; choose from {steps.FAMILIES}")
    if importlib.util.find_spec(f"jaxgen.steps.{family}") is None:
      notes.append(f"{family}: skipped (no jaxgen/steps/{family}.py yet)")
    elif family not in found:
      notes.append(f"{family}: skipped (no config in {CONFIGS.relative_to(REPO)} names it)")
    else:
      chosen[family] = found[family]
  return chosen, notes


def parse_shape(text: str) -> tuple[int, int, int]:
  """ "28x28x1" -> (28, 28, 1)."""
  h, w, c = (int(v) for v in text.lower().split("x"))
  return h, w, c


def load_config(
  path: Path,
  image_shape: tuple[int, int, int],
  batch_size: int,
  overrides: dict[str, str],
  dtype: str = "float32",
):
  """The family's config at this size and dtype; None where `dtype` is not float32 and the config
  has no `dtype` key or jaxgen does not support it (config.DTYPES)."""
  from jaxgen import config as config_lib

  config = config_lib.load(path, overrides)
  config.data.image_shape = tuple(image_shape)
  config.batch_size = batch_size
  if "dtype" in config and dtype in getattr(config_lib, "DTYPES", ("float32",)):
    config.dtype = dtype
  elif dtype != "float32":
    return None
  return config


# ------------------------------------------------------------------------ measuring


def random_batch(config, mesh):
  """A global batch of uniform images in [-1, 1] and labels, sharded over the mesh."""
  import jax
  import numpy as np

  from jaxgen import parallel

  rng = np.random.default_rng(0)
  b, shape = config.batch_size, tuple(config.data.image_shape)
  batch = {
    "image": rng.uniform(-1, 1, (b, *shape)).astype(np.float32),
    "label": rng.integers(0, 10, (b,)).astype(np.int32),
  }
  return jax.device_put(batch, parallel.data_sharding(mesh))


def jax_runner(family_name: str, config, num_devices: int, warmup: int) -> tuple:
  """(`run(k)`: k train steps then block_until_ready, row of compile and cost figures)
  for the family's train step compiled on `num_devices` devices, run `warmup` times."""
  import jax

  from jaxgen import parallel, trainer
  from jaxgen import steps as families

  family = families.get_family(family_name)
  devices = jax.devices()[:num_devices]
  mesh = parallel.make_mesh(devices)
  state, shardings = trainer.create_state(config, mesh, jax.random.key(0))
  batch = random_batch(config, mesh)
  steps, stats = trainer.compile_train_steps(
    family, state, shardings, batch, mesh, config.xla_cpu_eigen_convs
  )
  run = step_runner(steps, state, batch, jax.random.key(1))
  run(max(warmup, len(steps)))  # every variant (e.g. lazy R1's) runs before the timing
  # cost_analysis describes one device's program of a data-parallel step
  row = dict(
    compile_s=stats["compile_s"], gflop_per_step=stats["flops_per_step"] * num_devices / 1e9
  )
  if "temp_bytes" in stats:
    row["memory_mib"] = (stats["temp_bytes"] + stats["argument_bytes"]) / 2**20
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  if all(p is not None for p in peaks):
    row["device_peak_mib"] = max(peaks) / 2**20
  return run, row


def peer_unavailable(family: str) -> str | None:
  """Why the family's PyTorch peer cannot run here (None when it can): torch missing, no peer
  for the family, or PyTorch on another kind of device than JAX (CUDA for "gpu", the CPU for
  "cpu")."""
  if importlib.util.find_spec("torch") is None:
    return 'torch not installed (pip install -e ".[bench]")'
  import jax

  from benchmarks import torch_peer

  if family not in torch_peer.PEERS:
    return f"no PyTorch peer for {family}"
  jax_kind = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
  if torch_peer.device().type != jax_kind:
    return f"PyTorch sees {torch_peer.device()}, not JAX's {jax_kind}"
  return None


def torch_runners(family: str, config, args, dtype: str = "float32") -> tuple[dict, dict]:
  """({variant: `run(k)`} of the PyTorch peer's train step in each of `args.peers`, {torch_*
  facts and notes}). The peer runs only on the kind of device JAX runs on (CUDA for "gpu",
  the CPU for "cpu"); a variant that cannot run here gets a `torch_<variant>_note`."""
  if why := peer_unavailable(family):
    return {}, dict(torch_note=why)
  import torch

  from benchmarks import torch_peer

  torch_peer.reset_peak_memory()
  runs, facts = (
    {},
    dict(torch_threads=torch.get_num_threads(), torch_device=str(torch_peer.device())),
  )
  for v in args.peers:
    try:
      run = torch_peer.runner(
        family,
        config,
        config.batch_size,
        args.warmup,
        dtype,
        variant=v,
        channels_last={"on": True, "off": False}.get(args.channels_last),
        compile_mode=args.compile_mode,
      )
    except NotImplementedError as e:
      facts[f"torch_{v}_note"] = str(e)
      continue
    except Exception as e:  # e.g. inductor failing on one model: the other variants still run
      facts[f"torch_{v}_note"] = f"failed ({e!r:.200})"
      continue
    runs[v] = run
    facts[f"torch_{v}_setup_s"] = run.setup_s
    facts[f"torch_{v}_settings"] = run.facts
  return runs, facts


def timing_figures(prefix: str, times: list[float], batch_size: int) -> dict:
  """{prefix}ms_per_step (median), {prefix}images_per_s (median), and both as
  {min, median, max} over the repeats (`..._spread`; the fastest repeat is images/s' max)."""
  ms = {k: 1e3 * v for k, v in spread(times).items()}
  ips = dict(min=1e3 * batch_size / ms["max"], median=1e3 * batch_size / ms["median"])
  ips["max"] = 1e3 * batch_size / ms["min"]
  return {
    f"{prefix}ms_per_step": ms["median"],
    f"{prefix}ms_per_step_spread": ms,
    f"{prefix}images_per_s": ips["median"],
    f"{prefix}images_per_s_spread": ips,
  }


def measure(family: str, config, num_devices: int, args, dtype: str = "float32") -> dict:
  """One row: jaxgen's step (and on one device each PyTorch peer variant's, timed interleaved
  with it), with the machine's load before, during and after the timed runs."""
  run, row = jax_runner(family, config, num_devices, args.warmup)
  runners = {"jax": run}
  if num_devices == 1 and not args.no_torch:
    torch_runs, facts = torch_runners(family, config, args, dtype)
    row.update(facts)
    runners.update({f"torch_{v}": r for v, r in torch_runs.items()})
  times, row["load_samples"] = watched(lambda: interleaved(runners, args.repeats, args.steps))
  b = config.batch_size
  row.update(timing_figures("", times.pop("jax"), b))
  row["gflops"] = row["gflop_per_step"] / (row["ms_per_step"] / 1e3)
  for name, t in times.items():
    row.update(timing_figures(f"{name}_", t, b))
    row[f"ratio_{name[len('torch_') :]}"] = row[f"{name}_ms_per_step"] / row["ms_per_step"]
  if times:  # jaxgen against the fastest PyTorch variant of this row
    best = min(times, key=lambda n: row[f"{n}_ms_per_step"])[len("torch_") :]
    row.update(torch_best=best, ratio=row[f"ratio_{best}"])
    if importlib.util.find_spec("torch") is not None:
      from benchmarks import torch_peer

      row["torch_peak_mib"] = torch_peer.peak_memory_mib()
  return row


def mark_load(row: dict, samples: dict, what: str, prefix: str = "") -> None:
  """Adds `watched`'s load samples to `row` (`load`: before/during/after, `other_cores`: the
  most other work seen in them, `loaded`; each key after `prefix`) and warns on stderr when
  other work exceeded QUIET_CORES."""
  load = {k: s for k, s in samples.items() if k != "loaded"}
  worst = max(load.values(), key=lambda s: s["other_cores"])
  row[f"{prefix}load"], row[f"{prefix}loaded"] = load, samples["loaded"]
  row[f"{prefix}other_cores"] = worst["other_cores"]
  if samples["loaded"]:
    print(
      f"warning: {what} was measured under load ({describe_load(worst)}; over {QUIET_CORES} "
      "cores counts as loaded): its figures are marked (loaded) and are not comparable",
      file=sys.stderr,
      flush=True,
    )


def check_quiet(args) -> dict:
  """The machine's load before starting; refuses (SystemExit, one line) with --require_quiet
  when other work uses more than QUIET_CORES cores, unless --force; else warns if loaded."""
  sample = machine_load(1.0)
  if is_loaded(sample):
    if args.require_quiet and not args.force:
      raise SystemExit(
        f"the machine is busy: {describe_load(sample)}, over the {QUIET_CORES} allowed by "
        "--require_quiet; wait until the other work ends, or add --force to measure anyway "
        "(rows taken under load are marked (loaded))"
      )
    print(
      f"warning: starting under load ({describe_load(sample)}): rows taken under load are "
      "marked (loaded); --require_quiet refuses to start on a busy machine",
      file=sys.stderr,
      flush=True,
    )
  return sample


def machine(peak: dict, peaks: dict[str, float], matmul_precision: str) -> dict:
  import jax

  d = jax.devices()[0]
  info = dict(
    matmul_precision=matmul_precision,
    matmul_peak_gflops_by_dtype=peaks,
    platform=d.platform,
    device_kind=d.device_kind,
    device_count=jax.device_count(),
    cpu_count=os.cpu_count(),
    processor=platform.processor() or platform.machine(),
    python=platform.python_version(),
    jax=jax.__version__,
    load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    quiet_threshold_cores=QUIET_CORES,
    **peak,
  )
  if importlib.util.find_spec("torch") is not None:
    import torch

    from benchmarks import torch_peer

    info.update(
      torch=torch.__version__,
      torch_threads=torch.get_num_threads(),
      torch_cuda=torch.version.cuda,
      **torch_peer.configure(matmul_precision),
    )
  return info


def run_here(args) -> dict:
  """Measures every requested row on this process's devices, float32 matmuls at
  `args.matmul_precision`; returns {"machine", "rows", "notes"}."""
  import jax

  with jax.default_matmul_precision(JAX_PRECISION[args.matmul_precision]):
    return _run_here(args)


def _run_here(args) -> dict:
  import jax

  chosen, notes = family_configs(args.families)
  peaks = {
    dtype: matmul_peak_gflops(dtype=dtype, size=args.peak_size)
    for dtype in dict.fromkeys(["float32", *args.dtypes])
  }
  for dtype, peak in peaks.items():
    mark_load(peak, peak.pop("matmul_peak_load"), f"the {dtype} matmul peak", "matmul_peak_")
  info = machine(
    peaks["float32"], {k: v["matmul_peak_gflops"] for k, v in peaks.items()}, args.matmul_precision
  )
  rows = []
  for num_devices in args.devices:
    if num_devices > jax.device_count():
      notes.append(f"{num_devices} devices: skipped (this host has {jax.device_count()})")
      continue
    # Simulated CPU devices share the host's cores; real accelerators add their own.
    scale = 1 if info["platform"] == "cpu" else num_devices
    for family, path in chosen.items():
      for shape, batch_size, dtype in itertools.product(
        args.image_shapes, batch_sizes(args.batch_sizes, path), args.dtypes
      ):
        if batch_size % num_devices:
          notes.append(
            f"{family} batch {batch_size}: skipped on {num_devices} devices (does not divide)"
          )
          continue
        config = load_config(path, shape, batch_size, args.overrides, dtype)
        row = dict(
          family=family,
          config=str(path.relative_to(REPO)),
          image="x".join(map(str, shape)),
          dtype=dtype,
          batch=batch_size,
          devices=num_devices,
        )
        if config is None:
          row["status"] = NOT_SUPPORTED
        else:
          try:
            row.update(measure(family, config, num_devices, args, dtype))
          except Exception as e:  # e.g. an image size the family's model cannot take
            notes.append(f"{family} {row['image']} {dtype} batch {batch_size}: failed ({e!r:.200})")
            continue
          notes += [
            f"{family} {row['image']} {dtype} batch {batch_size}: PyTorch {k[6:-5] or 'peer'}: {v}"
            for k, v in row.items()
            if k.startswith("torch_") and k.endswith("note")
          ]
          if "load_samples" in row:
            what = f"{family} {row['image']} {dtype} batch {batch_size} ({num_devices} device"
            what += "s)" if num_devices > 1 else ")"
            mark_load(row, row.pop("load_samples"), what)
          row["peak_fraction"] = row["gflops"] / (peaks[dtype]["matmul_peak_gflops"] * scale)
        rows.append(row)
        if not args.quiet:
          print(format_table([row], header=not rows[:-1], peers=peers_of(args)), flush=True)
  return dict(machine=info, rows=rows, notes=notes)


def peers_of(args) -> tuple[str, ...]:
  """The PyTorch peer variants this run times (none with --no_torch)."""
  return () if args.no_torch else tuple(args.peers)


def batch_sizes(requested: list | None, path: Path) -> list[int]:
  """The requested batch sizes, "config" standing for the config's; by default the config's,
  half and double it."""
  base = base_batch(path)
  if not requested:
    return default_batch_sizes(base)
  return list(dict.fromkeys(base if b == "config" else b for b in requested))


def base_batch(path: Path) -> int:
  from jaxgen import config as config_lib

  return int(config_lib.load(path).batch_size)


def default_batch_sizes(batch_size: int) -> list[int]:
  """The config's batch size, half and double it."""
  return sorted({max(batch_size // 2, 1), batch_size, 2 * batch_size})


# -------------------------------------------------------------------------- output


def row_peers(rows: list[dict]) -> tuple[str, ...]:
  """The PyTorch peer variants that ran (or were tried) in any of `rows`."""
  return tuple(
    v for v in PEER_VARIANTS if any(k.startswith(f"torch_{v}_") for r in rows for k in r)
  )


def format_table(rows: list[dict], header: bool = True, peers: tuple | None = None) -> str:
  """Fixed-width text table, a column per PyTorch peer variant in `peers` (default: those in
  the rows); '-' where a value is missing ("n/a" for memory the backend does not report); a
  row with a "status" (e.g. "not supported yet") shows it after its dtype. The header starts
  with TABLE_NOTE (what is timed). "jax/best torch": jaxgen's images/s over the fastest
  variant's, and which that was; "other cores": the most CPU cores other processes used
  before, during or after the row's timed runs, "(loaded)" when over QUIET_CORES."""
  cols = columns(row_peers(rows) if peers is None else tuple(peers))

  def cell(r: dict, k: str, fmt: str) -> str:
    if k == "ratio_best" and r.get("ratio") is not None:
      return f"{r['ratio']:.2f}x {r['torch_best']}"
    if r.get(k) is None:
      return "n/a" if k in MEMORY and "ms_per_step" in r else "-"
    return fmt.format(**r[k]) if isinstance(r[k], dict) else fmt.format(r[k])

  def cells_of(r: dict) -> list[str]:
    c = [cell(r, k, fmt) for k, _, fmt in cols]
    if r.get("loaded"):
      c[-1] += " (loaded)"
    return c

  cells = [cells_of(r) for r in rows]
  widths = [max([len(h), 5] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(cols)]
  line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
  out = [TABLE_NOTE, line([h for _, h, _ in cols])] if header else []
  for r, c in zip(rows, cells):
    out.append(line(c[:5]) + "  " + r["status"] if r.get("status") else line(c))
  return "\n".join(out)


def describe(result: dict) -> str:
  m = result["machine"]
  torch = f"; torch {m['torch']} with {m['torch_threads']} threads" if "torch" in m else ""
  load = f"; load average {m['load_average'][0]:.2f}" if m.get("load_average") else ""
  peaks = ", ".join(
    f"{k} {v:.0f}"
    for k, v in m.get("matmul_peak_gflops_by_dtype", {"float32": m["matmul_peak_gflops"]}).items()
  )
  if m.get("matmul_peak_loaded"):
    peaks += " (loaded)"
  return (
    f"{m['device_count']} x {m['device_kind']} ({m['platform']}), {m['cpu_count']} CPU "
    f"cores; matmul peak {peaks} GFLOP/s ({m['matmul_size']}^3); "
    f"{precision_statement(m.get('matmul_precision', 'highest'))}; jax {m['jax']}{torch}{load}"
  )


def precision_statement(matmul_precision: str) -> str:
  """One line saying what float32 matmuls and convolutions compute on both sides."""
  if matmul_precision == "tf32":
    return "float32 matmuls/convs in TF32 on both sides (jax tensorfloat32, torch allow_tf32)"
  return "float32 matmuls/convs in full float32 on both sides (jax highest, torch TF32 off)"


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  csv = lambda t: [v for v in t.split(",") if v]
  p.add_argument(
    "--families",
    type=csv,
    default=None,
    help="comma-separated (default: every family with a steps module and config)",
  )
  p.add_argument(
    "--batch_sizes",
    type=lambda t: [v if v == "config" else int(v) for v in csv(t)],
    default=None,
    help="comma-separated, \"config\" for the config's (default: the config's, half and double)",
  )

  def dtypes(text: str) -> list[str]:
    names = csv(text)
    for name in names:
      if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
    return names

  p.add_argument(
    "--dtypes",
    type=dtypes,
    default=["float32"],
    help="computation dtypes, e.g. float32,bfloat16 (sets config.dtype where the config has it)",
  )
  p.add_argument(
    "--matmul_precision",
    choices=sorted(JAX_PRECISION),
    default="highest",
    help="float32 matmuls/convolutions on both sides: IEEE float32 (highest) or TF32 (tf32)",
  )
  p.add_argument(
    "--peak_size",
    type=int,
    default=None,
    help="n of the n^3 peak matmul (default 2048 on CPU, 8192 elsewhere)",
  )
  p.add_argument(
    "--image_shapes",
    type=lambda t: [parse_shape(v) for v in csv(t)],
    default=[(28, 28, 1)],
    help="e.g. 28x28x1,32x32x3,64x64x3",
  )
  p.add_argument(
    "--devices",
    type=lambda t: [int(v) for v in csv(t)],
    default=[1],
    help="device counts, e.g. 1,2,4,8 (simulated on CPU)",
  )
  p.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
  p.add_argument("--steps", type=int, default=10, help="steps per timed run")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  p.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    help="config override key=value for every family, e.g. model.width=64",
  )
  p.add_argument("--no_torch", action="store_true", help="skip the PyTorch peer")

  def peers(text: str) -> list[str]:
    names = csv(text)
    for name in names:
      if name not in PEER_VARIANTS:
        raise argparse.ArgumentTypeError(
          f"unknown peer {name!r}: choose from {', '.join(PEER_VARIANTS)}"
        )
    return names

  p.add_argument(
    "--peers",
    type=peers,
    default=list(PEER_VARIANTS),
    help="PyTorch peer variants, e.g. eager,compile (default: eager,fused,compile)",
  )
  p.add_argument(
    "--compile_mode",
    choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    default="default",
    help="torch.compile mode of the compile peer (default: default; see torch_peer.COMPILE_MODE)",
  )
  p.add_argument(
    "--channels_last",
    choices=("auto", "on", "off"),
    default="auto",
    help="channels_last tensors in the fused and compile peers (auto: per model, "
    "torch_peer.CHANNELS_LAST)",
  )
  p.add_argument(
    "--require_quiet",
    action="store_true",
    help=f"refuse to start while other work uses more than {QUIET_CORES} CPU cores",
  )
  p.add_argument("--force", action="store_true", help="measure even when --require_quiet refuses")
  p.add_argument("--json", default="runs/benchmarks/throughput.json", help="where to write results")
  p.add_argument("--quiet", action="store_true", help="print only the final table")
  p.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # a per-count child
  args = p.parse_args(argv)
  args.overrides = dict(kv.split("=", 1) for kv in args.overrides)
  return args


def _child_argv(argv: list[str], num_devices: int, out: str) -> list[str]:
  """argv with --devices, --json and --quiet replaced for one device count."""
  keep, skip = [], False
  for a in argv:
    if skip:
      skip = False
      continue
    name = a.split("=", 1)[0]
    if name in ("--devices", "--json"):
      skip = "=" not in a
      continue
    if name not in ("--quiet", "--here"):
      keep.append(a)
  return keep + ["--devices", str(num_devices), "--json", out, "--quiet", "--here"]


def run_per_device_count(args, argv: list[str]) -> dict:
  """Runs each device count in a fresh process (XLA_FLAGS set before JAX starts); merges."""
  merged: dict = dict(machine=None, rows=[], notes=[])
  for n in args.devices:
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "result.json")
      env = dict(os.environ)
      env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
      ).strip()
      cmd = [sys.executable, "-m", "benchmarks.throughput", *_child_argv(argv, n, out)]
      if n > 1:
        cmd.append("--no_torch")  # the PyTorch peer runs on one device only
      done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
      if done.returncode:
        merged["notes"].append(f"{n} devices: the run failed (exit {done.returncode})")
        continue
      part = json.loads(Path(out).read_text())
    merged["machine"] = merged["machine"] or part["machine"]
    merged["rows"] += part["rows"]
    merged["notes"] += [x for x in part["notes"] if x not in merged["notes"]]
    if not args.quiet:
      print(format_table(part["rows"], header=n == args.devices[0], peers=peers_of(args)))
  return merged


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  # Before JAX starts (if it has not): allocate GPU memory as needed, leaving room for PyTorch.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  start_load = None if args.here else check_quiet(args)
  if args.here or args.devices == [1]:
    result = run_here(args)
  else:
    result = run_per_device_count(args, argv)
  result["load_at_start"] = start_load
  print()
  print(describe(result) if result["machine"] else "no measurements")
  print(format_table(result["rows"]))
  for note in result["notes"]:
    print("note:", note)
  path = Path(args.json)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1))
  print(f"wrote {path}")
  return result


if __name__ == "__main__":
  main()
