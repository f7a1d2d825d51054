"""PyTorch peers of jaxgen's models, timed on the same train step, in three variants.

Each peer mirrors the flax model layer for layer (sizes from the same plan functions,
the same optimizer and hyper-parameters, BatchNorm momentum and epsilon) and does the work
of the family's `train_step`: the GAN's D update then G update and generator EMA, the VAE's
fresh binarisation, reparameterised ELBO and Adam update, the classifier's flips, dropout
and cross-entropy, DRAW's T recurrent steps with Gaussian read and write windows, KL per
step and clipped Adam update. Each step function's `num_params` is its trainable parameter
count and `param_shapes` each parameter's shape in flax's layout, which tests hold equal to
the flax model's. Peers are for timing, not for matching
numbers: "SAME" padding is symmetric here (PyTorch's `padding`, `output_padding`) where XLA
pads one side more.

torch is an optional extra (`pip install -e ".[bench]"`) and never a core dependency:
import this module only where `torch` is installed. Threads: PyTorch's default
(`torch.get_num_threads()`, reported with every result).

Device: CUDA where this torch build sees a GPU (`device()`), else the CPU; `configure` sets
cuDNN's autotuner and the float32 matmul precision to match jaxgen's side. bfloat16 runs the
same float32 models under `torch.autocast(dtype=torch.bfloat16)` (mixed precision: float32
parameters and optimizer, bfloat16 matmuls and convolutions), the form flax's `dtype=`
(computation dtype, float32 `param_dtype`) takes.

Variants (`VARIANTS`, `runner(..., variant=)`), the same modules and step function each:
  eager    PyTorch as most code runs it: eager, the optimizer's default implementation,
           NCHW tensors.
  fused    eager with the fastest optimizer implementation this torch has on the device
           (`fused=True` where Adam/AdamW accept it there, else `foreach=True`) and, for the
           convolutional models, channels_last tensors (`CHANNELS_LAST`).
  compile  `torch.compile` of the whole step function (forward, loss, backward, optimizer
           step, EMA; dynamo splits it at `backward`), mode `COMPILE_MODE`, with the foreach
           optimizer (the form torch.compile's optimizer lowering fuses) and channels_last as
           for "fused". Its compile time is paid in the untimed warm-up and reported as the
           variant's `setup_s`.
"""

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence

import ml_collections
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.timing import spread, timed_runs
from jaxgen.models import common as model_common


