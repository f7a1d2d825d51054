"""Every family's models, built with their defaults, are plain flax: forward and reverse mode
(jvp, vjp, grad), vmap and second order (hessian: forward over reverse) work through them.
The trainer chooses jaxgen.ops' reverse-mode-only fast passes itself (fast_ops="auto": on CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, X64_RTOL, assert_close_to_scale, random_batch, to_float64

from jaxgen import config as config_lib
from jaxgen import ops
from jaxgen.models import classifier, draw, gan, rnn, vae
from jaxgen.steps import gan as gan_steps

X = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1), minval=-1.0, maxval=1.0)
Z = jax.random.normal(jax.random.key(1), (2, 8))
TOKENS = jnp.array([[3, 1, 4, 0], [2, 7, 1, 5]])


def _bn_train(model):
  """model(x) in training mode (batch statistics, dropout), the updated statistics dropped."""
  return lambda v, x: model.apply(
    v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(7)}
  )[0]


# name: (model, input, f(variables, input) -> output)
MODELS = {
  "gan generator (BatchNorm on batch statistics)": (
    gan.Generator((28, 28, 1), width=8),
    Z,
    lambda m: _bn_train(m),
  ),
  "gan discriminator": (gan.Discriminator((28, 28, 1), width=8), X, lambda m: _bn_train(m)),
  "conditional gan generator (inference)": (
    gan.Generator((28, 28, 1), width=8, num_classes=10),
    Z,
    lambda m: lambda v, z: m.apply(v, z, jnp.array([3, 7]), train=False),
  ),
  "vae": (
    vae.VAE((28, 28, 1), out_channels=1, latent_dim=8, width=8),
    X,
    lambda m: lambda v, x: m.apply(v, x, jnp.ones((x.shape[0], 8)))[2],
  ),
  "classifier": (classifier.Classifier(10, width=8, feature_dim=16), X, lambda m: _bn_train(m)),
  "draw": (
    draw.DRAW(
      (28, 28, 1), draw_steps=2, latent_dim=4, enc_features=8, dec_features=8, read_n=2, write_n=3
    ),
    X,
    lambda m: lambda v, x: m.apply(v, x, rngs={"latent": jax.random.key(5)})["canvas"],
  ),
  "tanh rnn": (
    rnn.RNN(features=6, out_features=3),
    jax.random.normal(jax.random.key(2), (2, 5, 4)),
    lambda m: lambda v, x: m.apply(v, x)[1],
  ),
}


def _init(model, x):
  if isinstance(model, gan.Generator) and model.num_classes:
    return model.init(jax.random.key(3), x, jnp.zeros((2,), jnp.int32), train=False)
  if isinstance(model, vae.VAE):
    return model.init(jax.random.key(3), x, jnp.ones((x.shape[0], 8)))
  if isinstance(model, draw.DRAW):
    return model.init({"params": jax.random.key(3), "latent": jax.random.key(4)}, x)
  if isinstance(model, rnn.RNN):
    return model.init(jax.random.key(3), x)
  return model.init(jax.random.key(3), x, train=False)


@pytest.mark.parametrize("name", MODELS)
def test_default_models_support_forward_and_reverse_mode_and_second_order(name):
  # In float64, so that the two modes, which order their arithmetic differently, agree to
  # rounding (conftest.X64_RTOL) whatever the CPU; a wrong rule would be off by O(1).
  model, x, make = MODELS[name]
  assert not getattr(model, "fast_ops", False)
  with jax.enable_x64(True):
    variables, x = to_float64(_init(model, x)), to_float64(x)
    t = jax.random.normal(jax.random.key(6), x.shape, jnp.float64)
    f = lambda x: make(model)(variables, x)
    loss = lambda x: jnp.sum(jnp.sin(f(x)))
    scalar = lambda a: loss(a * x)  # a function of the input's scale a, at a = 1

    @jax.jit  # one compilation for all the transformations
    def transforms(x, t):
      _, tangent = jax.jvp(loss, (x,), (t,))
      y, pullback = jax.vjp(f, x)
      return dict(
        tangent=tangent,
        grad_t=jax.grad(loss)(x) * t,
        y=y,
        pulled=pullback(jnp.ones_like(y))[0],
        grad_sum=jax.grad(lambda x: jnp.sum(f(x)))(x),
        vmapped=jax.vmap(f)(jnp.stack([x, x]))[1],
        hessian=jax.hessian(scalar)(1.0),  # forward over reverse
        hessian_rev=jax.jacrev(jax.jacrev(scalar))(1.0),
      )

    r = jax.device_get(transforms(x, t))
  assert r["tangent"].dtype == np.float64
  # jvp along t equals the directional derivative from reverse mode, <grad, t>
  np.testing.assert_allclose(
    r["tangent"], np.sum(r["grad_t"]), rtol=0, atol=X64_RTOL * float(np.sum(np.abs(r["grad_t"])))
  )
  # vjp with a cotangent of ones equals grad of the output's sum; vmap over copies, the output
  assert_close_to_scale(r["pulled"], r["grad_sum"], rtol=X64_RTOL)
  assert_close_to_scale(r["vmapped"], r["y"], rtol=X64_RTOL)
  assert abs(float(r["hessian"])) > 0
  np.testing.assert_allclose(r["hessian"], r["hessian_rev"], rtol=1e-8)


def test_fast_ops_setting_is_resolved_by_backend():
  assert ops.use_fast_ops("auto", "cpu") and not ops.use_fast_ops("auto", "gpu")
  assert not ops.use_fast_ops("auto", "tpu")
  assert ops.use_fast_ops(True, "gpu") and not ops.use_fast_ops("false", "cpu")
  with pytest.raises(ValueError, match="set --config.fast_ops to auto, true or false"):
    ops.use_fast_ops("fast")


def test_the_steps_take_the_fast_passes_on_cpu_and_the_plain_ones_when_asked():
  # The family's state records the choice, which its train_step builds the models with.
  c = config_lib.load(REPO / "experiments/configs/dcgan_fashion.py")
  c.model.update(width=8, latent_dim=16)
  batch = random_batch(n=4)
  assert c.fast_ops == "auto" and jax.default_backend() == "cpu"
  assert all(
    m.fast_ops for m in gan_steps._models(gan_steps.init_state(c, jax.random.key(0), batch).hp)
  )
  c.fast_ops = False
  plain = gan_steps.init_state(c, jax.random.key(0), batch)
  assert not any(m.fast_ops for m in gan_steps._models(plain.hp))
  # with plain passes the whole train step supports forward mode
  with jax.enable_x64(True):
    plain, batch = to_float64(plain), to_float64(batch)
    scale = lambda a: gan_steps.train_step(
      plain, dict(batch, image=a * batch["image"]), jax.random.key(1)
    )[1]["d_loss"]
    tangent, grad = jax.jit(lambda a: (jax.jvp(scale, (a,), (1.0,))[1], jax.grad(scale)(a)))(1.0)
  np.testing.assert_allclose(tangent, grad, rtol=1e-8)
