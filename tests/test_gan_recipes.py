"""GAN recipes (README "GAN recipes"): each switch's definition, and one run with all of them on."""

import functools
import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import (
  REPO,
  assert_close_to_scale,
  gan_config,
  num_params,
  random_batch,
  to_float64,
)

from jaxgen import augment, losses, ops, trainer
from jaxgen import config as config_lib
from jaxgen.errors import ConfigError, UserError
from jaxgen.models import gan as gan_models
from jaxgen.steps import common, gan

ALL_ON = dict(
  arch="resnet",
  spectral_norm="dg",
  r1_gamma=1.0,
  r1_every=2,
  augment="translation,cutout,color",
  ema_bn="standing",
  standing_batches=2,
  fresh_real_batches=True,
  d_steps=2,
  class_bn=True,
  num_classes=10,
  mbstd_group=2,
)

# ------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("p", [1.0, 0.5])
@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "translation,cutout,color"])
def test_augment_same_key_same_result_and_differentiable(policy, p):
  x = random_batch(n=8, shape=(8, 8, 3))["image"]
  a = augment.augment(jax.random.key(3), x, policy, p)
  np.testing.assert_array_equal(a, augment.augment(jax.random.key(3), x, policy, p))
  assert float(jnp.abs(a - augment.augment(jax.random.key(4), x, policy, p)).max()) > 1e-3
  # d/dx of a random projection vs a central difference, in float64 so that the difference
  # quotient has no float32 rounding (every op is piecewise linear in x for a fixed key)
  with jax.enable_x64():
    x64 = jnp.asarray(np.asarray(x), jnp.float64)
    w = jax.random.normal(jax.random.key(5), x64.shape, jnp.float64)
    v = jax.random.normal(jax.random.key(6), x64.shape, jnp.float64)
    f = lambda x: jnp.sum(w * augment.augment(jax.random.key(3), x, policy, p))
    eps = 1e-6
    fd = (f(x64 + eps * v) - f(x64 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(jnp.sum(jax.grad(f)(x64) * v), fd, rtol=1e-7)


def test_augment_with_probability_p_augments_each_image_or_leaves_it():
  """Each op reaches each image with probability p, by that image's own draw: an image comes out
  either augmented as with p = 1 (the same key) or untouched; p = 0 changes nothing."""
  x = random_batch(n=1000, shape=(4, 4, 3))["image"]
  key = jax.random.key(7)
  every = np.asarray(augment.augment(key, x, "color"))
  for p in (0.3, jnp.float32(0.3)):  # a number, or a traced value such as ADA's
    y = np.asarray(jax.jit(augment.augment, static_argnums=2)(key, x, "color", p))
    same = (y == np.asarray(x)).all(axis=(1, 2, 3))  # jnp.where passes the input bit for bit
    # jit fuses color's float32 arithmetic differently from the eager ops: ~1e-7 of values
    # near 1, while an augmented image differs from its input by a brightness shift of ~0.25
    augmented = np.isclose(y, every, rtol=0, atol=1e-5).all(axis=(1, 2, 3))
    assert (same ^ augmented).all()
    # a Binomial(1000, 0.3) share: 5 standard deviations are 0.072
    assert abs(augmented.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 1000)
  np.testing.assert_array_equal(augment.augment(key, x, "translation,cutout", 0.0), x)
  np.testing.assert_array_equal(augment.augment(key, x, "color", jnp.float32(1.0)), every)


def test_ada_adjust_steps_p_by_the_images_seen_towards_the_target_and_clips():
  up = augment.ada_adjust(jnp.float32(0.5), jnp.float32(0.7), 64, 0.6, 100.0)
  down = augment.ada_adjust(jnp.float32(0.5), jnp.float32(0.2), 64, 0.6, 100.0)
  # 64 images of the 100,000 that take p across [0, 1]
  np.testing.assert_allclose([up, down], [0.5 + 64e-5, 0.5 - 64e-5], rtol=1e-6)
  assert float(augment.ada_adjust(jnp.float32(0.5), jnp.float32(0.6), 64, 0.6, 100.0)) == 0.5
  assert float(augment.ada_adjust(jnp.float32(0.9999), jnp.float32(1.0), 64, 0.6, 0.01)) == 1.0
  assert float(augment.ada_adjust(jnp.float32(0.0), jnp.float32(-1.0), 64, 0.6, 100.0)) == 0.0


def test_ada_step_uses_its_p_then_moves_it_by_the_sign_of_d_on_reals():
  state = _state(augment="translation,color", ada_target=0.6, ada_kimg=1.0, d_steps=2)
  assert isinstance(state, gan.AdaptiveGANState) and float(state.aug_p) == 0.0
  state = state.replace(aug_p=jnp.float32(0.5))
  after, metrics = jax.jit(gan.train_step)(state, random_batch(n=8), jax.random.key(1))
  assert float(metrics["aug_p"]) == 0.5
  r = float(metrics["d_real_sign"])  # the mean over 2 D updates of 8 signs each
  assert -1.0 <= r <= 1.0 and (r * 16) % 1 == 0
  # 2 D updates saw the 8 real images each: 16 of the 1,000 that take p across [0, 1]
  np.testing.assert_allclose(float(after.aug_p), 0.5 + np.sign(r - 0.6) * 0.016, rtol=1e-6)


def test_translation_moves_content_by_integers_with_zero_padding():
  x = jnp.arange(1.0, 65.0).reshape(1, 8, 8, 1)
  y = augment.translation(jax.random.key(0), x)
  moved = [
    (dh, dw)
    for dh in range(-1, 2)
    for dw in range(-1, 2)
    if np.array_equal(
      y, np.roll(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), (dh, dw), (1, 2))[:, 1:9, 1:9]
    )
  ]
  assert len(moved) == 1  # ratio 1/8 of 8 pixels: a shift in [-1, 1]^2, zeros shifted in


def test_cutout_zeroes_one_half_size_square():
  x = jnp.ones((16, 8, 8, 1))
  y = np.asarray(augment.cutout(jax.random.key(0), x))
  for img in y[..., 0]:
    rows, cols = np.nonzero(img == 0)
    assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
    assert (img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 0).all()
  assert (y == 0).sum(axis=(1, 2, 3)).max() == 16  # a full 4x4 square where not clipped


def test_unknown_policy_is_a_config_error():
  with pytest.raises(ConfigError, match="config.model.augment"):
    augment.parse_policy("translation,flip")


# ------------------------------------------------------------------ R1


def test_lazy_r1_on_cpu_equals_the_conditional_form(monkeypatch):
  """Lazy R1 masks the penalty on CPU (XLA:CPU's conditionals are slow) and uses lax.cond
  elsewhere: the same loss and parameter gradients on and off the regularised D steps."""
  hp = ml_collections.ConfigDict(dict(r1_gamma=0.5, r1_every=4))
  real = np.random.default_rng(0).normal(size=(3, 4, 4, 2))

  def value_and_grad(step):
    d = lambda w: lambda x: jnp.sum(jnp.tanh(x * w), axis=(1, 2, 3))
    f = jax.value_and_grad(lambda w: gan._r1(d(w), jnp.asarray(real), jnp.int32(step), hp))
    return jax.jit(f)(jnp.float64(1.5))

  # In float64: the two programs fuse the same ops differently, and reordered sums of 96 terms
  # differ by ~1e-14 relative, far inside rtol 1e-10 on any CPU (float32 would be ~1e-6).
  with jax.enable_x64():
    masked = [value_and_grad(step) for step in (8, 9)]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cond = [value_and_grad(step) for step in (8, 9)]
  np.testing.assert_allclose(masked[0], cond[0], rtol=1e-10)
  assert float(masked[0][0]) > 0
  assert [float(v) for v in (*masked[1], *cond[1])] == [0.0] * 4  # off steps: nothing


@pytest.mark.parametrize(
  "d_steps, every, cycle",
  [
    (1, 1, [{}]),
    (1, 4, [(True,), (False,), (False,), (False,)]),
    (2, 4, [(True, False), (False, False)]),
    # D updates 0..5 over three steps: the penalty on updates 0 and 3
    (2, 3, [(True, False), (False, True), (False, False)]),
  ],
)
def test_step_variants_put_lazy_r1_on_every_kth_d_update(d_steps, every, cycle):
  hp = ml_collections.FrozenConfigDict(dict(r1_gamma=0.1, r1_every=every, d_steps=d_steps))
  got = gan.step_variants(types.SimpleNamespace(hp=hp))
  assert list(got) == [c if c == {} else {"r1_on": c} for c in cycle]
  off = ml_collections.FrozenConfigDict(dict(r1_gamma=0.0, r1_every=every, d_steps=d_steps))
  assert gan.step_variants(types.SimpleNamespace(hp=off)) == ({},)
  assert trainer.step_variants(types.SimpleNamespace(), None) == ({},)  # a family without it


@pytest.mark.parametrize("d_steps, every, step", [(1, 2, 4), (1, 2, 5), (2, 3, 1), (2, 3, 2)])
def test_static_lazy_r1_is_the_traced_form(d_steps, every, step):
  """The variant the loop compiles for a step (`r1_on` static) against the form that decides
  inside the program: the same D and G updates, with and without the penalty."""
  state = _state(r1_gamma=1.0, r1_every=every, d_steps=d_steps)
  state = state.replace(step=jnp.int32(step))
  variant = gan.step_variants(state)[step % len(gan.step_variants(state))]
  due = [(step * d_steps + i) % every == 0 for i in range(d_steps)]
  assert list(variant["r1_on"]) == due
  # In float64: the two programs are the same maths fused differently, and float64 rounding
  # (~1e-16 per op) leaves them within rtol 1e-9 on any CPU after one Adam step of each player
  # (float32 would differ by ~1e-6, and near-zero gradients could flip an update's sign).
  with jax.enable_x64(True):
    state, batch = to_float64(state), to_float64(random_batch(n=8))
    static_step = functools.partial(gan.train_step, **variant)
    static = jax.jit(static_step)(state, batch, jax.random.key(1))
    traced = jax.jit(gan.train_step)(state, batch, jax.random.key(1))
  assert (float(static[1]["d_r1"]) > 0) == any(due)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(static), jax.tree.leaves(traced)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=jax.tree_util.keystr(path))


