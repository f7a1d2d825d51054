"""jaxgen.ops: the fast convolutions, max pool and fused BatchNorm equal lax's / flax's and
their autodiff; the DCGAN and classifier steps with them equal the plain ones."""

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, X64_RTOL, gan_config, random_batch, to_float64
from conftest import assert_close_to_scale as _assert_close
from jax import lax

from jaxgen import config as config_lib
from jaxgen import ops
from jaxgen.models import classifier as classifier_models
from jaxgen.models import gan as gan_models
from jaxgen.steps import classifier, gan


def _plain(x, kernel, strides, padding):
  return lax.conv_transpose(x, kernel, strides, padding)


def _plain_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(
    x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.fixture(params=["jaxgen", "xla", "blocks"], ids=lambda p: f"{p}_forms")
def phase_split(request, monkeypatch):
  """Every case through each form of a dilated convolution (phase split, XLA's, or all phases
  in one convolution: depth-to-space) and of a strided forward convolution (tap by tap, XLA's,
  or space-to-depth where the kernel divides by the stride), whatever its channel count."""
  form = request.param
  monkeypatch.setattr(ops, "_MIN_PHASE_SPLIT_CHANNELS", 0 if form == "jaxgen" else 10**9)
  monkeypatch.setattr(ops, "_MAX_TAPWISE", 10**9 if form == "jaxgen" else 0)
  monkeypatch.setattr(ops, "_use_depth_to_space", lambda *_: form == "blocks")
  monkeypatch.setattr(ops, "_MAX_SPACE_TO_DEPTH_CHANNELS", 10**9 if form == "blocks" else 0)
  return form


@pytest.mark.parametrize(
  "x_shape, kernel_hw, cout, strides, padding",
  [
    ((4, 7, 7, 16), (5, 5), 8, (2, 2), "SAME"),  # the DCGAN generator's layers
    ((2, 14, 14, 8), (5, 5), 1, (2, 2), "SAME"),
    ((3, 7, 7, 6), (4, 4), 5, (2, 2), "SAME"),  # the VAE decoder's
    ((2, 5, 9, 3), (3, 3), 4, (2, 2), "SAME"),  # odd, non-square sizes
    ((2, 6, 5, 3), (3, 2), 4, (2, 3), "SAME"),  # non-square kernel and strides
    ((2, 4, 4, 3), (1, 1), 2, (2, 2), "SAME"),  # kernel smaller than the stride
    ((2, 5, 5, 3), (3, 3), 2, (3, 3), "SAME"),
    ((2, 5, 6, 3), (5, 5), 2, (2, 2), "VALID"),
    ((2, 5, 6, 3), (1, 2), 2, (3, 3), "VALID"),  # VALID with K < stride: crops the gradient
    ((2, 6, 6, 3), (3, 3), 4, (1, 1), "SAME"),  # stride 1
    ((2, 6, 6, 3), (4, 4), 2, (2, 2), ((2, 1), (0, 3))),  # explicit padding
  ],
)
def test_conv_transpose_matches_autodiff(x_shape, kernel_hw, cout, strides, padding, phase_split):
  kx, kk, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, (*kernel_hw, x_shape[-1], cout))
  want, want_vjp = jax.vjp(lambda a, b: _plain(a, b, strides, padding), x, kernel)
  got, got_vjp = jax.vjp(
    jax.jit(lambda a, b: ops.conv_transpose(a, b, strides, padding)), x, kernel
  )
  assert got.shape == want.shape
  _assert_close(got, want)
  dy = jax.random.normal(kd, want.shape)
  for g, w, name in zip(got_vjp(dy), want_vjp(dy), ("dx", "dkernel")):
    assert g.shape == w.shape, name
    _assert_close(g, w)


