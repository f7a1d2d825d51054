"""Mixed precision (config.dtype=bfloat16 or float16): low-precision compute, float32 everything
else; float16 with dynamic loss scaling.

Tolerance. bfloat16 keeps 8 significant bits: rounding to it moves a value by at most
u = 2^-8 (3.9e-3) of itself. A layer rounds its input, its weights and its output, so a path
through L layers collects ~3L roundings; independent roundings add like a random walk, so the
relative error of a loss is ~u * sqrt(3L) in expectation. The bound below is 4x that (a 4-sigma
margin) with L the number of layers on the longest path from the input to the loss (both
players' layers for a GAN, T recurrent steps times the layers of one for DRAW), and the same
for the gradients with the backward pass doubling the path. It is derived from the format, not
from any machine: float32's own rounding (2^-24) is 65536 times smaller, so CPUs that differ in
float32 summation order (AVX2 vs AVX-512) change these differences by ~1e-5 of the bound.
A bug (a loss in bfloat16, statistics in bfloat16, a wrong cast) shows in the dtype checks.
"""

import functools
import json
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DRAW_TINY, REPO, random_batch

from jaxgen import config as config_lib
from jaxgen import ops, steps
from jaxgen.errors import ConfigError
from jaxgen.models import gan as gan_models
from jaxgen.steps import common

U_BF16 = 2.0**-8


def tolerance(depth: int) -> float:
  """4 sigma of the relative error of a quantity computed through `depth` bfloat16 layers."""
  return 4.0 * U_BF16 * math.sqrt(3 * depth)


# name: (config file, model overrides, text batch, layers on the longest path to the loss)
CASES = {
  "gan": ("dcgan_fashion.py", dict(width=8, latent_dim=16), False, 6),
  "gan_conditional": (
    "dcgan_fashion.py",
    dict(width=8, latent_dim=16, num_classes=10),
    False,
    6,
  ),
  "vae": ("vae_fashion.py", dict(width=8, latent_dim=8), False, 6),
  "vae_logistic": ("vae_fashion.py", dict(width=8, latent_dim=8, likelihood="logistic"), False, 6),
  # conftest's DRAW_TINY (T = 3): a DRAW step is ~5 layers deep, an alignDRAW step ~7
  "draw": ("draw_fashion.py", DRAW_TINY, False, 3 * 5),
  "aligndraw": ("aligndraw_captions.py", DRAW_TINY, True, 3 * 7),
  "classifier": (
    "classifier_fashion.py",
    dict(width=8, feature_dim=16, dropout=0.0, flip=False),
    False,
    5,
  ),
}
LOSSES = ("loss", "d_loss", "g_loss")


def _config(case: str, dtype: str, fast_ops=True):
  path, model, _, _ = CASES[case]
  c = config_lib.load(REPO / "experiments/configs" / path)
  # a typo in CASES fails here (DRAW_TINY's caption sizes are unused by plain DRAW)
  assert set(model) <= set(c.model) | set(DRAW_TINY), set(model) - set(c.model)
  c.model.update(model)
  c.dtype = dtype
  c.fast_ops = fast_ops
  return c


def _batch(case: str) -> dict:
  return random_batch(n=8, grey_levels=True, text=CASES[case][2])


@functools.cache
def _run(case: str, dtype: str, fast_ops: bool = True):
  """(config, state before, state after, metrics) of one jitted train step."""
  config = _config(case, dtype, fast_ops)
  family = steps.get_family(config.model.family)
  batch = _batch(case)
  state = jax.jit(functools.partial(family.init_state, config))(jax.random.key(0), batch)
  after, metrics = jax.jit(family.train_step)(state, batch, jax.random.key(1))
  return config, state, jax.device_get(after), jax.device_get(metrics)