def test_the_loop_runs_lazy_r1_only_on_its_steps_and_resumes_in_phase(
  fashion_slice, tmp_path, monkeypatch
):
  c = gan_config(width=8, latent_dim=16, r1_gamma=1.0, r1_every=2)
  c.data.name, c.data.source_dir = "idx", str(fashion_slice)
  c.batch_size, c.log_every, c.checkpoint_every = 16, 1, 3
  c.sample_every, c.num_grid_samples = 0, 0
  compile_real, variants = trainer.compile_train_step, []

  def compile_recording(*args, variant=None, **kwargs):
    variants.append(variant)
    return compile_real(*args, variant=variant, **kwargs)

  monkeypatch.setattr(trainer, "compile_train_step", compile_recording)
  for c.num_steps in (3, 6):  # the second run resumes at step 3, an odd one: no penalty
    trainer.train_and_evaluate(c, tmp_path)
  # each run compiles the step with the penalty and the step without it, nothing in between
  assert variants == [{"r1_on": (True,)}, {"r1_on": (False,)}] * 2
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  r1 = {r["step"]: r["d_r1"] for r in rows if "d_r1" in r}
  # the row of step s is the s-th step, 0-based s - 1: the penalty when s - 1 is even
  assert sorted(r1) == [1, 2, 3, 4, 5, 6]
  assert [r1[s] > 0 for s in sorted(r1)] == [True, False] * 3
  assert all(r1[s] == 0.0 for s in (2, 4, 6))