@pytest.mark.parametrize(
  "x_shape, kernel_hw, cout, strides, padding",
  [
    ((4, 28, 28, 1), (5, 5), 8, (2, 2), "SAME"),  # the DCGAN discriminator's layers
    ((4, 14, 14, 8), (5, 5), 16, (2, 2), "SAME"),
    ((3, 28, 28, 2), (4, 4), 5, (2, 2), "SAME"),  # the VAE encoder's
    ((2, 9, 7, 3), (3, 3), 4, (2, 2), "SAME"),  # odd sizes: uneven SAME padding
    ((2, 10, 9, 3), (3, 2), 4, (3, 2), "SAME"),  # non-square kernel and strides
    ((2, 9, 9, 3), (1, 1), 2, (2, 2), "SAME"),  # kernel smaller than the stride
    ((2, 11, 8, 3), (5, 3), 2, (2, 2), "VALID"),  # VALID: trailing pixels unused
    ((2, 8, 8, 3), (2, 2), 2, (3, 3), "VALID"),
    ((2, 6, 6, 3), (3, 3), 4, (1, 1), "SAME"),  # stride 1
    ((2, 8, 7, 3), (4, 4), 2, (2, 2), ((2, 1), (0, 3))),  # explicit padding
    ((2, 8, 7, 1), (3, 3), 4, (2, 2), ((-1, 2), (1, -2))),  # negative: crops the input
    ((2, 9, 8, 2), (4, 2), 3, (2, 2), ((-1, 2), (1, 0))),  # the same, kernel a whole stride
    ((2, 4, 4, 1), (5, 5), 3, (2, 2), "VALID"),  # kernel larger than the input: empty
  ],
)
def test_conv_matches_autodiff(x_shape, kernel_hw, cout, strides, padding, phase_split):
  kx, kk, kd = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, (*kernel_hw, x_shape[-1], cout))
  want, want_vjp = jax.vjp(lambda a, b: _plain_conv(a, b, strides, padding), x, kernel)
  got, got_vjp = jax.vjp(jax.jit(lambda a, b: ops.conv(a, b, strides, padding)), x, kernel)
  _assert_close(got, want)
  dy = jax.random.normal(kd, want.shape)
  for g, w, name in zip(got_vjp(dy), want_vjp(dy), ("dx", "dkernel")):
    assert g.shape == w.shape, name
    _assert_close(g, w)


BLOCK_CASES = [  # (x shape, kernel hw, cout, strides, (low, high) pads per axis)
  ((2, 8, 8, 3), (4, 4), 5, (2, 2), ((1, 1), (1, 1))),  # the VAE's 4x4 stride-2 "SAME"
  ((2, 9, 7, 2), (5, 5), 3, (2, 2), ((1, 2), (2, 2))),  # 5x5: kernel padded to whole blocks
  ((2, 10, 9, 1), (3, 2), 4, (3, 2), ((0, 2), (1, 0))),  # non-square kernel and strides
  ((2, 6, 6, 3), (1, 1), 2, (2, 2), ((0, 0), (0, 0))),  # kernel smaller than the stride
  ((2, 8, 7, 2), (3, 3), 2, (2, 2), ((-1, 2), (1, -2))),  # negative: crops the input
  ((2, 5, 5, 3), (3, 3), 2, (3, 3), ((2, 3), (0, 1))),  # stride 3
]


@pytest.mark.parametrize("x_shape, kernel_hw, cout, strides, pads", BLOCK_CASES)
def test_block_forms_equal_lax(x_shape, kernel_hw, cout, strides, pads):
  """The space-to-depth strided convolution and the depth-to-space dilated one on their own,
  for any kernel and padding (the dispatch uses them only where they were measured faster)."""
  x = jax.random.normal(jax.random.key(4), x_shape)
  kernel = jax.random.normal(jax.random.key(5), (*kernel_hw, x_shape[-1], cout))
  dn = ("NHWC", "HWIO", "NHWC")
  want = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=dn)
  got = jax.jit(ops._space_to_depth_conv, static_argnums=(2, 3))(x, kernel, strides, pads)
  assert got.shape == want.shape
  _assert_close(got, want)
  want = lax.conv_general_dilated(
    x, kernel, (1, 1), pads, lhs_dilation=strides, dimension_numbers=dn
  )
  got = jax.jit(ops._depth_to_space, static_argnums=(2, 3))(x, kernel, strides, pads)
  assert got.shape == want.shape
  _assert_close(got, want)


