"""Where a convolutional family's train step spends its time: each convolution of its models,
jaxgen's against PyTorch's, beside the whole step of both.

    python -m benchmarks.layers --family vae --image_shape 64x64x3
    python -m benchmarks.layers --family gan --image_shape 32x32x3 --json runs/benchmarks/layers.json

It traces the family's train step (its config as benchmarks.throughput picks it, at
--image_shape and --batch_size, one device) abstractly and records every convolution and
transposed convolution the step's models call (flax's nn.Conv / nn.ConvTranspose and the
jaxgen.ops drop-ins): input shape, output channels, kernel, strides, padding, and how many
times one step calls it. Each distinct layer is then compiled alone as the trainer compiles
(jaxgen.ops fast paths where config.fast_ops chooses them, ops.compile) and timed forward and
forward + backward (the layer's output and the gradients of its input and kernel for one
cotangent; no bias, no activation), beside the same layer in PyTorch (nn.Conv2d /
nn.ConvTranspose2d with the same weights, channels_last as the peer's fused variant uses it:
torch_peer.CHANNELS_LAST; forward under no_grad). The whole train step of both (jaxgen's as
benchmarks.throughput times it, PyTorch's in the `--peer` variant) is timed in the same rounds,
all in turn, so the table's last lines compare the convolutions' share of each step with the
rest (activations, normalisation, losses, noise, the optimizer). As in benchmarks.throughput,
the machine's load is measured around the timings, and a warning printed (and `loaded` set in
the JSON) when other processes used more than timing.QUIET_CORES.

"calls x fwd" and "calls x fwd+bwd" bound the step's convolution time: every call runs
forward, and not every call needs its backward (a generator's forward in the discriminator's
update; the input gradient of a layer whose input is data), so the rest of the step (its
activations, normalisation, losses, noise and optimizer) lies between the two "rest" lines.
For a model that calls each layer once with its backward (the VAE), the upper bound is the
one to read. Layers marked * have no PyTorch padding equal to lax's "SAME" (odd kernels at
stride 2): PyTorch's layer pads as the torch peer does, the same shapes and work.
"""

import argparse
import json
import sys
from pathlib import Path

from benchmarks import throughput
from benchmarks.timing import interleaved, spread, watched

COLUMNS = (  # (key, header, format)
  ("layer", "layer", "{}"),
  ("calls", "calls", "{}"),
  ("jax_fwd_ms", "jax fwd ms", "{:.2f}"),
  ("torch_fwd_ms", "torch fwd ms", "{:.2f}"),
  ("jax_fwd_bwd_ms", "jax fwd+bwd ms", "{:.2f}"),
  ("torch_fwd_bwd_ms", "torch fwd+bwd ms", "{:.2f}"),
  ("ratio", "jax/torch speed", "{:.2f}x"),
)


def record_convolutions(family_name: str, config) -> list[dict]:
  """The convolutions one train step of the family calls, in call order, each once with
  `calls`: {kind ("conv" | "conv_transpose"), path, input_shape, features, kernel_size, strides,
  padding, calls}. Traced abstractly (jax.eval_shape): nothing is computed."""
  import flax.linen as nn
  import jax

  from jaxgen import ops, parallel, trainer
  from jaxgen import steps as families

  kinds = {
    nn.ConvTranspose: "conv_transpose",
    ops.ConvTranspose: "conv_transpose",
    nn.Conv: "conv",
    ops.Conv: "conv",
  }
  found: dict[tuple, dict] = {}

  def interceptor(next_fun, args, kwargs, context):
    kind = next((k for cls, k in kinds.items() if isinstance(context.module, cls)), None)
    if kind is not None and context.method_name == "__call__":
      m = context.module
      layer = dict(
        kind=kind,
        path="/".join(m.scope.path) if m.scope is not None else type(m).__name__,
        input_shape=tuple(args[0].shape),
        features=int(m.features),
        kernel_size=tuple(m.kernel_size),
        strides=tuple(m.strides or (1,) * len(m.kernel_size)),
        padding=m.padding,
      )
      key = tuple((k, str(v)) for k, v in layer.items())
      found.setdefault(key, {**layer, "calls": 0})["calls"] += 1
    return next_fun(*args, **kwargs)

  family = families.get_family(family_name)
  mesh = parallel.make_mesh(jax.devices()[:1])
  state, _ = trainer.create_state(config, mesh, jax.random.key(0))
  batch = throughput.random_batch(config, mesh)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(family.train_step, state, batch, jax.random.key(1))
  return list(found.values())


