"""DRAW (Gregor et al. 2015) and its caption-conditioned form alignDRAW (Mansimov et al. 2016).

At each of T steps, with the canvas c (logits of the image) and the decoder state h^dec:

    x^_t    = x - sigmoid(c_{t-1})                        the error image
    r_t     = read(x, x^_t, h^dec_{t-1})                  Gaussian N x N window, or whole images
    h^enc_t = RNN^enc(h^enc_{t-1}, [r_t, h^dec_{t-1}])
    z_t     ~ q(z_t | h^enc_t) = N(q_mean, exp(q_logvar))
    s_t     = sum_j alpha_tj h^lang_j,  alpha_t = softmax_j(v . tanh(U h^lang_j + W h^dec_{t-1}))
    h^dec_t = RNN^dec(h^dec_{t-1}, [z_t, s_t])            s_t only with a caption
    c_t     = c_{t-1} + write(h^dec_t)                    an N x N patch through a Gaussian
                                                          window or moved by a learned offset
                                                          distribution ("shift": soft or its
                                                          mode, K patches, plus an optional
                                                          coarse dense canvas), or a dense layer

The prior is N(0, I), or alignDRAW's N(tanh(W_mu h^dec_{t-1}), exp(tanh(W_s h^dec_{t-1}))^2)
with `learned_prior`. Generation runs the same steps with z_t drawn from the prior and no
encoder; a `temperature` tau draws z_t = mean + tau * std * eps instead (tau < 1:
reduced-temperature sampling, more typical images and less variety; tau = 0: the prior's mean).
h^lang comes from a bidirectional RNN over the caption's tokens. Models know nothing of
training: `train` is accepted for the shared `apply` but unused.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError
from jaxgen.models import common, rnn

# ------------------------------------------------------------------ Gaussian attention


def filterbank(
  center_B: jnp.ndarray, delta_B: jnp.ndarray, var_B: jnp.ndarray, n: int, size: int
) -> jnp.ndarray:
  """N Gaussian filters along one image axis, F_BxNxA with every row summing to 1.

  Filter i is centred at center + (i - (n - 1) / 2) * delta in pixel coordinates 0..size-1,
  with variance var. Normalising with a softmax over pixels keeps the rows exact even when a
  filter lies far outside the image (where exp(-d^2 / 2 var) underflows).
  """
  offsets_N = jnp.arange(n, dtype=center_B.dtype) - (n - 1) / 2
  mu_BxN = center_B[:, None] + offsets_N[None, :] * delta_B[:, None]
  pixels_A = jnp.arange(size, dtype=center_B.dtype)
  d2_BxNxA = jnp.square(pixels_A[None, None, :] - mu_BxN[:, :, None])
  return jax.nn.softmax(-d2_BxNxA / (2.0 * var_B[:, None, None]), axis=-1)


def attention_window(
  params_Bx5: jnp.ndarray, height: int, width: int, n: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(F_y [B, N, H], F_x [B, N, W], intensity gamma [B]) from DRAW's five window parameters.

  params = (g~_x, g~_y, log var, log delta~, log gamma): the centre g = (A + 1)/2 (g~ + 1) - 1
  (g~ = 0 is the image centre), the stride delta = (max(H, W) - 1) / (N - 1) * delta~.
  """
  # Pixel coordinates up to ~100 and squared distances up to ~10^4 need float32: the geometry
  # runs in float32 (or wider) whatever the computation dtype of the layer that made `params`.
  params_Bx5 = params_Bx5.astype(jnp.promote_types(params_Bx5.dtype, jnp.float32))
  gx, gy, log_var, log_delta, log_gamma = jnp.moveaxis(params_Bx5, -1, 0)
  center_x = (width + 1) / 2 * (gx + 1) - 1
  center_y = (height + 1) / 2 * (gy + 1) - 1
  delta = (max(height, width) - 1) / max(n - 1, 1) * jnp.exp(log_delta)
  var = jnp.exp(log_var)
  return (
    filterbank(center_y, delta, var, n, height),
    filterbank(center_x, delta, var, n, width),
    jnp.exp(log_gamma),
  )