def test_r1_equals_finite_differences():
  with jax.enable_x64():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 4, 2)))
    w = jnp.asarray(np.random.default_rng(1).normal(size=(4, 4, 2)))
    d_fn = lambda x: jnp.tanh(jnp.sum(w * x, axis=(1, 2, 3))) + jnp.sum(x**2, axis=(1, 2, 3))
    gamma = 10.0
    eps = 1e-6
    sq = []
    for b in range(3):  # each example's gradient by central differences, coordinate by coordinate
      g = np.zeros(x.shape[1:])
      for idx in np.ndindex(*x.shape[1:]):
        e = np.zeros(x.shape)
        e[(b, *idx)] = eps
        g[idx] = (d_fn(x + e)[b] - d_fn(x - e)[b]) / (2 * eps)
      sq.append(np.sum(g**2))
    np.testing.assert_allclose(
      losses.r1_penalty(d_fn, x, gamma), gamma / 2 * np.mean(sq), rtol=1e-7
    )


# ------------------------------------------------------------------ spectral norm


def test_spectral_norm_largest_singular_value_is_one_after_power_iterations():
  d = gan_models.Discriminator((28, 28, 1), width=8, spectral_norm=True)
  x = random_batch(n=4)["image"]
  v = d.init(jax.random.key(0), x, train=False)
  stats = v["batch_stats"]
  for _ in range(50):  # power iterations advance once per training call
    _, stats = common.apply(d, v["params"], stats, x, train=True)
  for name in ("conv0", "conv1", "logit"):
    kernel = np.asarray(v["params"][name]["kernel"])
    sigma = float(stats[f"sn_{name}"][f"{name}/kernel/sigma"])
    top = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    assert abs(top / sigma - 1.0) < 1e-3, name
  # off: the plain model, same parameters
  plain = gan_models.Discriminator((28, 28, 1), width=8).init(jax.random.key(0), x, train=False)
  assert jax.tree.map(jnp.shape, plain["params"]) == jax.tree.map(jnp.shape, v["params"])


# ------------------------------------------------------------------ minibatch standard deviation


def test_minibatch_stddev_is_each_groups_feature_std_averaged():
  x = np.random.default_rng(0).normal(size=(8, 3, 3, 5)).astype(np.float32)
  y = np.asarray(gan_models.minibatch_stddev(jnp.asarray(x), 4))
  assert y.shape == (8, 3, 3, 6)
  np.testing.assert_array_equal(y[..., :5], x)  # the features pass through unchanged
  x64 = x.astype(np.float64).reshape(2, 4, 3, 3, 5)  # groups: images 0-3 and 4-7
  want = np.sqrt(x64.var(axis=1) + 1e-8).mean(axis=(1, 2, 3))
  # float32 variance and mean of a few dozen values: a few roundings (6e-8) of their scale
  assert_close_to_scale(y[..., 5], np.broadcast_to(np.repeat(want, 4)[:, None, None], (8, 3, 3)))
  # a batch smaller than the group is one group; a batch that does not divide is an error
  whole = np.asarray(gan_models.minibatch_stddev(jnp.asarray(x[:3]), 4))[:, 0, 0, 5]
  assert_close_to_scale(whole, np.full(3, np.sqrt(x[:3].astype(np.float64).var(0) + 1e-8).mean()))
  with pytest.raises(ValueError, match="mbstd_group=4 needs a batch .* got 6 images"):
    gan_models.minibatch_stddev(jnp.asarray(x[:6]), 4)
  # identical images in a group: the channel is sqrt(1e-8), whatever they are
  same = np.asarray(gan_models.minibatch_stddev(jnp.asarray(np.repeat(x[:1], 4, 0)), 4))
  np.testing.assert_allclose(same[..., 5], 1e-4, rtol=1e-6)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_mbstd_couples_the_images_of_one_group_only(arch):
  _, d_cls = gan.ARCHS[arch]
  x = jnp.asarray(random_batch(n=8)["image"])
  d = d_cls((28, 28, 1), width=8, mbstd_group=4)
  v = d.init(jax.random.key(0), x, train=False)
  plain = d_cls((28, 28, 1), width=8).init(jax.random.key(0), x, train=False)
  # one more input to the logit: the 7x7 channel flattened (DCGAN) or its sum (ResNet)
  extra = {"dcgan": 7 * 7, "resnet": 1}[arch]
  rows = lambda variables: variables["params"]["logit"]["kernel"].shape[0]
  assert rows(v) == rows(plain) + extra
  # inference mode (DCGAN's BatchNorm uses running statistics): only the group couples images
  logits = lambda x: np.asarray(d.apply(v, x, train=False))
  a, b = logits(x), logits(x.at[0].multiply(-1.0))
  assert np.abs(a[1:4] - b[1:4]).min() > 0  # the rest of image 0's group moves
  np.testing.assert_array_equal(a[4:], b[4:])  # the other group does not


# ------------------------------------------------------------------ ResNet G/D


def test_resnet_shapes_and_parameter_counts():
  shape, w, z_dim = (28, 28, 1), 8, 16  # plan: 7x7, widths (4w, 2w) = (32, 16)
  g = gan_models.ResNetGenerator(shape, width=w)
  d = gan_models.ResNetDiscriminator(shape, width=w, num_classes=10)
  z = jnp.zeros((3, z_dim))
  gv = g.init(jax.random.key(0), z, train=False)
  x = g.apply(gv, z, train=False)
  assert x.shape == (3, *shape)
  labels = jnp.zeros((3,), jnp.int32)
  dv = d.init(jax.random.key(1), x, labels, train=False)
  assert d.apply(dv, x, labels, train=False).shape == (3,)
  assert set(dv) == {"params"}  # no BatchNorm in D
  conv = lambda k, i, o: k * k * i * o + o
  # G: dense 16*7*7*32; block 32->16: BN 2*32, conv 3x3, BN 2*16, conv 3x3, 1x1 shortcut;
  # block 16->16: no shortcut; BN 2*16 + conv 3x3 to 1 channel
  g_want = (z_dim * 49 * 32) + (64 + conv(3, 32, 16) + 32 + conv(3, 16, 16) + conv(1, 32, 16))
  g_want += (32 + conv(3, 16, 16) + 32 + conv(3, 16, 16)) + (32 + conv(3, 16, 1))
  # D: block 1->16, block 16->32 (two 3x3 convs and a 1x1 shortcut each), logit, projection
  d_want = conv(3, 1, 16) + conv(3, 16, 16) + conv(1, 1, 16)
  d_want += conv(3, 16, 32) + conv(3, 32, 32) + conv(1, 16, 32) + 33 + 10 * 32
  assert (g_want, d_want) == (37_537, 17_297)
  assert (num_params(gv["params"]), num_params(dv["params"])) == (g_want, d_want)


