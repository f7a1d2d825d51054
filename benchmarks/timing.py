"""Timing helpers shared by the benchmarks: timed runs of a step, interleaved runners, and the
machine's measured matmul peak per dtype.

Every runner timed here must block until its device work is done (jax: `block_until_ready`
on the step's outputs; PyTorch on CUDA: `torch.cuda.synchronize()`), since GPU and TPU calls
return before the work finishes; the clock is read only around such blocking calls.

The machine's load (`machine_load`, `watched`) is measured around each measurement: on a
shared machine other processes take cores from the benchmark, and PyTorch's spinning worker
threads suffer from that far more than XLA's, so a ratio taken under load says little."""

import os
import statistics
import time


def timed_runs(run_steps, repeats: int, steps: int) -> list[float]:
  """Seconds per step of each of `repeats` calls of `run_steps(steps)` (which must block)."""
  return interleaved({"run": run_steps}, repeats, steps)["run"]


def interleaved(
  runners: dict, repeats: int, steps: int, settle_s: float = 0.25
) -> dict[str, list[float]]:
  """Seconds per step of `repeats` timed calls `run(steps)` of each runner, taken in turn
  (the order alternating each round) so that a change in the machine's load or clock
  during the measurement touches every runner alike. With several runners each timed call
  waits `settle_s` first: the last one's worker threads (OpenMP's, Eigen's) spin for a while
  after their work and would otherwise be timed against the next."""
  times: dict[str, list[float]] = {name: [] for name in runners}
  for i in range(repeats):
    for name in list(runners) if i % 2 == 0 else list(runners)[::-1]:
      if len(runners) > 1:
        time.sleep(settle_s)
      t0 = time.perf_counter()
      runners[name](steps)
      times[name].append((time.perf_counter() - t0) / steps)
  return times


def matmul_peak_gflops(repeats: int = 5, dtype: str = "float32", size: int | None = None) -> dict:
  """Measured matmul GFLOP/s of one device in `dtype`: the best of `repeats` timed runs of
  n x n @ n x n (n = `size`, default 2048 on CPU and 8192 elsewhere) at the process's
  default matmul precision (`jax_default_matmul_precision`: on GPU float32 at "highest" runs
  IEEE float32, at "tensorfloat32" TF32 tensor cores, so each setting gets its own peak).
  Also the min / median / max GFLOP/s of the repeats (`matmul_peak_spread`) and the machine's
  load before, during and after them (`matmul_peak_load`, see `watched`)."""
  import jax
  import jax.numpy as jnp

  n = size or (2048 if jax.devices()[0].platform == "cpu" else 8192)
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()

  def run(k):
    for _ in range(k):
      out = matmul(a)
    out.block_until_ready()

  run(2)
  times, load = watched(lambda: timed_runs(run, repeats, 3))
  gflops = sorted(2 * n**3 / s / 1e9 for s in times)
  return dict(
    matmul_size=n,
    matmul_peak_gflops=gflops[-1],
    matmul_peak_spread=spread(gflops),
    matmul_peak_load=load,
  )


def step_runner(step, state, batch, key):
  """`run(k)`: k calls `state, _ = step(state, batch, key)` on the same batch, then
  block_until_ready (the state is donated, so each call takes the previous one's). `step` may be
  a list of compiled steps run in turn, one per step number, as the loop runs a family's
  `step_variants` (the phase carries over from one `run` to the next)."""
  import jax

  cycle = list(step) if isinstance(step, (list, tuple)) else [step]
  holder = [state, 0]

  def run(k):
    s, n = holder
    for i in range(n, n + k):
      s, _ = cycle[i % len(cycle)](s, batch, key)
    holder[:] = [jax.block_until_ready(s), n + k]

  return run


# ------------------------------------------------------------------ the machine's load

QUIET_CORES = 0.5  # more other busy cores than this (beyond the benchmark's own) = "loaded"
LOAD_WINDOW_S = 0.5  # the sampling window of a before/after measurement
BUSY_PROCESS_CORES = 0.1  # another process using this many cores counts as busy


def _proc_times() -> dict[int, tuple[int, str, int]]:
  """{pid: (parent pid, name, user + system clock ticks)} of every process /proc shows."""
  out = {}
  for entry in os.scandir("/proc"):
    if not entry.name.isdigit():
      continue
    try:
      with open(f"/proc/{entry.name}/stat") as f:
        text = f.read()
    except OSError:  # it ended while we looked
      continue
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    out[int(entry.name)] = (int(rest[1]), name, int(rest[11]) + int(rest[12]))
  return out