@pytest.mark.parametrize("stride", [1, 2])
def test_padding_negative_at_one_end_and_positive_at_the_other(stride, phase_split):
  """XLA:CPU's convolution with such padding returned values of 1e35 (jax 0.10); ops crops
  with lax.pad first. The reference pads with lax.pad and convolves "VALID"."""
  x = jax.random.normal(jax.random.key(0), (2, 4, 7, 2))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 2, 2))
  pads = ((-2, 1), (0, 0))
  cropped = lax.pad(x, 0.0, ((0, 0, 0), (-2, 1, 0), (0, 0, 0), (0, 0, 0)))
  want = _plain_conv(cropped, kernel, (stride, 1), "VALID")
  # a new function for each form: jit's cache does not see the monkeypatched dispatch
  _assert_close(jax.jit(lambda a, b: ops.conv(a, b, (stride, 1), pads))(x, kernel), want)


@pytest.mark.parametrize("strides", [(2, 2), (3, 2)])
def test_the_lhs_dilated_path_with_padding_negative_at_one_end(strides):
  """`_dilated` hands outputs of fewer than 8 channels that skip depth-to-space (here 1) to
  XLA's lhs-dilated convolution with the padding as given. Unlike the strided convolution
  (above), XLA:CPU computes that right with padding negative at one end and positive at the
  other: a sweep of 1440 such cases (sizes 5-14, kernels 3-5, strides 2-3, float32 and float64,
  jitted with and without `ops.compile`'s options) found no difference. This pins two of them
  against lax.pad's dilation and cropping followed by a "VALID" convolution."""
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 8))
  kernel = jax.random.normal(jax.random.key(1), (4, 3, 8, 1))
  pads = ((-2, 1), (1, -1))
  dilated = lax.pad(
    x, 0.0, ((0, 0, 0), (-2, 1, strides[0] - 1), (1, -1, strides[1] - 1), (0, 0, 0))
  )
  want = lax.conv_general_dilated(
    dilated, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  lowered = jax.jit(lambda a, b: ops._dilated(a, b, strides, pads)).lower(x, kernel)
  got = ops.compile(lowered, "cpu")(x, kernel)
  assert got.shape == want.shape
  _assert_close(got, want)


def test_block_forms_are_chosen_where_measured_faster():
  """Depth-to-space for a decoder's 3-channel image layer and its wider 4x4 layers, not for 1
  channel, 5x5 kernels or 4x4 inputs; space-to-depth for a 3-channel image at 4x4, not 5x5."""
  x = lambda hw, c: jnp.zeros((64, hw, hw, c))
  k = lambda kk, cin, cout: jnp.zeros((kk, kk, cin, cout))
  chosen = lambda hw, cin, kk, cout: ops._use_depth_to_space(x(hw, cin), k(kk, cin, cout), (2, 2))
  assert chosen(32, 16, 4, 3) and chosen(32, 32, 5, 3) and chosen(8, 64, 4, 32)
  assert not (chosen(14, 64, 5, 1) or chosen(16, 64, 5, 32) or chosen(4, 128, 4, 64))
  one_phase = ops._use_depth_to_space(x(14, 32), k(3, 32, 32), (1, 1))  # a classifier's layer
  assert not one_phase and not ops._use_depth_to_space(x(14, 32), k(3, 32, 1), (3, 3))
  s2d = jax.jit(lambda x, kern: ops._strided(x, kern, (2, 2), ((1, 1), (1, 1))))
  assert "64x33x33x12" in s2d.lower(x(64, 3), k(4, 3, 16)).as_text()
  assert "64x33x33x12" not in s2d.lower(x(64, 3), k(5, 3, 16)).as_text()


def test_bad_padding_is_refused():
  with pytest.raises(ValueError, match="CIRCULAR"):
    ops.conv(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), (2, 2), "CIRCULAR")


