"""Pictures: sample grids, interpolation grids and canvas-over-time animations."""

from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255], same shape."""
  return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images_NxHxWxC: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles N images in [-1, 1] into one uint8 picture [rows*(H+pad)+pad, cols*(W+pad)+pad, C]."""
  images = to_uint8(images_NxHxWxC)
  n, h, w, c = images.shape
  ncols = ncols or int(np.ceil(np.sqrt(n)))
  nrows = int(np.ceil(n / ncols))
  out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, k = divmod(i, ncols)
    out[
      pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w
    ] = img
  return out


def _pil(picture: np.ndarray, scale: int) -> Image.Image:
  img = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
  return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_grid(
  images_NxHxWxC: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 2
) -> Path:
  """Writes a PNG grid of images in [-1, 1]; returns its path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  _pil(grid(images_NxHxWxC, ncols), scale).save(path)
  return path


def save_animation(
  frames_TxNxHxWxC: np.ndarray,
  path: str | Path,
  ncols: int | None = None,
  scale: int = 2,
  ms_per_frame: int = 120,
) -> Path:
  """Writes an animated GIF whose frame t is the grid of the N images at time t."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  frames = [_pil(grid(f, ncols), scale) for f in frames_TxNxHxWxC]
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
  return path


def interpolation_path(a_PxZ: np.ndarray, b_PxZ: np.ndarray, num: int) -> np.ndarray:
  """Row p holds `num` points evenly spaced from a[p] to b[p]: [P * num, Z], row-major."""
  t = np.linspace(0.0, 1.0, num)[None, :, None]
  path = (1.0 - t) * np.asarray(a_PxZ)[:, None] + t * np.asarray(b_PxZ)[:, None]
  return path.reshape(-1, path.shape[-1])