def describe_layer(layer: dict) -> str:
  """e.g. "conv_transpose decoder/to_image 32x32x16->3 k4 s2"."""
  h, w, c = layer["input_shape"][1:]
  k, s = layer["kernel_size"], layer["strides"]
  return f"{layer['kind']} {layer['path']} {h}x{w}x{c}->{layer['features']} k{k[0]} s{s[0]}"


def layer_arrays(layer: dict, seed: int = 0) -> dict:
  """Random float32 input, kernel [kH, kW, Cin, Cout] and output cotangent for the layer."""
  import jax
  import numpy as np

  x = np.random.default_rng(seed).standard_normal(layer["input_shape"]).astype(np.float32)
  k_shape = (*layer["kernel_size"], layer["input_shape"][-1], layer["features"])
  k = np.random.default_rng(seed + 1).standard_normal(k_shape).astype(np.float32)
  k /= np.sqrt(np.prod(k_shape[:3]))
  y = jax.eval_shape(jax_layer_fn(layer, fast=False), x, k)
  g = np.random.default_rng(seed + 2).standard_normal(y.shape).astype(np.float32)
  return dict(x=x, kernel=k, cotangent=g)


def jax_layer_fn(layer: dict, fast: bool):
  """(x, kernel) -> output of the layer: jaxgen.ops' fast form or flax's lax call."""
  from jax import lax

  from jaxgen import ops

  dn = ("NHWC", "HWIO", "NHWC")
  s, p = layer["strides"], layer["padding"]
  if layer["kind"] == "conv":
    if fast:
      return lambda x, k: ops.conv(x, k, s, p)
    return lambda x, k: lax.conv_general_dilated(x, k, s, p, dimension_numbers=dn)
  if fast:
    return lambda x, k: ops.conv_transpose(x, k, s, p)
  return lambda x, k: lax.conv_transpose(x, k, s, p, dimension_numbers=dn)


def jax_runners(layer: dict, arrays: dict, fast: bool, eigen_convs: bool) -> dict:
  """{"fwd": run(n), "fwd_bwd": run(n)}: n calls of the compiled layer, then a block."""
  import jax

  from jaxgen import ops

  f = jax_layer_fn(layer, fast)

  def fwd_bwd(x, k, g):
    y, vjp = jax.vjp(f, x, k)
    return y, vjp(g)

  args = [jax.device_put(arrays[n]) for n in ("x", "kernel", "cotangent")]
  platform = jax.devices()[0].platform
  runners = {}
  for name, fn, n_args in (("fwd", f, 2), ("fwd_bwd", fwd_bwd, 3)):
    compiled = ops.compile(jax.jit(fn).lower(*args[:n_args]), platform, eigen_convs)

    def run(n: int, compiled=compiled, a=args[:n_args]) -> None:
      for _ in range(n):
        out = compiled(*a)
      jax.block_until_ready(out)

    run(2)
    runners[name] = run
  return runners


def torch_padding(layer: dict, exact: bool = True) -> dict | None:
  """nn.Conv2d / nn.ConvTranspose2d padding arguments equal to the layer's lax padding, or
  None where PyTorch has no such form (lax's "SAME" pads one more after than before where the
  kernel is odd-sized and the stride even, or the reverse for transposed convolutions). With
  `exact=False` such layers get the torch peer's form instead (padding (k - 1) // 2 on both
  sides: the same output shape and work, shifted by a pixel), or None if no form fits."""
  from jaxgen import ops

  size, ks, ss = layer["input_shape"][1:3], layer["kernel_size"], layer["strides"]
  pad, out_pad = [], []
  for n, k, s in zip(size, ks, ss):
    if layer["kind"] == "conv":
      lo, hi = ops.conv_padding(n, k, s, layer["padding"])
      if lo != hi and not exact:
        lo = hi = (k - 1) // 2
        if (n + 2 * lo - k) // s + 1 != -(-n // s):
          return None
      elif lo != hi:
        return None
      pad.append(lo)
    else:  # torch's transposed conv is lax's on the dilated input padded (k-1-p, k-1-p+op)
      lo, hi = ops.transpose_padding(k, s, layer["padding"])
      if not (0 <= k - 1 - lo and 0 <= hi - lo < s):
        if exact:
          return None
        p = (k - 1) // 2
        lo, hi = k - 1 - p, k - 1 - p + (n * s - ((n - 1) * s - 2 * p + k))
        if not (0 <= hi - lo < s):
          return None
      pad.append(k - 1 - lo)
      out_pad.append(hi - lo)
  return dict(padding=tuple(pad), **({"output_padding": tuple(out_pad)} if out_pad else {}))