@pytest.mark.parametrize(
  "fast, plain, x_hw", [(ops.conv_transpose, _plain, 5), (ops.conv, _plain_conv, 10)]
)
def test_vmap_and_second_order(fast, plain, x_hw):
  """Under vmap, and differentiated twice (the custom backward passes are differentiable)."""
  x = jax.random.normal(jax.random.key(1), (3, 2, x_hw, x_hw, 4))
  kernel = jax.random.normal(jax.random.key(2), (3, 3, 4, 2))
  loss = lambda f: lambda k, x: jnp.sum(jnp.sin(f(x, k, (2, 2), "SAME")))
  _assert_close(
    jax.vmap(jax.grad(loss(fast)), (None, 0))(kernel, x),
    jax.vmap(jax.grad(loss(plain)), (None, 0))(kernel, x),
  )
  inner = lambda f: lambda k: jnp.sum(jax.grad(loss(f), argnums=1)(k, x[0]) ** 2)
  _assert_close(jax.grad(inner(fast))(kernel), jax.grad(inner(plain))(kernel), rtol=1e-4)


@pytest.mark.parametrize(
  "plain_cls, fast_cls", [(nn.ConvTranspose, ops.ConvTranspose), (nn.Conv, ops.Conv)]
)
def test_modules_are_drop_ins_for_flax(plain_cls, fast_cls):
  x = jax.random.normal(jax.random.key(3), (2, 7, 7, 6))
  for use_bias in (True, False):
    plain = plain_cls(4, (5, 5), strides=(2, 2), use_bias=use_bias)
    fast = fast_cls(4, (5, 5), strides=(2, 2), use_bias=use_bias)
    vp, vf = plain.init(jax.random.key(4), x), fast.init(jax.random.key(4), x)
    chex.assert_trees_all_equal(vp, vf)  # names, shapes and initial values
    vp = jax.tree.map(lambda a: a + 0.1, vp)  # a non-zero bias
    _assert_close(fast.apply(vp, x), plain.apply(vp, x))


def _plain_models(hp):
  return tuple(m.clone(fast_ops=False) for m in _models(hp))


_models = gan._models


# The two whole-step comparisons run in float64 (conftest.X64_RTOL): in float32 the fast and
# plain programs round differently, by amounts that differ between CPUs.


def _metrics_close(got: dict, want: dict) -> None:
  for k in want:  # means of O(1) terms: compared to X64_RTOL of max(|value|, 1)
    np.testing.assert_allclose(
      got[k], want[k], rtol=0, atol=X64_RTOL * max(abs(float(want[k])), 1.0), err_msg=k
    )


def _step_and_its_program(step, *args):
  """(step(*args) under jit, the text of its jaxpr). A new function each time: jax caches a
  trace on the function object, so jitting `step` itself again after a monkeypatch would reuse
  the trace made before it, and a fast-vs-plain comparison would compare a step with itself."""
  fresh = lambda *a: step(*a)
  return jax.jit(fresh)(*args), str(jax.make_jaxpr(fresh)(*args))


