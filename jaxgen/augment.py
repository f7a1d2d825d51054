"""Differentiable augmentation (DiffAugment, Zhao et al. 2020) for GAN training.

Pure functions of (key, images [B, H, W, C] in [-1, 1]): the same key gives the same result, and
every op is differentiable w.r.t. the images (gradients flow back to the generator). A GAN applies
the same policy to real and generated images, in the discriminator's and the generator's passes.
Policy: a comma-separated subset of "color", "translation", "cutout", applied in that order.

Adaptive augmentation (ADA, Karras et al. 2020): each op is applied to each image with probability
p, and `ada_adjust` moves p from the discriminator's outputs on real images, so that a
discriminator that starts to memorise a small data set sees more augmentation and one that does
not sees less.
"""

import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError

POLICIES = ("color", "translation", "cutout")


def brightness(key: jax.Array, x_BxHxWxC: jax.Array) -> jax.Array:
  """x + U[-0.5, 0.5) per image."""
  shift = jax.random.uniform(key, (x_BxHxWxC.shape[0], 1, 1, 1), x_BxHxWxC.dtype) - 0.5
  return x_BxHxWxC + shift


def saturation(key: jax.Array, x_BxHxWxC: jax.Array) -> jax.Array:
  """Distance from the per-pixel channel mean scaled by U[0, 2) per image (identity for C=1)."""
  mean = jnp.mean(x_BxHxWxC, axis=-1, keepdims=True)
  scale = 2.0 * jax.random.uniform(key, (x_BxHxWxC.shape[0], 1, 1, 1), x_BxHxWxC.dtype)
  return (x_BxHxWxC - mean) * scale + mean


def contrast(key: jax.Array, x_BxHxWxC: jax.Array) -> jax.Array:
  """Distance from the per-image mean scaled by U[0.5, 1.5) per image."""
  mean = jnp.mean(x_BxHxWxC, axis=(1, 2, 3), keepdims=True)
  scale = jax.random.uniform(key, (x_BxHxWxC.shape[0], 1, 1, 1), x_BxHxWxC.dtype) + 0.5
  return (x_BxHxWxC - mean) * scale + mean


def color(key: jax.Array, x_BxHxWxC: jax.Array) -> jax.Array:
  """brightness, saturation, contrast, each with its own key."""
  kb, ks, kc = jax.random.split(key, 3)
  return contrast(kc, saturation(ks, brightness(kb, x_BxHxWxC)))


def translation(key: jax.Array, x_BxHxWxC: jax.Array, ratio: float = 0.125) -> jax.Array:
  """Each image shifted by integers in [-r, r] along H and W (r = ratio * size), zero padded."""
  b, h, w, _ = x_BxHxWxC.shape
  rh, rw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  dh = jax.random.randint(kh, (b,), -rh, rh + 1)
  dw = jax.random.randint(kw, (b,), -rw, rw + 1)
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (rh, rh), (rw, rw), (0, 0)))
  # output pixel (i, j) reads padded (i + r - d): the content moves by +d
  crop = lambda img, i, j: jax.lax.dynamic_slice(img, (rh - i, rw - j, 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, dh, dw)


def cutout(key: jax.Array, x_BxHxWxC: jax.Array, ratio: float = 0.5) -> jax.Array:
  """Zeroes one (ratio*H x ratio*W) square per image at a uniform centre (clipped at borders)."""
  b, h, w, _ = x_BxHxWxC.shape
  sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
  kh, kw = jax.random.split(key)
  ch = jax.random.randint(kh, (b, 1, 1), 0, h + (1 - sh % 2))
  cw = jax.random.randint(kw, (b, 1, 1), 0, w + (1 - sw % 2))
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = (
    (rows >= ch - sh // 2)
    & (rows < ch - sh // 2 + sh)
    & (cols >= cw - sw // 2)
    & (cols < cw - sw // 2 + sw)
  )
  return x_BxHxWxC * (~inside)[..., None].astype(x_BxHxWxC.dtype)


_OPS = dict(color=color, translation=translation, cutout=cutout)


def parse_policy(policy: str) -> tuple[str, ...]:
  """ "translation,cutout,color" -> the ops in application order; "" -> ()."""
  names = tuple(p.strip() for p in policy.split(",") if p.strip())
  for name in names:
    if name not in POLICIES:
      raise ConfigError(
        f"unknown augmentation {name!r}; set config.model.augment to a comma-separated subset of "
        f"{POLICIES} (or '' for none)"
      )
  return tuple(p for p in POLICIES if p in names)


def augment(
  key: jax.Array, x_BxHxWxC: jax.Array, policy: str, p: float | jax.Array = 1.0
) -> jax.Array:
  """`policy`'s ops applied to images [B, H, W, C], each from its own key; "" -> x unchanged.
  `p` (a number or a traced scalar): each op is applied to each image with this probability, by
  its own uniform draw per image; the Python number 1 draws nothing more (every image, every op).
  """
  for i, name in enumerate(parse_policy(policy)):
    k = jax.random.fold_in(key, i)
    y = _OPS[name](k, x_BxHxWxC)
    if isinstance(p, (int, float)) and p >= 1:
      x_BxHxWxC = y
    else:
      u = jax.random.uniform(jax.random.fold_in(k, 1000), (x_BxHxWxC.shape[0], 1, 1, 1))
      x_BxHxWxC = jnp.where(u < p, y, x_BxHxWxC)
  return x_BxHxWxC


def ada_adjust(
  p: jax.Array, real_sign: jax.Array, images: int, target: float, kimg: float
) -> jax.Array:
  """ADA's update of the augmentation probability p (a scalar): up by images / (kimg * 1000)
  when the overfitting heuristic r = E[sign(D(real))] (`real_sign`, over the `images` real images
  D just trained on) is above `target`, down by as much when below, clipped to [0, 1]; so p can
  cross [0, 1] in `kimg` thousand real images."""
  step = jnp.sign(real_sign - target) * (images / (kimg * 1000.0))
  return jnp.clip(p + step.astype(p.dtype), 0.0, 1.0)
