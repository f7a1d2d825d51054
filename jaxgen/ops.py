"""Convolutions, pooling and BatchNorm whose every pass runs on XLA:CPU's fast paths.

A stride-s transposed convolution is an ordinary convolution of the input dilated by s
(zeros between pixels); autodiff of a strided convolution produces the same kind for its
input gradient, and autodiff of the transposed one a kernel gradient with dilated input.
XLA:CPU runs those dilated forms off its fast path: the transposed convolution's kernel
gradient 25-50x slower than its forward pass, the others 1.5-2x slower than a strided
convolution of the same FLOPs. Here:

  conv_transpose  forward: s x s stride-1 convolutions, one per output phase, interleaved;
                  gradients: a strided convolution of the output gradient and that
                  convolution's own kernel gradient.
  conv            forward and kernel gradient: XLA's strided convolution as it is;
                  input gradient: the phase-split transposed convolution above.

A forward convolution of a thin input (kh * kw * Cin <= 27: an image's first layer, or the
input gradient of a layer that makes an image) runs tap by tap, a sum of shifted input
slices times kernel rows in one elementwise pass, 2-8x faster than XLA:CPU's convolution.
Block forms, where measured faster: a strided convolution of 1-4 channels whose kernel
divides by the stride runs on the input rearranged space-to-depth (3 channels become 12), and
a dilated one runs as one stride-1 convolution to every output phase at once, rearranged
depth-to-space (`_use_depth_to_space` says where). All of these run on every backend; only
CPU speeds were measured.

`conv_transpose` equals flax's `nn.ConvTranspose` (`lax.conv_transpose`, kernel
[kH, kW, Cin, Cout], not flipped) and `conv` equals `nn.Conv` (`lax.conv_general_dilated`),
values and gradients, up to float32 summation order (~1e-6 relative). Both are
`jax.custom_vjp` functions: reverse mode only (no jvp / jacfwd through them).
`ConvTranspose` and `Conv` are drop-in flax modules with the same parameters.
`max_pool` is the same idea for non-overlapping max pooling. `batch_norm_act` (module
`BatchNormAct`) is training-mode BatchNorm, (leaky) ReLU and optional max pooling as one
custom VJP: autodiff of the three makes about a dozen passes over full-size intermediates;
this reads x a few times and writes only the pooled output and the gradient, because it
pools before it normalises.

`compile` compiles a lowered step with XLA:CPU's convolutions on its Eigen path rather
than YNNPACK (see CPU_COMPILER_OPTIONS); on other backends it is `lowered.compile()`.
"""

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxgen.errors import ConfigError

FAST_OPS_SETTINGS = ("auto", True, False)


def use_fast_ops(setting: bool | str = "auto", platform: str | None = None) -> bool:
  """Whether models should use these fast passes: `setting` True/False as given; "auto" where
  they were measured faster, XLA:CPU (`platform`, default: JAX's default backend).

  The fast passes are custom VJPs (reverse mode only), so a model built with its defaults
  (fast_ops=False) keeps forward-mode autodiff; the trainer and benchmarks choose with this.
  """
  if isinstance(setting, str) and setting.lower() in ("true", "false"):
    setting = setting.lower() == "true"
  if setting not in FAST_OPS_SETTINGS:
    raise ConfigError(f"fast_ops={setting!r}; set --config.fast_ops to auto, true or false")
  if setting == "auto":
    return (platform or jax.default_backend()) == "cpu"
  return bool(setting)


Padding = str | Sequence[tuple[int, int]]
Pads = tuple[tuple[int, int], ...]
_DN = ("NHWC", "HWIO", "NHWC")


# ------------------------------------------------------------------- padding rules


def transpose_padding(
  kernel_size: int, stride: int, padding: str | tuple[int, int]
) -> tuple[int, int]:
  """(low, high) padding of the stride-dilated input, as lax.conv_transpose pads one axis.

  "SAME" and "VALID" name the padding of the forward convolution this one transposes;
  an explicit (low, high) pair is used as it is.
  """
  k, s = kernel_size, stride
  if padding == "SAME":
    total = k + s - 2
    low = k - 1 if s > k - 1 else int(np.ceil(total / 2))
  elif padding == "VALID":
    total = k + s - 2 + max(k - s, 0)
    low = k - 1
  else:
    return _pair(padding)
  return low, total - low


def conv_padding(
  size: int, kernel_size: int, stride: int, padding: str | tuple[int, int]
) -> tuple[int, int]:
  """(low, high) padding of a strided convolution of one axis, as lax pads "SAME"/"VALID"."""
  if padding == "VALID":
    return 0, 0
  if padding == "SAME":
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
  return _pair(padding)