def test_dcgan_step_equals_plain_autodiff(monkeypatch):
  # SGD with lr 1: the parameter change is the gradient itself.
  c = gan_config(width=16, latent_dim=32)
  c.optim.name, c.optim.g_lr, c.optim.d_lr = "sgd", 1.0, 1.0
  with jax.enable_x64(True):
    batch = to_float64(random_batch())
    init = to_float64(gan.init_state(c, jax.random.key(0), batch))
    args = (init, batch, jax.random.key(42))
    (fast_state, fast_m), fast_program = _step_and_its_program(gan.train_step, *args)
    monkeypatch.setattr(gan, "_models", _plain_models)
    assert not any(m.fast_ops for m in gan._models(init.hp))
    (plain_state, plain_m), plain_program = _step_and_its_program(gan.train_step, *args)
  assert fast_program != plain_program  # the monkeypatch reached the second trace
  assert fast_m["d_loss"].dtype == jnp.float64
  _metrics_close(fast_m, plain_m)
  for name, got, want in zip(
    ("g", "d"), (fast_state.g, fast_state.d), (plain_state.g, plain_state.d)
  ):
    before = init.g.params if name == "g" else init.d.params
    delta = lambda s: jax.tree.map(jnp.subtract, before, s.params)  # noqa: B023 (used within this iteration)
    _assert_close(delta(got), delta(want), rtol=X64_RTOL)
    _assert_close(got.batch_stats, want.batch_stats, rtol=X64_RTOL)


def test_classifier_step_equals_plain_autodiff(monkeypatch):
  c = config_lib.load(REPO / "experiments/configs/classifier_fashion.py")
  c.model.width, c.optim.name, c.optim.lr = 8, "sgd", 1.0  # the update is the gradient
  with jax.enable_x64(True):
    batch = dict(
      image=jax.random.uniform(jax.random.key(1), (16, 28, 28, 1), jnp.float64, minval=-1.0),
      label=jnp.arange(16) % 10,
    )
    init = to_float64(classifier.init_state(c, jax.random.key(0), batch))
    args = (init, batch, jax.random.key(42))
    (fast_state, fast_m), fast_program = _step_and_its_program(classifier.train_step, *args)
    plain_model = classifier._model
    monkeypatch.setattr(classifier, "_model", lambda hp: plain_model(hp).clone(fast_ops=False))
    (plain_state, plain_m), plain_program = _step_and_its_program(classifier.train_step, *args)
  assert fast_program != plain_program
  assert fast_m["loss"].dtype == jnp.float64
  _metrics_close(fast_m, plain_m)
  delta = lambda s: jax.tree.map(jnp.subtract, init.net.params, s.net.params)
  _assert_close(delta(fast_state), delta(plain_state), rtol=X64_RTOL)
  _assert_close(fast_state.net.batch_stats, plain_state.net.batch_stats, rtol=X64_RTOL)


def test_fast_flags_keep_parameters():
  shape, z, x = (28, 28, 1), jnp.ones((2, 16)), jnp.ones((2, 28, 28, 1))
  for model, arg in (
    (gan_models.Generator(shape, width=8), z),
    (gan_models.Discriminator(shape, width=8), x),
    (classifier_models.Classifier(10, width=8), x),
  ):
    chex.assert_trees_all_equal(
      model.init(jax.random.key(0), arg, train=False),
      model.clone(fast_ops=False).init(jax.random.key(0), arg, train=False),
    )


@pytest.mark.parametrize(
  "shape, window", [((3, 28, 28, 4), (2, 2)), ((2, 7, 9, 3), (2, 2)), ((2, 9, 8, 2), (3, 2))]
)
def test_max_pool_matches_flax(shape, window):
  x = jax.random.normal(jax.random.key(5), shape)  # continuous values: no tied maxima
  dy = jax.random.normal(jax.random.key(6), nn.max_pool(x, window, strides=window).shape)
  want, want_vjp = jax.vjp(lambda a: nn.max_pool(a, window, strides=window), x)
  got, got_vjp = jax.vjp(lambda a: ops.max_pool(a, window), x)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_vjp(dy)[0], want_vjp(dy)[0])


