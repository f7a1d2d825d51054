"""Drawing helpers: sample grids, captioned grids, bar charts, canvas-over-time animations and
interpolation paths (what each family draws with them: jaxgen.pictures)."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PAD = 2  # white pixels around each grid cell


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255], same shape."""
  return np.clip(np.rint((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images_NxHxWxC: np.ndarray, ncols: int | None = None, pad: int = PAD) -> np.ndarray:
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


def _save(img: Image.Image, path: str | Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)
  return path


def save_grid(
  images_NxHxWxC: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 2
) -> Path:
  """Writes a PNG grid of images in [-1, 1]; returns its path."""
  return _save(_pil(grid(images_NxHxWxC, ncols), scale), path)


def save_captioned_grid(
  images_NxHxWxC: np.ndarray, texts: list[str], path: str | Path, ncols: int, scale: int = 2
) -> Path:
  """A grid PNG (as save_grid) with text row r written to the left of row r."""
  grid_img = _pil(grid(images_NxHxWxC, ncols), scale)
  margin = int(max(ImageDraw.Draw(grid_img).textlength(t) for t in texts)) + 12
  out = Image.new(grid_img.mode, (margin + grid_img.width, grid_img.height), "white")
  out.paste(grid_img, (margin, 0))
  draw = ImageDraw.Draw(out)
  row = (images_NxHxWxC.shape[1] + PAD) * scale
  for r, text in enumerate(texts):
    draw.text((6, PAD * scale + r * row + row // 2 - 6), text, fill="black")
  return _save(out, path)


def bar_chart(
  values_N: np.ndarray,
  path: str | Path,
  title: str,
  threshold: float,
  height: int = 160,
  bar: int = 8,
) -> Path:
  """A PNG bar chart of non-negative values [N] under a title (lines split on newlines): dark
  bars above `threshold`, grey below."""
  values_N = np.asarray(values_N, np.float64)
  lines = title.split("\n")
  top, pad = 4 + 12 * len(lines), 4
  img = Image.new("RGB", (max(len(values_N) * bar + 2 * pad, 360), height + top + pad), "white")
  draw = ImageDraw.Draw(img)
  for i, line in enumerate(lines):
    draw.text((pad, 2 + 12 * i), line, fill="black")
  scale = height / max(float(values_N.max(initial=0.0)), 1e-12)
  for i, v in enumerate(values_N):
    x0, y0 = pad + i * bar, top + height - max(int(round(v * scale)), 1)
    color = "#1f4e79" if v > threshold else "#bbbbbb"
    draw.rectangle([x0, y0, x0 + bar - 2, top + height], fill=color)
  return _save(img, path)


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


def slerp(a_NxZ: np.ndarray, b_NxZ: np.ndarray, t_T: np.ndarray) -> np.ndarray:
  """Spherical interpolation [T, N, Z] from a[n] (t=0) to b[n] (t=1) along the great circle,
  radius interpolated linearly; linear where a and b are (anti)parallel (the circle is not
  unique there). Keeps Gaussian latents at typical norms, which linear paths shrink."""
  a, b = np.asarray(a_NxZ, np.float64), np.asarray(b_NxZ, np.float64)
  t = np.asarray(t_T, np.float64)[:, None, None]
  na, nb = np.linalg.norm(a, axis=-1, keepdims=True), np.linalg.norm(b, axis=-1, keepdims=True)
  ua, ub = a / np.maximum(na, 1e-12), b / np.maximum(nb, 1e-12)
  omega = np.arccos(np.clip(np.sum(ua * ub, -1, keepdims=True), -1.0, 1.0))
  sin = np.sin(omega)
  safe = np.where(sin > 1e-6, sin, 1.0)
  on_circle = (np.sin((1.0 - t) * omega) * ua + np.sin(t * omega) * ub) / safe
  straight = (1.0 - t) * ua + t * ub
  direction = np.where(sin > 1e-6, on_circle, straight)
  return ((1.0 - t) * na + t * nb) * direction


def walk_path(keys_KxNxZ: np.ndarray, steps: int) -> np.ndarray:
  """A closed walk [K * steps, N, Z]: slerp from key point k to k+1 (the last back to the
  first) in `steps` frames each, every key point a frame; N independent walks side by side."""
  keys = np.asarray(keys_KxNxZ)
  if keys.shape[0] < 2 or steps < 1:
    raise ValueError(f"a walk needs >= 2 key points and >= 1 step, got {keys.shape[0]}, {steps}")
  t_T = np.arange(steps) / steps  # the end point is the next segment's start
  segments = [slerp(keys[k], keys[(k + 1) % len(keys)], t_T) for k in range(len(keys))]
  return np.concatenate(segments).astype(keys.dtype)