def _g_and_d_plain_and_fast(shape, z_dim, **kw):
  """(G variables, its images x, D variables, check): plain flax G and D of `kw` initialised on 4
  latents, and `check()`, which holds jaxgen.ops' passes (fast_ops=True) to plain flax's outputs
  and gradients (float32 sums reordered: conftest's 1e-5 of the scale)."""
  z = jax.random.normal(jax.random.key(0), (4, z_dim))
  g, g_fast = (gan_models.Generator(shape, **kw, fast_ops=fast) for fast in (False, True))
  d, d_fast = (gan_models.Discriminator(shape, **kw, fast_ops=fast) for fast in (False, True))
  gv = g.init(jax.random.key(1), z, train=False)
  x = g.apply(gv, z, train=False)
  dv = d.init(jax.random.key(2), x, train=False)

  def loss(net, variables, inp):
    out, _ = net.apply(variables, inp, train=True, mutable=["batch_stats"])
    return jnp.sum(out * jnp.cos(out))  # a loss whose gradient varies with each output

  def check():
    for plain, fast, variables, inp in ((g, g_fast, gv, z), (d, d_fast, dv, x)):
      want = jax.value_and_grad(loss, argnums=1)(plain, variables, inp)
      got = jax.value_and_grad(loss, argnums=1)(fast, variables, inp)
      assert_close_to_scale(got, want)

  return gv, x, dv, check


def test_full_res_layer_shapes_parameter_counts_and_fast_path():
  """`full_res_width`: G's last transposed convolution makes F channels and a stride-1
  convolution the image; D starts with a stride-1 convolution to F; the fast paths agree."""
  shape, w, z_dim, f = (28, 28, 1), 8, 16, 4  # plan: 7x7, widths (4w, 2w) = (32, 16)
  gv, x, dv, check = _g_and_d_plain_and_fast(shape, z_dim, width=w, kernel_size=3, full_res_width=f)
  assert x.shape == (4, *shape)
  assert gv["params"]["to_image"]["kernel"].shape == (3, 3, f, 1)
  assert dv["params"]["conv_full"]["kernel"].shape == (3, 3, 1, f)
  conv = lambda i, o, bias: 9 * i * o + (o if bias else 0)
  # G: dense 16 -> 7*7*32, BN; deconv 32 -> 16, BN; deconv_full 16 -> f, BN; conv f -> 1 + bias
  g_want = z_dim * 49 * 32 + 64 + conv(32, 16, False) + 32 + conv(16, f, False) + 2 * f
  g_want += conv(f, 1, True)
  # D: conv_full 1 -> f + bias; conv0 f -> 16 + bias; conv1 16 -> 32, BN; logit of 7*7*32
  d_want = conv(1, f, True) + conv(f, 16, True) + conv(16, 32, False) + 64 + 49 * 32 + 1
  assert (g_want, d_want) == (30_413, 6_873)
  assert (num_params(gv["params"]), num_params(dv["params"])) == (g_want, d_want)
  check()
  state = _state(full_res_width=f)  # the config's switch reaches both networks
  assert state.g.params["to_image"]["kernel"].shape[2:] == (f, 1)
  assert state.d.params["conv_full"]["kernel"].shape[2:] == (1, f)


def test_mid_layers_shapes_parameter_counts_and_fast_path():
  """`mid_layers`: N stride-1 3x3 convolutions of the widest width (BatchNorm each) after G's
  first map and after D's last strided convolution; the fast paths agree."""
  shape, w, z_dim, n = (28, 28, 1), 8, 16, 2  # plan: 7x7, widths (4w, 2w) = (32, 16)
  gv, x, dv, check = _g_and_d_plain_and_fast(shape, z_dim, width=w, kernel_size=4, mid_layers=n)
  assert x.shape == (4, *shape)
  conv = lambda k, i, o, bias: k * k * i * o + (o if bias else 0)
  mid = n * (conv(3, 32, 32, False) + 64)  # each: 3x3 32 -> 32, no bias; BatchNorm scale, bias
  # G: dense 16 -> 7*7*32, BN; mid; deconv 32 -> 16, BN; to_image 16 -> 1 + bias
  g_want = z_dim * 49 * 32 + 64 + mid + conv(4, 32, 16, False) + 32 + conv(4, 16, 1, True)
  # D: conv0 1 -> 16 + bias; conv1 16 -> 32, BN; mid; logit of 7*7*32
  d_want = conv(4, 1, 16, True) + conv(4, 16, 32, False) + 64 + mid + 49 * 32 + 1
  assert (g_want, d_want) == (52_193, 28_657)
  assert (num_params(gv["params"]), num_params(dv["params"])) == (g_want, d_want)
  assert gv["params"]["mid1"]["kernel"].shape == dv["params"]["conv_mid1"]["kernel"].shape
  check()
  state = _state(mid_layers=1)  # the config's switch reaches both networks
  assert "mid0" in state.g.params and "conv_mid0" in state.d.params and "mid1" not in state.g.params


# ------------------------------------------------------------------ class-conditional BatchNorm