def device() -> torch.device:
  """CUDA where this torch build sees a GPU, else the CPU."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure(matmul_precision: str = "highest") -> dict:
  """Sets PyTorch's float32 matmul/convolution precision ("highest": IEEE float32, TF32 off;
  "tf32": TF32 tensor cores on, for matmuls and cuDNN alike) and, on CUDA, cuDNN's autotuner
  (`cudnn.benchmark`: each convolution shape picks its fastest algorithm once, as XLA's
  autotuner does when it compiles). Returns the settings as applied."""
  if matmul_precision not in ("highest", "tf32"):
    raise ValueError(f"matmul_precision {matmul_precision!r}: choose highest or tf32")
  tf32 = matmul_precision == "tf32"
  torch.set_float32_matmul_precision("high" if tf32 else "highest")
  torch.backends.cuda.matmul.allow_tf32 = tf32
  torch.backends.cudnn.allow_tf32 = tf32
  cuda = device().type == "cuda"
  torch.backends.cudnn.benchmark = cuda
  return dict(
    torch_float32_matmul_precision=torch.get_float32_matmul_precision(),
    torch_allow_tf32=tf32,
    torch_cudnn_benchmark=cuda,
  )


def reset_peak_memory() -> None:
  """Starts a fresh peak of `peak_memory_mib` (CUDA only)."""
  if device().type == "cuda":
    torch.cuda.reset_peak_memory_stats()


def peak_memory_mib() -> float | None:
  """MiB of tensors allocated at the peak since `reset_peak_memory` (None on the CPU)."""
  return torch.cuda.max_memory_allocated() / 2**20 if device().type == "cuda" else None


def _pad(k: int) -> tuple[int, int]:
  """(padding, output_padding) giving XLA "SAME" sizes for a stride-2 (transposed) conv."""
  p = (k - 1) // 2
  return p, 2 + 2 * p - k


def _conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, k, stride=2, padding=_pad(k)[0], bias=bias)


def _deconv(cin: int, cout: int, k: int, bias: bool = True) -> nn.ConvTranspose2d:
  p, op = _pad(k)
  return nn.ConvTranspose2d(cin, cout, k, stride=2, padding=p, output_padding=op, bias=bias)


def _num_params(*modules: nn.Module) -> int:
  """Trainable parameters of the modules together."""
  return sum(p.numel() for m in modules for p in m.parameters())


def flax_layout_shapes(*modules: nn.Module) -> list[tuple[int, ...]]:
  """Every trainable tensor's shape in flax's layout, sorted: conv kernels [kH, kW, Cin, Cout]
  (transposed ones too), dense kernels [in, out]. Tests hold it equal to the flax model's."""
  shapes = []
  for module in modules:
    for layer in module.modules():
      for name, p in layer.named_parameters(recurse=False):
        s = tuple(p.shape)
        if name == "weight" and isinstance(layer, nn.Conv2d):
          s = (s[2], s[3], s[1], s[0])
        elif name == "weight" and isinstance(layer, nn.ConvTranspose2d):
          s = (s[2], s[3], s[0], s[1])
        elif name == "weight" and isinstance(layer, nn.Linear):
          s = (s[1], s[0])
        shapes.append(s)
  return sorted(shapes)


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # flax momentum 0.9 == torch 0.1


# --------------------------------------------------------------------------- variants

VARIANTS = ("eager", "fused", "compile")
# "default": no CUDA graphs (jaxgen's step uses none either) and no kernel autotuning at
# compile time, which on a shared machine would pick kernels by noise and take minutes on CPU;
# `--compile_mode max-autotune-no-cudagraphs` in the benchmark measures the autotuned form.
COMPILE_MODE = "default"
# channels_last (NHWC) for the "fused" and "compile" variants: oneDNN's and cuDNN's
# convolutions prefer it; DRAW has no convolutions. Timed against NCHW on a quiet 2-core Intel
# CPU (README "The PyTorch variants"): the classifier's fused step about a third faster with it,
# the DCGAN's about a tenth, the VAE's the same.
CHANNELS_LAST = {"gan": True, "vae": True, "classifier": True, "draw": False}


@dataclasses.dataclass(frozen=True)
class Options:
  """How a peer's step is built: optimizer keyword arguments (`foreach`/`fused`) and whether
  modules and inputs use the channels_last memory format."""

  optimizer: tuple[tuple[str, bool], ...] = ()
  channels_last: bool = False

  def to(self, t: torch.Tensor) -> torch.Tensor:
    """A 4-d tensor in the chosen memory format."""
    return t.contiguous(memory_format=torch.channels_last) if self.channels_last else t

  def module(self, m: nn.Module) -> nn.Module:
    fmt = torch.channels_last if self.channels_last else torch.preserve_format
    return m.to(device(), memory_format=fmt)


@functools.cache
def fused_optimizer_supported() -> bool:
  """Whether Adam(fused=True) builds and steps on `device()` in this torch (CPU support
  arrived in torch 2.4)."""
  try:
    p = torch.zeros(2, device=device(), requires_grad=True)
    p.grad = torch.ones_like(p)
    torch.optim.Adam([p], fused=True).step()
    return True
  except (RuntimeError, TypeError, ValueError):
    return False


def compile_unavailable() -> str | None:
  """Why torch.compile cannot run here (None when it can): on the CPU inductor builds C++."""
  if device().type == "cpu" and not any(
    shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")
  ):
    return "torch.compile on the CPU needs a C++ compiler (g++ or clang++); none is on PATH"
  return None