def load_snapshot() -> dict:
  """The machine's CPU counters now (`machine_load(since=...)` takes two apart): /proc/stat's
  busy and total ticks (steal counts as busy: another VM ran on our core) and each process's
  CPU ticks; on systems without /proc, only the time and the load average."""
  snap = dict(
    t=time.perf_counter(),
    own_s=time.process_time(),
    loadavg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
  )
  if os.path.exists("/proc/stat"):
    with open("/proc/stat") as f:
      lines = f.read().splitlines()
    # user nice system idle iowait irq softirq steal
    ticks = [int(v) for v in lines[0].split()[1:9]]
    snap.update(
      busy=sum(ticks) - ticks[3] - ticks[4],
      cores=sum(1 for x in lines if x.startswith("cpu") and x[3].isdigit()),
      procs=_proc_times(),
    )
  return snap


def _own_tree(procs: dict, pid: int) -> set[int]:
  """`pid` and its descendants (e.g. torch.compile's worker processes)."""
  tree, grew = {pid}, True
  while grew:
    more = {p for p, (ppid, _, _) in procs.items() if ppid in tree} - tree
    tree |= more
    grew = bool(more)
  return tree


def machine_load(window_s: float = LOAD_WINDOW_S, since: dict | None = None) -> dict:
  """The CPU load over `window_s` seconds from now (or from the snapshot `since` to now: the
  load during a measurement). Cores busy in all (`busy_cores`), in this process and its
  children (`own_cores`), in everything else (`other_cores`, which decides "loaded"), the
  1-minute load average, and the other processes busy with more than BUSY_PROCESS_CORES
  (`busy_processes`: [name, cores], busiest first). Without /proc (not Linux) only the load
  average is known and `other_cores` is it less this process's CPU use over the window."""
  a = since or load_snapshot()
  if since is None:
    time.sleep(window_s)
  b = load_snapshot()
  wall = max(b["t"] - a["t"], 1e-6)
  out = dict(window_s=wall, loadavg=b["loadavg"])
  if "busy" not in b:  # no /proc: the load average (which counts us too) is all we have
    own = (b["own_s"] - a["own_s"]) / wall
    out.update(own_cores=own, other_cores=max((b["loadavg"] or 0.0) - own, 0.0))
    return out
  tick = os.sysconf("SC_CLK_TCK")
  mine = _own_tree(b["procs"], os.getpid())

  def cores(pid: int) -> float:  # a process born during the window counts from its start
    before = a["procs"].get(pid, (0, "", 0))[2]
    return (b["procs"][pid][2] - before) / tick / wall

  busy = (b["busy"] - a["busy"]) / tick / wall
  own = sum(cores(p) for p in mine)
  others = sorted(
    ((b["procs"][p][1], round(cores(p), 2)) for p in b["procs"] if p not in mine),
    key=lambda x: -x[1],
  )
  out.update(
    cores=b["cores"],
    busy_cores=busy,
    own_cores=own,
    other_cores=max(busy - own, 0.0),
    busy_processes=[list(x) for x in others if x[1] >= BUSY_PROCESS_CORES],
  )
  return out


def is_loaded(sample: dict, threshold: float = QUIET_CORES) -> bool:
  """Whether other work used more than `threshold` cores during the sample."""
  return sample["other_cores"] > threshold


def describe_load(sample: dict) -> str:
  """ "1.9 other busy cores (load average 4.03; busiest: python3 0.95, ...)"."""
  avg = f"load average {sample['loadavg']:.2f}" if sample.get("loadavg") is not None else ""
  busiest = ", ".join(f"{n} {c:.2f}" for n, c in sample.get("busy_processes", [])[:3])
  extra = "; ".join(x for x in (avg, busiest and f"busiest: {busiest}") if x)
  return f"{sample['other_cores']:.2f} other busy cores" + (f" ({extra})" if extra else "")


def watched(fn, window_s: float = LOAD_WINDOW_S):
  """(fn(), {"before", "during", "after": machine_load samples, "loaded": bool}): the
  machine's load just before, during (snapshot to snapshot, nothing sampled inside the timed
  work) and just after `fn`; "loaded" when any exceeded QUIET_CORES."""
  before = machine_load(window_s)
  snap = load_snapshot()
  result = fn()
  during = machine_load(since=snap)
  after = machine_load(window_s)
  samples = dict(before=before, during=during, after=after)
  return result, dict(samples, loaded=any(is_loaded(s) for s in samples.values()))


def spread(values: list[float]) -> dict[str, float]:
  """{"min", "median", "max"} of a row's repeats."""
  return dict(min=min(values), median=statistics.median(values), max=max(values))