WRITE_ATTENTIONS = ("gaussian", "shift")  # how an N x N write patch reaches the canvas
WRITE_OFFSETS = ("soft", "hard")  # "shift": the offset distribution, or its mode (straight-through)


def shift_filterbank(p_BxO: jnp.ndarray, n: int, size: int, stride: int = 1) -> jnp.ndarray:
  """F_BxNxA with F[b, i, a] = p[b, (a - i) / stride] where a - i is a multiple of `stride` in
  0..size - n, else 0; O = (size - n) / stride + 1 offsets. Spreading an N-pixel patch axis with
  it moves the patch by stride * o pixels with probability p[o]."""
  diff_NxA = jnp.arange(size)[None, :] - jnp.arange(n)[:, None]
  inside = (diff_NxA >= 0) & (diff_NxA <= size - n) & (diff_NxA % stride == 0)
  taken = jnp.take(p_BxO, jnp.clip(diff_NxA // stride, 0, (size - n) // stride), axis=1)
  return jnp.where(inside[None], taken, 0.0)  # [B, N, A]


def offset_probabilities(logits_BxO: jnp.ndarray, hard: bool) -> jnp.ndarray:
  """softmax(logits) [B, O]; with `hard` the one-hot of its mode in the forward pass and the
  softmax's gradient in the backward pass (straight-through, Bengio et al. 2013), so a patch
  lands on whole pixels, unblurred, and its offset still learns."""
  p = jax.nn.softmax(logits_BxO, axis=-1)
  if not hard:
    return p
  mode = jax.nn.one_hot(jnp.argmax(logits_BxO, axis=-1), logits_BxO.shape[-1], dtype=p.dtype)
  return mode + (p - jax.lax.stop_gradient(p))  # exactly the mode forward: p - p is 0


def read_window(
  x_BxHxWxC: jnp.ndarray, fy_BxNxH: jnp.ndarray, fx_BxNxW: jnp.ndarray, gamma_B: jnp.ndarray
) -> jnp.ndarray:
  """The N x N glimpse gamma * F_y x F_x^T of each channel, [B, N, N, C]."""
  patch = jnp.einsum("bnh,bhwc,bmw->bnmc", fy_BxNxH, x_BxHxWxC, fx_BxNxW)
  return gamma_B[:, None, None, None] * patch


def write_window(
  patch_BxNxNxC: jnp.ndarray, fy_BxNxH: jnp.ndarray, fx_BxNxW: jnp.ndarray, gamma_B: jnp.ndarray
) -> jnp.ndarray:
  """The N x N patch spread onto the image, F_y^T w F_x / gamma, [B, H, W, C]."""
  image = jnp.einsum("bnh,bnmc,bmw->bhwc", fy_BxNxH, patch_BxNxNxC, fx_BxNxW)
  return image / gamma_B[:, None, None, None]


# ------------------------------------------------------------------ one step


class DrawStep(nn.Module):
  """One DRAW step, scanned over time by `DRAW`: (carry, x, lang) -> (carry, per-step outputs).

  carry = (encoder carry, decoder carry, canvas logits [B, H, W, C]). With `infer` the encoder
  reads x and z ~ q; otherwise z ~ prior and x is None. `lang` is None or (h^lang [B, L, F],
  its alignment keys U h^lang [B, L, A], mask [B, L]).
  """

  image_shape: Sequence[int]
  latent_dim: int
  enc_features: int
  dec_features: int
  read_n: int
  write_n: int
  cell: str
  align_features: int
  learned_prior: bool
  infer: bool
  write_attention: str = "gaussian"  # as DRAW.write_attention
  write_offsets: str = "soft"  # as DRAW.write_offsets
  write_patches: int = 1  # as DRAW.write_patches
  write_coarse: int = 0  # as DRAW.write_coarse
  write_stride: int = 1  # as DRAW.write_stride
  temperature: float = 1.0  # generation: z_t = prior mean + temperature * prior std * eps
  dtype: Any = None  # computation dtype of the layers; the canvas stays float32 (or wider)

  def _dense(self, features: int, name: str, **kwargs: Any) -> nn.Dense:
    return nn.Dense(features, dtype=self.dtype, name=name, **kwargs)

  def _window(self, h_dec_BxD: jnp.ndarray, name: str) -> jnp.ndarray:
    # The five window parameters place filters to a fraction of a pixel on images up to ~100
    # pixels wide (g~ is scaled by (A + 1) / 2): computed in float32 whatever self.dtype, a
    # 5-output layer whose cost is nothing beside the cells'.
    h = h_dec_BxD.astype(jnp.promote_types(h_dec_BxD.dtype, jnp.float32))
    return nn.Dense(5, name=name)(h)

  def _prior(self, h_dec_BxD: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    if not self.learned_prior:
      zeros = jnp.zeros((h_dec_BxD.shape[0], self.latent_dim), h_dec_BxD.dtype)
      return zeros, zeros
    mean = jnp.tanh(self._dense(self.latent_dim, "prior_mean")(h_dec_BxD))
    log_std = jnp.tanh(self._dense(self.latent_dim, "prior_log_std")(h_dec_BxD))
    return mean, 2.0 * log_std

  def _read(self, x: jnp.ndarray, x_hat: jnp.ndarray, h_dec_BxD: jnp.ndarray) -> jnp.ndarray:
    b = x.shape[0]
    if not self.read_n:
      return jnp.concatenate([x.reshape(b, -1), x_hat.reshape(b, -1)], axis=-1)
    h, w, _ = self.image_shape
    fy, fx, gamma = attention_window(self._window(h_dec_BxD, "read_window"), h, w, self.read_n)
    glimpses = [read_window(img, fy, fx, gamma).reshape(b, -1) for img in (x, x_hat)]
    return jnp.concatenate(glimpses, axis=-1)

  def _write(self, h_dec_BxD: jnp.ndarray) -> jnp.ndarray:
    b = h_dec_BxD.shape[0]
    h, w, c = self.image_shape
    if not self.write_n:
      return self._dense(h * w * c, "write")(h_dec_BxD).reshape(b, h, w, c)
    n = self.write_n
    if self.write_attention == "gaussian":
      patch = self._dense(n * n * c, "write_patch")(h_dec_BxD).reshape(b, n, n, c)
      fy, fx, gamma = attention_window(self._window(h_dec_BxD, "write_window"), h, w, n)
      return write_window(patch, fy, fx, gamma)
    if self.write_attention not in WRITE_ATTENTIONS:
      raise ConfigError(
        f"unknown write_attention {self.write_attention!r}; use 'gaussian' or 'shift'"
      )
    if self.write_offsets not in WRITE_OFFSETS:
      raise ConfigError(f"unknown write_offsets {self.write_offsets!r}; use 'soft' or 'hard'")
    k, s = self.write_patches, self.write_stride
    oy, ox = (h - n) // s + 1, (w - n) // s + 1
    patches = self._dense(k * n * n * c, "write_patch")(h_dec_BxD).reshape(b, k, n, n, c)
    # offset probabilities in float32, as the window's parameters
    hf = h_dec_BxD.astype(jnp.promote_types(h_dec_BxD.dtype, jnp.float32))
    logits = nn.Dense(k * (oy + ox), name="write_shift")(hf).reshape(b * k, oy + ox)
    hard = self.write_offsets == "hard"
    fy = shift_filterbank(offset_probabilities(logits[:, :oy], hard), n, h, s).reshape(b, k, n, h)
    fx = shift_filterbank(offset_probabilities(logits[:, oy:], hard), n, w, s).reshape(b, k, n, w)
    out = jnp.einsum("bknh,bknmc,bkmw->bhwc", fy, patches.astype(fy.dtype), fx)
    if self.write_coarse:  # a dense canvas at 1/f the size, bilinearly upsampled
      f = self.write_coarse
      coarse = self._dense((h // f) * (w // f) * c, "write_coarse")(h_dec_BxD)
      coarse = coarse.reshape(b, h // f, w // f, c).astype(out.dtype)
      out = out + jax.image.resize(coarse, (b, h, w, c), "linear")
    return out

  def _align(self, h_dec_BxD: jnp.ndarray, lang: tuple) -> tuple[jnp.ndarray, jnp.ndarray]:
    lang_BxLxF, keys_BxLxA, mask_BxL = lang
    query_BxA = self._dense(self.align_features, "align_query")(h_dec_BxD)
    score_BxL = self._dense(1, "align_score", use_bias=False)(
      jnp.tanh(keys_BxLxA + query_BxA[:, None, :])
    )[..., 0]
    score_BxL = score_BxL.astype(jnp.promote_types(score_BxL.dtype, jnp.float32))  # softmax
    score_BxL = jnp.where(mask_BxL, score_BxL, jnp.finfo(score_BxL.dtype).min)
    alpha_BxL = jax.nn.softmax(score_BxL, axis=-1)
    return jnp.einsum("bl,blf->bf", alpha_BxL, lang_BxLxF), alpha_BxL

  @nn.compact
  def __call__(
    self, carry: tuple, x_BxHxWxC: jnp.ndarray | None, lang: tuple | None
  ) -> tuple[tuple, dict]:
    enc_carry, dec_carry, canvas = carry
    h_dec_BxD = rnn.hidden(self.cell, dec_carry)
    b, z_dim = h_dec_BxD.shape[0], self.latent_dim
    p_mean, p_logvar = self._prior(h_dec_BxD)
    # drawn in the canvas's dtype (float32), so a lower computation dtype sees the same noise
    eps_BxZ = jax.random.normal(self.make_rng("latent"), (b, z_dim), canvas.dtype)
    out = dict(p_mean=p_mean, p_logvar=p_logvar)
    if self.infer:
      x_hat = x_BxHxWxC - jax.nn.sigmoid(canvas)
      r_BxR = self._read(x_BxHxWxC, x_hat, h_dec_BxD)
      encoder = rnn.make_cell(self.cell, self.enc_features, name="encoder", dtype=self.dtype)
      enc_carry, h_enc_BxE = encoder(enc_carry, jnp.concatenate([r_BxR, h_dec_BxD], axis=-1))
      out["q_mean"] = self._dense(z_dim, "q_mean")(h_enc_BxE)
      out["q_logvar"] = self._dense(z_dim, "q_logvar")(h_enc_BxE)
      z_BxZ = common.reparameterize(out["q_mean"], out["q_logvar"], eps_BxZ)
    else:
      z_BxZ = common.reparameterize(p_mean, p_logvar, self.temperature * eps_BxZ)
    dec_in = z_BxZ
    if lang is not None:
      s_BxF, out["alignment"] = self._align(h_dec_BxD, lang)
      dec_in = jnp.concatenate([z_BxZ, s_BxF], axis=-1)
    dec_carry, h_dec_BxD = rnn.make_cell(
      self.cell, self.dec_features, name="decoder", dtype=self.dtype
    )(dec_carry, dec_in)
    canvas = canvas + self._write(h_dec_BxD)
    out["z"] = z_BxZ
    if not self.infer:
      out["canvas"] = canvas
    return (enc_carry, dec_carry, canvas), out


# ------------------------------------------------------------------ the model


class DRAW(nn.Module):
  """DRAW over T = `draw_steps` canvas updates; alignDRAW when `vocab_size` > 0 (a caption of
  tokens conditions it).

  `__call__(x, tokens)` with images x [B, H, W, C] in [0, 1] (binary for a Bernoulli
  likelihood) runs the inference network and returns per-step arrays [T, B, Z] "z", "q_mean",
  "q_logvar", "p_mean", "p_logvar" (+ "alignment" [T, B, L]) and the final canvas logits
  "canvas" [B, H, W, C]. `__call__(None, tokens, num=N)` draws z from the prior and returns the
  canvas logits after every step, "canvas" [T, N, H, W, C]. Latents come from the "latent"
  random stream, split per step.
  """

  image_shape: Sequence[int]
  draw_steps: int = 10  # T: canvas updates (glimpses) per image
  latent_dim: int = 10
  enc_features: int = 256
  dec_features: int = 256
  read_n: int = 2  # 0: read the whole image and error image
  write_n: int = 5  # 0: write the whole canvas through a dense layer
  cell: str = "tanh"
  learned_prior: bool = False
  vocab_size: int = 0  # > 0: caption-conditioned (alignDRAW)
  embed_dim: int = 64
  lang_features: int = 128  # per direction of the caption encoder
  align_features: int = 128
  # how the N x N patch reaches the canvas: "gaussian" (DRAW's window) | "shift" (moved by learned
  # offset probabilities, `shift_filterbank`)
  write_attention: str = "gaussian"
  # "shift" only: "soft" moves the patch by the offset distribution (a mixture of shifts), "hard"
  # by its mode with the distribution's gradient (`offset_probabilities`); `write_patches`
  # patches per step, each with its own offsets, summed; `write_coarse` f > 0 adds a dense
  # write of an (H/f) x (W/f) canvas, bilinearly upsampled (placement and rough shape, no detail);
  # offsets are multiples of `write_stride` pixels (e.g. 16: the patch lands on a coarse grid)
  write_offsets: str = "soft"
  write_patches: int = 1
  write_coarse: int = 0
  write_stride: int = 1
  temperature: float = 1.0  # generation only: scales the prior's noise (< 1: more typical)
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); params and canvas stay float32
  # time steps per iteration of the compiled loop (nn.scan's unroll): 1 is a loop over T steps,
  # T (or more) unrolls it, which lets XLA fuse across steps; the same maths either way
  scan_unroll: int = 1

  @nn.compact
  def __call__(
    self,
    x_BxHxWxC: jnp.ndarray | None,
    tokens_BxL: jnp.ndarray | None = None,
    *,
    num: int = 0,
    train: bool = True,
  ) -> dict[str, jnp.ndarray]:
    del train
    if self.cell not in rnn.CELLS:
      raise ConfigError(f"unknown RNN cell {self.cell!r}; choose one of {rnn.CELLS}")
    if self.vocab_size and tokens_BxL is None:
      raise ValueError("a caption-conditioned DRAW needs tokens [B, L]")
    b = (
      x_BxHxWxC.shape[0]
      if x_BxHxWxC is not None
      else (tokens_BxL.shape[0] if self.vocab_size else num)
    )
    lang = None
    if self.vocab_size:
      lang_BxLxF, mask_BxL = rnn.BiRNN(
        self.vocab_size,
        self.embed_dim,
        self.lang_features,
        self.cell,
        dtype=self.dtype,
        name="caption",
      )(tokens_BxL)
      keys_BxLxA = nn.Dense(
        self.align_features, use_bias=False, dtype=self.dtype, name="align_keys"
      )(lang_BxLxF)
      lang = (lang_BxLxF, keys_BxLxA, mask_BxL)
    dtype = jnp.float32 if x_BxHxWxC is None else x_BxHxWxC.dtype
    canvas0 = self.param("canvas0", nn.initializers.zeros, tuple(self.image_shape), dtype)
    carry = (
      rnn.zero_carry(self.cell, b, self.enc_features, self.dtype or dtype),
      rnn.zero_carry(self.cell, b, self.dec_features, self.dtype or dtype),
      jnp.broadcast_to(canvas0, (b, *self.image_shape)),
    )
    scan = nn.scan(
      DrawStep,
      variable_broadcast="params",
      split_rngs={"params": False, "latent": True},
      in_axes=nn.broadcast,
      length=self.draw_steps,
      unroll=min(self.scan_unroll, self.draw_steps),
    )
    step = scan(
      self.image_shape,
      self.latent_dim,
      self.enc_features,
      self.dec_features,
      self.read_n,
      self.write_n,
      self.cell,
      self.align_features,
      self.learned_prior,
      infer=x_BxHxWxC is not None,
      write_attention=self.write_attention,
      write_offsets=self.write_offsets,
      write_patches=self.write_patches,
      write_coarse=self.write_coarse,
      write_stride=self.write_stride,
      temperature=self.temperature,
      dtype=self.dtype,
      name="step",
    )
    (_, _, canvas), out = step(carry, x_BxHxWxC, lang)
    if x_BxHxWxC is not None:
      out["canvas"] = canvas
    return out