def options(family: str, variant: str, channels_last: bool | None = None) -> Options:
  """The build options of `variant` for `family`; `channels_last` (None: CHANNELS_LAST's)
  applies to "fused" and "compile", "eager" keeps PyTorch's defaults."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown PyTorch peer variant {variant!r}: choose from {', '.join(VARIANTS)}")
  if variant == "eager":
    return Options()
  cl = CHANNELS_LAST[family] if channels_last is None else channels_last
  fused = variant == "fused" and fused_optimizer_supported()
  return Options(optimizer=(("fused", True),) if fused else (("foreach", True),), channels_last=cl)


# ----------------------------------------------------------------------------- GAN


class Generator(nn.Module):
  """z_BxZ -> images_BxCxHxW, as jaxgen.models.gan.Generator (unconditional)."""

  def __init__(self, image_shape: Sequence[int], width: int, kernel_size: int, latent_dim: int):
    super().__init__()
    start, widths = model_common.resolution_plan(image_shape[0], width, "DCGAN")
    self.start, self.c0 = start, widths[0]
    self.dense = nn.Linear(latent_dim, start * start * widths[0], bias=False)
    self.bn_dense = _bn(widths[0])
    self.deconvs = nn.ModuleList(
      _deconv(a, b, kernel_size, bias=False) for a, b in zip(widths, widths[1:])
    )
    self.bns = nn.ModuleList(_bn(b) for b in widths[1:])
    self.to_image = _deconv(widths[-1], image_shape[2], kernel_size)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    x = self.dense(z).view(z.shape[0], self.start, self.start, self.c0).permute(0, 3, 1, 2)
    x = F.relu(self.bn_dense(x))
    for deconv, bn in zip(self.deconvs, self.bns):
      x = F.relu(bn(deconv(x)))
    return torch.tanh(self.to_image(x))


class Discriminator(nn.Module):
  """images_BxCxHxW -> logits_B, as jaxgen.models.gan.Discriminator (unconditional)."""

  def __init__(self, image_shape: Sequence[int], width: int, kernel_size: int):
    super().__init__()
    start, widths = model_common.resolution_plan(image_shape[0], width, "DCGAN")
    chans = (image_shape[2], *reversed(widths))
    self.convs = nn.ModuleList(
      _conv(a, b, kernel_size, bias=i == 0) for i, (a, b) in enumerate(zip(chans, chans[1:]))
    )
    self.bns = nn.ModuleList(_bn(b) for b in chans[2:])
    self.logit = nn.Linear(start * start * chans[-1], 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.leaky_relu(self.convs[0](x), 0.2)
    for conv, bn in zip(self.convs[1:], self.bns):
      x = F.leaky_relu(bn(conv(x)), 0.2)
    # flatten in NHWC order, as the flax model does
    return self.logit(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))[:, 0]


def gan_step(
  config: ml_collections.ConfigDict, batch_size: int, opts: Options = Options()
) -> Callable[[], torch.Tensor]:
  """One DCGAN train step (D then G, non-saturating loss, Adam, EMA) on a fixed random batch;
  returns [D loss, G loss]."""
  m, o, dev = config.model, config.optim, device()
  shape = tuple(config.data.image_shape)
  g = opts.module(Generator(shape, m.width, m.kernel_size, m.latent_dim))
  d = opts.module(Discriminator(shape, m.width, m.kernel_size))
  ema = [p.detach().clone() for p in g.parameters()]
  kw = dict(opts.optimizer)
  g_opt = torch.optim.Adam(g.parameters(), o.g_lr, betas=(o.b1, o.b2), **kw)
  d_opt = torch.optim.Adam(d.parameters(), o.d_lr, betas=(o.b1, o.b2), **kw)
  real = opts.to(torch.rand(batch_size, shape[2], shape[0], shape[1], device=dev) * 2 - 1)
  ones = torch.ones(batch_size, device=dev)
  zeros = torch.zeros(batch_size, device=dev)

  def step() -> torch.Tensor:
    with torch.no_grad():
      fake = g(torch.randn(batch_size, m.latent_dim, device=dev))
    d_opt.zero_grad(set_to_none=True)
    d_loss = F.binary_cross_entropy_with_logits(d(real), ones) + F.binary_cross_entropy_with_logits(
      d(fake), zeros
    )
    d_loss.backward()
    d_opt.step()
    d.requires_grad_(False)  # G's update needs no gradient for D's weights
    g_opt.zero_grad(set_to_none=True)
    g_loss = F.binary_cross_entropy_with_logits(
      d(g(torch.randn(batch_size, m.latent_dim, device=dev))), ones
    )
    g_loss.backward()
    g_opt.step()
    d.requires_grad_(True)
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in g.parameters()], 1.0 - m.ema_decay)
    return torch.stack([d_loss, g_loss]).detach()

  step.num_params, step.param_shapes = _num_params(g, d), flax_layout_shapes(g, d)
  return step


# ----------------------------------------------------------------------------- VAE


class VAE(nn.Module):
  """Encoder + reparameterised sample + decoder, as jaxgen.models.vae.VAE (unconditional)."""

  def __init__(
    self,
    image_shape: Sequence[int],
    out_channels: int,
    latent_dim: int,
    width: int,
    kernel_size: int,
  ):
    super().__init__()
    start, widths = model_common.resolution_plan(image_shape[0], width, "the VAE")
    enc = (image_shape[2], *reversed(widths))
    self.start, self.c0 = start, widths[0]
    self.convs = nn.ModuleList(_conv(a, b, kernel_size) for a, b in zip(enc, enc[1:]))
    self.to_latent = nn.Linear(start * start * widths[0], 2 * latent_dim)
    self.dense = nn.Linear(latent_dim, start * start * widths[0])
    self.deconvs = nn.ModuleList(_deconv(a, b, kernel_size) for a, b in zip(widths, widths[1:]))
    self.to_image = _deconv(widths[-1], out_channels, kernel_size)

  def forward(self, x: torch.Tensor, eps: torch.Tensor):
    for conv in self.convs:
      x = F.silu(conv(x))
    mean, logvar = self.to_latent(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)).chunk(2, -1)
    z = mean + torch.exp(0.5 * logvar) * eps
    h = F.silu(self.dense(z)).view(z.shape[0], self.start, self.start, self.c0)
    h = h.permute(0, 3, 1, 2)
    for deconv in self.deconvs:
      h = F.silu(deconv(h))
    return mean, logvar, self.to_image(h)


def vae_step(
  config: ml_collections.ConfigDict, batch_size: int, opts: Options = Options()
) -> Callable[[], torch.Tensor]:
  """One VAE train step (dynamic binarisation, Bernoulli ELBO, Adam) on a fixed random batch;
  returns the loss (-ELBO per image) before the update."""
  m, dev = config.model, device()
  shape = tuple(config.data.image_shape)
  if m.likelihood != "bernoulli":
    raise NotImplementedError("the PyTorch VAE peer has only the Bernoulli likelihood")
  model = opts.module(VAE(shape, shape[2], m.latent_dim, m.width, m.get("kernel_size", 4)))
  opt = torch.optim.Adam(model.parameters(), config.optim.lr, **dict(opts.optimizer))
  images = opts.to(torch.rand(batch_size, shape[2], shape[0], shape[1], device=dev) * 2 - 1)

  def step() -> torch.Tensor:
    target = torch.bernoulli((images + 1) / 2)
    eps = torch.randn(batch_size, m.latent_dim, device=dev)
    opt.zero_grad(set_to_none=True)
    mean, logvar, logits = model(2 * target - 1, eps)
    recon = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch_size
    kl = 0.5 * torch.sum(logvar.exp() + mean.square() - 1 - logvar) / batch_size
    loss = recon + kl
    loss.backward()
    opt.step()
    return loss.detach()

  step.num_params, step.param_shapes = _num_params(model), flax_layout_shapes(model)
  return step


# ----------------------------------------------------------------------- classifier


class Classifier(nn.Module):
  """images_BxCxHxW -> logits_BxK, as jaxgen.models.classifier.Classifier."""

  def __init__(
    self, image_shape: Sequence[int], num_classes: int, width: int, feature_dim: int, dropout: float
  ):
    super().__init__()
    chans = (image_shape[2], width, 2 * width, 4 * width)
    self.convs = nn.ModuleList(
      nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(chans, chans[1:])
    )
    self.bns = nn.ModuleList(_bn(b) for b in chans[1:])
    side = image_shape[0] // 4
    self.features = nn.Linear(side * side * chans[-1], feature_dim)
    self.drop = nn.Dropout(dropout)
    self.logits = nn.Linear(feature_dim, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
      x = F.relu(bn(conv(x)))
      if i < len(self.convs) - 1:
        x = F.max_pool2d(x, 2)
    h = F.relu(self.features(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)))
    return self.logits(self.drop(h))


def classifier_step(
  config: ml_collections.ConfigDict, batch_size: int, opts: Options = Options()
) -> Callable[[], torch.Tensor]:
  """One classifier train step (random flips, dropout, cross-entropy, AdamW) on a random
  batch; returns the loss."""
  m, o, dev = config.model, config.optim, device()
  shape = tuple(config.data.image_shape)
  model = opts.module(Classifier(shape, 10, m.width, m.feature_dim, m.dropout))
  opt = torch.optim.AdamW(
    model.parameters(), o.lr, weight_decay=o.get("weight_decay", 0.0), **dict(opts.optimizer)
  )
  images = opts.to(torch.rand(batch_size, shape[2], shape[0], shape[1], device=dev) * 2 - 1)
  labels = torch.randint(0, 10, (batch_size,), device=dev)

  def step() -> torch.Tensor:
    x = images
    if m.get("flip", False):
      flip = torch.rand(batch_size, device=dev) < 0.5
      x = torch.where(flip[:, None, None, None], x.flip(3), x)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), labels)
    loss.backward()
    opt.step()
    return loss.detach()

  step.num_params, step.param_shapes = _num_params(model), flax_layout_shapes(model)
  return step


# ----------------------------------------------------------------------------- DRAW


def _filterbank(
  center_B: torch.Tensor, delta_B: torch.Tensor, var_B: torch.Tensor, n: int, size: int
) -> torch.Tensor:
  """N Gaussian filters along one axis, [B, N, size], as jaxgen.models.draw.filterbank."""
  offsets = torch.arange(n, dtype=center_B.dtype, device=center_B.device) - (n - 1) / 2
  mu = center_B[:, None] + offsets[None, :] * delta_B[:, None]
  pixels = torch.arange(size, dtype=center_B.dtype, device=center_B.device)
  d2 = torch.square(pixels[None, None, :] - mu[:, :, None])
  return torch.softmax(-d2 / (2.0 * var_B[:, None, None]), dim=-1)


def _window(params_Bx5: torch.Tensor, height: int, width: int, n: int):
  """(F_y, F_x, gamma) as jaxgen.models.draw.attention_window."""
  gx, gy, log_var, log_delta, log_gamma = params_Bx5.unbind(-1)
  delta = (max(height, width) - 1) / max(n - 1, 1) * torch.exp(log_delta)
  var = torch.exp(log_var)
  return (
    _filterbank((height + 1) / 2 * (gy + 1) - 1, delta, var, n, height),
    _filterbank((width + 1) / 2 * (gx + 1) - 1, delta, var, n, width),
    torch.exp(log_gamma),
  )


class TanhCell(nn.Module):
  """h' = tanh(W_hh h + W_xh x + b_h), as jaxgen.models.rnn.TanhCell."""

  def __init__(self, inputs: int, features: int):
    super().__init__()
    self.hh = nn.Linear(features, features, bias=False)
    self.xh = nn.Linear(inputs, features)

  def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(self.hh(h) + self.xh(x))


