"""The accelerator check's driver (benchmarks/device_check.sh installs, then runs this).

    python -m benchmarks.device_check                 # on the backend JAX picks
    python -m benchmarks.device_check --quick         # tiny sizes (the default on CPU)

1. The backend-independent tests (`DEVICE_TESTS`: model maths, losses, metrics, forward and
   reverse mode through the plain models, and, with several devices, 1-vs-N device agreement
   in float64) run in a pytest process on this backend's real devices (JAX_PLATFORMS set to
   it; tests/conftest.py's simulated CPU devices only touch the CPU), float32 matmuls at the
   check's precision. Left out (`DESELECT`, and tests/test_ops.py): the golden values
   (float32 numbers recorded with XLA:CPU's kernels), the CPU-only choice of fast passes and
   the passes themselves (off on GPU/TPU), the CLI runs. --quick runs `QUICK_TESTS` instead.
2. The throughput table (benchmarks/throughput.py) for every family at its config's batch
   size, in each of `--dtypes`, with the PyTorch peer on the same device, the matmul peak per
   dtype, and memory.
3. One JSON file (`--out`, path printed): backend, device kind and count, versions, the
   precision settings, the test summary, the rows and notes, and the wall times.
"""

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path

from benchmarks import throughput

REPO = Path(__file__).resolve().parents[1]
# Backend-independent: nothing here assumes XLA:CPU's kernels, options or 8 simulated devices.
# tests/test_ops.py is left out: its custom VJPs are XLA:CPU's fast paths, off on GPU and TPU.
DEVICE_TESTS = [
  "tests/test_metrics.py",
  "tests/test_autodiff.py",
  "tests/test_gan.py",
  "tests/test_vae.py",
  "tests/test_draw.py",
]
MULTI_DEVICE_TESTS = ["tests/test_device_agreement.py"]  # asserts more than one device
# golden values (XLA:CPU float32 numbers), "fast passes on CPU", CLI subprocess runs
DESELECT = "not golden and not on_cpu and not from_the_cli"
QUICK_TESTS = [  # a few seconds: proves the step runs and its summary is read
  "tests/test_gan.py::test_losses_on_hand_computed_logits",
  "tests/test_draw.py::test_filterbanks_are_normalised",
]
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "flax", "optax")
PACKAGES += ("numpy", "torch")
SIZES = {  # throughput.py arguments per mode; the full one fits 8 minutes on one GPU
  "full": ["--batch_sizes", "config", "--repeats", "5", "--steps", "20", "--warmup", "5"],
  "quick": ["--batch_sizes", "8", "--repeats", "1", "--steps", "1", "--warmup", "1"],
}
QUICK_PEAK_SIZE = 256  # CPU bfloat16 matmuls are slow: a 2048^3 one alone takes seconds
BUDGET_S = 480


def versions() -> dict:
  """Installed versions of the packages the check depends on (None where absent)."""
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      out[name] = None
  return out


def tests_to_run(backend: str, device_count: int, quick: bool) -> list[str]:
  """pytest arguments of the backend-independent tests for this backend."""
  if quick:
    return list(QUICK_TESTS)
  paths = DEVICE_TESTS + (MULTI_DEVICE_TESTS if device_count > 1 or backend == "cpu" else [])
  return [*paths, "-k", DESELECT]


def summarise(output: str) -> dict[str, int]:
  """{"passed": n, "failed": n, ...} from pytest's last summary line."""
  lines = [x for x in output.splitlines() if re.search(r"\d+ (passed|failed|error)", x)]
  found = re.findall(
    r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", lines[-1] if lines else ""
  )
  return {("errors" if k == "error" else k): int(n) for n, k in found}


def run_tests(selection: list[str], backend: str, matmul_precision: str, timeout_s: float) -> dict:
  """Runs pytest on `selection` on this backend, echoing its output; {command, rc, counts,
  timed_out, wall_s, tail}. Killed after `timeout_s`."""
  env = dict(os.environ, JAX_PLATFORMS=backend)
  # the benchmark's float32 precision: the tests' float32 tolerances assume IEEE float32
  env["JAX_DEFAULT_MATMUL_PRECISION"] = {"tf32": "tensorfloat32"}.get(matmul_precision, "highest")
  cmd = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", *selection]
  print("+", " ".join(cmd), flush=True)
  t0, lines = time.perf_counter(), []
  with subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  ) as proc:
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    for line in proc.stdout:  # echoed as it comes: the GPU run takes minutes
      print(line, end="", flush=True)
      lines.append(line)
    rc = proc.wait()
    timer.cancel()
  output = "".join(lines)
  return dict(
    command=" ".join(cmd[2:]),
    rc=rc,
    counts=summarise(output),
    timed_out=time.perf_counter() - t0 >= timeout_s,
    wall_s=time.perf_counter() - t0,
    tail=output.splitlines()[-3:],
  )


