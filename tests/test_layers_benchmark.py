"""benchmarks/layers.py: it finds every convolution of a step, and its PyTorch layers compute
what jaxgen's do (so the per-layer times compare equal work)."""

import sys

import jax
import numpy as np
import pytest
from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder, not part of the package
  sys.path.insert(0, str(REPO))
from benchmarks import layers, throughput  # noqa: E402


def _config(family: str, shape=(32, 32, 3), batch=4, **overrides):
  paths, _ = throughput.family_configs([family])
  return throughput.load_config(paths[family], shape, batch, overrides)


def test_records_each_convolution_of_the_vae_step_once():
  found = layers.record_convolutions("vae", _config("vae", **{"model.width": "4"}))
  described = [layers.describe_layer(x) for x in found]
  # 32x32: three stride-2 convolutions down to 4x4, three transposed ones back up
  assert [x["kind"] for x in found] == ["conv"] * 3 + ["conv_transpose"] * 3, described
  assert [x["input_shape"][1:] for x in found] == [
    (32, 32, 3),
    (16, 16, 8),
    (8, 8, 16),
    (4, 4, 32),
    (8, 8, 16),
    (16, 16, 8),
  ]
  assert found[-1]["features"] == 3 and all(x["calls"] == 1 for x in found)


def test_counts_the_gan_steps_repeated_calls():
  found = layers.record_convolutions("gan", _config("gan", **{"model.width": "4"}))
  kinds = {x["kind"] for x in found}
  assert kinds == {"conv", "conv_transpose"}
  # the discriminator sees real and generated images, the generator runs in both updates
  assert all(x["calls"] >= 2 for x in found), [
    (layers.describe_layer(x), x["calls"]) for x in found
  ]


@pytest.mark.parametrize(
  "kind,shape,features,kernel,padding",
  [
    ("conv", (2, 8, 8, 3), 5, (4, 4), "SAME"),
    ("conv", (2, 7, 7, 4), 6, (3, 3), "SAME"),
    ("conv_transpose", (2, 4, 4, 6), 3, (4, 4), "SAME"),
    ("conv_transpose", (2, 5, 5, 2), 4, (4, 4), "SAME"),
  ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_layer_computes_the_jax_layer(kind, shape, features, kernel, padding, channels_last):
  torch = pytest.importorskip("torch")
  layer = dict(
    kind=kind,
    path="x",
    input_shape=shape,
    features=features,
    kernel_size=kernel,
    strides=(2, 2),
    padding=padding,
    calls=1,
  )
  a = layers.layer_arrays(layer)
  want = np.asarray(jax.jit(layers.jax_layer_fn(layer, fast=True))(a["x"], a["kernel"]))
  module = layers.torch_layer(layer, a["kernel"], channels_last)
  with torch.no_grad():
    got = module(layers.nchw(a["x"], channels_last)).permute(0, 2, 3, 1).numpy()
  # each output sums at most 4*4*6 = 96 float32 products (unit inputs, kernel scaled by
  # 1/sqrt(fan-in), so outputs and their terms are O(1)) in different orders: the difference is
  # bounded by 96 roundings (eps 6e-8), 6e-6 of the terms' size, under 1e-5 on any host
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_asymmetric_padding_has_no_torch_form():
  layer = dict(
    kind="conv",
    input_shape=(1, 8, 8, 1),
    kernel_size=(4, 4),
    strides=(1, 1),
    padding="SAME",
    features=1,
  )
  assert layers.torch_padding(layer) is None  # 4x4 stride 1 "SAME" pads (1, 2)
  # lax's "SAME" transposed 3x3 stride-2 convolution pads the dilated input (2, 1); PyTorch's
  # pads (k - 1 - p, k - 1 - p + output_padding) with output_padding >= 0: never less after
  layer.update(kind="conv_transpose", kernel_size=(3, 3), strides=(2, 2))
  assert layers.torch_padding(layer) is None


def test_table_smoke(capsys):
  result = layers.main(
    [
      "--family",
      "vae",
      "--image_shape",
      "28x28x1",
      "--batch_size",
      "4",
      "--set",
      "model.width=4",
      "--repeats",
      "1",
      "--steps",
      "1",
      "--warmup",
      "1",
    ]
  )
  out = capsys.readouterr().out
  assert len(result["rows"]) == 4 and "rest: step - upper bound" in out and "train step" in out
  jax_totals = result["totals"]["jax"]
  # Each bound is a sum of separately timed layers (one repeat here), so their order is a timing,
  # not a property: under load a forward pass can time longer than another forward + backward.
  assert jax_totals["step_ms"] > 0
  assert jax_totals["convolutions_lower_ms"] > 0 and jax_totals["convolutions_upper_ms"] > 0
  for row in result["rows"]:
    assert row["jax_fwd_ms"] > 0 and row["jax_fwd_bwd_ms"] > 0
  assert set(result["load"]) == {"before", "during", "after"} and "loaded" in result


@pytest.mark.parametrize("kind,size", [("conv", 8), ("conv_transpose", 4)])
def test_odd_kernels_at_stride_two_fall_back_to_the_peers_padding(kind, size):
  """The DCGAN's 5x5 stride-2 layers: no PyTorch padding equals lax's "SAME" one; the peer's form
  gives the same output shape (the same work)."""
  torch = pytest.importorskip("torch")
  layer = dict(
    kind=kind,
    path="x",
    input_shape=(2, size, size, 3),
    features=4,
    kernel_size=(5, 5),
    strides=(2, 2),
    padding="SAME",
    calls=1,
  )
  assert layers.torch_padding(layer) is None
  a = layers.layer_arrays(layer)
  want = jax.eval_shape(layers.jax_layer_fn(layer, fast=False), a["x"], a["kernel"]).shape
  with torch.no_grad():
    got = layers.torch_layer(layer, a["kernel"], False, exact=False)(layers.nchw(a["x"], False))
  assert tuple(got.permute(0, 2, 3, 1).shape) == want