class DRAW(nn.Module):
  """DRAW's inference pass over T steps (tanh cells, N(0, I) prior, no caption), as
  jaxgen.models.draw.DRAW; images [B, H, W, C] as in flax."""

  def __init__(self, image_shape: Sequence[int], m: ml_collections.ConfigDict):
    super().__init__()
    h, w, c = image_shape
    self.shape, self.m = tuple(image_shape), m
    read = 2 * (m.read_n**2 * c if m.read_n else h * w * c)
    self.canvas0 = nn.Parameter(torch.zeros(h, w, c))
    self.read_window = nn.Linear(m.dec_features, 5) if m.read_n else None
    self.encoder = TanhCell(read + m.dec_features, m.enc_features)
    self.q_mean = nn.Linear(m.enc_features, m.latent_dim)
    self.q_logvar = nn.Linear(m.enc_features, m.latent_dim)
    self.decoder = TanhCell(m.latent_dim, m.dec_features)
    self.write = nn.Linear(m.dec_features, (m.write_n**2 if m.write_n else h * w) * c)
    self.write_window = nn.Linear(m.dec_features, 5) if m.write_n else None

  def forward(self, x: torch.Tensor, eps_TxBxZ: torch.Tensor):
    b, (h, w, c), m = x.shape[0], self.shape, self.m
    h_enc = x.new_zeros(b, m.enc_features)
    h_dec = x.new_zeros(b, m.dec_features)
    canvas = self.canvas0.expand(b, h, w, c)
    kl = 0.0
    for t in range(m.draw_steps):
      x_hat = x - torch.sigmoid(canvas)
      if m.read_n:
        fy, fx, gamma = _window(self.read_window(h_dec), h, w, m.read_n)
        r = torch.cat(
          [
            (gamma[:, None, None, None] * torch.einsum("bnh,bhwc,bmw->bnmc", fy, img, fx)).reshape(
              b, -1
            )
            for img in (x, x_hat)
          ],
          -1,
        )
      else:
        r = torch.cat([x.reshape(b, -1), x_hat.reshape(b, -1)], -1)
      h_enc = self.encoder(h_enc, torch.cat([r, h_dec], -1))
      mean, logvar = self.q_mean(h_enc), self.q_logvar(h_enc)
      z = mean + torch.exp(0.5 * logvar) * eps_TxBxZ[t]
      kl = kl + 0.5 * torch.sum(logvar.exp() + mean.square() - 1 - logvar)
      h_dec = self.decoder(h_dec, z)
      if m.write_n:
        n = m.write_n
        fy, fx, gamma = _window(self.write_window(h_dec), h, w, n)
        patch = self.write(h_dec).view(b, n, n, c)
        canvas = canvas + (
          torch.einsum("bnh,bnmc,bmw->bhwc", fy, patch, fx) / gamma[:, None, None, None]
        )
      else:
        canvas = canvas + self.write(h_dec).view(b, h, w, c)
    return canvas, kl


