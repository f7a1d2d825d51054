"""One device and every device give the same step, for every family, compared in float64.

The loop promises that results do not depend on the device count (BatchNorm statistics
included). In float32 the 1-device and N-device programs sum in different orders and their
gradients differ by up to ~1e-4 of a leaf's scale on some CPUs, the size of a small real bug,
so float32 cannot tell a bug from rounding. Here the state and batch are cast to float64
(the models and `jaxgen.ops` compute in their inputs' dtype), where summation order moves a
result by ~1e-13 of its terms' scale while a sharding bug (statistics per shard, random
numbers per device, a missing cross-device sum) moves it by >= 1e-3.

The tolerance (conftest.X64_RTOL, 1e-10 of each leaf's scale) is derived there. The float32
disagreement that failed on an AVX-512 host (1.4e-4 of the leaf's scale) scales with the
epsilons to ~3e-13 here.
"""

import functools

import jax
import ml_collections
import numpy as np
import pytest
from conftest import (
  DRAW_TINY,
  assert_close_to_scale,
  experiment_config,
  random_batch,
  sharded_train_step,
  to_float64,
)
from conftest import X64_RTOL as RTOL

from jaxgen import parallel, steps


def _config(name: str, **model) -> ml_collections.ConfigDict:
  c = experiment_config(name, **model)
  # SGD with lr 1 and no clipping: the parameter change is exactly minus the gradient.
  c.optim.name, c.optim.grad_clip = "sgd", 0.0
  for lr in ("lr", "g_lr", "d_lr"):
    if lr in c.optim:
      c.optim[lr] = 1.0
  return c


# name: (config, batch kwargs for conftest.random_batch)
CASES = {
  "gan": (lambda: _config("dcgan_fashion.py", width=8, latent_dim=16), {}),
  "gan_conditional": (
    lambda: _config("dcgan_fashion.py", width=8, latent_dim=16, num_classes=10),
    {},
  ),
  "gan_hinge_two_d_steps": (
    lambda: _config("dcgan_fashion.py", width=8, latent_dim=16, loss="hinge", d_steps=2),
    {},
  ),
  "gan_recipes": (  # spectral norm's u in batch_stats, R1, augmentation, a real batch per D step
    lambda: _config(
      "dcgan_fashion.py",
      width=8,
      latent_dim=16,
      d_steps=2,
      spectral_norm="dg",
      r1_gamma=1.0,
      augment="translation,cutout,color",
      augment_p=0.5,  # each image's own draw, whichever device holds it
      fresh_real_batches=True,
    ),
    {},
  ),
  "gan_lazy_r1": (  # the loop's first step of a lazy-R1 cycle: its compiled variant with R1 on
    lambda: _config("dcgan_fashion.py", width=8, latent_dim=16, r1_gamma=1.0, r1_every=2),
    {},
  ),
  "vae_bernoulli": (lambda: _config("vae_fashion.py", width=8, latent_dim=8), {}),
  "vae_logistic_conditional": (
    lambda: _config("vae_fashion.py", width=8, latent_dim=8, likelihood="logistic", num_classes=10),
    {},
  ),
  "draw": (lambda: _config("draw_fashion.py", **DRAW_TINY), {}),
  "aligndraw": (lambda: _config("aligndraw_captions.py", **DRAW_TINY), {"text": True}),
  "classifier": (lambda: _config("classifier_fashion.py", width=8, feature_dim=16), {}),
}


def _params_and_stats(state) -> dict:
  """{network name: (params, batch_stats)} of a family's state (its ModelState fields)."""
  return {
    name: (m.params, m.batch_stats) for name, m in vars(state).items() if hasattr(m, "params")
  }


@functools.cache
def _steps(case: str, num_devices: int):
  """(state before, state after, metrics) of one float64 train step on `num_devices` devices."""
  make_config, batch_kw = CASES[case]
  config = make_config()
  family = steps.get_family(config.model.family)
  n = jax.device_count()
  batch = random_batch(n=2 * n if case == "aligndraw" else 4 * n, **batch_kw)
  config.data.image_shape = batch["image"].shape[1:]
  with jax.enable_x64(True):
    state = to_float64(
      jax.jit(functools.partial(family.init_state, config))(jax.random.key(0), batch)
    )
    batch = to_float64(batch)
    after, metrics, placed = sharded_train_step(family, state, batch, jax.devices()[:num_devices])
    if hasattr(family, "log_likelihood_bounds"):  # IWAE / ELBO per image, 7 samples each
      # of the initial state: SGD with lr 1 on a sum over pixels moves the parameters by
      # hundreds, to where exp() overflows in float32 and nearly in float64.
      mesh = parallel.make_mesh(jax.devices()[:num_devices])
      bounds = jax.jit(family.log_likelihood_bounds, static_argnums=(3, 4))(
        jax.device_put(state, parallel.replicated(mesh)), placed, jax.random.key(4), 7, 64
      )
      metrics.update({f"bound_{k}": v for k, v in bounds.items()})
    return jax.device_get(state), jax.device_get(after), jax.device_get(metrics)


# aligndraw (draw's recurrence plus text) and gan_recipes (switches gan covers off) run with -m slow
SLOW_CASES = ("aligndraw", "gan_recipes")


@pytest.mark.parametrize(
  "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_one_and_all_devices_agree_in_float64(case):
  n = jax.device_count()
  assert n > 1, "conftest sets several simulated devices"
  before, a1, m1 = _steps(case, 1)
  _, an, mn = _steps(case, n)
  assert {x.dtype for x in jax.tree.leaves(_params_and_stats(a1))} == {np.dtype(np.float64)}
  if case == "gan_lazy_r1":  # the step compared carries the penalty (the cycle starts with it)
    assert m1["d_r1"] > 0
  for k in m1:  # losses are means of O(1) terms: a near-zero one is compared to 1e-10 absolute
    np.testing.assert_allclose(
      mn[k], m1[k], rtol=0, atol=RTOL * max(np.max(np.abs(m1[k])), 1.0), err_msg=k
    )
  for name, (params, stats) in _params_and_stats(before).items():
    grad_1 = jax.tree.map(np.subtract, params, _params_and_stats(a1)[name][0])
    grad_n = jax.tree.map(np.subtract, params, _params_and_stats(an)[name][0])
    assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad_1)) > 0, name
    assert_close_to_scale(grad_n, grad_1, rtol=RTOL)
    # BatchNorm running statistics: the update is 0.1 * (batch statistic - 0 or 1), so their
    # difference from the initial values carries the whole-batch mean and variance.
    delta = lambda s: jax.tree.map(np.subtract, _params_and_stats(s)[name][1], stats)  # noqa: B023 (used within this iteration)
    assert_close_to_scale(delta(an), delta(a1), rtol=RTOL)