def _pair(padding) -> tuple[int, int]:
  if isinstance(padding, str):
    raise ValueError(f"padding {padding!r}: jaxgen.ops takes 'SAME', 'VALID' or (low, high) pairs")
  low, high = padding
  return int(low), int(high)


def _per_axis(padding: Padding, n: int) -> list:
  return [padding] * n if isinstance(padding, str) else [tuple(p) for p in padding]


# -------------------------------------------------------------- the two conv forms


def _strided(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: tuple[int, ...], pads: Pads
) -> jax.Array:
  """Ordinary strided convolution (XLA's fast path); thin inputs through space-to-depth."""
  thin = x_BxHxWxC.shape[3] <= _MAX_SPACE_TO_DEPTH_CHANNELS
  whole = _whole_strides(kernel_KxKxIxO, strides)
  if thin and whole and not _empty_output(x_BxHxWxC, kernel_KxKxIxO, pads) and max(strides) > 1:
    return _space_to_depth_conv(x_BxHxWxC, kernel_KxKxIxO, strides, pads)
  if any(p < 0 for pair in pads for p in pair):
    # XLA:CPU (jax 0.10) computes a convolution whose padding is negative at one end and
    # positive at the other wrongly (values of 1e35), so lax.pad crops first.
    x_BxHxWxC = lax.pad(
      x_BxHxWxC,
      jnp.zeros((), x_BxHxWxC.dtype),
      ((0, 0, 0), *((min(lo, 0), min(hi, 0), 0) for lo, hi in pads), (0, 0, 0)),
    )
    pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
  return lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxIxO, strides, pads, dimension_numbers=_DN)


def _whole_strides(kernel_KxKxIxO: jax.Array, strides: tuple[int, ...]) -> bool:
  """Whether each kernel side is a whole number of strides (block forms then waste no taps)."""
  return all(k % s == 0 for k, s in zip(kernel_KxKxIxO.shape[:2], strides))


def _empty_output(x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, pads: Pads) -> bool:
  """Whether the kernel is larger than the padded input on some side (no output pixels)."""
  padded = [n + lo + hi for n, (lo, hi) in zip(x_BxHxWxC.shape[1:3], pads)]
  return any(n < k for n, k in zip(padded, kernel_KxKxIxO.shape[:2]))


# Strided convolutions of inputs with at most this many channels (an image's, or the
# gradient of a layer that makes one), with kernels divisible by the stride, run as a stride-1
# convolution of the input rearranged space-to-depth (3 channels become 12), which XLA:CPU
# runs faster: a 64x64x3 -> 16 convolution (4x4, stride 2, batch 64, AVX-512) took 1.93 ->
# 1.27 ms forward and 3.12 -> 2.51 ms with its kernel gradient. 5x5 kernels would be padded to
# 6x6 (1.44x the work), which gained nothing there.
_MAX_SPACE_TO_DEPTH_CHANNELS = 4


def _space_to_depth_conv(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: tuple[int, ...], pads: Pads
) -> jax.Array:
  """lax.conv_general_dilated(x, kernel, strides, pads) as a stride-1 "VALID" convolution
  of x padded and rearranged into [B, H / sh, W / sw, sh * sw * C] blocks, with the kernel
  zero-padded to whole blocks [ceil(kh / sh), ceil(kw / sw), sh * sw * C, O]. Exact: output
  o reads padded x at s * o + k, which is block o + k // s, position k % s in the block."""
  b, h, w, c = x_BxHxWxC.shape
  (sh, sw), (kh, kw, _, o) = strides, kernel_KxKxIxO.shape
  th, tw = -(-kh // sh), -(-kw // sw)  # kernel taps in blocks
  (lo_h, hi_h), (lo_w, hi_w) = pads
  out_h, out_w = (h + lo_h + hi_h - kh) // sh + 1, (w + lo_w + hi_w - kw) // sw + 1
  ph, pw = sh * (out_h + th - 1), sw * (out_w + tw - 1)  # padded size the blocks cover
  x = lax.pad(  # high padding may be negative: rows no output reads are cropped
    x_BxHxWxC,
    jnp.zeros((), x_BxHxWxC.dtype),
    ((0, 0, 0), (lo_h, ph - h - lo_h, 0), (lo_w, pw - w - lo_w, 0), (0, 0, 0)),
  )
  x = x.reshape(b, ph // sh, sh, pw // sw, sw, c).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(b, ph // sh, pw // sw, sh * sw * c)
  kernel = jnp.pad(kernel_KxKxIxO, ((0, th * sh - kh), (0, tw * sw - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(th, sh, tw, sw, c, o).transpose(0, 2, 1, 3, 4, 5)
  kernel = kernel.reshape(th, tw, sh * sw * c, o)
  return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)


# Convolutions of at most this many kernel taps x input channels (an image's first layer)
# run forward as a sum of shifted input slices times kernel rows, one elementwise pass:
# XLA's convolution of a 1-channel 28x28 batch to 32 channels took 4.1 ms, this 0.5 ms.
_MAX_TAPWISE = 27


def _tap_slices(
  x_BxHxWxC: jax.Array, kernel_hw: Sequence[int], strides: tuple[int, ...], pads: Pads
) -> list[jax.Array]:
  """The kh * kw strided slices [B, H', W', C] of padded x that kernel tap (i, j) multiplies,
  in row-major tap order."""
  x = lax.pad(
    x_BxHxWxC,
    jnp.zeros((), x_BxHxWxC.dtype),
    ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)),
  )  # may crop: lo < 0
  out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:3], kernel_hw, strides)]
  (sh, sw), (kh, kw) = strides, kernel_hw
  return [
    x[:, i : i + (out[0] - 1) * sh + 1 : sh, j : j + (out[1] - 1) * sw + 1 : sw]
    for i in range(kh)
    for j in range(kw)
  ]


