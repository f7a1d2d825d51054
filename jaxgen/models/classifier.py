"""A small conv classifier whose penultimate features serve as jaxgen's feature extractor.

images_BxHxWxC in [-1, 1] -> conv (width) -> max-pool -> conv (2 width) -> max-pool
-> conv (4 width) -> flatten -> dense (feature_dim, ReLU) -> dropout -> logits_BxK.
Each 3x3 conv is followed by BatchNorm and ReLU (with the pooling, one fused
`jaxgen.ops.BatchNormAct`). `features` returns the feature_dim-wide penultimate
activations together with the logits.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxgen import ops


class Classifier(nn.Module):
  """images_BxHxWxC -> logits_BxK; `features` -> (features_BxD, logits_BxK)."""

  num_classes: int
  width: int = 32
  feature_dim: int = 128
  dropout: float = 0.3
  fast_ops: bool = False  # jaxgen.ops layers: same params and outputs, reverse mode only
  dtype: Any = None  # computation dtype (e.g. jnp.bfloat16); parameters stay float32

  def setup(self):
    w = self.width
    conv, _ = ops.conv_layers(self.fast_ops)
    self.convs = [
      conv(c, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv{i}")
      for i, c in enumerate((w, 2 * w, 4 * w))
    ]
    # BatchNorm, ReLU and (after all but the last conv, 28x28 -> 14x14 -> 7x7) max pooling
    self.norms = [
      ops.BatchNormAct(
        momentum=0.9,
        window=(2, 2) if i < len(self.convs) - 1 else None,
        fused=self.fast_ops,
        dtype=self.dtype,
        name=f"bn{i}",
      )
      for i in range(len(self.convs))
    ]
    self.dense = nn.Dense(self.feature_dim, dtype=self.dtype, name="features")
    self.drop = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")

  def features(
    self, x_BxHxWxC: jnp.ndarray, *, train: bool = False
  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(penultimate features_BxD after ReLU, logits_BxK). Dropout needs a "dropout" rng when training."""
    x = x_BxHxWxC
    for conv, norm in zip(self.convs, self.norms):
      x = norm(conv(x), use_running_average=not train)
    h_BxD = nn.relu(self.dense(x.reshape(x.shape[0], -1)))
    logits_BxK = self.head(self.drop(h_BxD, deterministic=not train))
    return h_BxD, logits_BxK

  def __call__(self, x_BxHxWxC: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
    return self.features(x_BxHxWxC, train=train)[1]
