"""Recurrent cells run over time with `nn.scan`: the tanh RNN (default), LSTM and GRU options,
and a bidirectional encoder for token sequences.

The tanh RNN:  h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h),   y_t = W_hy h_t + b_y.

Every cell maps (carry, x_BxI) -> (carry, h_BxH) like flax's own cells; the carry is h for
the tanh and GRU cells and (c, h) for the LSTM. Scans broadcast the parameters over time
(one W_hh for every step) and split any random stream per step.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.errors import ConfigError

CELLS = ("tanh", "lstm", "gru")


class TanhCell(nn.Module):
  """One step of the tanh RNN: (h_BxH, x_BxI) -> (h'_BxH, h'_BxH)."""

  features: int
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  @nn.compact
  def __call__(self, h_BxH: jnp.ndarray, x_BxI: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    # Orthogonal W_hh keeps the norm of h through many steps at initialisation.
    hh = nn.Dense(
      self.features,
      use_bias=False,
      kernel_init=nn.initializers.orthogonal(),
      dtype=self.dtype,
      name="hh",
    )
    xh = nn.Dense(self.features, dtype=self.dtype, name="xh")  # W_xh and b_h
    h_BxH = jnp.tanh(hh(h_BxH) + xh(x_BxI))
    return h_BxH, h_BxH


def make_cell(kind: str, features: int, name: str | None = None, dtype: Any = None) -> nn.Module:
  """A cell of `kind` ("tanh", "lstm" or "gru") with `features` hidden units, computing in
  `dtype` (None: as its inputs and float32 parameters)."""
  if kind == "tanh":
    return TanhCell(features, dtype=dtype, name=name)
  if kind == "lstm":
    return nn.OptimizedLSTMCell(features, dtype=dtype, name=name)
  if kind == "gru":
    return nn.GRUCell(features, dtype=dtype, name=name)
  raise ConfigError(f"unknown RNN cell {kind!r}; choose one of {CELLS}")


def zero_carry(kind: str, batch: int, features: int, dtype: Any = jnp.float32) -> Any:
  """The all-zero initial carry of a `kind` cell for `batch` sequences."""
  h_BxH = jnp.zeros((batch, features), dtype)
  return (h_BxH, h_BxH) if kind == "lstm" else h_BxH


def hidden(kind: str, carry: Any) -> jnp.ndarray:
  """The hidden state h_BxH inside a `kind` cell's carry."""
  return carry[1] if kind == "lstm" else carry


class _MaskedStep(nn.Module):
  """A cell step that keeps the old carry (and outputs zeros) where mask_B is False."""

  kind: str
  features: int
  dtype: Any = None

  @nn.compact
  def __call__(
    self, carry: Any, inputs: tuple[jnp.ndarray, jnp.ndarray]
  ) -> tuple[Any, jnp.ndarray]:
    x_BxI, mask_B = inputs
    new_carry, h_BxH = make_cell(self.kind, self.features, name="cell", dtype=self.dtype)(
      carry, x_BxI
    )
    keep = lambda new, old: jnp.where(mask_B[:, None], new, old)
    return jax.tree.map(keep, new_carry, carry), jnp.where(mask_B[:, None], h_BxH, 0.0)


class RNN(nn.Module):
  """x_BxTxI -> (final carry, y_BxTxO): a cell scanned over time, then y_t = W_hy h_t + b_y.

  `out_features=0` returns h_t itself. `mask_BxT` (bool) skips padded steps: the carry passes
  through them unchanged and their outputs are zero. `reverse` runs from t = T-1 down to 0.
  """

  features: int
  out_features: int = 0
  cell: str = "tanh"
  reverse: bool = False
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  @nn.compact
  def __call__(
    self, x_BxTxI: jnp.ndarray, mask_BxT: jnp.ndarray | None = None, carry: Any = None
  ) -> tuple[Any, jnp.ndarray]:
    b, t = x_BxTxI.shape[:2]
    if mask_BxT is None:
      mask_BxT = jnp.ones((b, t), bool)
    if carry is None:
      carry = zero_carry(self.cell, b, self.features, self.dtype or x_BxTxI.dtype)
    scan = nn.scan(
      _MaskedStep,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=1,
      out_axes=1,
      reverse=self.reverse,
    )
    carry, h_BxTxH = scan(self.cell, self.features, self.dtype, name="scan")(
      carry, (x_BxTxI, mask_BxT)
    )
    if not self.out_features:
      return carry, h_BxTxH
    return carry, nn.Dense(self.out_features, dtype=self.dtype, name="hy")(h_BxTxH)  # W_hy and b_y


class BiRNN(nn.Module):
  """Bidirectional encoder: tokens_BxL (0 = padding) -> annotations [B, L, 2F] and mask_BxL.

  Position j holds [forward h_j, backward h_j] (Bahdanau et al. 2015; alignDRAW's h^lang);
  padded positions hold zeros.
  """

  vocab_size: int
  embed_dim: int = 64
  features: int = 128
  cell: str = "tanh"
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  @nn.compact
  def __call__(self, tokens_BxL: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    mask_BxL = tokens_BxL > 0
    e_BxLxE = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(tokens_BxL)
    _, fwd_BxLxF = RNN(self.features, cell=self.cell, dtype=self.dtype, name="forward")(
      e_BxLxE, mask_BxL
    )
    _, bwd_BxLxF = RNN(
      self.features, cell=self.cell, reverse=True, dtype=self.dtype, name="backward"
    )(e_BxLxE, mask_BxL)
    return jnp.concatenate([fwd_BxLxF, bwd_BxLxF], axis=-1), mask_BxL
