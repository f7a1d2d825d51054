"""VAE: KL and likelihoods, IWAE bound, golden step values, shapes, sampling and pictures
(device counts: test_device_agreement; resume: test_resume)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import GOLDEN_RTOL, num_params, random_batch, train_steps_traced_once, vae_config
from PIL import Image

from jaxgen import losses, pictures
from jaxgen.errors import ConfigError
from jaxgen.models import common as model_common
from jaxgen.models import vae as vae_models
from jaxgen.steps import common, vae


def grey_batch(**kw) -> dict:
  """Images on the 8-bit grid of [-1, 1], as the data pipeline gives them."""
  return random_batch(grey_levels=True, **kw)


# ------------------------------------------------------------------ losses


def test_closed_form_kl_matches_monte_carlo():
  key_m, key_v, key_z = jax.random.split(jax.random.key(0), 3)
  mean = jax.random.normal(key_m, (3, 4))
  logvar = jax.random.uniform(key_v, (3, 4), minval=-2.0, maxval=1.0)
  n = 100_000

  @jax.jit
  def log_ratio(mean, logvar):  # per unit: log q(z_u|x) - log N(z_u; 0, 1)
    z = model_common.reparameterize(mean, logvar, jax.random.normal(key_z, (n, 3, 4)))
    return losses.diag_gaussian_log_prob(
      z[..., None], mean[..., None], logvar[..., None]
    ) - losses.diag_gaussian_log_prob(z[..., None], 0.0, 0.0)

  r = np.asarray(log_ratio(mean, logvar), np.float64)
  mc, stderr = r.mean(0), r.std(0) / np.sqrt(n)
  exact = losses.gaussian_kl(mean, logvar)
  assert np.all(np.abs(mc - exact) < 4 * stderr + 1e-4), (mc, exact, stderr)
  np.testing.assert_allclose(losses.gaussian_kl(jnp.zeros(2), jnp.zeros(2)), 0.0)


@pytest.mark.parametrize(
  "loc, log_scale",
  [
    (0.0, 0.0),
    (0.37, -3.0),
    (-1.0, -7.0),
    (1.0, -30.0),
    (0.0, 60.0),
    (5.0, -2.0),
    (-1e4, 1.0),
    (1e4, -1e4),
    (0.5, 1e4),
  ],
)
def test_discretized_logistic_is_a_distribution_for_any_decoder_output(loc, log_scale):
  # Any real (loc, log_scale) gives finite log-probabilities <= 0 over the 256 grid values that
  # sum to 1: the decoder cannot leave the likelihood's support.
  x_Kx1x1x1 = (jnp.arange(256, dtype=jnp.float32) / 127.5 - 1.0)[:, None, None, None]
  shape = x_Kx1x1x1.shape
  lp_K = losses.discretized_logistic_log_prob(
    jnp.full(shape, loc), jnp.full(shape, log_scale), x_Kx1x1x1
  )
  assert bool(jnp.all(jnp.isfinite(lp_K))) and float(lp_K.max()) <= 1e-6
  np.testing.assert_allclose(jax.nn.logsumexp(lp_K), 0.0, atol=2e-5)
  mean = losses.discretized_logistic_mean(jnp.full((1,), loc), jnp.full((1,), log_scale))
  np.testing.assert_allclose(mean[0], jnp.sum(jnp.exp(lp_K) * x_Kx1x1x1[:, 0, 0, 0]), atol=1e-4)
  assert -1.0 <= float(mean[0]) <= 1.0


def test_bernoulli_is_a_distribution_for_any_logit():
  logits = jnp.array([-1e4, -30.0, 0.0, 3.0, 1e4]).reshape(5, 1, 1, 1)
  lp0 = losses.bernoulli_log_prob(logits, jnp.zeros_like(logits))
  lp1 = losses.bernoulli_log_prob(logits, jnp.ones_like(logits))
  assert bool(jnp.all(jnp.isfinite(lp0) & jnp.isfinite(lp1)))
  np.testing.assert_allclose(jnp.logaddexp(lp0, lp1), 0.0, atol=1e-6)
  np.testing.assert_allclose(lp1[2], -np.log(2.0), rtol=1e-6)


def test_unknown_likelihood_is_rejected():
  with pytest.raises(ConfigError, match="likelihood"):
    vae.init_state(vae_config(likelihood="gaussian"), jax.random.key(0), grey_batch(n=1))


# ------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
  "shape, likelihood, num_classes, count",
  [
    # by hand (w=8, Z=8): encoder 4*4*1*16+16 + 4*4*16*32+32 + 7*7*32*16+16 = 33_600;
    # decoder 8*7*7*32+1568 + 4*4*32*16+16 + 4*4*16*1+1 = 22_577
    ((28, 28, 1), "bernoulli", 0, 56_177),
    ((28, 28, 1), "logistic", 10, 56_177 + 10 * 16 + 10 * 1568 + 4 * 4 * 16 + 1),
    # 64x64x3 (w=8): encoder 392 + 2_064 + 8_224 + 32_832 + 16_400; decoder 9_216 + 32_800
    # + 8_208 + 2_056 + 4*4*8*6+6
    ((64, 64, 3), "logistic", 0, 112_966),
  ],
)
def test_shapes_and_parameter_counts(shape, likelihood, num_classes, count):
  # Shapes only: jax.eval_shape traces without computing.
  c = vae_config(likelihood=likelihood, num_classes=num_classes)
  c.data.image_shape = shape
  batch = grey_batch(n=3, shape=shape)
  state = jax.eval_shape(lambda k: vae.init_state(c, k, batch), jax.random.key(0))
  model = vae._model(state.hp)
  labels = batch["label"] if num_classes else None
  mean, logvar, out = jax.eval_shape(
    lambda p: model.apply({"params": p}, batch["image"], jnp.zeros((3, 8)), labels, train=False),
    state.vae.params,
  )
  assert mean.shape == logvar.shape == (3, 8)
  assert out.shape == (3, *shape[:2], shape[2] * vae.LIKELIHOODS[likelihood])
  assert num_params(state.vae.params) == count
  assert jax.eval_shape(lambda s: vae.sample(s, jax.random.key(1), 2), state).shape == (2, *shape)
  assert jax.eval_shape(vae.train_step, state, batch, jax.random.key(0))[1]["loss"].shape == ()


def test_bad_image_size_is_rejected():
  with pytest.raises(ConfigError, match="the VAE needs an image size"):
    vae_models.Encoder((30, 30, 1)).init(jax.random.key(0), jnp.zeros((1, 30, 30, 1)))
  assert model_common.resolution_plan(64, 8, "the VAE") == (4, (64, 32, 16, 8))


# ------------------------------------------------------------------ steps


@pytest.mark.parametrize(
  "likelihood, expect",
  [
    # At initialisation logits ~ 0: recon ~ 784 ln 2 = 543.4 nats; the logistic (loc ~ 0,
    # scale ~ 1) puts ~ 6.3 nats on each pixel's bin.
    ("bernoulli", {"loss": 544.21686, "kl": 0.35387084, "recon": 543.86298, "bpd": 1.0014528}),
    ("logistic", {"loss": 4924.0791, "kl": 0.09693009, "recon": 4923.9824, "bpd": 9.0611544}),
  ],
)
def test_one_step_golden_values(likelihood, expect, pinned_env):
  # Protects the ELBO's arithmetic (likelihood, KL, units); tied to the pinned versions.
  c = vae_config(likelihood=likelihood)
  batch = grey_batch()
  state = vae.init_state(c, jax.random.key(0), batch)
  state, m = jax.jit(vae.train_step)(state, batch, jax.random.key(42))
  got = {k: float(v) for k, v in m.items()}
  for k, v in expect.items():
    np.testing.assert_allclose(got[k], v, rtol=GOLDEN_RTOL, err_msg=k)
  # Units: nats per image; bpd = nats / (784 ln 2); elbo = -loss = -(recon + kl).
  np.testing.assert_allclose(got["bpd"], got["loss"] / (784 * np.log(2)), rtol=1e-6)
  np.testing.assert_allclose(got["elbo"], -(got["recon"] + got["kl"]), rtol=1e-6)
  assert int(state.step) == 1


def _hp(likelihood):
  return ml_collections.FrozenConfigDict(dict(likelihood=likelihood))


def test_binarisation_is_fresh_for_each_key():
  image = jnp.full((4000, 2, 2, 1), 0.5)  # P(1) = 0.75
  x_in, target = vae.observe(_hp("bernoulli"), image, jax.random.key(0))
  _, again = vae.observe(_hp("bernoulli"), image, jax.random.key(1))
  assert set(np.unique(target).tolist()) == {0.0, 1.0}
  np.testing.assert_array_equal(x_in, 2 * target - 1)
  assert float(jnp.mean(target != again)) > 0.3  # 2 * 0.75 * 0.25 = 0.375 expected
  np.testing.assert_allclose(jnp.mean(target), 0.75, atol=0.01)
  x_in, target = vae.observe(_hp("logistic"), image, jax.random.key(0))
  assert x_in is image and target is image


@pytest.mark.parametrize("shape", [(64, 8, 8, 3), (5, 7, 7, 1), (3, 2)])
def test_uniform_noise_drawn_flat_is_the_shaped_draw(shape):
  # uniform_like draws a flat array and reshapes it (XLA:CPU vectorises the flat draw): the
  # generator's counters run over the flattened array, so the numbers must be the same bits as
  # a draw at the shape itself, under jit and not, whatever threefry's partitionable setting
  x = jnp.zeros(shape)
  for key in (jax.random.key(0), jax.random.key(7)):
    want = jax.random.uniform(key, shape)
    np.testing.assert_array_equal(common.uniform_like(key, x), want)
    np.testing.assert_array_equal(jax.jit(common.uniform_like)(key, x), want)
  with jax.threefry_partitionable(not jax.config.jax_threefry_partitionable):
    np.testing.assert_array_equal(
      common.uniform_like(jax.random.key(3), x), jax.random.uniform(jax.random.key(3), shape)
    )


def test_train_step_traces_once():
  c = vae_config()
  state = vae.init_state(c, jax.random.key(0), grey_batch(n=8))
  state, _ = train_steps_traced_once(
    vae.train_step, state, [grey_batch(n=8, seed=i) for i in range(3)], jax.random.key(0)
  )
  assert int(state.step) == 3


# ------------------------------------------------------------------ likelihood bounds


@pytest.fixture(scope="module")
def trained():
  """A logistic VAE after 30 Adam steps on one batch, so q(z|x) is far from the prior."""
  c = vae_config(likelihood="logistic")
  batch = grey_batch(n=16, seed=5)
  state = vae.init_state(c, jax.random.key(0), batch)
  step = jax.jit(vae.train_step)
  for _ in range(30):
    state, _ = step(state, batch, jax.random.key(1))
  return state, batch


def test_iwae_k1_equals_elbo_and_grows_with_k(trained):
  state, batch = trained
  bounds = jax.jit(vae.log_likelihood_bounds, static_argnums=(3, 4))
  key = jax.random.key(7)
  k1 = bounds(state, batch, key, 1, 1024)
  np.testing.assert_allclose(k1["iwae"], k1["elbo"], rtol=1e-6)
  # The same samples decoded 4 at a time (k=10 not a multiple of 4: the last chunk is padded)
  # and all 10 at once.
  np.testing.assert_allclose(
    bounds(state, batch, key, 10, 64)["iwae"],
    bounds(state, batch, key, 10, 1024)["iwae"],
    rtol=1e-6,
  )
  means = [(float(jnp.mean(k1["elbo"])), float(jnp.mean(k1["iwae"])))]
  for k in (10, 100):
    b = bounds(state, batch, key, k, 1024)
    assert b["iwae"].shape == b["elbo"].shape == (16,)
    assert bool(jnp.all(b["iwae"] >= b["elbo"] - 1e-3))  # Jensen, on the same samples
    assert bool(jnp.all(b["iwae"] < 0))  # log-probabilities of discrete images
    means.append((float(jnp.mean(b["elbo"])), float(jnp.mean(b["iwae"]))))
  (e1, i1), (e10, i10), (e100, i100) = means
  assert i1 < i10 < i100, means
  assert i100 - e100 > 20.0, means  # this model's posterior is far from the prior
  # The 100-sample ELBO estimate agrees with eval_step's closed-form-KL ELBO to Monte Carlo
  # error (here ~ 2.5 nats: one eval_step has a std of ~ 14 nats, log w_i of ~ 56).
  ev = jax.jit(vae.eval_step)
  analytic = np.mean([float(ev(state, batch, jax.random.key(s))["elbo"]) for s in range(50)])
  np.testing.assert_allclose(e100, analytic, atol=10.0)


# ------------------------------------------------------------------ sampling, pictures


def test_sampling_is_deterministic_conditional_and_in_range():
  c = vae_config(num_classes=10, likelihood="logistic")
  state = vae.init_state(c, jax.random.key(0), grey_batch(n=4))
  # Scaled-up decoder weights push its outputs far out: samples still lie in [-1, 1] and
  # the loss stays finite.
  params = dict(state.vae.params)
  params["decoder"] = jax.tree.map(lambda p: 30 * p, params["decoder"])
  state = state.replace(vae=state.vae.replace(params=params))
  sample = jax.jit(vae.sample, static_argnums=2)
  a = sample(state, jax.random.key(5), 6, 3)
  b = sample(state, jax.random.key(5), 6, 3)
  c7 = sample(state, jax.random.key(5), 6, 7)
  assert a.shape == (6, 28, 28, 1)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.abs(a - c7).max()) > 1e-4
  assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
  assert np.isfinite(
    float(jax.jit(vae.eval_step)(state, grey_batch(n=4), jax.random.key(0))["loss"])
  )


def test_pictures(trained, tmp_path):
  state, batch = trained
  paths = pictures.vae_pictures(state, batch, jax.random.key(0), tmp_path)
  names = [p.name for p in paths]
  assert names == [
    "reconstructions.png",
    "interpolations.png",
    "kl_per_unit.png",
    "kl_per_unit.json",
  ]
  assert all(p.is_file() for p in paths)
  # 16 inputs + 16 reconstructions in rows of 8; 8 pairs x 10 steps; 2x scale, 2 px padding.
  assert Image.open(paths[0]).size == (2 * (8 * 30 + 2), 2 * (4 * 30 + 2))
  assert Image.open(paths[1]).size == (2 * (10 * 30 + 2), 2 * (8 * 30 + 2))
  info = json.loads(paths[3].read_text())
  assert len(info["kl_per_unit_nats"]) == 8
  assert info["active_units"] == sum(v > 0.01 for v in info["kl_per_unit_nats"])
  # Interpolation rows start at (near) the reconstruction of image i and end at image i + 8.
  frames = vae.interpolate(
    state,
    {k: v[:8] for k, v in batch.items()},
    {k: v[8:] for k, v in batch.items()},
    jax.random.key(0),
    10,
  )
  recon = vae.reconstruct(state, batch, jax.random.key(0))
  np.testing.assert_allclose(frames[:, 0], recon[:8], atol=1e-5)
  np.testing.assert_allclose(frames[:, -1], recon[8:], atol=1e-5)