def torch_layer(layer: dict, kernel, channels_last: bool, exact: bool = True):
  """The PyTorch module computing the layer with `kernel` [kH, kW, Cin, Cout] (no bias), or
  None where `torch_padding(layer, exact)` has no form for it."""
  import numpy as np
  import torch

  from benchmarks import torch_peer

  pads = torch_padding(layer, exact)
  if pads is None:
    return None
  cin, cout = layer["input_shape"][-1], layer["features"]
  k = torch.from_numpy(np.asarray(kernel))
  common = dict(kernel_size=layer["kernel_size"], stride=layer["strides"], bias=False, **pads)
  if layer["kind"] == "conv":
    m = torch.nn.Conv2d(cin, cout, **common)
    weight = k.permute(3, 2, 0, 1)  # [O, I, kH, kW]
  else:  # lax's transposed conv does not flip its kernel, PyTorch's does: flip to match
    m = torch.nn.ConvTranspose2d(cin, cout, **common)
    weight = torch.flip(k, (0, 1)).permute(2, 3, 0, 1)  # [I, O, kH, kW]
  with torch.no_grad():
    m.weight.copy_(weight)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  return m.to(torch_peer.device(), memory_format=fmt)


def nchw(array, channels_last: bool, requires_grad: bool = False):
  """An NHWC numpy array as a PyTorch NCHW tensor on the peer's device."""
  import torch

  from benchmarks import torch_peer

  t = torch.from_numpy(array).permute(0, 3, 1, 2).to(torch_peer.device())
  t = t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
  return t.requires_grad_(requires_grad)


def torch_runners(module, arrays: dict, channels_last: bool) -> dict:
  """{"fwd": run(n), "fwd_bwd": run(n)} of the PyTorch layer, synchronised at the end."""
  import torch

  from benchmarks import torch_peer

  x = nchw(arrays["x"], channels_last, requires_grad=True)
  g = nchw(arrays["cotangent"], channels_last)
  sync = torch.cuda.synchronize if torch_peer.device().type == "cuda" else (lambda: None)

  def fwd(n: int) -> None:
    with torch.no_grad():
      for _ in range(n):
        module(x)
    sync()

  def fwd_bwd(n: int) -> None:
    for _ in range(n):
      module.zero_grad(set_to_none=True)
      x.grad = None
      module(x).backward(g)
    sync()

  fwd(2)
  fwd_bwd(2)
  return dict(fwd=fwd, fwd_bwd=fwd_bwd)


