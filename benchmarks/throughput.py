"""Train-step throughput of every jaxgen family, with FLOP utilisation and a PyTorch peer.

    python -m benchmarks.throughput                      # all families, default batch sizes
    python -m benchmarks.throughput --families gan --batch_sizes 32,64,128 --devices 1,2,4,8 \\
        --image_shapes 28x28x1,32x32x3,64x64x3 --set model.width=64 --json out.json

For each family (its config in experiments/configs/, *_fashion.py first), image shape, batch
size (default: the config's, half and double it) and device count it compiles the family's
`train_step` once ahead of time (jaxgen.trainer's `compile_train_step`, state donated, batch
sharded over a "data" mesh) and reports: compile seconds; ms per step and images/s (median of
`--repeats` timed runs of `--steps` steps after warm-up, each ended by block_until_ready);
GFLOP per step from XLA's cost analysis (all devices together); achieved GFLOP/s and its
ratio to the measured matmul peak in the row's dtype (of the host's cores on CPU, of one
device x devices elsewhere); memory per device (XLA's arguments + temporaries of the compiled
step, and, where the backend reports one, the device's peak in use so far in the process:
"n/a" on CPU); and, on one device, the PyTorch peer's images/s and, on CUDA, its peak
allocated memory (benchmarks/torch_peer.py, if torch is installed: `pip install -e
".[bench]"`; it runs only where it sees the same kind of device as JAX) and the ratio
jaxgen / PyTorch. The two are timed in turn, run for run, so that a change in the machine's
load touches both alike.

Precision. `--dtypes float32,bfloat16` sets each config's `dtype` (jaxgen's computation
dtype, see README "Mixed precision"; a dtype jaxgen does not support, float16 for now, or a
config without that key runs float32 only, and its other rows say "not supported yet") and runs the PyTorch peer under bfloat16 autocast. `--matmul_precision` sets float32
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
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import interleaved, matmul_peak_gflops

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
MEMORY = ("device_peak_mib", "torch_peak_mib")  # "n/a" where the backend reports none
NOT_SUPPORTED = "not supported yet"
DTYPES = ("float32", "bfloat16", "float16")  # --dtypes (the PyTorch peer: the first two)
JAX_PRECISION = {"highest": "highest", "tf32": "tensorfloat32"}  # --matmul_precision -> jax
COLUMNS = (  # (key, header, format)
  ("family", "family", "{}"),
  ("image", "image", "{}"),
  ("dtype", "dtype", "{}"),
  ("batch", "batch", "{}"),
  ("devices", "dev", "{}"),
  ("compile_s", "compile s", "{:.1f}"),
  ("ms_per_step", "ms/step", "{:.1f}"),
  ("images_per_s", "img/s", "{:.0f}"),
  ("gflop_per_step", "GFLOP/step", "{:.2f}"),
  ("gflops", "GFLOP/s", "{:.1f}"),
  ("peak_fraction", "% peak", "{:.0%}"),
  ("memory_mib", "XLA MiB", "{:.0f}"),
  ("device_peak_mib", "dev peak MiB", "{:.0f}"),
  ("torch_images_per_s", "torch img/s", "{:.0f}"),
  ("torch_peak_mib", "torch MiB", "{:.0f}"),
  ("ratio", "jax/torch", "{:.2f}x"),
)


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
  has no `dtype` key or jaxgen does not support it (config.DTYPES: float16 is not yet)."""
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
  step, stats = trainer.compile_train_step(
    family, state, shardings, batch, mesh, config.xla_cpu_eigen_convs
  )
  key = jax.random.key(1)
  holder = [state]

  def run(k):
    s = holder[0]
    for _ in range(k):
      s, _ = step(s, batch, key)
    holder[0] = jax.block_until_ready(s)

  run(warmup)
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


def torch_runner(family: str, config, warmup: int, dtype: str = "float32") -> tuple:
  """(`run(k)` of the PyTorch peer's train step, or None, {torch_* facts or torch_note}).
  The peer runs only on the kind of device JAX runs on (CUDA for "gpu", the CPU for "cpu")."""
  if importlib.util.find_spec("torch") is None:
    return None, dict(torch_note='torch not installed (pip install -e ".[bench]")')
  import jax

  from benchmarks import torch_peer

  if family not in torch_peer.PEERS:
    return None, dict(torch_note=f"no PyTorch peer for {family}")
  jax_kind = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
  if torch_peer.device().type != jax_kind:
    return None, dict(torch_note=f"PyTorch sees {torch_peer.device()}, not JAX's {jax_kind}")
  torch_peer.reset_peak_memory()
  try:
    run = torch_peer.runner(family, config, config.batch_size, warmup, dtype)
  except NotImplementedError as e:
    return None, dict(torch_note=str(e))
  import torch

  return run, dict(torch_threads=torch.get_num_threads(), torch_device=str(torch_peer.device()))


def measure(family: str, config, num_devices: int, args, dtype: str = "float32") -> dict:
  """One row: jaxgen's step (and on one device the PyTorch peer's, timed interleaved with it)."""
  run, row = jax_runner(family, config, num_devices, args.warmup)
  runners = {"jax": run}
  if num_devices == 1 and not args.no_torch:
    torch_run, facts = torch_runner(family, config, args.warmup, dtype)
    row.update(facts)
    if torch_run is not None:
      runners["torch"] = torch_run
  times = interleaved(runners, args.repeats, args.steps)
  sec = statistics.median(times["jax"])
  row.update(
    ms_per_step=1e3 * sec, images_per_s=config.batch_size / sec, gflops=row["gflop_per_step"] / sec
  )
  if "torch" in times:
    torch_sec = statistics.median(times["torch"])
    row.update(
      torch_ms_per_step=1e3 * torch_sec,
      torch_images_per_s=config.batch_size / torch_sec,
      ratio=torch_sec / sec,
    )
    from benchmarks import torch_peer

    row["torch_peak_mib"] = torch_peer.peak_memory_mib()
  return row


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
          row["peak_fraction"] = row["gflops"] / (peaks[dtype]["matmul_peak_gflops"] * scale)
        rows.append(row)
        if not args.quiet:
          print(format_table([row], header=not rows[:-1]), flush=True)
  return dict(machine=info, rows=rows, notes=notes)


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


def format_table(rows: list[dict], header: bool = True) -> str:
  """Fixed-width text table; '-' where a value is missing ("n/a" for memory the backend does
  not report); a row with a "status" (e.g. "not supported yet") shows it after its dtype."""

  def cell(r: dict, k: str, fmt: str) -> str:
    if r.get(k) is not None:
      return fmt.format(r[k])
    return "n/a" if k in MEMORY and "ms_per_step" in r else "-"

  cells = [[cell(r, k, fmt) for k, _, fmt in COLUMNS] for r in rows]
  widths = [
    max(len(h), 12 if k in ("torch_images_per_s", "device_peak_mib") else 0, 5)
    for k, h, _ in COLUMNS
  ]
  widths = [max([w] + [len(c[i]) for c in cells]) for i, w in enumerate(widths)]
  line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))
  out = [line([h for _, h, _ in COLUMNS])] if header else []
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
      print(format_table(part["rows"], header=n == args.devices[0]), flush=True)
  return merged


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  # Before JAX starts (if it has not): allocate GPU memory as needed, leaving room for PyTorch.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.here or args.devices == [1]:
    result = run_here(args)
  else:
    result = run_per_device_count(args, argv)
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
