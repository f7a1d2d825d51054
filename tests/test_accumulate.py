"""Gradient accumulation, learning-rate schedules and the optimizers' names.

Accumulation is compared in float64 (see conftest.X64_RTOL): k micro-batches and one batch sum
the same terms in different orders, which moves float32 results by ~1e-6 of their scale on
some CPUs and float64 results by ~1e-14, while a wrong split, average or missing term moves
them by >= 1e-3.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import (
  REPO,
  X64_RTOL,
  assert_close_to_scale,
  random_batch,
  sharded_train_step,
  to_float64,
)

from jaxgen import config as config_lib
from jaxgen import losses, parallel, steps
from jaxgen.errors import ConfigError
from jaxgen.steps import classifier, common


def _config(name: str, accum_steps: int, **model) -> config_lib.ml_collections.ConfigDict:
  c = config_lib.load(REPO / "experiments/configs" / name)
  c.model.update(model)
  c.accum_steps = accum_steps
  # SGD with lr 1 and no clipping: the parameter change is exactly minus the gradient.
  c.optim.name, c.optim.grad_clip, c.optim.weight_decay = "sgd", 0.0, 0.0
  for lr in ("lr", "g_lr", "d_lr"):
    if lr in c.optim:
      c.optim[lr] = 1.0
  return c


def _step(config, batch, devices):
  """(state before, state after, metrics) of one float64 train step on `devices`."""
  family = steps.get_family(config.model.family)
  config.data.image_shape = batch["image"].shape[1:]
  with jax.enable_x64(True):
    state = to_float64(
      jax.jit(functools.partial(family.init_state, config))(jax.random.key(0), batch)
    )
    after, metrics, _ = sharded_train_step(family, state, to_float64(batch), devices)
    return jax.device_get(state), jax.device_get(after), jax.device_get(metrics)


VAE_CASES = {
  "bernoulli": dict(width=8, latent_dim=8),
  "logistic_conditional": dict(width=8, latent_dim=8, likelihood="logistic", num_classes=10),
}


@pytest.mark.parametrize("case, accum_steps", [("bernoulli", 4), ("logistic_conditional", 2)])
def test_vae_micro_batches_equal_one_batch_in_float64(case, accum_steps):
  """The VAE has no BatchNorm and draws its per-example noise for the whole batch, so k
  accumulated micro-batches give the whole batch's gradient and metrics."""
  batch = random_batch(n=4 * jax.device_count(), grey_levels=True)
  _, one, m_one = _step(_config("vae_fashion.py", 1, **VAE_CASES[case]), batch, jax.devices())
  _, acc, m_acc = _step(
    _config("vae_fashion.py", accum_steps, **VAE_CASES[case]), batch, jax.devices()
  )
  assert int(acc.step) == 1 and int(acc.vae.step) == 1  # one optimizer update per step
  assert_close_to_scale(acc.vae.params, one.vae.params, rtol=X64_RTOL)
  for name in ("loss", "recon", "kl", "grad_norm"):
    np.testing.assert_allclose(m_acc[name], m_one[name], rtol=X64_RTOL, err_msg=name)


def test_batchnorm_family_accumulates_micro_batches_as_documented():
  """The classifier (BatchNorm, dropout off, no flips): the update is the mean of the micro-
  batches' gradients, each micro-batch normalised by its own statistics, the running averages
  updated once per micro-batch in order; on all devices, in float64."""
  k = 2
  config = _config("classifier_fashion.py", k, width=8, feature_dim=16, dropout=0.0, flip=False)
  batch = random_batch(n=2 * k * jax.device_count())
  before, after, metrics = _step(config, batch, jax.devices())

  with jax.enable_x64(True):
    net, model = before.net, classifier._model(before.hp)
    stats, grads, losses_ = net.batch_stats, [], []
    images, labels = common.micro_batches((to_float64(batch["image"]), batch["label"]), k)
    for j in range(k):

      def loss_fn(params, stats=stats, j=j):
        logits, new_stats = common.apply(model, params, stats, images[j], train=True)
        return losses.softmax_cross_entropy(logits, labels[j]), new_stats

      (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(net.params)
      grads.append(g)
      losses_.append(loss)
    mean_grads = jax.tree.map(lambda *g: sum(g) / k, *grads)
    want = jax.tree.map(lambda p, g: p - g, net.params, mean_grads)
  assert_close_to_scale(after.net.params, want, rtol=X64_RTOL)
  assert_close_to_scale(after.net.batch_stats, stats, rtol=X64_RTOL)
  np.testing.assert_allclose(metrics["loss"], np.mean(losses_), rtol=X64_RTOL)
  # ... and it is not the whole batch's step: BatchNorm saw two halves.
  _, whole, _ = _step(
    _config("classifier_fashion.py", 1, width=8, feature_dim=16, dropout=0.0, flip=False),
    batch,
    jax.devices(),
  )
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), whole.net.params, after.net.params)
  assert max(jax.tree.leaves(diff)) > 1e-6


