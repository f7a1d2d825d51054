"""DCGAN generator and discriminator (Radford et al. 2016), sized from the image shape.

The generator maps a latent `z_BxZ` (and optionally a class label) through a dense
layer to a `s0 x s0 x C0` map, then strided transposed convolutions double the
resolution until it reaches the image size: 28x28 starts at 7x7, 32x32 and 64x64
start at 4x4. The discriminator mirrors it with strided convolutions.
Models know nothing of training: `train` only switches BatchNorm statistics. With their
defaults they are plain flax; `fast_ops=True` swaps in `jaxgen.ops`' reverse-mode-only passes.
`spectral_norm=True` divides every weight matrix by its largest singular value (Miyato et al.
2018); the power-iteration vectors live in "batch_stats" beside BatchNorm's statistics.
`class_bn=True` (generators, with `num_classes`) makes every BatchNorm's scale and bias depend on
the label (conditional BatchNorm, de Vries et al. 2017; Miyato & Koyama 2018).
`mbstd_group=G` (discriminators) appends `minibatch_stddev`'s channel to the last feature map.
`split_logit=True` (discriminators, with `num_classes`) returns both logits, [B, 2]: the
unconditional one and the conditional one (it plus the projection term), which transitional
training weighs (Shahbazi et al. 2022).
`full_res_width=F` (DCGAN) adds a layer at the image's own resolution: the generator's last
transposed convolution makes F channels (BatchNorm, ReLU) and a stride-1 convolution makes the
image from them, so no output pixel is a linear function of half-resolution features; the
discriminator starts with a stride-1 convolution to F channels (leaky ReLU).
`mid_layers=N` (DCGAN) adds depth where it is cheapest, at the lowest resolution: N stride-1 3x3
convolutions of the plan's widest width, each with BatchNorm, after the generator's first map
(ReLU) and after the discriminator's last strided convolution (leaky ReLU).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgen import ops
from jaxgen.models import common


class _Net(nn.Module):
  """The fields every generator and discriminator here takes, so one config builds any arch."""

  image_shape: Sequence[int]
  width: int = 64
  kernel_size: int = 5
  num_classes: int = 0
  fast_ops: bool = False  # jaxgen.ops layers: same params and outputs, reverse mode only
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32
  spectral_norm: bool = False
  class_bn: bool = False  # generators: per-class BatchNorm scale and bias (needs num_classes)
  mbstd_group: int = 0  # discriminators: minibatch_stddev over groups of this many (0: off)
  full_res_width: int = 0  # DCGAN: channels of a layer at the image's resolution (0: none)
  split_logit: bool = False  # discriminators: logits [B, 2], unconditional and conditional
  mid_layers: int = 0  # DCGAN: stride-1 3x3 layers at the lowest resolution, in G and D

  def norm_act(self, bn: nn.Module, x: jnp.ndarray, labels_B: jnp.ndarray | None) -> jnp.ndarray:
    """bn(x), with `class_bn` plus per-class offsets of its scale and bias: a bias-free dense
    layer of the one-hot label (soft rows interpolate), zero at init, so the generator starts
    where the unconditional-BatchNorm one does. Its params are "<bn's name>_class"."""
    if not self.class_bn:
      return bn(x)
    if not self.num_classes:
      raise ValueError(
        f"{type(self).__name__}(class_bn=True) needs num_classes > 0 (the labels it conditions "
        "BatchNorm on); pass num_classes or class_bn=False"
      )
    offsets = nn.Dense(
      2 * x.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros, name=f"{bn.name}_class"
    )(common.one_hot(labels_B, self.num_classes, jnp.float32))
    gain_BxC, shift_BxC = jnp.split(offsets, 2, axis=-1)
    return bn(x, gain_BxC=gain_BxC, shift_BxC=shift_BxC)


def minibatch_stddev(x_BxHxWxC: jnp.ndarray, group: int) -> jnp.ndarray:
  """x with one more channel: each image's group (`group` consecutive images of the batch, or the
  whole batch if smaller) gets the standard deviation over the group of every feature, averaged
  over features and positions: [B, H, W, C] -> [B, H, W, C + 1] (Karras et al. 2018, ProGAN).
  A discriminator that sees how varied its batch is can penalise a generator that draws
  too few kinds of image. Consecutive groups stay on one device when each device's share of the
  batch divides by `group`."""
  b = x_BxHxWxC.shape[0]
  g = min(group, b)
  if b % g:
    raise ValueError(
      f"mbstd_group={group} needs a batch that divides into groups of {g}, got {b} images; set "
      "model.mbstd_group to a divisor of the batch size"
    )
  x = x_BxHxWxC.astype(jnp.float32).reshape(b // g, g, *x_BxHxWxC.shape[1:])
  std_N = jnp.mean(jnp.sqrt(jnp.var(x, axis=1) + 1e-8), axis=(1, 2, 3))
  std_BxHxWx1 = jnp.broadcast_to(
    jnp.repeat(std_N, g)[:, None, None, None], (*x_BxHxWxC.shape[:3], 1)
  )
  return jnp.concatenate([x_BxHxWxC, std_BxHxWx1.astype(x_BxHxWxC.dtype)], axis=-1)


def _logit(
  h_BxF: jnp.ndarray, labels_B: jnp.ndarray | None, num_classes: int, dtype, sn, split: bool
) -> jnp.ndarray:
  """A dense logit of features h_BxF, plus with labels the projection term <embed(y), h>
  (Miyato & Koyama 2018); called inside a discriminator, whose "logit" and "class_embed" they
  become. `split`: [B, 2], the logit without and with the projection term; otherwise [B]."""
  logits_B = sn(nn.Dense(1, dtype=dtype, name="logit"))(h_BxF)[:, 0]
  if split and not num_classes:
    raise ValueError("split_logit=True needs num_classes > 0 (a conditional logit to split off)")
  if not num_classes:
    return logits_B
  embed_BxF = nn.Embed(num_classes, h_BxF.shape[-1], dtype=dtype, name="class_embed")(labels_B)
  cond_B = logits_B + jnp.sum(embed_BxF * h_BxF, axis=-1)
  return jnp.stack([logits_B, cond_B], axis=-1) if split else cond_B


class Generator(_Net):
  """z_BxZ (+ labels_B) -> images_BxHxWxC in [-1, 1]."""

  @nn.compact
  def __call__(
    self, z_BxZ: jnp.ndarray, labels_B: jnp.ndarray | None = None, *, train: bool = True
  ) -> jnp.ndarray:
    height, _, channels = self.image_shape
    start, widths = common.resolution_plan(height, self.width, "DCGAN")
    # BatchNorm then ReLU
    norm = lambda name: ops.BatchNormAct(
      use_running_average=not train,
      momentum=0.9,
      fused=self.fast_ops,
      dtype=self.dtype,
      name=name,
    )
    x = z_BxZ
    if self.num_classes:
      x = jnp.concatenate([x, common.one_hot(labels_B, self.num_classes, x.dtype)], axis=-1)
    sn = lambda layer: common.spectral_norm(layer, self.spectral_norm, train)
    x = sn(nn.Dense(start * start * widths[0], use_bias=False, dtype=self.dtype, name="dense"))(x)
    x = x.reshape(x.shape[0], start, start, widths[0])
    x = self.norm_act(norm("bn_dense"), x, labels_B)
    k = (self.kernel_size, self.kernel_size)
    conv, deconv = ops.conv_layers(self.fast_ops)
    for i in range(self.mid_layers):
      x = sn(conv(widths[0], (3, 3), use_bias=False, dtype=self.dtype, name=f"mid{i}"))(x)
      x = self.norm_act(norm(f"bn_mid{i}"), x, labels_B)
    for i, w in enumerate(widths[1:]):
      x = sn(deconv(w, k, strides=(2, 2), use_bias=False, dtype=self.dtype, name=f"deconv{i}"))(x)
      x = self.norm_act(norm(f"bn{i}"), x, labels_B)
    if not self.full_res_width:
      x = sn(deconv(channels, k, strides=(2, 2), dtype=self.dtype, name="to_image"))(x)
      return jnp.tanh(x)
    f = self.full_res_width
    x = sn(deconv(f, k, strides=(2, 2), use_bias=False, dtype=self.dtype, name="deconv_full"))(x)
    x = self.norm_act(norm("bn_full"), x, labels_B)
    return jnp.tanh(sn(conv(channels, k, dtype=self.dtype, name="to_image"))(x))


class Discriminator(_Net):
  """images_BxHxWxC (+ labels_B) -> logits_B (real > 0); [B, 2] with `split_logit`."""

  @nn.compact
  def __call__(
    self, x_BxHxWxC: jnp.ndarray, labels_B: jnp.ndarray | None = None, *, train: bool = True
  ) -> jnp.ndarray:
    _, widths = common.resolution_plan(self.image_shape[0], self.width, "DCGAN")
    k = (self.kernel_size, self.kernel_size)
    x = x_BxHxWxC
    conv, _ = ops.conv_layers(self.fast_ops)
    sn = lambda layer: common.spectral_norm(layer, self.spectral_norm, train)
    if self.full_res_width:
      x = sn(conv(self.full_res_width, k, dtype=self.dtype, name="conv_full"))(x)
      x = nn.leaky_relu(x, 0.2)
    bn_leaky = lambda name: ops.BatchNormAct(
      use_running_average=not train,
      momentum=0.9,
      negative_slope=0.2,
      fused=self.fast_ops,
      dtype=self.dtype,
      name=name,
    )
    for i, w in enumerate(reversed(widths)):
      x = sn(conv(w, k, strides=(2, 2), use_bias=i == 0, dtype=self.dtype, name=f"conv{i}"))(x)
      # BatchNorm then leaky ReLU; DCGAN has no BatchNorm on the input layer
      x = bn_leaky(f"bn{i}")(x) if i > 0 else nn.leaky_relu(x, 0.2)
    for i in range(self.mid_layers):
      x = sn(conv(widths[0], (3, 3), use_bias=False, dtype=self.dtype, name=f"conv_mid{i}"))(x)
      x = bn_leaky(f"bn_mid{i}")(x)
    if self.mbstd_group:
      x = minibatch_stddev(x, self.mbstd_group)
    h_BxF = x.reshape(x.shape[0], -1)
    return _logit(h_BxF, labels_B, self.num_classes, self.dtype, sn, self.split_logit)


# ------------------------------------------------------------------ ResNet G/D (model.arch)


def _upsample(x_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
  """Nearest-neighbour x2: [B, H, W, C] -> [B, 2H, 2W, C]."""
  return jnp.repeat(jnp.repeat(x_BxHxWxC, 2, axis=1), 2, axis=2)


class ResNetGenerator(_Net):
  """z_BxZ (+ labels_B) -> images_BxHxWxC in [-1, 1], residual blocks (Miyato et al. 2018's
  SNGAN generator): dense to the plan's start size, then per doubling BN-ReLU-upsample-conv3x3-
  BN-ReLU-conv3x3 plus an upsampled shortcut (1x1 conv where the width changes), then BN-ReLU-
  conv3x3 to the image channels and tanh. Widths from `common.resolution_plan`; the last block
  keeps its input width. Plain flax convolutions; `fast_ops` fuses only the BatchNorms."""

  kernel_size: int = 3  # accepted for a shared config; the blocks use 3x3

  @nn.compact
  def __call__(
    self, z_BxZ: jnp.ndarray, labels_B: jnp.ndarray | None = None, *, train: bool = True
  ) -> jnp.ndarray:
    height, _, channels = self.image_shape
    start, widths = common.resolution_plan(height, self.width, "ResNet GAN")
    sn = lambda layer: common.spectral_norm(layer, self.spectral_norm, train)
    bn_relu = lambda name: ops.BatchNormAct(
      use_running_average=not train,
      momentum=0.9,
      fused=self.fast_ops,
      dtype=self.dtype,
      name=name,
    )
    x = z_BxZ
    if self.num_classes:
      x = jnp.concatenate([x, common.one_hot(labels_B, self.num_classes, x.dtype)], axis=-1)
    x = sn(nn.Dense(start * start * widths[0], use_bias=False, dtype=self.dtype, name="dense"))(x)
    x = x.reshape(x.shape[0], start, start, widths[0])
    for i, w in enumerate(widths[1:] + widths[-1:]):
      h = _upsample(self.norm_act(bn_relu(f"block{i}_bn1"), x, labels_B))
      h = sn(nn.Conv(w, (3, 3), dtype=self.dtype, name=f"block{i}_conv1"))(h)
      h = sn(nn.Conv(w, (3, 3), dtype=self.dtype, name=f"block{i}_conv2"))(
        self.norm_act(bn_relu(f"block{i}_bn2"), h, labels_B)
      )
      skip = _upsample(x)
      if x.shape[-1] != w:
        skip = sn(nn.Conv(w, (1, 1), dtype=self.dtype, name=f"block{i}_shortcut"))(skip)
      x = h + skip
    x = self.norm_act(bn_relu("bn_out"), x, labels_B)
    x = sn(nn.Conv(channels, (3, 3), dtype=self.dtype, name="to_image"))(x)
    return jnp.tanh(x)


class ResNetDiscriminator(_Net):
  """images_BxHxWxC (+ labels_B) -> logits_B (real > 0), residual blocks without BatchNorm
  (SNGAN's discriminator): per halving (ReLU-)conv3x3-ReLU-conv3x3-avgpool plus a 1x1-conv,
  avgpooled shortcut (the first block has no leading ReLU), then ReLU, a sum over positions and a
  dense logit (+ a projection term with labels). `batch_stats` holds only spectral norm's vectors."""

  kernel_size: int = 3  # accepted for a shared config; the blocks use 3x3

  @nn.compact
  def __call__(
    self, x_BxHxWxC: jnp.ndarray, labels_B: jnp.ndarray | None = None, *, train: bool = True
  ) -> jnp.ndarray:
    _, widths = common.resolution_plan(self.image_shape[0], self.width, "ResNet GAN")
    sn = lambda layer: common.spectral_norm(layer, self.spectral_norm, train)
    pool = lambda x: nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x_BxHxWxC
    for i, w in enumerate(reversed(widths)):
      h = x if i == 0 else nn.relu(x)
      h = sn(nn.Conv(w, (3, 3), dtype=self.dtype, name=f"block{i}_conv1"))(h)
      h = pool(sn(nn.Conv(w, (3, 3), dtype=self.dtype, name=f"block{i}_conv2"))(nn.relu(h)))
      x = h + pool(sn(nn.Conv(w, (1, 1), dtype=self.dtype, name=f"block{i}_shortcut"))(x))
    x = nn.relu(x)
    if self.mbstd_group:
      x = minibatch_stddev(x, self.mbstd_group)
    h_BxF = jnp.sum(x, axis=(1, 2))
    return _logit(h_BxF, labels_B, self.num_classes, self.dtype, sn, self.split_logit)
