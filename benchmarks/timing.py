"""Timing helpers shared by the benchmarks: timed runs of a step, interleaved runners, and the
machine's measured matmul peak per dtype.

Every runner timed here must block until its device work is done (jax: `block_until_ready`
on the step's outputs; PyTorch on CUDA: `torch.cuda.synchronize()`), since GPU and TPU calls
return before the work finishes; the clock is read only around such blocking calls."""

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
  IEEE float32, at "tensorfloat32" TF32 tensor cores, so each setting gets its own peak)."""
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
  s = min(timed_runs(run, repeats, 3))
  return dict(matmul_size=n, matmul_peak_gflops=2 * n**3 / s / 1e9)


def step_runner(step, state, batch, key):
  """`run(k)`: k calls `state, _ = step(state, batch, key)` on the same batch, then
  block_until_ready (the state is donated, so each call takes the previous one's)."""
  import jax

  holder = [state]

  def run(k):
    s = holder[0]
    for _ in range(k):
      s, _ = step(s, batch, key)
    holder[0] = jax.block_until_ready(s)

  return run