def _rounded_params_step(case: str):
  """The state after the float32 step of `_run`, from the same state with params rounded to
  bfloat16 (and kept float32)."""
  config, state, _, _ = _run(case, "float32")
  family = steps.get_family(config.model.family)
  rnd = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(x.dtype), tree)
  nets = {
    k: v.replace(params=rnd(v.params)) for k, v in vars(state).items() if hasattr(v, "params")
  }
  after, _ = jax.jit(family.train_step)(state.replace(**nets), _batch(case), jax.random.key(1))
  return jax.device_get(after)


def _first_moments(state) -> np.ndarray:
  """Adam's first moments after one update, (1 - b1) * gradient, of every network, flattened."""
  leaves = [
    np.ravel(np.asarray(x, np.float64))
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
    if "mu" in jax.tree_util.keystr(path)
  ]
  assert leaves, "no Adam state found"
  return np.concatenate(leaves)


def _float_leaves(tree) -> list:
  return [
    (jax.tree_util.keystr(p), x)
    for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if jnp.issubdtype(jnp.result_type(x), jnp.floating)
  ]


def _network_states(state) -> list:
  return [v for v in vars(state).values() if hasattr(v, "params")]


# The default set runs one case per family; these variants (a conditional GAN, the logistic VAE,
# alignDRAW's text) run with -m slow.
SLOW_CASES = ("gan_conditional", "vae_logistic", "aligndraw")


@pytest.mark.parametrize(
  "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES]
)
def test_bfloat16_step_matches_float32_within_the_derived_bound(case):
  """Same params at init, losses within tolerance(L), gradients within tolerance(2L) of their
  norm, everything finite, and the state (params, optimizer, BatchNorm statistics, EMA) float32."""
  _, s32, a32, m32 = _run(case, "float32")
  _, s16, a16, m16 = _run(case, "bfloat16")
  depth = CASES[case][3]
  for (name, x), (_, y) in zip(_float_leaves(s32), _float_leaves(s16)):
    np.testing.assert_array_equal(x, y, err_msg=f"{name}: init must not depend on the dtype")
  names = [k for k in LOSSES if k in m32]
  assert names
  for k in names:
    got, want = float(m16[k]), float(m32[k])
    assert np.isfinite(got), k
    assert abs(got - want) <= tolerance(depth) * abs(want), (k, got, want, tolerance(depth))
  g32, g16 = _first_moments(a32), _first_moments(a16)
  assert np.all(np.isfinite(g16)) and np.linalg.norm(g16) > 0
  rel = np.linalg.norm(g16 - g32) / np.linalg.norm(g32)
  # Gradients at a random initialisation can be ill-conditioned (DRAW's attention gradients
  # are sums of many terms that nearly cancel), so their bound is measured on the problem
  # itself: the float32 gradient at parameters rounded to bfloat16 is one of the three kinds
  # of rounding (weights, inputs, outputs of each layer) a bfloat16 step makes; three
  # independent sources of that size add to sqrt(3) of it, times a 4-sigma margin.
  g_round = _first_moments(_rounded_params_step(case))
  rel_round = np.linalg.norm(g_round - g32) / np.linalg.norm(g32)
  assert rel <= 4.0 * math.sqrt(3) * rel_round, (rel, rel_round)
  for name, x in _float_leaves(a16):
    assert x.dtype == np.float32, f"{name} is {x.dtype}; the state stays float32"
    assert np.all(np.isfinite(x)), name
  for name, x in _float_leaves(m16):
    assert x.dtype == np.float32 and np.isfinite(x), (name, x)
  for net in _network_states(a16):
    stats = jax.tree.leaves(net.batch_stats)
    assert all(x.dtype == np.float32 for x in stats)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(net.opt_state) if x.ndim)


U_F16 = 2.0**-11  # float16 keeps 11 significant bits: the same derivation as U_BF16's bound