def run_throughput(args, quick: bool) -> dict:
  """The throughput rows (every family x dtype, with the PyTorch peer), printed as measured."""
  argv = [*SIZES["quick" if quick else "full"], "--dtypes", ",".join(args.dtypes)]
  argv += ["--matmul_precision", args.matmul_precision]
  if quick:
    argv += ["--peak_size", str(QUICK_PEAK_SIZE)]
  if args.families:
    argv += ["--families", ",".join(args.families)]
  if args.no_torch:
    argv.append("--no_torch")
  else:
    argv += ["--peers", ",".join(args.peers)]
  print("+ python -m benchmarks.throughput", " ".join(argv), flush=True)
  t0 = time.perf_counter()
  result = throughput.run_here(throughput.parse_args(argv))
  result["wall_s"] = time.perf_counter() - t0
  result["argv"] = argv
  return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  csv = lambda t: [v for v in t.split(",") if v]
  p.add_argument("--out", default="runs/device_check/device_check.json", help="the JSON file")
  p.add_argument(
    "--quick",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="tiny sizes and a few tests (default: on for CPU, off on GPU/TPU)",
  )
  p.add_argument("--dtypes", type=csv, default=["float32", "bfloat16"], help="computation dtypes")
  p.add_argument(
    "--matmul_precision",
    choices=("highest", "tf32"),
    default="highest",
    help="float32 matmuls/convolutions in IEEE float32 (highest) or TF32, on both sides",
  )
  p.add_argument("--families", type=csv, default=None, help="default: every family")
  p.add_argument(
    "--tests",
    default=None,
    help='pytest arguments replacing the selection (e.g. "tests/test_gan.py"); "none" skips',
  )
  p.add_argument(
    "--tests_timeout_s", type=float, default=240.0, help="the tests are killed after this"
  )
  p.add_argument("--no_torch", action="store_true", help="skip the PyTorch peer")
  p.add_argument(
    "--peers",
    type=csv,
    default=["eager", "fused"],
    # torch.compile takes a minute or more per row: all rows would not fit BUDGET_S
    help="PyTorch peer variants (default eager,fused; add compile at its compile-time cost)",
  )
  p.add_argument(
    "--setup_s", type=float, default=None, help="seconds the installation took (from the script)"
  )
  args = p.parse_args(argv)
  for name in args.dtypes:
    if name not in throughput.DTYPES:
      p.error(f"unknown dtype {name!r}: choose from {', '.join(throughput.DTYPES)}")
  return args


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  t0 = time.perf_counter()
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts
  import jax

  backend, devices = jax.default_backend(), jax.devices()
  quick = backend == "cpu" if args.quick is None else args.quick
  print(
    f"device check: {len(devices)} x {devices[0].device_kind} ({backend}); "
    f"{'quick' if quick else 'full'} mode; {throughput.precision_statement(args.matmul_precision)}",
    flush=True,
  )
  result = dict(
    backend=backend,
    device_kind=devices[0].device_kind,
    device_count=len(devices),
    mode="quick" if quick else "full",
    versions=versions(),
    settings=dict(
      matmul_precision=args.matmul_precision,
      precision_statement=throughput.precision_statement(args.matmul_precision),
      dtypes=args.dtypes,
      torch_peers=[] if args.no_torch else args.peers,
      torch_bfloat16="torch.autocast(dtype=torch.bfloat16): float32 parameters, bfloat16 compute",
      jax_dtype=(
        "config.dtype: bfloat16 compute, float32 parameters, optimizer state and losses (rows "
        "say 'not supported yet' for a dtype jaxgen does not support)"
      ),
      xla_python_client_preallocate=os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"],
      memory=(
        "jax: XLA MiB = the compiled step's arguments + temporaries; dev peak MiB = the "
        "device's peak bytes in use so far in this process (memory_stats; n/a on CPU). "
        "torch: max_memory_allocated over its variants' steps (n/a on CPU)"
      ),
    ),
  )
  if args.tests == "none":
    result["tests"] = None
  else:
    selection = (
      shlex.split(args.tests) if args.tests else tests_to_run(backend, len(devices), quick)
    )
    result["tests"] = run_tests(selection, backend, args.matmul_precision, args.tests_timeout_s)
  result["throughput"] = run_throughput(args, quick)
  result["settings"].update(
    {k: v for k, v in result["throughput"]["machine"].items() if k.startswith("torch_")}
  )
  wall = dict(
    setup=args.setup_s,
    tests=result["tests"] and result["tests"]["wall_s"],
    throughput=result["throughput"]["wall_s"],
    check=time.perf_counter() - t0,
  )
  wall["total"] = wall["check"] + (args.setup_s or 0.0)
  result["wall_s"] = wall
  result["within_budget"] = quick or wall["total"] <= BUDGET_S

  print()
  print(throughput.describe(result["throughput"]))
  print(throughput.format_table(result["throughput"]["rows"]))
  for note in result["throughput"]["notes"]:
    print("note:", note)
  if result["tests"]:
    t = result["tests"]
    print(f"tests: {t['counts']} (exit {t['rc']}, {t['wall_s']:.0f} s)")
  print(f"wall: {', '.join(f'{k} {v:.0f} s' for k, v in wall.items() if v is not None)}")
  if not result["within_budget"]:
    print(f"warning: over the {BUDGET_S} s budget")
  path = Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1))
  print(f"wrote {path.resolve()}")
  return result


if __name__ == "__main__":
  tests = main()["tests"]
  sys.exit(1 if tests and tests["rc"] != 0 else 0)