def test_batch_norm_offsets_are_each_examples_scale_and_bias():
  rng = np.random.default_rng(0)
  x, gain, shift = (rng.normal(size=s).astype(np.float32) for s in ((4, 3, 3, 5), (4, 5), (4, 5)))
  bn = ops.BatchNormAct(use_running_average=False)  # fused: offsets take flax's arithmetic
  v = bn.init(jax.random.key(0), x)
  y, _ = bn.apply(v, x, gain_BxC=gain, shift_BxC=shift, mutable=["batch_stats"])
  x64 = x.astype(np.float64)
  xhat = (x64 - x64.mean((0, 1, 2))) / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
  want = np.maximum(xhat * (1 + gain[:, None, None]) + shift[:, None, None], 0)
  # float32 normalisation of 36 values is off by a few roundings (eps 6e-8) of its magnitude
  assert_close_to_scale(y, want, rtol=1e-5)


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_class_bn_starts_as_the_plain_generator_then_follows_each_label(arch):
  g_cls, _ = gan.ARCHS[arch]
  kw = dict(image_shape=(28, 28, 1), width=8, num_classes=10)
  z, labels = jax.random.normal(jax.random.key(0), (4, 8)), jnp.array([0, 1, 2, 3])
  cond = g_cls(**kw, class_bn=True)
  v = cond.init(jax.random.key(1), z, labels, train=False)
  stats = v["batch_stats"]
  added = {k for k in v["params"] if k.endswith("_class")}
  assert added == {f"{name}_class" for name in stats}  # one per BatchNorm
  for name in stats:  # one-hot -> (gain, shift) per channel, zero at init
    kernel = v["params"][f"{name}_class"]["kernel"]
    assert kernel.shape == (10, 2 * stats[name]["mean"].shape[0]) and not kernel.any()
  plain = {"params": {k: p for k, p in v["params"].items() if k not in added}, "batch_stats": stats}
  for train in (False, True):  # zero offsets add exact zeros: the same bits as without class_bn
    run = lambda m, variables, t=train: m.apply(
      variables, z, labels, train=t, mutable=["batch_stats"]
    )
    np.testing.assert_array_equal(run(cond, v)[0], run(g_cls(**kw), plain)[0])
  # with offsets, at inference each image follows its own label only
  rng = np.random.default_rng(2)
  params = {
    k: ({"kernel": rng.normal(size=p["kernel"].shape)} if k in added else p)
    for k, p in v["params"].items()
  }
  gen = lambda y: np.asarray(
    cond.apply({"params": params, "batch_stats": stats}, z, y, train=False)
  )
  a, b = gen(labels), gen(labels.at[0].set(5))
  assert np.abs(a[0] - b[0]).max() > 1e-2
  np.testing.assert_array_equal(a[1:], b[1:])
  tangent = jax.jvp(lambda z: cond.apply(v, z, labels, train=False), (z,), (z,))[1]
  assert tangent.shape == (4, 28, 28, 1)  # forward mode: plain flax at defaults
  # a hand-built model asking for class_bn without classes fails instead of ignoring it
  with pytest.raises(ValueError, match=r"class_bn=True\) needs num_classes > 0"):
    g_cls(image_shape=(28, 28, 1), width=8, class_bn=True).init(jax.random.key(1), z)


# ------------------------------------------------------------------ transitional training


def test_transition_weight_is_zero_then_linear_then_one():
  hp = ml_collections.FrozenConfigDict(dict(transition_start=10, transition_end=30))
  got = [float(gan.transition_weight(jnp.asarray(s), hp)) for s in (0, 10, 15, 20, 30, 99)]
  assert got == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]  # exact: (s - 10) / 20 for these s
  assert gan.transition_weight(jnp.asarray(5), ml_collections.FrozenConfigDict({})) is None


def test_weighed_loss_is_the_unconditional_loss_plus_lambda_times_the_conditional():
  real = jnp.array([[0.5, 2.0], [-1.0, 0.25]])
  fake = jnp.array([[-0.5, 1.0], [0.0, -3.0]])
  d_loss, g_loss = losses.GAN_LOSSES["nonsaturating"]
  lam = jnp.float32(0.25)
  want = d_loss(real[:, 0], fake[:, 0]) + 0.25 * d_loss(real[:, 1], fake[:, 1])
  assert gan._weighed(d_loss, lam, real, fake) == want
  assert gan._weighed(g_loss, lam, fake) == g_loss(fake[:, 0]) + 0.25 * g_loss(fake[:, 1])
  assert gan._weighed(g_loss, None, fake[:, 1]) == g_loss(fake[:, 1])  # off: the loss as is


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_split_logit_is_the_unconditional_logit_and_the_conditional_one(arch):
  _, d_cls = gan.ARCHS[arch]
  kw = dict(image_shape=(28, 28, 1), width=8, num_classes=10)
  x, labels = random_batch(n=4)["image"], jnp.array([0, 1, 2, 3])
  split, plain = d_cls(**kw, split_logit=True), d_cls(**kw)
  v = plain.init(jax.random.key(0), x, labels, train=False)
  assert jax.tree.map(jnp.shape, split.init(jax.random.key(0), x, labels, train=False)) == (
    jax.tree.map(jnp.shape, v)
  )  # the same parameters: a run can switch it on or off
  run = lambda m, y, variables=v: m.apply(variables, x, y, train=False)
  both = run(split, labels)
  assert both.shape == (4, 2)
  np.testing.assert_array_equal(both[:, 1], run(plain, labels))  # column 1: the plain logit
  other = run(split, labels.at[0].set(7))
  np.testing.assert_array_equal(other[:, 0], both[:, 0])  # column 0 ignores the label...
  assert other[0, 1] != both[0, 1]  # ...which moves the conditional one
  embedding = jnp.zeros_like(v["params"]["class_embed"]["embedding"])
  zero = {**v, "params": {**v["params"], "class_embed": {"embedding": embedding}}}
  z_both = run(split, labels, zero)  # no projection: both columns are the unconditional logit
  np.testing.assert_array_equal(z_both[:, 0], z_both[:, 1])
  np.testing.assert_array_equal(z_both[:, 0], both[:, 0])
  with pytest.raises(ValueError, match="split_logit=True needs num_classes > 0"):
    d_cls(image_shape=(28, 28, 1), width=8, split_logit=True).init(jax.random.key(0), x)