def draw_step(
  config: ml_collections.ConfigDict, batch_size: int, opts: Options = Options()
) -> Callable[[], torch.Tensor]:
  """One DRAW train step (dynamic binarisation, Bernoulli -ELBO, clipped Adam) on a random
  batch; returns the loss. No convolutions: `opts.channels_last` does not apply."""
  m, o, dev = config.model, config.optim, device()
  if m.cell != "tanh" or m.learned_prior or m.get("captions", False):
    raise NotImplementedError(
      "the PyTorch DRAW peer has only the tanh cell, the N(0, I) prior and no captions"
    )
  shape = tuple(config.data.image_shape)
  model = DRAW(shape, m).to(dev)
  betas = (o.get("b1", 0.9), o.get("b2", 0.999))
  opt = torch.optim.Adam(model.parameters(), o.lr, betas=betas, **dict(opts.optimizer))
  images = torch.rand(batch_size, *shape, device=dev) * 2 - 1

  def step() -> torch.Tensor:
    x = torch.bernoulli((images + 1) / 2)
    eps = torch.randn(m.draw_steps, batch_size, m.latent_dim, device=dev)
    opt.zero_grad(set_to_none=True)
    canvas, kl = model(x, eps)
    recon = F.binary_cross_entropy_with_logits(canvas, x, reduction="sum")
    loss = (recon + kl) / batch_size
    loss.backward()
    if o.get("grad_clip", 0.0):
      nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
    opt.step()
    return loss.detach()

  step.num_params, step.param_shapes = _num_params(model), flax_layout_shapes(model)
  return step