@pytest.mark.slow  # 1 and 8 devices of a GAN (~35 s); the default set keeps the BatchNorm case
def test_gan_with_accumulation_agrees_across_devices_and_counts_updates():
  """Two micro-batches, two D updates per step: one step is one G update and d_steps D updates,
  the EMA moves once, and 1 device and all devices give the same step (float64)."""
  batch = random_batch(n=4 * jax.device_count())
  make = lambda: _config("dcgan_fashion.py", 2, width=8, latent_dim=16, d_steps=2)
  _, one, m_one = _step(make(), batch, jax.devices()[:1])
  before, all_, m_all = _step(make(), batch, jax.devices())
  assert (int(all_.step), int(all_.g.step), int(all_.d.step)) == (1, 1, 2)
  for a, b in ((all_.g.params, one.g.params), (all_.d.params, one.d.params)):
    assert_close_to_scale(a, b, rtol=X64_RTOL)
  assert_close_to_scale(all_.g.batch_stats, one.g.batch_stats, rtol=X64_RTOL)
  for name in ("d_loss", "g_loss", "d_real", "d_fake"):
    np.testing.assert_allclose(m_all[name], m_one[name], rtol=X64_RTOL, err_msg=name)
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))), all_.ema_params, before.ema_params
  )
  assert max(jax.tree.leaves(moved)) > 0


def test_micro_batches_take_strided_rows():
  x = jnp.arange(12)
  np.testing.assert_array_equal(
    common.micro_batches(x, 3), [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
  )


def _schedule_config(**optim):
  c = config_lib.base_config()
  c.num_steps = 100
  c.optim.update(optim)
  return c


def test_learning_rate_schedules():
  assert common.learning_rate(_schedule_config(), 1e-3) == 1e-3  # a float: no schedule state
  warm = common.learning_rate(_schedule_config(warmup_steps=10), 2.0)
  np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(99)], [0.0, 1.0, 2.0, 2.0])
  cos = common.learning_rate(
    _schedule_config(schedule="cosine", warmup_steps=20, final_lr_fraction=0.1), 2.0
  )
  # warm-up to the peak at step 20, half-way down the cosine at step 60, 0.1 * peak at 100
  np.testing.assert_allclose([cos(10), cos(20), cos(60), cos(100)], [1.0, 2.0, 1.1, 0.2], rtol=1e-6)
  # a GAN's D with d_steps updates per step lays the same schedule over its own updates
  d = common.learning_rate(_schedule_config(schedule="cosine"), 2.0, updates_per_step=2)
  np.testing.assert_allclose([d(0), d(100), d(200)], [2.0, 1.0, 0.0], atol=1e-6)


def test_cosine_without_warmup_is_the_classifiers_former_schedule():
  """Runs trained before schedules were configurable used optax.cosine_decay_schedule(lr, N)."""
  lr = common.learning_rate(_schedule_config(schedule="cosine"), 2e-3)
  old = optax.cosine_decay_schedule(2e-3, 100)
  steps_ = jnp.arange(0, 101, 7)
  np.testing.assert_array_equal(jax.vmap(lr)(steps_), jax.vmap(old)(steps_))


def test_adam_is_adam_and_adamw_decays_weights():
  params, grads = {"w": jnp.ones(3)}, {"w": jnp.full(3, 0.5)}
  cfg = lambda **kw: config_lib.ml_collections.ConfigDict(dict(kw))

  def update(optim):
    tx = common.optimizer(optim, 0.1)
    u, _ = tx.update(grads, tx.init(params), params)
    return u["w"]

  adam = update(cfg(name="adam"))
  np.testing.assert_allclose(
    adam, optax.adam(0.1).update(grads, optax.adam(0.1).init(params))[0]["w"]
  )
  adamw = update(cfg(name="adamw", weight_decay=0.5))
  np.testing.assert_allclose(adamw - adam, -0.1 * 0.5 * params["w"], rtol=1e-6)  # decoupled decay
  with pytest.raises(
    ConfigError, match=r"optim.weight_decay=0.5 needs AdamW; set config.optim.name to 'adamw'"
  ):
    update(cfg(name="adam", weight_decay=0.5))
  with pytest.raises(ConfigError, match=r"unknown optimizer 'lion'"):
    update(cfg(name="lion"))


def test_accumulation_and_schedule_config_errors():
  c = config_lib.base_config()
  c.batch_size, c.accum_steps = 64, 3
  with pytest.raises(
    ConfigError,
    match=r"^batch_size 64 does not split into accum_steps=3 micro-batches; set --config.batch_size to a multiple of 3$",
  ):
    config_lib.validate(c)
  c.accum_steps = 0
  with pytest.raises(ConfigError, match=r"config.accum_steps=0: must be positive"):
    config_lib.validate(c)
  c.accum_steps, c.optim.warmup_steps = 1, -1
  with pytest.raises(ConfigError, match=r"config.optim.warmup_steps=-1: must be >= 0"):
    config_lib.validate(c)
  n = jax.device_count()
  with pytest.raises(
    ConfigError,
    match=rf"does not divide over {n} devices in 2 micro-batches; set --config.batch_size to a multiple of {2 * n}",
  ):
    parallel.check_batch_size(3 * n if n > 1 else 3, accum_steps=2)
  with pytest.raises(ConfigError, match=r"unknown schedule 'linear'"):
    common.learning_rate(_schedule_config(schedule="linear"), 1.0)