def test_transitional_generator_ignores_the_label_until_start_then_takes_it_whole():
  state = _state(num_classes=10, class_bn=True, transition_start=4, transition_end=8)
  rng = np.random.default_rng(3)  # offsets away from their zero init, so the label matters
  params = jax.tree_util.tree_map_with_path(
    lambda p, x: jnp.asarray(rng.normal(size=x.shape), x.dtype) if "_class" in str(p) else x,
    state.ema_params,
  )
  state = state.replace(ema_params=params)
  z = jax.random.normal(jax.random.key(0), (3, 8))
  gen = lambda step, labels: np.asarray(
    gan.generate(state.replace(step=jnp.asarray(step)), z, jnp.asarray(labels))
  )
  np.testing.assert_array_equal(gen(0, [0, 1, 2]), gen(4, [5, 6, 7]))  # lambda 0: no label
  assert np.abs(gen(8, [0, 1, 2]) - gen(8, [5, 6, 7])).max() > 1e-2
  plain = _state(num_classes=10, class_bn=True).replace(ema_params=params, step=jnp.asarray(8))
  np.testing.assert_array_equal(  # lambda 1: the conditional generator, one-hot labels
    gen(8, [0, 1, 2]), np.asarray(gan.generate(plain, z, jnp.array([0, 1, 2])))
  )
  _, metrics = jax.jit(gan.train_step)(state, random_batch(n=8), jax.random.key(1))
  assert float(metrics["cond_weight"]) == 0.0 and np.isfinite(float(metrics["d_loss"]))


def test_mode_seeking_is_latent_distance_over_image_distance_and_pushes_pairs_apart():
  fake = jnp.zeros((3, 2, 4, 4, 1)).at[:, 1].set(0.5)  # every pair 0.5 apart in every pixel
  z = jnp.zeros((3, 2, 8)).at[:, 1, :4].set(4.0)  # |z1 - z2| is 4 on half the dimensions: 2
  assert float(losses.mode_seeking(fake, z, eps=0.0)) == 4.0  # 2 / 0.5, exact in binary
  np.testing.assert_allclose(losses.mode_seeking(fake, z), 1 / (0.25 + 1e-5), rtol=1e-6)
  collapsed = losses.mode_seeking(jnp.zeros_like(fake), z)  # one image for both latents
  assert float(collapsed) == pytest.approx(1e5)  # 1 / eps: the largest it can be
  grad = jax.grad(lambda f: losses.mode_seeking(f, z))(fake)  # descent moves each pair apart
  assert (grad[:, 0] > 0).all() and (grad[:, 1] < 0).all()


def test_mode_seeking_step_pairs_labels_and_logs_the_term_of_gs_images():
  state = _state(num_classes=10, mode_seeking=1.0)
  batch = random_batch(n=8)
  labels = batch["label"]
  assert (labels[0::2] != labels[1::2]).any()  # pairing must change what G is given
  _, metrics = jax.jit(gan.train_step)(state, batch, jax.random.key(1))
  # G's latents as train_step draws them for its update, and its images for paired labels
  z = jax.random.normal(jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 2)[-1], (8, 8))
  generator, _ = gan._models(state.hp)
  images = lambda y: common.apply(generator, state.g.params, state.g.batch_stats, z, y, train=True)[
    0
  ]
  term = lambda y: float(losses.mode_seeking(gan._pairs(images(y)), gan._pairs(z)))
  paired = jnp.repeat(labels[0::2], 2)
  # The same float32 arithmetic jitted and not: summation order moves means of ~800 terms of
  # one sign by ~1e-7 each, and the three layers of G before them by ~1e-6 (GOLDEN_RTOL's
  # reasoning, conftest.py); 1e-4 is well above both and far below the unpaired gap below.
  np.testing.assert_allclose(float(metrics["g_mode_seeking"]), term(paired), rtol=1e-4)
  assert abs(term(labels) - term(paired)) > 1e-2 * term(paired)
  assert "g_mode_seeking" not in jax.jit(gan.train_step)(_state(), batch, jax.random.key(1))[1]
  c = gan_config(width=8, latent_dim=8, mode_seeking=1.0)
  c.batch_size, c.accum_steps = 6, 2  # micro-batches of 3 images: no whole pairs
  with pytest.raises(ConfigError, match="pairs the images of each generator pass, but it has 3"):
    gan.init_state(c, jax.random.key(0), random_batch(n=6))


# ------------------------------------------------------------------ the step


def _state(**model):
  c = gan_config(width=8, latent_dim=8, **model)
  return gan.init_state(c, jax.random.key(0), random_batch(n=8))


def test_defaults_keep_the_state_as_before_and_bad_values_fail():
  assert "spectral_norm" not in _state().hp and type(_state()) is gan.GANState
  for bad, match in (
    (dict(spectral_norm="g"), "config.model.spectral_norm"),
    (dict(ema_bn="ema"), "config.model.ema_bn"),
    (dict(r1_every=0), "r1_every"),
    (dict(arch="stylegan"), "config.model.arch"),
    (dict(class_bn=True), "model.class_bn=True .* model.num_classes is 0"),
    (dict(mbstd_group=-1), "model.mbstd_group=-1; set it to 0"),
    (dict(mbstd_group=3), "mbstd_group=3 does not divide the 64 images .* divisor of 64"),
    (dict(full_res_width=-1), "model.full_res_width=-1 with arch 'dcgan'; set it to 0"),
    (dict(full_res_width=8, arch="resnet"), "full_res_width=8 with arch 'resnet'"),
    (dict(mid_layers=-1), "model.mid_layers=-1 with arch 'dcgan'; set it to 0"),
    (dict(mid_layers=1, arch="resnet"), "mid_layers=1 with arch 'resnet'"),
    (dict(augment="color", augment_p=1.5), "model.augment_p=1.5 with augment 'color'; set"),
    (dict(augment_p=0.5), "model.augment_p=0.5 with augment ''; set it to a probability"),
    (dict(ada_target=0.6), "model.ada_target=0.6 with augment ''; set ada_target in"),
    (dict(augment="color", ada_target=1.0), "ada_target=1.0 with augment 'color'"),
    (dict(augment="color", ada_target=0.6, augment_p=0.5), "ADA sets the probability itself"),
    (dict(augment="color", ada_target=0.6, ada_kimg=0.0), "ada_kimg=0.0: ADA sets"),
    (dict(transition_end=10), "transition_end=10 with num_classes=0; set 0 <= transition_start"),
    (dict(num_classes=10, transition_start=5, transition_end=5), "transition_start=5, trans"),
    (dict(num_classes=10, transition_start=5), "transition_start=5, transition_end=0 with"),
    (dict(mode_seeking=-1.0), "model.mode_seeking=-1.0; set it to 0 .off. or a weight > 0"),
  ):
    with pytest.raises(ConfigError, match=match):
      _state(**bad)