def measure(args) -> dict:
  """The table's rows and totals for args.family at args.image_shape."""

  from jaxgen import ops

  paths, notes = throughput.family_configs([args.family])
  if args.family not in paths:
    raise SystemExit("; ".join(notes))
  config = throughput.load_config(paths[args.family], args.image_shape, args.batch_size, args.set)
  layers = record_convolutions(args.family, config)
  if not layers:
    raise SystemExit(f"the {args.family} step calls no convolution")
  fast = ops.use_fast_ops(config.get("fast_ops", "auto"))
  eigen = config.get("xla_cpu_eigen_convs", True)
  use_torch = not args.no_torch and throughput.peer_unavailable(args.family) is None
  if use_torch:
    from benchmarks import torch_peer
  channels_last = use_torch and torch_peer.CHANNELS_LAST[args.family]
  runners, exact = {}, {}
  for i, layer in enumerate(layers):
    arrays = layer_arrays(layer, seed=i)
    for what, run in jax_runners(layer, arrays, fast, eigen).items():
      runners[(i, "jax", what)] = run
    if not use_torch:
      continue
    exact[i] = torch_padding(layer) is not None
    module = torch_layer(layer, arrays["kernel"], channels_last, exact=False)
    if module is not None:
      for what, run in torch_runners(module, arrays, channels_last).items():
        runners[(i, "torch", what)] = run
  runners[("step", "jax", "step")] = throughput.jax_runner(args.family, config, 1, args.warmup)[0]
  if use_torch:
    runners[("step", "torch", "step")] = torch_peer.runner(
      args.family, config, config.batch_size, args.warmup, variant=args.peer
    )
  times, samples = watched(lambda: interleaved(runners, args.repeats, args.steps))
  load: dict = {}
  throughput.mark_load(load, samples, "the layers and steps")  # warns when other work ran
  ms = {key: 1e3 * spread(t)["median"] for key, t in times.items()}
  rows = []
  for i, layer in enumerate(layers):
    mark = "" if exact.get(i, True) else " *"
    row = dict(layer=describe_layer(layer) + mark, calls=layer["calls"], spec=layer)
    for lib in ("jax", "torch"):
      for what in ("fwd", "fwd_bwd"):
        if (i, lib, what) in ms:
          row[f"{lib}_{what}_ms"] = ms[(i, lib, what)]
    if "torch_fwd_bwd_ms" in row:
      row["ratio"] = row["torch_fwd_bwd_ms"] / row["jax_fwd_bwd_ms"]
    rows.append(row)
  totals = {}
  for lib in ("jax", "torch"):
    if all(f"{lib}_fwd_bwd_ms" in r for r in rows):
      lower = sum(r["calls"] * r[f"{lib}_fwd_ms"] for r in rows)
      upper = sum(r["calls"] * r[f"{lib}_fwd_bwd_ms"] for r in rows)
      totals[lib] = dict(convolutions_lower_ms=lower, convolutions_upper_ms=upper)
      if ("step", lib, "step") in ms:
        step = ms[("step", lib, "step")]
        totals[lib].update(step_ms=step, rest_min_ms=step - upper, rest_max_ms=step - lower)
  return dict(
    family=args.family,
    image_shape=list(args.image_shape),
    batch_size=config.batch_size,
    fast_ops=fast,
    torch_peer=args.peer if use_torch else None,
    repeats=args.repeats,
    steps=args.steps,
    rows=rows,
    totals=totals,
    **load,
  )


def format_table(result: dict) -> str:
  """The rows, then calls x fwd+bwd, the step and the rest of it per library."""
  cells = [[fmt.format(r[k]) if k in r else "-" for k, _, fmt in COLUMNS] for r in result["rows"]]
  t = result["totals"]
  for label, key in (
    ("calls x fwd (lower bound)", "convolutions_lower_ms"),
    ("calls x fwd+bwd (upper bound)", "convolutions_upper_ms"),
    ("train step", "step_ms"),
    ("rest: step - upper bound", "rest_min_ms"),
    ("rest: step - lower bound", "rest_max_ms"),
  ):
    jax_ms, torch_ms = (t.get(lib, {}).get(key) for lib in ("jax", "torch"))
    speed = f"{torch_ms / jax_ms:.2f}x" if jax_ms and torch_ms and jax_ms > 0 else "-"
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    cells.append([label, "", "", "", fmt(jax_ms), fmt(torch_ms), speed])
  headers = [h for _, h, _ in COLUMNS]
  widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
  line = lambda vals: "  ".join(
    v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths))
  )
  return "\n".join([line(headers)] + [line(c) for c in cells])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--family", default="vae", help="gan, vae or classifier (a convolutional family)")
  p.add_argument("--image_shape", type=throughput.parse_shape, default=(64, 64, 3))
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported")
  p.add_argument("--steps", type=int, default=10, help="calls per timed run")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps of each train step")
  p.add_argument("--peer", default="fused", help="the PyTorch step's variant (torch_peer.VARIANTS)")
  p.add_argument("--no_torch", action="store_true", help="time jaxgen's side only")
  p.add_argument(
    "--set", action="append", default=[], help="config override key=value, e.g. model.width=64"
  )
  p.add_argument("--json", default=None, help="also write the result here")
  args = p.parse_args(argv)
  args.set = dict(kv.split("=", 1) for kv in args.set)
  return args


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  result = measure(args)
  shape = "x".join(map(str, result["image_shape"]))
  print(
    f"{result['family']} {shape}, batch {result['batch_size']}, one device; medians of "
    f"{args.repeats} timed runs of {args.steps} calls, all in turn; jaxgen.ops fast paths "
    f"{'on' if result['fast_ops'] else 'off'}; PyTorch step: {result['torch_peer'] or 'not run'}"
  )
  print(format_table(result))
  if any(r["layer"].endswith(" *") for r in result["rows"]):
    print(
      "* PyTorch has no padding equal to lax's here; its layer pads as the torch peer does: the "
      "same shapes and work, shifted by a pixel"
    )
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {args.json}")
  return result


if __name__ == "__main__":
  main()