@pytest.mark.parametrize("case", ["gan", "vae", "draw", "classifier"])
def test_float16_step_scales_the_loss_and_skips_overflowing_updates(case):
  """float16 compute: the first step's losses within the bfloat16 bound's derivation at float16's
  u; the state float32, each network with a float32 loss scale; each network's first update
  either applied (all gradients finite: params moved, one good step at the same scale) or
  skipped (params, optimizer state and step as before, the scale halved), as its metrics say."""
  _, before, after, m16 = _run(case, "float16")
  _, _, _, m32 = _run(case, "float32")
  tol = 4.0 * U_F16 * math.sqrt(3 * CASES[case][3])
  for k in [k for k in LOSSES if k in m32]:
    got, want = float(m16[k]), float(m32[k])
    assert abs(got - want) <= tol * abs(want), (k, got, want, tol)
  for name, x in _float_leaves(after):
    assert x.dtype == np.float32 and np.all(np.isfinite(x)), name
  skipped = 0
  for old, new in zip(_network_states(before), _network_states(after)):
    assert old.loss_scale is not None and float(old.loss_scale.scale) == 2.0**15
    moved = [
      not np.array_equal(a, b)
      for a, b in zip(jax.tree.leaves(old.params), jax.tree.leaves(new.params))
    ]
    if float(new.loss_scale.scale) == 2.0**14:  # skipped
      skipped += 1
      assert not any(moved) and int(new.step) == 0 and int(new.loss_scale.good_steps) == 0
      jax.tree.map(np.testing.assert_array_equal, old.opt_state, new.opt_state)
    else:
      assert float(new.loss_scale.scale) == 2.0**15 and int(new.loss_scale.good_steps) == 1
      assert any(moved) and int(new.step) == 1
  assert skipped == sum(float(v) for k, v in m16.items() if k.endswith("skipped"))


def test_loss_scaling_is_exact_and_its_scale_moves_as_documented():
  """Multiplying by a power of two is exact in binary floating point (barring overflow), so the
  gradients taken through the scale equal the plain ones bit for bit. A non-finite gradient skips
  the update (logged with grad_norm 0) and halves the scale; `period` finite updates double it;
  at the floor scale of 1 a non-finite gradient is logged as is, which stops a run."""
  model = nn.Dense(3)
  x = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4)
  params = model.init(jax.random.key(0), x)["params"]
  fn = lambda p: (jnp.sum(model.apply({"params": p}, x) ** 2), None)
  optim = config_lib.base_config().optim
  plain = common.create_model_state(model, params, {}, optim, 1e-3)
  assert plain.loss_scale is None
  scaled = common.ScaledModelState.create(
    apply_fn=plain.apply_fn,
    params=params,
    tx=plain.tx,
    lr_fn=plain.lr_fn,
    loss_scale=common.LossScale.initial(2.0**10).replace(period=2),
  )
  (loss, _), g_plain = common.value_and_grad(fn, plain)(params)
  (loss_s, _), g_scaled = common.value_and_grad(fn, scaled)(params)
  assert float(loss_s) == float(loss)
  jax.tree.map(np.testing.assert_array_equal, g_plain, g_scaled)

  s1, log1 = common.apply_gradients(scaled, g_scaled)
  s2, _ = common.apply_gradients(s1, g_scaled)
  assert (float(s1.loss_scale.scale), int(s1.loss_scale.good_steps)) == (2.0**10, 1)
  assert (float(s2.loss_scale.scale), int(s2.loss_scale.good_steps)) == (2.0**11, 0)
  assert int(s2.step) == 2 and float(log1["skipped"]) == 0.0
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.inf), g_scaled)
  s3, log3 = common.apply_gradients(s2, bad)
  assert float(s3.loss_scale.scale) == 2.0**10 and int(s3.step) == 2
  jax.tree.map(np.testing.assert_array_equal, (s2.params, s2.opt_state), (s3.params, s3.opt_state))
  assert (float(log3["skipped"]), float(log3["grad_norm"])) == (1.0, 0.0)
  floor = s2.replace(loss_scale=s2.loss_scale.replace(scale=jnp.float32(1.0)))
  _, log_floor = common.apply_gradients(floor, bad)
  assert not np.isfinite(float(log_floor["grad_norm"]))