@pytest.mark.slow  # two eager steps (~30 s on 2 cores); bit equality needs the same eager ops
def test_fresh_real_batches_with_one_d_step_is_the_plain_step():
  batch = random_batch(n=8)
  a, _ = gan.train_step(_state(), batch, jax.random.key(1))
  b, _ = gan.train_step(_state(fresh_real_batches=True), batch, jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, a.g.params, b.g.params)
  jax.tree.map(np.testing.assert_array_equal, a.d.params, b.d.params)


def test_standing_statistics_are_the_ema_generators_batch_statistics():
  state = _state(ema_bn="standing", standing_batches=1)
  state = state.replace(ema_params=jax.tree.map(lambda p: 1.1 * p, state.ema_params))
  generator, _ = gan._models(state.hp)
  z = jax.random.normal(jax.random.split(jax.random.key(0), 1)[0], (256, 8))
  # one flax update from the online statistics: new = 0.9 old + 0.1 batch
  _, new = common.apply(generator, state.ema_params, state.g.batch_stats, z, None, train=True)
  want = jax.tree.map(lambda n, o: (n - 0.9 * o) / 0.1, new, state.g.batch_stats)
  got = gan.ema_batch_stats(state)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5), got, want)
  online = _state()
  assert gan.ema_batch_stats(online) is online.g.batch_stats


@pytest.mark.slow  # ~30 s of compiling; the all-recipes training run below stays in the default set
@pytest.mark.parametrize("arch", ["resnet", "dcgan"])
def test_step_with_all_recipes_is_finite_and_logs_r1(arch):
  extra = dict(arch="dcgan", full_res_width=4) if arch == "dcgan" else {}  # the DCGAN's switch
  state = _state(**{**ALL_ON, **extra})
  state, metrics = jax.jit(gan.train_step)(state, random_batch(n=8), jax.random.key(1))
  assert set(metrics) >= {"d_loss", "g_loss", "d_r1"}
  assert all(np.isfinite(float(v)) for v in metrics.values())
  assert np.isfinite(np.asarray(gan.sample(state, jax.random.key(2), 3))).all()


# ------------------------------------------------------------------ a trained run


def test_training_run_with_all_recipes_ends_finite(fashion_slice, tmp_path):
  c = gan_config(width=8, latent_dim=16, **ALL_ON)
  c.data.name, c.data.source_dir = "idx", str(fashion_slice)
  c.batch_size, c.num_steps, c.log_every, c.checkpoint_every = 16, 4, 1, 4
  c.sample_every, c.num_grid_samples = 0, 0
  trainer.train_and_evaluate(c, tmp_path)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  last = [r for r in rows if "g_loss" in r][-1]
  assert last["step"] == 4 and np.isfinite(last["g_loss"]) and np.isfinite(last["d_loss"])


# ------------------------------------------------------------------ the study's outputs


