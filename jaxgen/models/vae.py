"""Convolutional VAE (Kingma & Welling 2014): encoder to (mean, log-variance), decoder to
the parameters of p(x|z), sized from the image shape.

The encoder halves the resolution with strided convolutions until 7x7 (28x28 images) or
4x4 (32x32, 64x64 ...), then a dense layer gives `mean_BxZ` and `logvar_BxZ`. The decoder
mirrors it with strided transposed convolutions and ends in `out_channels` unconstrained
channels per pixel (Bernoulli logits, or a logistic's location and log-scale); the
likelihood functions in jaxgen.losses accept any real value there, so no decoder output
can fall outside the likelihood's support. Labels (conditional VAE) are integer classes
[B] or, for interpolating between classes, soft one-hot rows [B, K].
Models know nothing of training: `train` is accepted for the shared `apply` but unused
(no BatchNorm).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgen import ops
from jaxgen.models import common


class Encoder(nn.Module):
  """images_BxHxWxC (+ labels) -> (mean_BxZ, logvar_BxZ) of q(z|x)."""

  image_shape: Sequence[int]
  latent_dim: int = 32
  width: int = 32
  kernel_size: int = 4
  num_classes: int = 0
  fast_ops: bool = False  # jaxgen.ops layers: same params and outputs, reverse mode only
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  @nn.compact
  def __call__(
    self, x_BxHxWxC: jnp.ndarray, labels: jnp.ndarray | None = None, *, train: bool = True
  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    del train
    _, widths = common.resolution_plan(self.image_shape[0], self.width, "the VAE")
    k = (self.kernel_size, self.kernel_size)
    conv, _ = ops.conv_layers(self.fast_ops)
    x = x_BxHxWxC
    for i, w in enumerate(reversed(widths)):
      x = nn.swish(conv(w, k, strides=(2, 2), dtype=self.dtype, name=f"conv{i}")(x))
    h_BxF = x.reshape(x.shape[0], -1)
    if self.num_classes:
      h_BxF = jnp.concatenate(
        [h_BxF, common.one_hot(labels, self.num_classes, h_BxF.dtype)], axis=-1
      )
    stats_Bx2Z = nn.Dense(2 * self.latent_dim, dtype=self.dtype, name="to_latent")(h_BxF)
    mean_BxZ, logvar_BxZ = jnp.split(stats_Bx2Z, 2, axis=-1)
    return mean_BxZ, logvar_BxZ


class Decoder(nn.Module):
  """z_BxZ (+ labels) -> params_BxHxWxP of p(x|z), unconstrained reals (P = out_channels)."""

  image_shape: Sequence[int]
  out_channels: int
  width: int = 32
  kernel_size: int = 4
  num_classes: int = 0
  fast_ops: bool = False  # jaxgen.ops layers: same params and outputs, reverse mode only
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  @nn.compact
  def __call__(
    self, z_BxZ: jnp.ndarray, labels: jnp.ndarray | None = None, *, train: bool = True
  ) -> jnp.ndarray:
    del train
    start, widths = common.resolution_plan(self.image_shape[0], self.width, "the VAE")
    x = z_BxZ
    if self.num_classes:
      x = jnp.concatenate([x, common.one_hot(labels, self.num_classes, x.dtype)], axis=-1)
    x = nn.swish(nn.Dense(start * start * widths[0], dtype=self.dtype, name="dense")(x))
    x = x.reshape(x.shape[0], start, start, widths[0])
    k = (self.kernel_size, self.kernel_size)
    _, deconv = ops.conv_layers(self.fast_ops)
    for i, w in enumerate(widths[1:]):
      x = nn.swish(deconv(w, k, strides=(2, 2), dtype=self.dtype, name=f"deconv{i}")(x))
    return deconv(self.out_channels, k, strides=(2, 2), dtype=self.dtype, name="to_image")(x)


class VAE(nn.Module):
  """Encoder + reparameterised sample + decoder.

  `__call__(x, eps)` returns (mean_BxZ, logvar_BxZ, params_BxHxWxP) with
  z = mean + exp(logvar / 2) * eps decoded; `encode` and `decode` run the halves alone.
  """

  image_shape: Sequence[int]
  out_channels: int
  latent_dim: int = 32
  width: int = 32
  kernel_size: int = 4
  num_classes: int = 0
  fast_ops: bool = False  # jaxgen.ops layers: same params and outputs, reverse mode only
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  def setup(self):
    self.encoder = Encoder(
      self.image_shape,
      self.latent_dim,
      self.width,
      self.kernel_size,
      self.num_classes,
      self.fast_ops,
      self.dtype,
    )
    self.decoder = Decoder(
      self.image_shape,
      self.out_channels,
      self.width,
      self.kernel_size,
      self.num_classes,
      self.fast_ops,
      self.dtype,
    )

  def __call__(
    self,
    x_BxHxWxC: jnp.ndarray,
    eps_BxZ: jnp.ndarray,
    labels: jnp.ndarray | None = None,
    *,
    train: bool = True,
  ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    mean_BxZ, logvar_BxZ = self.encoder(x_BxHxWxC, labels, train=train)
    z_BxZ = common.reparameterize(mean_BxZ, logvar_BxZ, eps_BxZ)
    return mean_BxZ, logvar_BxZ, self.decoder(z_BxZ, labels, train=train)

  def encode(
    self, x_BxHxWxC: jnp.ndarray, labels: jnp.ndarray | None = None, *, train: bool = True
  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    return self.encoder(x_BxHxWxC, labels, train=train)

  def decode(
    self, z_BxZ: jnp.ndarray, labels: jnp.ndarray | None = None, *, train: bool = True
  ) -> jnp.ndarray:
    return self.decoder(z_BxZ, labels, train=train)