def test_max_pool_ties_give_the_gradient_to_the_first_maximum_as_flax():
  x = jax.random.randint(jax.random.key(7), (2, 8, 6, 3), 0, 3).astype(jnp.float32)  # many ties
  dy = jax.random.normal(jax.random.key(8), (2, 4, 3, 3))
  want = jax.vjp(lambda a: nn.max_pool(a, (2, 2), strides=(2, 2)), x)[1](dy)[0]
  got = jax.vjp(lambda a: ops.max_pool(a, (2, 2)), x)[1](dy)[0]
  np.testing.assert_array_equal(got, want)
  assert int(jnp.sum(got != 0)) == dy.size  # one entry per window


def test_max_pool_after_relu_ties_get_no_gradient():
  """Channel 0: a window of ReLU zeros (tied maxima); channel 1: a plain maximum."""
  x = jnp.array([[-1.0, -2.0], [-3.0, -4.0]])[None, :, :, None] * jnp.array([1.0, -1.0])
  grad = lambda pool: jax.grad(lambda a: jnp.sum(pool(nn.relu(a))))(x)
  np.testing.assert_array_equal(grad(ops.max_pool), grad(lambda a: nn.max_pool(a, (2, 2), (2, 2))))


class _FlaxBatchNormAct(nn.Module):
  """The reference: flax's BatchNorm, ReLU / leaky ReLU and max pool."""

  negative_slope: float
  window: tuple | None

  @nn.compact
  def __call__(self, x, use_running_average):
    y = nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, name="bn")(x)
    y = nn.relu(y) if self.negative_slope == 0 else nn.leaky_relu(y, self.negative_slope)
    return nn.max_pool(y, self.window, strides=self.window) if self.window else y


class _JaxgenBatchNormAct(nn.Module):
  negative_slope: float
  window: tuple | None
  fused: bool = True

  @nn.compact
  def __call__(self, x, use_running_average):
    return ops.BatchNormAct(
      momentum=0.9,
      negative_slope=self.negative_slope,
      window=self.window,
      fused=self.fused,
      name="bn",
    )(x, use_running_average)


def _outputs_and_grads(model, variables, x, use_running_average, dy_fn):
  """((y, updated batch_stats), (d/dparams, d/dx)) of sum(y * dy_fn(y.shape))."""

  def loss(params, x):
    y, updates = model.apply(
      {**variables, "params": params}, x, use_running_average, mutable=["batch_stats"]
    )
    return jnp.sum(y * dy_fn(y.shape)), (y, updates)

  (_, outputs), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(variables["params"], x)
  return outputs, grads


# scale: positive, negative (the pool takes each window's smallest x) and zero (the first)
_SCALE, _BIAS = jnp.array([1.5, -0.7, 0.0, 0.3, -2.0]), jnp.array([0.1, 0.2, 0.3, -0.1, 0.0])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize(
  "shape, negative_slope, window",
  [
    ((6, 8, 8, 5), 0.0, (2, 2)),
    ((6, 7, 9, 5), 0.2, (2, 2)),
    ((4, 9, 9, 5), 0.0, (3, 3)),
    ((6, 5, 5, 5), 0.0, None),
    ((12, 5), 0.2, None),
  ],
)
@pytest.mark.parametrize("use_running_average", [False, True], ids=["train", "eval"])
def test_batch_norm_act_is_flax_batch_norm_activation_and_pool(
  shape, negative_slope, window, use_running_average, fused
):
  x = 2.0 * jax.random.normal(jax.random.key(0), shape) + 0.5
  want_m = _FlaxBatchNormAct(negative_slope, window)
  got_m = _JaxgenBatchNormAct(negative_slope, window, fused)
  chex.assert_trees_all_equal(
    got_m.init(jax.random.key(1), x, True), want_m.init(jax.random.key(1), x, True)
  )
  variables = {
    "params": {"bn": {"scale": _SCALE, "bias": _BIAS}},
    "batch_stats": {"bn": {"mean": 0.1 * jnp.arange(5.0), "var": jnp.arange(1.0, 6.0)}},
  }
  run = functools.partial(
    _outputs_and_grads,
    variables=variables,
    x=x,
    use_running_average=use_running_average,
    dy_fn=lambda shape: jax.random.normal(jax.random.key(3), shape),
  )
  (want_y, want_stats), want_grads = run(want_m)
  (got_y, got_stats), got_grads = run(got_m)
  _assert_close(got_y, want_y)
  _assert_close(got_stats, want_stats)
  _assert_close(got_grads, want_grads)