def _experiment(name: str):
  """The script experiments/`name`.py as a module."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(name, REPO / f"experiments/{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _study():
  return _experiment("gan_recipes")


def test_study_table_and_figure_show_each_recipes_curve(tmp_path):
  study = _study()
  curves = {
    "dcgan": [
      dict(step=500, train_minutes=1.0, fd=300.0, coverage=0.3, recall=0.4),
      dict(
        step=1000, train_minutes=2.0, fd=200.0, coverage=0.5, recall=0.5,
        coverage_per_class=[0.6, None, 0.25, 0.7],  # None: a class without real images
      ),
    ],
    "ttur": [dict(step=500, train_minutes=1.1, fd=250.0, coverage=0.4, recall=0.45)],
    "failed": [],
  }  # fmt: skip
  lines = study.table(curves).splitlines()
  header = "| recipe | step | train minutes | fd | coverage | recall | coverage, lowest class |"
  assert lines[0] == header
  assert lines[2] == "| dcgan | 1000 | 2.0 | 200 | 0.5 | 0.5 | 0.25 (2) |"  # the last evaluation
  assert lines[3] == "| ttur | 500 | 1.1 | 250 | 0.4 | 0.45 | - |"  # evaluated before per-class
  assert lines[4] == "| failed | - | - | - | - | - | - |"
  study.plot(curves, tmp_path / "curves.png")
  from PIL import Image

  with Image.open(tmp_path / "curves.png") as img:
    assert img.size == (2 * 480, 320 + 20 * 3)  # two panels, a legend line per recipe
    pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
  colours = {tuple(c) for c in pixels}
  assert set(study.COLOURS[:2]) <= colours  # dcgan's and ttur's lines are drawn
  with pytest.raises(SystemExit):
    study.main(["--recipes", "dcgan,stylegan"])  # an unknown recipe: a usage error


def test_every_recipe_is_a_valid_config_and_the_demo_is_a_study_recipe():
  study = _study()
  args = study.argparse.Namespace(eval_every=500, eval_samples=2000, width=0, base="")
  for name in study.RECIPES:
    c = study.recipe_config(name, args)
    config_lib.validate(c)
    gan._recipe_hp(c.model)  # the switches' own checks
  # `make demo` trains the study's recipe with the learning rate it picked and the kernels session
  # 28's runs picked (README "GAN recipes", "4x4 kernels"): the same model and optimiser, only
  # the step count and output cadence differ.
  demo = config_lib.load(REPO / "experiments/configs/dcgan_fashion_cond.py")
  picked = study.recipe_config("cond_lr2e3_k4", args)
  assert demo.model.to_dict() == picked.model.to_dict()
  assert demo.optim.to_dict() == picked.optim.to_dict()
  assert (demo.batch_size, demo.seed) == (picked.batch_size, picked.seed)
  # --base: the base recipe's overrides first, then the recipe's (which win where both set one)
  args.base = "cond_lr2e3_k4"
  assert study.run_name("r1", args) == "cond_lr2e3_k4+r1"
  on_demo = study.recipe_config("r1", args)
  assert (on_demo.model.r1_gamma, on_demo.model.kernel_size, on_demo.optim.d_lr) == (0.1, 4, 2e-3)
  assert study.recipe_config("dcgan", args).model.to_dict() == picked.model.to_dict()
  assert study.recipe_config("ttur", args).optim.g_lr == 1e-4


def test_the_long_run_is_the_demo_twice_as_wide_with_r1_and_a_cosine_decay():
  """dcgan_fashion_cond_long.py is what README's long-run column measured: the demo's config with
  width 64, one mid layer, lazy R1 (gamma 0.1, every fourth D step), 8,000 steps and the cosine
  schedule, nothing else changed but the output cadence."""
  demo = config_lib.load(REPO / "experiments/configs/dcgan_fashion_cond.py")
  long = config_lib.load(REPO / "experiments/configs/dcgan_fashion_cond_long.py")
  config_lib.validate(long)
  changes = {
    "model.width": 64,
    "model.mid_layers": 1,
    "model.r1_gamma": 0.1,
    "model.r1_every": 4,
    "optim.schedule": "cosine",
    "num_steps": 8000,
    "sample_every": 2000,
    "checkpoint_every": 2000,
  }
  assert config_lib.flatten(long) == {**config_lib.flatten(demo), **changes}


@pytest.mark.parametrize("name", ["dcgan_fashion.py", "dcgan_fashion_cond.py", "dcgan_emoji.py"])
def test_every_gan_config_takes_each_switch_from_the_command_line_and_old_runs_resume(name):
  """README "GAN recipes": `--config.model.augment=...` works on any GAN config (each declares
  every switch, off), and a run saved before the switches existed resumes unchanged."""
  path = REPO / "experiments/configs" / name
  plain = config_lib.load(path)
  assert {k: plain.model[k] for k in config_lib.GAN_RECIPES} == {
    **config_lib.GAN_RECIPES,
    "class_bn": plain.model.class_bn,  # the conditional configs turn it on
  }
  texts = dict(
    arch="resnet",
    spectral_norm="d",
    r1_gamma="0.1",
    r1_every="4",
    augment="translation,color",
    ema_bn="standing",
    standing_batches="2",
    fresh_real_batches="true",
  )
  c = config_lib.load(path, {f"model.{k}": v for k, v in texts.items()})
  hp = gan._recipe_hp(c.model)
  assert (hp["arch"], hp["r1_gamma"], hp["r1_every"], hp["augment"]) == (
    "resnet",
    0.1,
    4,
    "translation,color",
  )
  assert hp["fresh_real_batches"] is True and hp["standing_batches"] == 2
  # A config.json from before the switches: upgrade() reads them as off, so no drift.
  old = json.loads(plain.to_json_best_effort())
  for k in config_lib.GAN_RECIPES:
    if k != "class_bn" or not plain.model.class_bn:
      del old["model"][k]
  assert config_lib.drift(config_lib.flatten(config_lib.upgrade(old)), plain) == []
  # ... and a config file written before them (no switches declared) resumes a run of today's
  without_switches = config_lib.load(path)
  for k in config_lib.GAN_RECIPES:
    if k != "class_bn" or not plain.model.class_bn:
      del without_switches.model[k]
  assert config_lib.drift(config_lib.flatten(plain), without_switches) == []
  with pytest.raises(ConfigError, match="config.model.arch is 'dcgan' in this run's config.json"):
    config_lib.drift(config_lib.flatten(config_lib.upgrade(old)), c)


# ------------------------------------------------------------ experiments/gan_sampling.py


def test_sampling_variants_draw_what_they_name():
  probe = _experiment("gan_sampling")
  c = gan_config(width=8, latent_dim=8, num_classes=3, class_bn=True)
  state = gan.init_state(c, jax.random.key(0), random_batch(4))
  # weights the EMA does not share yet, so "online" is told apart from "ema"
  state = state.replace(g=state.g.replace(params=jax.tree.map(lambda p: p + 0.1, state.g.params)))
  key, labels = jax.random.key(1), np.array([0, 1, 2, 0, 1, 2])

  def images(name, st=None):
    family, st = probe.variant(name, state if st is None else st)
    return np.asarray(family.sample(st, key, 6, labels))

  z = jax.random.normal(key, (6, 8))
  ema = np.asarray(gan.sample_latents(state, z, labels))
  np.testing.assert_array_equal(images("ema"), ema)
  np.testing.assert_array_equal(images("z1"), ema)  # 1 x z is z, bit for bit
  np.testing.assert_array_equal(images("z2"), np.asarray(gan.sample_latents(state, 2 * z, labels)))
  truncated = jax.random.truncated_normal(key, -0.5, 0.5, (6, 8))
  np.testing.assert_array_equal(
    images("trunc0.5"), np.asarray(gan.sample_latents(state, truncated, labels))
  )
  online = state.replace(ema_params=state.g.params)
  np.testing.assert_array_equal(images("online"), np.asarray(gan.sample_latents(online, z, labels)))
  assert not np.array_equal(images("online"), ema)
  assert probe.variant("standing", state)[1].hp.ema_bn == "standing"
  # 8 bits: every value is one of the 256 levels k / 127.5 - 1 and within half a level of ema
  levels = (images("q8") + 1.0) * 127.5
  # k / 127.5 - 1, then + 1: three float32 roundings of values in [0, 2], each at most 2^-23,
  # times 127.5 is under 5e-5
  np.testing.assert_allclose(levels, np.round(levels), atol=5e-5)
  # half a level, plus a few float32 roundings (of values in [-1, 255]; under 1e-6 in all)
  assert np.max(np.abs(images("q8") - np.clip(ema, -1, 1))) <= 0.5 / 127.5 + 1e-6
  for bad in ("zwide", "trunc", "best"):
    with pytest.raises(UserError, match="unknown variant"):
      probe.variant(bad, state)