def test_float16_models_get_loss_scaling_and_others_keep_their_checkpoint_tree():
  """Only float16 networks carry a LossScale; every other ModelState has exactly the pytree it
  had before loss scaling existed (step, params, opt_state, batch_stats), so Orbax restores the
  checkpoints of earlier runs (a None field would add a node their metadata lacks)."""
  optim = config_lib.base_config().optim
  params = {"w": jnp.ones(2)}
  make = lambda dtype: common.create_model_state(nn.Dense(3, dtype=dtype), params, {}, optim, 1.0)
  assert make(jnp.float16).loss_scale is not None
  for dtype in (None, jnp.bfloat16):
    paths = [
      jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(make(dtype))[0]
    ]
    assert make(dtype).loss_scale is None
    assert [p.split("[")[0].split(".")[1] for p in paths] == ["step", "params"] + ["opt_state"] * 3
  paths16 = [
    jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(make(jnp.float16))[0]
  ]
  assert paths16[-2:] == [".loss_scale.scale", ".loss_scale.good_steps"]


def _op_dtypes(fn, *args) -> dict[str, set[str]]:
  """{primitive: dtypes of its results} of every convolution and matmul in fn's jaxpr, nested
  jaxprs (custom VJPs, scans, jits) included."""
  text = str(jax.make_jaxpr(fn)(*args))
  found = {"conv_general_dilated": set(), "dot_general": set()}
  for dtype, prim in re.findall(r":(\w+)\[[\d,]*\] = (conv_general_dilated|dot_general)\b", text):
    found[prim].add(dtype)
  return found


@pytest.mark.parametrize("fast_ops", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", ["gan_conditional", "vae", "classifier", "draw", "aligndraw"])
def test_convolutions_and_matmuls_run_in_bfloat16(case, fast_ops):
  """The train step's convolutions all run in bfloat16 (flax's and jaxgen.ops' passes, forward
  and backward); its dense layers too (DRAW's attention filterbanks stay float32 by design).
  The float32 config has no bfloat16 op at all."""
  for dtype, want in (("bfloat16", "bf16"), ("float32", "f32")):
    config = _config(case, dtype, fast_ops)
    family = steps.get_family(config.model.family)
    batch = _batch(case)
    state = jax.jit(functools.partial(family.init_state, config))(jax.random.key(0), batch)
    found = _op_dtypes(family.train_step, state, batch, jax.random.key(1))
    assert want in found["dot_general"], found
    if dtype == "float32":
      assert "bf16" not in found["dot_general"] | found["conv_general_dilated"], found
    elif case.endswith("draw"):
      assert not found["conv_general_dilated"], found
    else:
      assert found["conv_general_dilated"] == {"bf16"}, found
      assert found["dot_general"] == {"bf16"}, found


@pytest.mark.parametrize("case", ["gan_conditional", "vae_logistic", "draw", "aligndraw"])
def test_samples_and_bounds_leave_in_float32(case):
  config, _, after, _ = _run(case, "bfloat16")
  family = steps.get_family(config.model.family)
  images = jax.jit(family.sample, static_argnums=2)(after, jax.random.key(2), 4)
  assert images.dtype == jnp.float32 and images.shape[0] == 4
  assert bool(jnp.all(jnp.isfinite(images))) and float(jnp.max(jnp.abs(images))) <= 1.0
  if hasattr(family, "log_likelihood_bounds"):
    bounds = family.log_likelihood_bounds(after, _batch(case), jax.random.key(3), 3)
    for k, v in bounds.items():
      assert v.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(v))), k
      assert bool(jnp.all(v < 0)), k  # a log-likelihood of binary or 8-bit images


def test_classifier_features_leave_in_float32():
  config, _, after, _ = _run("classifier", "bfloat16")
  family = steps.get_family(config.model.family)
  feats, logits = family.features(after, _batch("classifier")["image"])
  assert feats.dtype == logits.dtype == jnp.float32