def _flax_batch_norm_act(x, scale, bias):
  """(ReLU(BatchNorm(x)) max-pooled 2x2, batch mean, batch var) as flax computes them."""
  mean = jnp.mean(x, (0, 1, 2))
  var = jnp.maximum(0.0, jnp.mean(x * x, (0, 1, 2)) - mean**2)
  y = nn.relu((x - mean) * (lax.rsqrt(var + 1e-5) * scale) + bias)
  return nn.max_pool(y, (2, 2), strides=(2, 2)), mean, var


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "tied"])
def test_batch_norm_act_gradient_includes_the_statistics_cotangents(ties):
  """Cotangents on all three outputs; with integer x (tied window maxima) the gradient still
  goes to the first maximum, as flax's (another position would be off by O(1))."""
  x = (
    jax.random.randint(jax.random.key(0), (4, 6, 6, 5), -2, 3).astype(jnp.float32)
    if ties
    else jax.random.normal(jax.random.key(0), (4, 6, 6, 5))
  )
  fused = lambda x, s, b: ops.batch_norm_act(x, s, b, window=(2, 2))
  want, want_vjp = jax.vjp(_flax_batch_norm_act, x, _SCALE, _BIAS)
  got, got_vjp = jax.vjp(fused, x, _SCALE, _BIAS)
  _assert_close(got, want)
  cotangents = (
    jax.random.normal(jax.random.key(1), want[0].shape),
    jnp.arange(5.0),
    0.3 * jnp.ones(5),
  )
  _assert_close(got_vjp(cotangents), want_vjp(cotangents))


@pytest.mark.parametrize("window", [(2, 2), None], ids=["pooled", "unpooled"])
def test_batch_norm_act_takes_per_example_scale_and_bias(window):
  """Conditional BatchNorm's [B, 1, 1, C] scale and bias (signs differ between examples, so the
  pool takes the largest x in some and the smallest in others): values and the gradients of x,
  scale and bias equal flax's arithmetic through autodiff."""
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 5))
  scale = _SCALE * jnp.array([1.0, -0.5, 2.0, 0.0])[:, None, None, None]
  bias = _BIAS + 0.1 * jax.random.normal(jax.random.key(2), (4, 1, 1, 5))

  def reference(x, s, b):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.maximum(0.0, jnp.mean(x * x, (0, 1, 2)) - mean**2)
    y = nn.relu((x - mean) * (lax.rsqrt(var + 1e-5) * s) + b)
    return (nn.max_pool(y, window, strides=window) if window else y), mean, var

  want, want_vjp = jax.vjp(reference, x, scale, bias)
  got, got_vjp = jax.vjp(lambda x, s, b: ops.batch_norm_act(x, s, b, window=window), x, scale, bias)
  _assert_close(got, want)
  cotangents = (jax.random.normal(jax.random.key(1), want[0].shape), jnp.arange(5.0), jnp.ones(5))
  grads = got_vjp(cotangents)
  assert grads[1].shape == scale.shape and grads[2].shape == bias.shape
  _assert_close(grads, want_vjp(cotangents))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_batch_norm_act_relu_at_zero_and_bfloat16_are_flax(fused):
  """scale = bias = 0 puts every value at the ReLU's kink (flax's gradient there is 0), and a
  bfloat16 input far from 0 is normalised in float32, as flax does."""
  for x, scale, bias in [
    (jnp.ones((4, 4, 4, 2)), jnp.zeros(2), jnp.zeros(2)),
    (
      (100.0 + 3.0 * jax.random.normal(jax.random.key(0), (8, 4, 4, 5))).astype(jnp.bfloat16),
      _SCALE,
      _BIAS,
    ),
  ]:
    variables = {
      "params": {"bn": {"scale": scale, "bias": bias}},
      "batch_stats": {"bn": {"mean": jnp.zeros(x.shape[-1]), "var": jnp.ones(x.shape[-1])}},
    }
    run = functools.partial(
      _outputs_and_grads,
      variables=variables,
      x=x,
      use_running_average=False,
      dy_fn=lambda shape: jnp.arange(np.prod(shape)).reshape(shape) / np.prod(shape),
    )
    (want_y, want_stats), want_grads = run(_FlaxBatchNormAct(0.0, (2, 2)))
    (got_y, got_stats), got_grads = run(_JaxgenBatchNormAct(0.0, (2, 2), fused))
    assert got_y.dtype == want_y.dtype and got_grads[1].dtype == x.dtype
    _assert_close((got_y, got_stats, got_grads[0]), (want_y, want_stats, want_grads[0]), rtol=1e-4)
    _assert_close(
      got_grads[1].astype(jnp.float32), want_grads[1].astype(jnp.float32), rtol=1e-2
    )  # x's gradient rounded to its bfloat16 (8-bit significand)