PEERS: dict[str, Callable[..., Callable[[], torch.Tensor]]] = {
  "gan": gan_step,
  "vae": vae_step,
  "classifier": classifier_step,
  "draw": draw_step,
}


def runner(
  family: str,
  config: ml_collections.ConfigDict,
  batch_size: int,
  warmup: int = 3,
  dtype: str = "float32",
  variant: str = "eager",
  channels_last: bool | None = None,
  compile_mode: str = COMPILE_MODE,
) -> Callable[[int], None]:
  """`run(k)`: k steps of the family's PyTorch train step in `variant` (under bfloat16
  autocast when `dtype` is "bfloat16"), synchronised at the end; the step is built (and for
  "compile" compiled) and run `warmup` times first (at least 2 for "compile": the first call
  compiles, the second recompiles what the optimizer's lazily created state changes).
  `run.setup_s`: seconds of building, compiling and warm-up, synchronised (never timed
  with the steps); `run.facts`: the variant's settings."""
  if dtype not in ("float32", "bfloat16"):
    raise NotImplementedError(f"the PyTorch peers run float32 or bfloat16, not {dtype}")
  if variant == "compile" and (why := compile_unavailable()):
    raise NotImplementedError(why)
  dev = device()
  sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
  t0 = time.perf_counter()
  opts = options(family, variant, channels_last)
  step = PEERS[family](config, batch_size, opts)
  if variant == "compile":
    step = torch.compile(step, mode=compile_mode)
  autocast = (
    (lambda: torch.autocast(dev.type, dtype=torch.bfloat16))
    if dtype == "bfloat16"
    else contextlib.nullcontext
  )

  def run(k: int) -> None:
    with autocast():
      for _ in range(k):
        step()
    sync()

  run(max(warmup, 2) if variant == "compile" else warmup)
  run.setup_s = time.perf_counter() - t0
  run.facts = dict(
    optimizer=dict(opts.optimizer) or "default",
    channels_last=opts.channels_last,
    **({"compile_mode": compile_mode} if variant == "compile" else {}),
  )
  return run


def measure(
  family: str,
  config: ml_collections.ConfigDict,
  batch_size: int,
  repeats: int = 5,
  steps: int = 10,
  warmup: int = 3,
  dtype: str = "float32",
  variant: str = "eager",
) -> dict:
  """Median ms/step and images/s of the family's PyTorch train step in `variant` over
  `repeats` timed runs of `steps` steps each, after `warmup` steps; `ms_per_step_spread`:
  min / median / max; `setup_s`: build + compile + warm-up."""
  run = runner(family, config, batch_size, warmup, dtype, variant)
  times = timed_runs(run, repeats, steps)
  s = spread(times)["median"]
  return dict(
    ms_per_step=1e3 * s,
    ms_per_step_spread={k: 1e3 * v for k, v in spread(times).items()},
    images_per_s=batch_size / s if s > 0 else math.inf,
    setup_s=run.setup_s,
    threads=torch.get_num_threads(),
    device=str(device()),
    **run.facts,
  )