@pytest.mark.parametrize("fast_ops", [True, False])
def test_generator_computes_in_its_dtype(fast_ops):
  """The issue's example: with dtype=bfloat16 the generator returns bfloat16; the default model
  (dtype None) is unchanged, float32 params promoting a bfloat16 input to float32."""
  z = jax.random.normal(jax.random.key(0), (2, 16)).astype(jnp.bfloat16)
  default = gan_models.Generator((28, 28, 1), width=8, fast_ops=fast_ops)
  v = default.init(jax.random.key(1), z, train=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v))
  assert default.apply(v, z, train=False).dtype == jnp.float32
  low = gan_models.Generator((28, 28, 1), width=8, fast_ops=fast_ops, dtype=jnp.bfloat16)
  assert jax.tree.map(jnp.shape, low.init(jax.random.key(1), z, train=False)) == jax.tree.map(
    jnp.shape, v
  )
  out, updates = low.apply(v, z, train=True, mutable=["batch_stats"])
  assert out.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(updates))
  want = default.apply(v, z.astype(jnp.float32), train=False)
  got = low.apply(v, z, train=False).astype(jnp.float32)
  # tanh output in [-1, 1]: 3 layers, absolute error bounded by the relative one
  np.testing.assert_allclose(got, want, atol=tolerance(3), rtol=0)


@pytest.mark.parametrize("fast_ops", [True, False])
def test_ops_layers_honour_dtype(fast_ops):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  for layer in (ops.Conv(6, (3, 3), strides=(2, 2)), ops.ConvTranspose(6, (3, 3), strides=(2, 2))):
    v = layer.init(jax.random.key(1), x)
    low = layer.clone(dtype=jnp.bfloat16)
    assert low.apply(v, x).dtype == jnp.bfloat16
    assert layer.apply(v, x).dtype == jnp.float32
  bn = ops.BatchNormAct(fused=fast_ops, dtype=jnp.bfloat16)
  v = bn.init(jax.random.key(1), x, use_running_average=False)
  y, updates = bn.apply(
    v, x.astype(jnp.bfloat16), use_running_average=False, mutable=["batch_stats"]
  )
  assert y.dtype == jnp.bfloat16
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(updates))
  # statistics of the bfloat16 input computed in float32: the mean of the rounded values
  mean = jnp.mean(x.astype(jnp.bfloat16).astype(jnp.float32), (0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.01 * mean, rtol=1e-6, atol=1e-9)
  grad = jax.grad(
    lambda p: jnp.sum(
      bn.apply({**v, "params": p}, x, use_running_average=False, mutable=["batch_stats"])[0].astype(
        jnp.float32
      )
    )
  )(v["params"])
  assert all(
    g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad)
  )


def test_default_dense_is_flax_default():
  """dtype None is flax's own default: the float32 models are the models they were."""
  assert nn.Dense(3).dtype is None and gan_models.Generator((28, 28, 1)).dtype is None


@pytest.mark.parametrize(
  "value, message",
  [("float64", "one of"), ("float8", "one of"), ("bf16", "one of")],
)
def test_unsupported_dtype_is_a_one_line_config_error(value, message):
  config = _config("gan", "float32")
  config.dtype = value
  with pytest.raises(ConfigError, match=message) as e:
    config_lib.validate(config)
  assert "\n" not in str(e.value) and "--config.dtype" in str(e.value)
  config.dtype = "bfloat16"
  config_lib.validate(config)


def test_runs_from_before_the_dtype_key_resume_as_float32():
  """A config.json written before config.dtype existed ran in float32: resuming it in float32
  changes nothing, asking for bfloat16 is refused like any other change of what a step computes."""
  config = _config("gan", "float32")
  saved = json.loads(config.to_json_best_effort())
  del saved["dtype"]
  stored = config_lib.flatten(config_lib.upgrade(saved))  # as the trainer reads a config.json
  assert config_lib.drift(stored, config) == []
  config.dtype = "bfloat16"
  with pytest.raises(ConfigError, match="config.dtype"):
    config_lib.drift(stored, config)