def _forward(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: tuple[int, ...], pads: Pads
) -> jax.Array:
  """_strided's value; tap by tap (elementwise) for thin inputs."""
  kh, kw, cin, _ = kernel_KxKxIxO.shape
  if kh * kw * cin > _MAX_TAPWISE or _empty_output(x_BxHxWxC, kernel_KxKxIxO, pads):
    return _strided(x_BxHxWxC, kernel_KxKxIxO, strides, pads)
  taps = _tap_slices(x_BxHxWxC, (kh, kw), strides, pads)
  return sum(
    tap[..., c : c + 1] * kernel_KxKxIxO[t // kw, t % kw, c]
    for t, tap in enumerate(taps)
    for c in range(cin)
  )


def _phase_plan(
  size: int, k: int, s: int, low: int, high: int
) -> tuple[int, int, list[tuple[slice, int, tuple[int, int]]]]:
  """How one axis of a stride-s dilated convolution splits into s stride-1 ones.

  Output o = s * m + p (phase p) sums x[m - q + t] * kernel[r + s * t] over taps t, where
  low - p = s * q + r. Returns (output size, per-phase size m, [(kernel taps of phase p,
  number of taps, (low, high) padding of x)]); a phase with no taps is all zeros.
  """
  out = (size - 1) * s + 1 + low + high - k + 1
  m = -(-out // s)
  phases = []
  for p in range(s):
    q, r = divmod(low - p, s)
    taps = max(0, -(-(k - r) // s))
    phases.append((slice(r, k, s), taps, (q, m + taps - 1 - q - size)))
  return out, m, phases


# Below this many output channels XLA's own dilated convolution is the faster forward pass
# (e.g. a generator's last layer to 1 or 3 image channels: 2.0 vs 4.1 ms at batch 64), unless
# depth-to-space applies (below).
_MIN_PHASE_SPLIT_CHANNELS = 8


def _use_depth_to_space(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: tuple[int, ...]
) -> bool:
  """Whether `_dilated` runs as one convolution to every phase at once (`_depth_to_space`),
  where that was measured faster on XLA:CPU (batch 64, AVX-512): outputs of 2-7 channels whose
  phases give at least 8 (a 32x32x16 -> 64x64x3 transposed 4x4 convolution: 4.96 -> 1.58 ms
  forward; 5x5: 7.77 -> 4.32), and wider outputs where every phase has the same number of
  kernel taps (kernel divisible by the stride) on inputs of at least 8x8 (8x8x64 -> 16x16x32,
  4x4: 3.95 -> 1.86 ms). Not where taps would be wasted (5x5 kernels: 16x16x64 -> 32x32x32
  8.26 -> 9.22 ms), on 4x4 inputs (1.55 -> 2.01 ms), or to 1 channel (0.92 -> 1.59 ms); nor at
  stride 1, where there is one phase and nothing to gain."""
  cout, phases = kernel_KxKxIxO.shape[3], int(np.prod(strides))
  if phases == 1:
    return False
  if cout < _MIN_PHASE_SPLIT_CHANNELS:
    return cout >= 2 and cout * phases >= _MIN_PHASE_SPLIT_CHANNELS
  return _whole_strides(kernel_KxKxIxO, strides) and min(x_BxHxWxC.shape[1:3]) >= 8


def _block_plan(
  size: int, k: int, s: int, low: int, high: int
) -> tuple[np.ndarray, tuple[int, int], int, int]:
  """One axis of a stride-s dilated convolution as a stride-1 convolution to s phases at once.

  Output o = s * m + p - d (block m, phase p, shift d) sums x[m + t + a] * kernel[j] over the
  taps j with s * (t + a) = p - d + j - low. Returns (selection [T, s, k]: 1 where tap j feeds
  phase p from block offset t + a; (low, high) padding of x; shift d; output size). The shift
  d in [0, s) is the one with the fewest block offsets T (4x4 kernels, stride 2: 2, not 3).
  """
  out = (size - 1) * s + 1 + low + high - k + 1
  best = None
  for d in range(s):
    feeds = [(p, j, (p - d + j - low) // s) for p in range(s) for j in range(k)]
    feeds = [(p, j, t) for p, j, t in feeds if (p - d + j - low) % s == 0]
    a, z = min(t for *_, t in feeds), max(t for *_, t in feeds)
    if best is None or z - a < best[2] - best[1]:
      best = (d, a, z, feeds)
  d, a, z, feeds = best
  select = np.zeros((z - a + 1, s, k), np.float32)
  for p, j, t in feeds:
    select[t - a, p, j] = 1.0
  blocks = -(-(out + d) // s)
  return select, (-a, blocks - 1 + z - (size - 1)), d, out


def _depth_to_space(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: tuple[int, ...], pads: Pads
) -> jax.Array:
  """`_dilated` as one stride-1 "VALID" convolution of padded x to sh * sw * O channels (each
  phase's kernel taps placed at their block offsets, zeros elsewhere), then rearranged
  depth-to-space and cropped: XLA:CPU's convolution does better on the wide output than on O
  channels, or on s * s convolutions that each make a quarter of the pixels."""
  b, h, w, c = x_BxHxWxC.shape
  (sh, sw), o = strides, kernel_KxKxIxO.shape[3]
  (sel_h, pad_h, d_h, out_h), (sel_w, pad_w, d_w, out_w) = [
    _block_plan(n, k, s, lo, hi)
    for n, k, s, (lo, hi) in zip((h, w), kernel_KxKxIxO.shape[:2], strides, pads)
  ]
  kernel = jnp.einsum(  # each entry one kernel tap times 1: exact at HIGHEST precision
    "apj,bqk,jkco->abcpqo",
    sel_h.astype(kernel_KxKxIxO.dtype),
    sel_w.astype(kernel_KxKxIxO.dtype),
    kernel_KxKxIxO,
    precision=lax.Precision.HIGHEST,
  ).reshape(sel_h.shape[0], sel_w.shape[0], c, sh * sw * o)
  # Padded by lax.pad, not by the convolution (XLA:CPU's bug with negative padding, _strided).
  x = lax.pad(
    x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype), ((0, 0, 0), (*pad_h, 0), (*pad_w, 0), (0, 0, 0))
  )
  y = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN)
  _, mh, mw, _ = y.shape
  y = y.reshape(b, mh, mw, sh, sw, o).transpose(0, 1, 3, 2, 4, 5).reshape(b, mh * sh, mw * sw, o)
  return y[:, d_h : d_h + out_h, d_w : d_w + out_w]


def _dilated(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: tuple[int, ...], pads: Pads
) -> jax.Array:
  """Convolution of x dilated by `strides` and padded by `pads` (stride 1), computed as
  one stride-1 convolution per output phase, or one for all phases (`_depth_to_space`);
  equals lax.conv_general_dilated(x, kernel, 1, pads, lhs_dilation=strides)."""
  if _use_depth_to_space(x_BxHxWxC, kernel_KxKxIxO, strides):
    return _depth_to_space(x_BxHxWxC, kernel_KxKxIxO, strides, pads)
  if kernel_KxKxIxO.shape[3] < _MIN_PHASE_SPLIT_CHANNELS:
    # Padding passed as given: XLA:CPU's lhs-dilated convolution does not have the strided
    # one's bug with padding negative at one end (a sweep found none; tests/test_ops.py pins it).
    return lax.conv_general_dilated(
      x_BxHxWxC,
      kernel_KxKxIxO,
      (1,) * len(strides),
      pads,
      lhs_dilation=strides,
      dimension_numbers=_DN,
    )
  (h_out, mh, rows), (w_out, mw, cols) = [
    _phase_plan(n, k, s, lo, hi)
    for n, k, s, (lo, hi) in zip(x_BxHxWxC.shape[1:3], kernel_KxKxIxO.shape[:2], strides, pads)
  ]
  b, cout = x_BxHxWxC.shape[0], kernel_KxKxIxO.shape[3]
  grid = []
  for taps_h, nh, pad_h in rows:
    row = []
    for taps_w, nw, pad_w in cols:
      if nh and nw:
        row.append(_strided(x_BxHxWxC, kernel_KxKxIxO[taps_h, taps_w], (1, 1), (pad_h, pad_w)))
      else:
        row.append(jnp.zeros((b, mh, mw, cout), x_BxHxWxC.dtype))
    grid.append(jnp.stack(row, axis=3))  # [B, mh, mw, sw, O]
  y = jnp.stack(grid, axis=2)  # [B, mh, sh, mw, sw, O]
  return y.reshape(b, mh * strides[0], mw * strides[1], cout)[:, :h_out, :w_out]


def _flip_swap(kernel_KxKxIxO: jax.Array) -> jax.Array:
  """Spatially flipped kernel with input and output channels swapped: [K, K, O, I]."""
  return jnp.flip(kernel_KxKxIxO, (0, 1)).swapaxes(2, 3)


def _kernel_grad(
  x_BxHxWxC: jax.Array,
  dy_BxHxWxO: jax.Array,
  kernel_shape: Sequence[int],
  strides: tuple[int, ...],
  pads: Pads,
) -> jax.Array:
  """d/dkernel of sum(dy * _strided(x, kernel)): XLA's kernel gradient of a strided conv."""
  zeros = jnp.zeros(kernel_shape, x_BxHxWxC.dtype)
  return jax.vjp(lambda k: _strided(x_BxHxWxC, k, strides, pads), zeros)[1](dy_BxHxWxO)[0]


# ------------------------------------------------------------------ conv_transpose


def _transpose_cotangent_pads(kernel_hw: Sequence[int], pads: Pads) -> Pads:
  """Padding of dy such that dx[i] = sum_k dy_padded[s * i + k] * flip(kernel)[k]."""
  return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_hw, pads))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transpose(x_BxHxWxC, kernel_KxKxIxO, strides, pads):
  return _dilated(x_BxHxWxC, kernel_KxKxIxO, strides, pads)


def _conv_transpose_fwd(x_BxHxWxC, kernel_KxKxIxO, strides, pads):
  return _dilated(x_BxHxWxC, kernel_KxKxIxO, strides, pads), (x_BxHxWxC, kernel_KxKxIxO)


def _conv_transpose_bwd(strides, pads, residuals, dy_BxHxWxO):
  x_BxHxWxC, kernel_KxKxIxO = residuals
  dy_pads = _transpose_cotangent_pads(kernel_KxKxIxO.shape[:2], pads)
  flipped = _flip_swap(kernel_KxKxIxO)
  dx = _forward(dy_BxHxWxO, flipped, strides, dy_pads)
  dk_flipped = _kernel_grad(dy_BxHxWxO, x_BxHxWxC, flipped.shape, strides, dy_pads)
  return dx, _flip_swap(dk_flipped)


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def conv_transpose(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: Sequence[int], padding: Padding = "SAME"
) -> jax.Array:
  """Transposed convolution [B, H', W', O] equal to `lax.conv_transpose(x, kernel, strides,
  padding)` (flax `nn.ConvTranspose`), with fast forward and backward passes."""
  strides = tuple(int(s) for s in strides)
  pads = tuple(
    transpose_padding(k, s, p)
    for k, s, p in zip(kernel_KxKxIxO.shape[:2], strides, _per_axis(padding, len(strides)))
  )
  return _conv_transpose(x_BxHxWxC, kernel_KxKxIxO, strides, pads)


# ---------------------------------------------------------------------------- conv


def _conv_cotangent_pads(
  in_hw: Sequence[int],
  out_hw: Sequence[int],
  kernel_hw: Sequence[int],
  strides: Sequence[int],
  pads: Pads,
) -> Pads:
  """Padding of the stride-dilated dy whose convolution with the flipped kernel is dx."""
  return tuple(
    (k - 1 - lo, n - (m - 1) * s - 1 + lo)
    for n, m, k, s, (lo, _) in zip(in_hw, out_hw, kernel_hw, strides, pads)
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x_BxHxWxC, kernel_KxKxIxO, strides, pads):
  return _forward(x_BxHxWxC, kernel_KxKxIxO, strides, pads)


def _conv_fwd(x_BxHxWxC, kernel_KxKxIxO, strides, pads):
  return _forward(x_BxHxWxC, kernel_KxKxIxO, strides, pads), (x_BxHxWxC, kernel_KxKxIxO)


def _conv_bwd(strides, pads, residuals, dy_BxHxWxO):
  x_BxHxWxC, kernel_KxKxIxO = residuals
  if dy_BxHxWxO.size == 0:  # an empty output (kernel larger than the padded input)
    return jnp.zeros_like(x_BxHxWxC), jnp.zeros_like(kernel_KxKxIxO)
  dy_pads = _conv_cotangent_pads(
    x_BxHxWxC.shape[1:3], dy_BxHxWxO.shape[1:3], kernel_KxKxIxO.shape[:2], strides, pads
  )
  dx = _dilated(dy_BxHxWxO, _flip_swap(kernel_KxKxIxO), strides, dy_pads)
  dk = _kernel_grad(x_BxHxWxC, dy_BxHxWxO, kernel_KxKxIxO.shape, strides, pads)
  return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(
  x_BxHxWxC: jax.Array, kernel_KxKxIxO: jax.Array, strides: Sequence[int], padding: Padding = "SAME"
) -> jax.Array:
  """Strided convolution [B, H', W', O] equal to `lax.conv_general_dilated(x, kernel, strides,
  padding)` (flax `nn.Conv`), whose input gradient avoids XLA:CPU's dilated-input path and
  whose forward pass on thin inputs (kh * kw * Cin <= 27) is elementwise."""
  strides = tuple(int(s) for s in strides)
  pads = tuple(
    conv_padding(n, k, s, p)
    for n, k, s, p in zip(
      x_BxHxWxC.shape[1:3], kernel_KxKxIxO.shape[:2], strides, _per_axis(padding, len(strides))
    )
  )
  return _conv(x_BxHxWxC, kernel_KxKxIxO, strides, pads)


# -------------------------------------------------------------------- flax modules


class _ConvModule(nn.Module):
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Padding = "SAME"
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()
  dtype: Any = None  # computation dtype, as flax's (None: promoted from input and params)
  param_dtype: Any = jnp.float32

  op = staticmethod(conv)

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    shape = (*self.kernel_size, x_BxHxWxC.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
    bias = (
      self.param("bias", self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x_BxHxWxC, kernel = nn.dtypes.promote_dtype(x_BxHxWxC, kernel, dtype=self.dtype)
    y = self.op(x_BxHxWxC, kernel, self.strides, self.padding)
    if bias is not None:
      # Added in float32 (or wider) and rounded once: the bias gradient, a sum over every
      # pixel of the batch, is then reduced in float32 too (XLA:CPU sums a bfloat16 reduction
      # sequentially in bfloat16, which loses all but the first few hundred terms).
      y = (y + bias).astype(y.dtype)
    return y


class ConvTranspose(_ConvModule):
  """Drop-in for `nn.ConvTranspose` on NHWC images (2-D; no dilation, mask or
  transpose_kernel): the same "kernel" [kH, kW, Cin, Cout] and "bias" [Cout] parameters."""

  op = staticmethod(conv_transpose)


class Conv(_ConvModule):
  """Drop-in for `nn.Conv` on NHWC images (2-D; no dilation, groups or mask): the same
  "kernel" [kH, kW, Cin, Cout] and "bias" [Cout] parameters."""

  op = staticmethod(conv)


def conv_layers(fast: bool) -> tuple[type[nn.Module], type[nn.Module]]:
  """(Conv, ConvTranspose): these modules' where the fast passes are on, else flax's."""
  return (Conv, ConvTranspose) if fast else (nn.Conv, nn.ConvTranspose)


# ---------------------------------------------------------------------- max pooling


def _trim(x_BxHxWxC: jax.Array, window: tuple[int, int]) -> jax.Array:
  """x without the trailing rows/columns a "VALID" window pool drops."""
  _, h, w, _ = x_BxHxWxC.shape
  return x_BxHxWxC[:, : h - h % window[0], : w - w % window[1]]


def _window_slices(x_BxHxWxC: jax.Array, window: tuple[int, int]) -> list[jax.Array]:
  """The wh * ww strided slices [B, H // wh, W // ww, C] of x, one per window position,
  in row-major window order."""
  wh, ww = window
  b, h, w, c = x_BxHxWxC.shape
  x = x_BxHxWxC.reshape(b, h // wh, wh, w // ww, ww, c)
  return [x[:, :, i, :, j] for i in range(wh) for j in range(ww)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x_BxHxWxC, window):
  return functools.reduce(jnp.maximum, _window_slices(x_BxHxWxC, window))


def _max_pool_fwd(x_BxHxWxC, window):
  y = _max_pool(x_BxHxWxC, window)
  return y, (x_BxHxWxC, y)


def _route_to_first(
  x_BxHxWxC: jax.Array, picked: jax.Array, dy: jax.Array, window: tuple[int, int]
) -> jax.Array:
  """[B, H, W, C]: each window's `dy` at the first position (row-major window order) where x
  equals `picked` (both [B, H // wh, W // ww, C]), zeros elsewhere: nn.max_pool's gradient."""
  wh, ww = window
  b, h, w, c = x_BxHxWxC.shape
  # The first matching position per window, computed on the pooled grid; the full-size pass
  # is then a broadcast in x's own memory order (stacking per-position slices would need a
  # transpose, which XLA:CPU runs several times slower).
  first = functools.reduce(
    jnp.minimum,
    [
      jnp.where(part == picked, k, wh * ww)
      for k, part in enumerate(_window_slices(x_BxHxWxC, window))
    ],
  )
  position = jnp.arange(wh * ww).reshape(1, 1, wh, 1, ww, 1)
  expand = lambda a: a[:, :, None, :, None, :]
  dx = jnp.where(position == expand(first), expand(dy), 0.0)
  return dx.reshape(b, h, w, c)


def _max_pool_bwd(window, residuals, dy):
  x_BxHxWxC, y = residuals
  return (_route_to_first(x_BxHxWxC, y, dy, window),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x_BxHxWxC: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """Non-overlapping max pooling [B, H // wh, W // ww, C], equal to
  `nn.max_pool(x, window, strides=window)` ("VALID": trailing rows/columns dropped), values
  and gradients, ties included (the first maximum in row-major window order takes it).

  The maximum of the wh * ww strided slices and a custom VJP keep both passes elementwise;
  the reduce-window form's gradient is a select-and-scatter that XLA:CPU runs ~15x slower.
  """
  window = tuple(int(v) for v in window)
  return _max_pool(_trim(x_BxHxWxC, window), window)


# ------------------------------------------------ BatchNorm, activation, pooling: fused


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over all but the last axis, as flax computes them
  (use_fast_variance: E[x^2] - E[x]^2, clipped at 0)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  return mean, jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)


def _activation(u: jax.Array, negative_slope: float) -> jax.Array:
  return nn.relu(u) if negative_slope == 0.0 else nn.leaky_relu(u, negative_slope)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm_act(x, scale, bias, epsilon, negative_slope, window):
  return _batch_norm_act_fwd(x, scale, bias, epsilon, negative_slope, window)[0]


def _batch_norm_act_fwd(x, scale, bias, epsilon, negative_slope, window):
  mean, var = _batch_stats(x)
  rstd = lax.rsqrt(var + epsilon)
  a = scale * rstd
  picked = x
  if window:
    # act(a * x + b) is monotone in x, increasing where a > 0 and decreasing where a < 0,
    # so each window's maximum comes from its largest or smallest x: the pool runs on x and
    # only the pooled values are normalised. (a == 0: all equal, flax picks the first.)
    parts = _window_slices(_trim(x, window), window)
    largest = functools.reduce(jnp.maximum, parts)
    smallest = functools.reduce(jnp.minimum, parts)
    picked = jnp.where(a > 0, largest, jnp.where(a < 0, smallest, parts[0]))
  y = _activation((picked - mean) * a + bias, negative_slope)
  return (y, mean, var), (x, picked, mean, rstd, scale, bias)


def _sum_to(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """v summed over the axes where `shape` (right-aligned, as broadcasting) has size 1 or none."""
  lead = v.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1)
  return jnp.sum(v, axes).reshape(shape) if axes else v


def _batch_norm_act_bwd(epsilon, negative_slope, window, residuals, cotangents):
  x, picked, mean, rstd, scale, bias = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  picked_centred = picked - mean
  u = picked_centred * (scale * rstd) + bias
  du = dy * jnp.where(u > 0 if negative_slope == 0.0 else u >= 0, 1.0, negative_slope)
  dbias = _sum_to(du, jnp.shape(bias))
  dscale = _sum_to(du * picked_centred, jnp.shape(scale)) * rstd
  # With u = (x - mean) * rstd * scale + bias, d(loss)/dx = rstd * (g - sum(g) / n - centred *
  # rstd^2 * sum(g * centred) / n) for g = du * scale routed to x's positions; the sums run over
  # every axis but channels, so scale and bias may also be per example ([B, 1, 1, C]).
  g_scaled = du * scale
  sum_g = jnp.sum(g_scaled, axes)
  sum_g_centred = jnp.sum(g_scaled * picked_centred, axes)
  g = g_scaled
  if window:
    g = _route_to_first(_trim(x, window), picked, g_scaled, window)
    g = jnp.pad(g, [(0, full - part) for full, part in zip(x.shape, g.shape)])
  centred = x - mean
  # BatchNorm's gradient through the batch statistics, plus any cotangent of the statistics.
  dx = rstd * (g - sum_g / n - centred * (rstd * rstd * sum_g_centred / n))
  dx = dx + (dmean + 2.0 * dvar * centred) / n
  return dx, dscale, dbias


_batch_norm_act.defvjp(_batch_norm_act_fwd, _batch_norm_act_bwd)


def batch_norm_act(
  x_BxHxWxC: jax.Array,
  scale_C: jax.Array,
  bias_C: jax.Array,
  *,
  epsilon: float = 1e-5,
  negative_slope: float = 0.0,
  window: Sequence[int] | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm, (leaky) ReLU and optional max pooling as one op:
  (y [B, H // wh, W // ww, C] (or x's shape without `window`), batch mean_C, batch var_C).

  Equals `nn.BatchNorm(use_running_average=False, epsilon=epsilon)` (with these scale and
  bias), then `nn.relu` (`negative_slope` 0) or `nn.leaky_relu(., negative_slope)`, then
  `nn.max_pool(., window, strides=window)`, values and gradients up to float32 rounding.
  Statistics are over all axes but the last, so x may have any rank without `window`.
  scale_C and bias_C are [C], or per example with x's rank ([B, 1, 1, C]: conditional
  BatchNorm); their gradients come back in their own shapes.
  The custom VJP makes a few passes over x instead of autodiff's dozen over full-size
  intermediates, and pools before normalising. The gradient goes to the first position of
  each window that holds the selected x, as flax's; it can differ only where two x in a
  window differ yet normalise to the same float32. Inputs below float32 (bfloat16) are
  computed in float32, as flax does; y is float32. Reverse mode only (a custom VJP).
  """
  window = tuple(int(v) for v in window) if window else None
  if window and negative_slope < 0:
    raise ValueError(
      f"negative_slope {negative_slope} < 0: the fused pool needs a monotone "
      "activation; use nn.BatchNorm and pool separately"
    )
  if window and x_BxHxWxC.ndim != 4:
    raise ValueError(f"pooling needs [B, H, W, C] input, got shape {x_BxHxWxC.shape}")
  x = _at_least_float32(x_BxHxWxC)  # as flax: statistics in float32 at least
  return _batch_norm_act(x, scale_C, bias_C, float(epsilon), float(negative_slope), window)


def _at_least_float32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class BatchNormAct(nn.Module):
  """`nn.BatchNorm` -> ReLU (or leaky ReLU) -> optional max pool over `window`, with
  nn.BatchNorm's variables (params scale, bias; batch_stats mean, var) and running-average
  update, so checkpoints interchange. Training runs `batch_norm_act` (`fused`) or flax's
  arithmetic through plain autodiff (`fused=False`, the reference tests hold it to); inference
  is plain jnp, pooled by `max_pool`. With `fused` it is reverse-mode only (custom VJPs).
  `dtype` (e.g. bfloat16) is the output's dtype; the arithmetic stays float32.
  `gain_BxC`/`shift_BxC` are per-example offsets added to scale and bias (class-conditional
  BatchNorm); the fused pass takes them as [B, 1, 1, C] scale and bias."""

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  negative_slope: float = 0.0
  window: tuple[int, int] | None = None
  fused: bool = True
  # dtype of y, as nn.BatchNorm's (None: float32 or wider); statistics and the normalisation
  # are computed in float32 (or wider) whatever it is, and the running averages stay float32.
  dtype: Any = None

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    use_running_average: bool | None = None,
    gain_BxC: jax.Array | None = None,
    shift_BxC: jax.Array | None = None,
  ) -> jax.Array:
    use_running_average = nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    conditional = gain_BxC is not None or shift_BxC is not None
    if conditional:  # [B, C] offsets broadcast over the positions: [B, 1, ..., 1, C]
      spread = lambda v: (
        0.0 if v is None else v.reshape((v.shape[0],) + (1,) * (x.ndim - 2) + (-1,))
      )
      scale, bias = scale + spread(gain_BxC), bias + spread(shift_BxC)
    if self.fused and not use_running_average:
      y, mean, var = batch_norm_act(
        x, scale, bias, epsilon=self.epsilon, negative_slope=self.negative_slope, window=self.window
      )
    else:  # flax's arithmetic
      x = _at_least_float32(x)
      mean, var = (ra_mean.value, ra_var.value) if use_running_average else _batch_stats(x)
      y = (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
      y = _activation(y, self.negative_slope)
      if self.window:
        y = (
          max_pool(y, self.window)
          if self.fused
          else nn.max_pool(y, self.window, strides=self.window)
        )
    if not use_running_average and not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y if self.dtype is None else y.astype(self.dtype)


# ------------------------------------------------------------ XLA:CPU compile options

# XLA:CPU hands dots, reductions and convolutions to YNNPACK by default. On the 2-core AMD
# EPYC this was tuned on, YNNPACK's convolutions ran 1.3-1.6x slower than XLA's own Eigen
# convolutions (its dots and reductions are the faster ones), which cost the DCGAN step
# 1.8x: this list is the default one less INDIVIDUAL_CONVOLUTION.
CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}


def compile(
  lowered: jax.stages.Lowered, platform: str, eigen_convs: bool = True
) -> jax.stages.Compiled:
  """`lowered.compile()`, with CPU_COMPILER_OPTIONS when `platform` is "cpu" and
  `eigen_convs`. A jaxlib that lacks the option compiles with its defaults (and warns)."""
  if platform == "cpu" and eigen_convs:
    try:
      return lowered.compile(compiler_options=CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError as e:
      if not any(name in str(e) for name in CPU_COMPILER_OPTIONS):
        raise
      warnings.warn(
        f"this jaxlib does not take {CPU_COMPILER_OPTIONS}; compiling with XLA's "
        f"defaults ({str(e).splitlines()[0]})",
        RuntimeWarning,
        stacklevel=2,
      )
  return lowered.compile()