def test_batch_norm_act_refuses_what_it_cannot_fuse():
  x = jnp.ones((2, 4, 4, 3))
  with pytest.raises(ValueError, match="monotone activation"):
    ops.batch_norm_act(x, jnp.ones(3), jnp.zeros(3), negative_slope=-0.1, window=(2, 2))
  with pytest.raises(ValueError, match=r"pooling needs \[B, H, W, C\]"):
    ops.batch_norm_act(x[0], jnp.ones(3), jnp.zeros(3), window=(2, 2))


def _conv_and_dot(x, kernel, w):
  return _plain_conv(x, kernel, (2, 2), "SAME").sum() + jnp.sum(x.reshape(x.shape[0], -1) @ w)


def _ynnpack_opcodes(compiled) -> set[str]:
  """HLO opcodes inside the computations XLA:CPU hands to YNNPACK."""
  text = compiled.as_text()
  called = {
    m.group(1)
    for line in text.splitlines()
    if '"__ynn_fusion"' in line
    for m in [re.search(r"calls=(%[\w.-]+)", line)]
    if m
  }
  opcodes = set()
  for block in text.split("\n\n"):
    if block.strip() and block.strip().split()[0] in called:
      opcodes |= set(re.findall(r"[\]}] ([a-z][\w-]*)\(", block))
  return opcodes


def test_compile_keeps_convolutions_on_eigen_and_equals_the_default():
  x = jax.random.normal(jax.random.key(0), (8, 14, 14, 16))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, 16, 32))
  w = jax.random.normal(jax.random.key(2), (14 * 14 * 16, 8))
  lowered = jax.jit(jax.grad(_conv_and_dot, argnums=(0, 1))).lower(x, kernel, w)
  fast, default = ops.compile(lowered, "cpu"), ops.compile(lowered, "cpu", eigen_convs=False)
  assert "convolution" in _ynnpack_opcodes(default), "XLA's default no longer uses YNNPACK convs"
  assert "convolution" not in _ynnpack_opcodes(fast)
  assert "dot" in _ynnpack_opcodes(fast)  # dots stay on YNNPACK
  for got, want in zip(fast(x, kernel, w), default(x, kernel, w)):
    _assert_close(got, want)


def test_compile_without_the_option_warns_and_uses_defaults(monkeypatch):
  monkeypatch.setattr(ops, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option_here": "1"})
  lowered = jax.jit(lambda a: a * 2).lower(jnp.ones(3))
  with pytest.warns(RuntimeWarning, match="xla_cpu_no_such_option_here"):
    compiled = ops.compile(lowered, "cpu")
  np.testing.assert_array_equal(compiled(jnp.ones(3)), 2 * np.ones(3))
