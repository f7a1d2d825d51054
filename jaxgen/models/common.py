"""Pieces more than one model family uses: the resolution plan of the convolutional families,
one-hot class conditioning, spectral normalisation and the reparameterised Gaussian sample."""

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from jaxgen.errors import ConfigError


def resolution_plan(image_size: int, width: int, model: str) -> tuple[int, tuple[int, ...]]:
  """Returns (start_size, channels per resolution) for an image of `image_size`.

  e.g. 28 -> (7, (4w, 2w)); 32 -> (4, (8w, 4w, 2w)); 64 -> (4, (8w, 4w, 2w, w)).
  The first entry is the channel count at the smallest size (a generator's or decoder's dense
  layer); each later entry is the output of one stride-2 transposed convolution (the last one,
  to the image channels, is not listed). Encoders and discriminators run it in reverse.
  `model` names the model in the error for a size that does not fit.
  """
  size, num_up = image_size, 0
  while size % 2 == 0 and size > 7:
    size //= 2
    num_up += 1
  if size not in (4, 7) or num_up == 0:
    raise ConfigError(
      f"{model} needs an image size of 7*2^n or 4*2^n (28, 32, 64, ...), got {image_size}; "
      "resize the data or choose another model."
    )
  top = min(num_up, 3)  # at most 8 * width channels, halving at each doubling of resolution
  channels = tuple(max(int(width * 2.0 ** (top - i)), 8) for i in range(num_up))
  return size, channels


def one_hot(labels: jnp.ndarray, num_classes: int, dtype) -> jnp.ndarray:
  """Integer labels [B] -> one-hot [B, K]; soft rows [B, K] (e.g. interpolated) pass through."""
  if labels.ndim == 2:
    return labels.astype(dtype)
  return nn.one_hot(labels, num_classes, dtype=dtype)


def reparameterize(
  mean_BxZ: jnp.ndarray, logvar_BxZ: jnp.ndarray, eps_BxZ: jnp.ndarray
) -> jnp.ndarray:
  """z = mean + exp(logvar / 2) * eps, with eps ~ N(0, I) supplied by the caller (any shape)."""
  return mean_BxZ + jnp.exp(0.5 * logvar_BxZ) * eps_BxZ


def spectral_norm(layer: nn.Module, on: bool, train: bool) -> Callable[..., jnp.ndarray]:
  """`layer` with its weight divided by its largest singular value (Miyato et al. 2018) when `on`.

  One power iteration per call from the stored vector u (collection "batch_stats", advanced only
  when `train`); the estimate always uses the weights it is called with, so an EMA copy of the
  weights is normalised by its own sigma. Off: `layer` itself (same params, same outputs)."""
  if not on:
    return layer
  wrapped = nn.SpectralNorm(layer, name=f"sn_{layer.name}")
  return lambda *args: wrapped(*args, update_stats=train)
