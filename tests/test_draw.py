"""Recurrent generator: the scanned tanh RNN, Gaussian attention, DRAW / alignDRAW steps,
likelihood bounds, captions, one compilation, a trained run's CLI (device counts:
test_device_agreement)."""

import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import (
  DRAW_TINY,
  GOLDEN_RTOL,
  REPO,
  X64_RTOL,
  draw_config,
  random_batch,
  to_float64,
  train_steps_traced_once,
)
from PIL import Image

from jaxgen import cli, losses, pictures, steps, trainer
from jaxgen import config as config_lib
from jaxgen.data import captions
from jaxgen.errors import ConfigError, UserError
from jaxgen.models import draw as draw_models
from jaxgen.models import rnn
from jaxgen.steps import common, draw

SAMPLE_FRAMES = jax.jit(draw.sample_frames, static_argnums=2)


def init(config, batch):
  """draw.init_state under jit (about twice as fast as running the init op by op)."""
  return jax.jit(lambda key, batch: draw.init_state(config, key, batch))(jax.random.key(0), batch)


# ------------------------------------------------------------------ the tanh RNN


def test_scanned_cell_equals_a_python_loop():
  x_BxTxI = jax.random.normal(jax.random.key(0), (3, 7, 5))
  model = rnn.RNN(features=6, out_features=2)
  params = model.init(jax.random.key(1), x_BxTxI)["params"]
  h_T, y_BxTxO = model.apply({"params": params}, x_BxTxI)
  cell, w = rnn.TanhCell(6), params["scan"]["cell"]
  h = jnp.zeros((3, 6))
  for t in range(7):
    h, _ = cell.apply({"params": w}, h, x_BxTxI[:, t])
    # the recurrence written out: h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h), y_t = W_hy h_t + b_y
    y = h @ params["hy"]["kernel"] + params["hy"]["bias"]
    np.testing.assert_allclose(y_BxTxO[:, t], y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h_T, h, rtol=1e-5, atol=1e-6)
  h1 = jnp.tanh(x_BxTxI[:, 0] @ w["xh"]["kernel"] + w["xh"]["bias"])  # h_0 = 0
  np.testing.assert_allclose(model.apply({"params": params}, x_BxTxI[:, :1])[0], h1, rtol=1e-5)


def test_gradients_reach_w_hh_through_all_steps():
  t_steps = 12
  x_BxTxI = jax.random.normal(jax.random.key(0), (2, t_steps, 3))
  model = rnn.RNN(features=8)
  params = model.init(jax.random.key(1), x_BxTxI)["params"]

  def loss(params, x):  # depends on the last hidden state only
    return jnp.sum(model.apply({"params": params}, x)[0])

  def loop_loss(params, x):
    h = jnp.zeros((2, 8))
    for t in range(t_steps):
      h, _ = rnn.TanhCell(8).apply({"params": params["scan"]["cell"]}, h, x[:, t])
    return jnp.sum(h)

  g = jax.grad(loss)(params, x_BxTxI)
  chex.assert_trees_all_close(g, jax.grad(loop_loss)(params, x_BxTxI), rtol=1e-4, atol=1e-6)
  g_hh = g["scan"]["cell"]["hh"]["kernel"]
  assert float(jnp.abs(g_hh).max()) > 1e-4
  # x_1 reaches h_T only through the T-1 products with W_hh, and moving it moves dL/dW_hh
  g_x = jax.grad(loss, argnums=1)(params, x_BxTxI)
  assert float(jnp.abs(g_x[:, 0]).max()) > 1e-6
  moved = x_BxTxI.at[:, 0].add(1.0)
  g_hh_moved = jax.grad(loss)(params, moved)["scan"]["cell"]["hh"]["kernel"]
  assert float(jnp.abs(g_hh_moved - g_hh).max()) > 1e-6


def test_padding_and_cell_options():
  enc = rnn.BiRNN(vocab_size=10, embed_dim=4, features=5)
  tokens = jnp.array([[3, 1, 4, 0, 0], [2, 7, 0, 0, 0]])
  params = enc.init(jax.random.key(0), tokens)["params"]
  ann, mask = enc.apply({"params": params}, tokens)
  short, _ = enc.apply({"params": params}, tokens[:, :3])
  assert ann.shape == (2, 5, 10)
  # trailing padding changes neither direction at real positions, and is zero itself
  np.testing.assert_allclose(ann[:, :3] * mask[:, :3, None], short * mask[:, :3, None], atol=1e-6)
  assert float(jnp.abs(ann[~mask]).max()) == 0.0
  x = jnp.ones((2, 4, 3))
  for kind in rnn.CELLS:
    m = rnn.RNN(features=5, cell=kind)
    carry, h = m.apply(m.init(jax.random.key(0), x), x)
    assert h.shape == (2, 4, 5)
    np.testing.assert_allclose(rnn.hidden(kind, carry), h[:, -1], atol=1e-6)
  with pytest.raises(ValueError, match="unknown RNN cell 'rnn'"):
    rnn.make_cell("rnn", 4)


# ------------------------------------------------------------------ attention


def test_filterbanks_are_normalised():
  k = jax.random.split(jax.random.key(0), 2)
  params = jax.random.normal(k[0], (16, 5)) * 3.0  # windows inside, across and far outside
  fy, fx, gamma = draw_models.attention_window(params, 28, 40, 5)
  assert fy.shape == (16, 5, 28) and fx.shape == (16, 5, 40) and gamma.shape == (16,)
  np.testing.assert_allclose(fy.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(fx.sum(-1), 1.0, atol=1e-5)
  assert float(fy.min()) >= 0.0


@pytest.mark.parametrize("size, n, lo", [(28, 4, 12), (29, 5, 12), (29, 1, 14)])
def test_a_centred_unit_stride_window_reproduces_its_patch(size, n, lo):
  x = jax.random.uniform(jax.random.key(0), (2, size, size, 1))
  # centre g~ = 0, stride delta = 1 (delta~ = (N - 1) / (size - 1)), variance 1e-4, gamma = 1
  log_delta = jnp.log(max(n - 1, 1) / (size - 1))
  params = jnp.tile(jnp.array([0.0, 0.0, jnp.log(1e-4), log_delta, 0.0]), (2, 1))
  fy, fx, gamma = draw_models.attention_window(params, size, size, n)
  patch = draw_models.read_window(x, fy, fx, gamma)
  expect = x[:, lo : lo + n, lo : lo + n]
  np.testing.assert_allclose(patch, expect, atol=1e-5)
  # writing the patch back puts it where it came from, and nowhere else
  written = draw_models.write_window(patch, fy, fx, gamma)
  np.testing.assert_allclose(written[:, lo : lo + n, lo : lo + n], expect, atol=1e-5)
  np.testing.assert_allclose(jnp.abs(written).sum(), jnp.abs(patch).sum(), rtol=1e-5)


def test_a_dense_write_adds_a_whole_canvas_at_every_step():
  # write_n=0: c_t = c_{t-1} + W h^dec_t + b over the whole canvas. With W = 0 every step adds b,
  # so the final canvas is c_0 + T * b (c_0, a parameter, starts at 0), in samples (z from the
  # prior) and reconstructions alike.
  state = init(draw_config(text=True, write_n=0), random_batch(n=2, text=True))
  write = state.draw.params["step"]["write"]
  h, w, c = state.hp.image_shape
  assert write["kernel"].shape == (DRAW_TINY["dec_features"], h * w * c)
  assert not {"write_patch", "write_window"} & set(state.draw.params["step"])
  b = jax.random.normal(jax.random.key(1), (h * w * c,)) / DRAW_TINY["draw_steps"]
  params = jax.tree.map(lambda x: x, state.draw.params)
  params["step"]["write"] = {"kernel": jnp.zeros_like(write["kernel"]), "bias": b}
  state = state.replace(draw=state.draw.replace(params=params))
  expect = 2.0 * jax.nn.sigmoid(DRAW_TINY["draw_steps"] * b.reshape(h, w, c)) - 1.0
  batch = random_batch(n=2, text=True)
  for images in (
    draw.sample(state, jax.random.key(2), 2, batch["tokens"]),
    draw.reconstruct(state, batch, jax.random.key(3)),
  ):
    # float32: T additions of b against T * b differ by <= T ulps of |T b| <~ 5 (b ~ N(0, 1) / T
    # over 60 x 60 pixels), i.e. <~ 3e-6 in the logit; 2 sigmoid has slope <= 1/2, and sigmoid
    # itself rounds by ~1e-7: <~ 2e-6 in the image
    np.testing.assert_allclose(images, jnp.broadcast_to(expect, images.shape), atol=2e-6)


def test_a_shift_write_moves_its_patch_by_the_offsets_drawn():
  # one-hot offset probabilities put the patch at exactly (oy, ox) (products with 1 and 0:
  # exact); probabilities split between two offsets give the weighted sum of the two placements
  patch = jax.random.normal(jax.random.key(0), (1, 4, 4, 1))
  size, n = 9, 4
  place = lambda oy, ox: jnp.zeros((1, size, size, 1)).at[:, oy : oy + n, ox : ox + n].set(patch)
  probs = lambda *pairs: (
    jnp.zeros((1, size - n + 1)).at[0, [o for o, _ in pairs]].set([q for _, q in pairs])
  )
  one = jnp.ones((1,))
  bank = lambda p: draw_models.shift_filterbank(p, n, size)
  written = draw_models.write_window(patch, bank(probs((1, 1.0))), bank(probs((5, 1.0))), one)
  np.testing.assert_array_equal(written, place(1, 5))
  fy, fx = bank(probs((0, 0.25), (3, 0.75))), bank(probs((2, 1.0)))
  # float32: each pixel sums at most two products q * v, one rounding each, and the sum one more
  np.testing.assert_allclose(
    draw_models.write_window(patch, fy, fx, one),
    0.25 * place(0, 2) + 0.75 * place(3, 2),
    rtol=0,
    atol=4 * np.finfo(np.float32).eps * float(jnp.abs(patch).max()),
  )


def test_a_shift_write_trains_and_is_checked():
  state = init(
    draw_config(text=True, write_attention="shift", write_n=5), random_batch(n=2, text=True)
  )
  h, w, _ = state.hp.image_shape
  layer = state.draw.params["step"]["write_shift"]["kernel"]
  assert layer.shape == (DRAW_TINY["dec_features"], (h - 5 + 1) + (w - 5 + 1))
  assert "write_window" not in state.draw.params["step"]
  state, m = jax.jit(draw.train_step)(state, random_batch(n=2, text=True), jax.random.key(1))
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  for bad, match in [
    (dict(write_attention="shift", write_n=0), "'shift' moves an N x N patch inside the 28x28"),
    (dict(write_attention="shift", write_n=29), "set config.model.write_n to N in 1..28 .*not 29"),
    (dict(write_attention="affine"), "write_attention='affine' is not one of"),
  ]:
    with pytest.raises(ConfigError, match=match):
      jax.eval_shape(
        lambda k, bad=bad: draw.init_state(draw_config(**bad), k, random_batch(2)),
        jax.random.key(0),
      )


def test_hard_offsets_are_the_mode_forward_and_the_softmax_gradient_backward():
  logits = jnp.array([[0.3, 2.0, -1.0, 1.5], [4.0, 0.0, 0.0, 0.0]])
  np.testing.assert_array_equal(
    draw_models.offset_probabilities(logits, hard=True), jax.nn.one_hot(jnp.array([1, 0]), 4)
  )
  cot = jnp.arange(8.0).reshape(2, 4)
  grad = lambda hard: jax.grad(
    lambda x: jnp.sum(cot * draw_models.offset_probabilities(x, hard=hard))
  )(logits)
  # straight-through: mode + p - stop_gradient(p) has p's gradient; float32, each element one
  # product and a sum of four: a few units of eps in the largest term
  np.testing.assert_allclose(grad(True), grad(False), rtol=0, atol=16 * np.finfo(np.float32).eps)
  assert float(jnp.abs(grad(False)).max()) > 0.1  # the offsets do learn


def _upsample_matrix(size: int, factor: int) -> np.ndarray:
  """[size * factor, size] bilinear weights, half-pixel centres, edges clamped."""
  src = (np.arange(size * factor) + 0.5) / factor - 0.5
  return np.stack([np.interp(src, np.arange(size), e) for e in np.eye(size)], axis=1)


@pytest.mark.parametrize(
  "offsets, patches, coarse, stride, hw, n",
  [
    ("soft", 1, 0, 1, (8, 10), 3),
    ("hard", 2, 2, 1, (8, 10), 3),
    ("soft", 2, 0, 2, (9, 11), 3),
    ("soft", 2, 0, 16, (60, 60), 28),  # aligndraw_captions.py's write: the nine places
  ],
)
def test_the_shift_write_puts_each_patch_where_its_offsets_say(
  offsets, patches, coarse, stride, hw, n
):
  # Rebuilt by hand in float64 on a canvas with 2 channels: every patch placed at every offset
  # (stride * oy, stride * ox) weighted p_y[oy] * p_x[ox] (softmax, or the one-hot mode with
  # "hard"), summed over the patches, plus the coarse canvas upsampled bilinearly
  (hh, ww), c, d, b = hw, 2, 4, 3

  class Write(draw_models.DrawStep):  # the step's write alone
    @nn.compact
    def __call__(self, h_BxD):
      return self._write(h_BxD)

  step = Write(
    image_shape=(hh, ww, c), latent_dim=2, enc_features=d, dec_features=d, read_n=0,
    write_n=n, cell="tanh", align_features=4, learned_prior=False, infer=False,
    write_attention="shift", write_offsets=offsets, write_patches=patches, write_coarse=coarse,
    write_stride=stride,
  )  # fmt: skip
  h = jax.random.normal(jax.random.key(0), (b, d))
  params = step.init(jax.random.key(1), h)
  written = np.asarray(step.apply(params, h), np.float64)
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
  hx = np.asarray(h, np.float64)
  dense = lambda name: hx @ p[name]["kernel"] + p[name]["bias"]
  oy, ox = (hh - n) // stride + 1, (ww - n) // stride + 1
  tiles = dense("write_patch").reshape(b, patches, n, n, c)
  logits = dense("write_shift").reshape(b, patches, oy + ox)

  def probs(z):
    if offsets == "hard":
      return np.eye(z.shape[-1])[np.argmax(z, -1)]
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  py, px = probs(logits[..., :oy]), probs(logits[..., oy:])
  want = np.zeros((b, hh, ww, c))
  if coarse:
    small = dense("write_coarse").reshape(b, hh // coarse, ww // coarse, c)
    uy, ux = _upsample_matrix(hh // coarse, coarse), _upsample_matrix(ww // coarse, coarse)
    want += np.einsum("yi,bijc,xj->byxc", uy, small, ux)
  else:
    assert "write_coarse" not in p
  for i in range(b):
    for k in range(patches):
      for y in range(oy):
        for x in range(ox):
          ys, xs = stride * y, stride * x
          want[i, ys : ys + n, xs : xs + n] += py[i, k, y] * px[i, k, x] * tiles[i, k]
  # float32 against float64: the dense layers' d = 4 products and the placement's sums over at
  # most oy * ox * patches = 96 weighted terms, each a few roundings: 256 eps of the largest
  # term bounds it; a misplaced patch or a missing coarse canvas is off by O(scale)
  scale = max(float(np.abs(tiles).max()), float(np.abs(want).max()))
  np.testing.assert_allclose(written, want, rtol=0, atol=256 * np.finfo(np.float32).eps * scale)


def test_the_shift_write_options_train_resume_old_runs_and_are_checked():
  options = dict(write_attention="shift", write_n=5, write_offsets="hard", write_patches=2)
  state0 = init(draw_config(text=True, write_coarse=4, **options), random_batch(n=2, text=True))
  step = state0.draw.params["step"]
  assert step["write_patch"]["kernel"].shape == (DRAW_TINY["dec_features"], 2 * 5 * 5)
  assert step["write_coarse"]["kernel"].shape == (DRAW_TINY["dec_features"], 15 * 15)
  state, m = jax.jit(draw.train_step)(state0, random_batch(n=2, text=True), jax.random.key(1))
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  moved = state.draw.params["step"]["write_shift"]["kernel"] - step["write_shift"]["kernel"]
  assert float(jnp.abs(moved).max()) > 0  # hard offsets still learn (straight-through)
  old = json.loads(draw_config().to_json_best_effort())
  for k in config_lib.SHIFT_WRITE_DEFAULTS:
    del old["model"][k]
  assert {k: config_lib.upgrade(old)["model"][k] for k in config_lib.SHIFT_WRITE_DEFAULTS} == (
    config_lib.SHIFT_WRITE_DEFAULTS
  )
  for bad, match in [
    (dict(write_offsets="hard"), r"write_offsets='hard' applies to the shift write only"),
    (dict(write_coarse=4, write_n=0), r"write_coarse=4 applies to the shift write only"),
    (dict(options, write_offsets="round"), r"write_offsets='round' is not one of"),
    (dict(options, write_patches=0), r"write_patches=0 must be an integer >= 1"),
    (dict(options, write_coarse=5), r"write_coarse=5 must be 0 \(off\) or an integer factor"),
    (dict(options, write_coarse=-1), r"write_coarse=-1 must be 0"),
    (dict(options, write_stride=2), r"write_stride=2 must be an integer >= 1 that divides .*28x28"),
    (dict(options, write_stride=0), r"write_stride=0 must be an integer >= 1"),
    (dict(write_stride=23, write_n=5), r"write_stride=23 applies to the shift write only"),
  ]:
    with pytest.raises(ConfigError, match=match):
      jax.eval_shape(
        lambda k, bad=bad: draw.init_state(draw_config(**bad), k, random_batch(2)),
        jax.random.key(0),
      )


def test_a_model_built_directly_refuses_an_unknown_write_attention():
  model = draw_models.DRAW(image_shape=(8, 8, 1), draw_steps=2, write_n=3, write_attention="affine")
  k = jax.random.key(0)
  with pytest.raises(ConfigError, match="unknown write_attention 'affine'; use 'gaussian' or"):
    jax.eval_shape(lambda: model.init({"params": k, "latent": k}, jnp.zeros((1, 8, 8, 1))))


def test_runs_saved_before_write_attention_read_it_as_gaussian():
  old = json.loads(draw_config().to_json_best_effort())
  del old["model"]["write_attention"]
  assert config_lib.upgrade(old)["model"]["write_attention"] == "gaussian"


# ------------------------------------------------------------------ the family


@pytest.fixture(scope="module")
def states():
  """{text: initial state} of the tiny DRAW (False) and alignDRAW (True), shared by the tests."""
  return {text: init(draw_config(text), random_batch(n=8, text=text)) for text in (False, True)}


def test_golden_values_after_one_step_and_a_single_compilation(states, pinned_env):
  # Protects DRAW's -ELBO (canvas likelihood, per-step KL, units); tied to the pinned
  # versions. New batches (same shapes) after the first reuse the one compilation.
  batches = [random_batch(n=8)] + [random_batch(n=8, seed=i + 2) for i in range(3)]
  new, metrics = train_steps_traced_once(
    draw.train_step, states[False], batches, jax.random.key(42)
  )
  check_golden(metrics[0], False)
  assert int(new.step) == 4


def check_golden(metrics, text):
  got = {k: float(v) for k, v in metrics.items()}
  for k, v in GOLDEN[text].items():
    np.testing.assert_allclose(got[k], v, rtol=GOLDEN_RTOL, err_msg=k)
  dims = 60 * 60 if text else 28 * 28
  np.testing.assert_allclose(got["bpd"], got["loss"] / (dims * np.log(2)), rtol=1e-6)
  np.testing.assert_allclose(got["loss"], got["recon"] + got["kl"], rtol=1e-6)


# At initialisation the canvas is sigmoid(0) = 0.5 everywhere: recon ~ H*W*ln 2 (543.6 nats for
# 28x28, 2495.3 for 60x60); the KL is a few nats per step.
GOLDEN = {
  False: {"loss": 546.90363, "recon": 543.62842, "kl": 3.2752090},
  True: {"loss": 2500.4309, "recon": 2495.3198, "kl": 5.1111698},
}


def test_kl_between_gaussians():
  mq, lq, mp, lp = jnp.array([0.3]), jnp.array([-0.5]), jnp.array([-0.2]), jnp.array([0.4])
  # KL(N(a, s^2) || N(b, t^2)) = log(t/s) + (s^2 + (a-b)^2) / (2 t^2) - 1/2
  s2, t2 = np.exp(-0.5), np.exp(0.4)
  expect = 0.5 * np.log(t2 / s2) + (s2 + 0.25) / (2 * t2) - 0.5
  np.testing.assert_allclose(losses.gaussian_kl_between(mq, lq, mp, lp), [expect], rtol=1e-6)
  np.testing.assert_allclose(
    losses.gaussian_kl_between(mq, lq, 0.0, 0.0), losses.gaussian_kl(mq, lq), rtol=1e-6
  )


def test_likelihood_bounds(states):
  batch, state = random_batch(n=4), states[False]
  bounds = jax.jit(draw.log_likelihood_bounds, static_argnums=(3, 4))
  a = bounds(state, batch, jax.random.key(1), 6, 8)  # 2 sequences per chunk
  b = bounds(state, batch, jax.random.key(1), 6, 1024)  # all 6 at once
  chex.assert_trees_all_close(a, b, rtol=1e-5)
  assert a["iwae"].shape == (4,) and bool(jnp.all(a["iwae"] >= a["elbo"] - 1e-4))
  assert bool(jnp.all(a["iwae"] < 0)) and bool(jnp.all(jnp.isfinite(a["elbo"])))


def test_changing_the_caption_changes_the_output(states):
  text_state = states[True]
  sandal = draw.tokenize(text_state, "the sandal is on the left of the bag")
  coat = draw.tokenize(text_state, "the coat is at the top right of the image")
  tokens = np.stack([sandal] * 6)
  key = jax.random.key(3)  # the same latent noise for both calls
  a = SAMPLE_FRAMES(text_state, key, 6, jnp.asarray(tokens))[-1]
  tokens[5] = coat  # only the last caption differs
  b = SAMPLE_FRAMES(text_state, key, 6, jnp.asarray(tokens))[-1]
  assert a.shape == (6, 60, 60, 1)
  np.testing.assert_array_equal(a[:5], b[:5])
  assert float(jnp.abs(a[5] - b[5]).max()) > 1e-4


def test_held_out_captions_tokenise_and_generate(states):
  text_state = states[True]
  held = [captions.caption(*c) for c in captions.combinations() if captions.is_held_out(*c)]
  tokens = jnp.asarray(np.stack([draw.tokenize(text_state, c) for c in held]))
  chunks = [tokens[i : i + 6] for i in range(0, len(held), 6)]  # 54 = 9 x 6: one compilation
  frames = jnp.concatenate(
    [SAMPLE_FRAMES(text_state, jax.random.key(0), 6, t) for t in chunks], axis=1
  )
  assert frames.shape == (DRAW_TINY["draw_steps"], len(held), 60, 60, 1)
  assert bool(jnp.all(jnp.isfinite(frames))) and float(jnp.abs(frames).max()) <= 1.0
  with pytest.raises(captions.CaptionError, match="unknown word 'hat'.*vocabulary is: ankle"):
    draw.tokenize(text_state, "the hat is on the left of the bag")
  with pytest.raises(draw.UserError, match="not caption-conditioned"):
    draw.tokenize(states[False], "the bag is at the top of the image")


def test_golden_values_of_alignDRAW(states, pinned_env):
  # alignDRAW (caption encoder, alignment, learned prior) contains every part of DRAW; the
  # metrics are those of the parameters before the update. Tied to the pinned versions.
  _, metrics = jax.jit(draw.train_step)(
    states[True], random_batch(n=8, text=True), jax.random.key(3)
  )
  check_golden(metrics, True)


def test_pictures(tmp_path, states):
  paths = pictures.draw_pictures(states[False], random_batch(n=8), jax.random.key(1), tmp_path)
  assert [p.name for p in paths] == ["canvas.gif", "samples.png", "steps.png"]
  assert Image.open(paths[0]).n_frames == DRAW_TINY["draw_steps"]
  assert Image.open(paths[2]).size == (2 * (3 * 30 + 2), 2 * (8 * 30 + 2))  # 8 rows x T steps
  paths = pictures.draw_pictures(
    states[True], random_batch(n=5, text=True), jax.random.key(1), tmp_path
  )
  assert [p.name for p in paths[3:]] == ["example_captions.png", "test_captions.png"]
  width, height = Image.open(paths[4]).size
  assert height == 2 * (5 * 62 + 2) and width > 2 * (8 * 62 + 2)  # 5 captions; text on the left


# ------------------------------------------------------------------ a trained run


def test_trained_caption_run_samples_from_the_cli(fashion_slice, tfds_dir, tmp_path):
  c = draw_config(text=True)
  c.data.name, c.data.source_dir = "captioned_fashion_mnist/small", str(fashion_slice)
  c.data.data_dir = str(tfds_dir)
  c.batch_size, c.num_steps, c.log_every, c.checkpoint_every = 16, 3, 1, 3
  c.sample_every, c.num_grid_samples = 0, 0  # the CLI samples below
  trainer.train_and_evaluate(c, tmp_path)
  assert (tmp_path / "checkpoints/3").is_dir()
  out = tmp_path / "sneaker.png"
  cli.main(
    [
      "sample",
      "--workdir",
      str(tmp_path),
      "--num",
      "4",
      "--out",
      str(out),
      "--caption",
      "the sneaker is on the left of the trouser",
    ]
  )
  assert Image.open(out).size == (2 * (2 * 62 + 2),) * 2  # 2 x 2 grid of 60 px + 2 pad, x2
  assert Image.open(out.with_suffix(".gif")).n_frames == DRAW_TINY["draw_steps"]
  # --temperature 0 draws every z_t at the prior's mean: the seed no longer matters, as it
  # does at the run's own temperature (1)
  grids = {}
  for temperature in ([], ["--temperature", "0"]):
    for seed in ("1", "2"):
      path = tmp_path / f"t{len(temperature)}_{seed}.png"
      flags = ["--num", "4", "--seed", seed, *temperature, "--out", str(path)]
      cli.main(["sample", "--workdir", str(tmp_path), *flags])
      grids[bool(temperature), seed] = np.asarray(Image.open(path), np.int32)
  np.testing.assert_array_equal(grids[True, "1"], grids[True, "2"])
  assert np.abs(grids[False, "1"] - grids[False, "2"]).max() > 0


# ------------------------------------------------------------------ config keys


@pytest.mark.parametrize(
  "name",
  ["draw_fashion.py", "aligndraw_captions.py", "aligndraw_captions_lstm.py", "aligndraw_emoji.py"],
)
def test_configs_call_t_draw_steps_and_hold_no_dead_keys(name):
  model = config_lib.load(REPO / "experiments/configs" / name).model
  assert model.draw_steps in (10, 16)
  assert "num_steps" not in model and "num_importance" not in model


def test_old_name_of_draw_steps_is_one_line_in_a_config_file_and_read_in_a_saved_run(tmp_path):
  """A config file with model.num_steps gets one line saying what to rename; a run saved before
  the rename (its config.json) is read with the new name (config.upgrade), and resuming it with
  today's config is not a change."""
  c = draw_config()
  c.data.image_shape = (28, 28, 1)
  old = draw_config()
  old.data.image_shape = (28, 28, 1)
  old.model.num_steps = old.model.draw_steps
  del old.model["draw_steps"]
  with pytest.raises(ConfigError) as e:
    jax.eval_shape(
      lambda k: steps.get_family("draw").init_state(old, k, random_batch(2)), jax.random.key(0)
    )
  assert str(e.value) == (
    "config.model.num_steps is now config.model.draw_steps (T, the canvas updates per image); "
    "rename it in the config file, or in RUN/config.json for a run trained before the rename"
  )
  (tmp_path / "config.json").write_text(old.to_json_best_effort())
  assert trainer.load_run_config(tmp_path).model.draw_steps == c.model.draw_steps
  stored = config_lib.flatten(config_lib.upgrade(json.loads(old.to_json_best_effort())))
  assert config_lib.drift(stored, c) == []


# ------------------------------------------------------------------ binarisation


def test_expected_binarisation_is_the_mean_over_all_binarisations():
  """bernoulli_log_prob of pixel probabilities equals the exact expectation of the binarised
  image's log-likelihood: all 2^4 binarisations of a 2x2 image enumerated, in float64 (the
  identity is exact, so only rounding separates the two)."""
  with jax.enable_x64():
    p = jnp.array([0.1, 0.5, 0.75, 1.0], jnp.float64)
    logits = jnp.array([-2.0, 0.3, 1.5, 4.0], jnp.float64).reshape(1, 2, 2, 1)
    bits = jnp.array(np.indices((2,) * 4).reshape(4, -1).T, jnp.float64)  # [16, 4]
    prob = jnp.prod(jnp.where(bits == 1, p, 1 - p), axis=1)
    each = jax.vmap(lambda x: losses.bernoulli_log_prob(logits, x.reshape(1, 2, 2, 1))[0])(bits)
    expect = jnp.sum(prob * each)
    got = losses.bernoulli_log_prob(logits, p.reshape(1, 2, 2, 1))[0]
    np.testing.assert_allclose(got, expect, rtol=1e-12)


def test_binarization_modes(states):
  image = random_batch(n=4)["image"]
  hp = states[False].hp
  assert hp.binarization == "dynamic"
  x = draw.observed(hp, jax.random.key(0), image)
  assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}
  assert not np.array_equal(x, draw.observed(hp, jax.random.key(1), image))
  expected = ml_collections.FrozenConfigDict({**hp.as_configdict(), "binarization": "expected"})
  p = draw.observed(expected, jax.random.key(0), image)
  np.testing.assert_array_equal(p, (image + 1.0) / 2.0)  # no noise: the key is not used
  c = draw_config()
  c.model.binarization = "sampled"
  with pytest.raises(ConfigError, match="binarization='sampled' is not one of"):
    jax.eval_shape(lambda k: draw.init_state(c, k, random_batch(2)), jax.random.key(0))


def test_runs_saved_before_binarization_read_it_as_dynamic():
  old = json.loads(draw_config().to_json_best_effort())
  del old["model"]["binarization"]
  assert config_lib.upgrade(old)["model"]["binarization"] == "dynamic"
  gan = {"model": {"family": "gan"}}
  assert "binarization" not in config_lib.upgrade(gan)["model"]


def test_kl_warmup_weighs_the_kl_in_the_loss_and_not_in_the_bound(states):
  state = states[False]
  hp = ml_collections.FrozenConfigDict({**state.hp.as_configdict(), "kl_warmup_steps": 4})
  at = lambda step: state.replace(hp=hp, step=jnp.asarray(step, jnp.int32))
  assert [float(draw.kl_weight(at(i))) for i in (0, 1, 3, 10)] == [0.25, 0.5, 1.0, 1.0]
  assert float(draw.kl_weight(state)) == 1.0  # kl_warmup_steps 0: no warm-up
  # float64: XLA may sum the 784 pixels of `recon` in another order inside the loss than for the
  # metric (float32: ~1e-6 apart); in float64 the same sums agree to ~1e-13 of their size
  with jax.enable_x64(True):
    m = jax.jit(draw.eval_step)(to_float64(at(0)), to_float64(random_batch(n=4)), jax.random.key(5))
    m = jax.tree.map(np.asarray, m)  # numpy float64: the sums below stay in float64
  assert m["loss"].dtype == np.float64
  assert float(m["kl"]) > 1.0  # so that a weight of 0.25 moves the loss
  np.testing.assert_allclose(m["loss"], m["recon"] + 0.25 * m["kl"], rtol=X64_RTOL)
  np.testing.assert_allclose(-m["elbo"], m["recon"] + m["kl"], rtol=X64_RTOL)


def test_free_bits_price_only_the_kl_above_the_allowance(states):
  kl_TxB = jnp.array([[0.5, 1.0], [4.0, 6.0], [0.0, 0.2]])  # step means 0.75, 5.0, 0.1
  assert float(draw.free_bits_kl(kl_TxB, 1.0)) == 1.0 + 5.0 + 1.0
  assert float(draw.free_bits_kl(kl_TxB, 0.01)) == pytest.approx(0.75 + 5.0 + 0.1, rel=1e-6)
  state = states[False]
  with_bits = lambda bits: state.replace(
    hp=ml_collections.FrozenConfigDict({**state.hp.as_configdict(), "free_bits": bits})
  )
  # float64, as in the warm-up test: the same sums in another order agree to ~1e-13
  with jax.enable_x64(True):
    batch = to_float64(random_batch(n=4))
    plain, free = (
      jax.tree.map(np.asarray, jax.jit(draw.eval_step)(to_float64(s), batch, jax.random.key(5)))
      for s in (state, with_bits(1e3))
    )
  # an allowance far above every step's KL: the loss prices T * allowance, the bound is unchanged
  t = state.hp.draw_steps
  np.testing.assert_allclose(free["loss"], free["recon"] + t * 1e3, rtol=X64_RTOL)
  for k in ("elbo", "recon", "kl"):
    np.testing.assert_allclose(free[k], plain[k], rtol=X64_RTOL)
  np.testing.assert_allclose(plain["loss"], plain["recon"] + plain["kl"], rtol=X64_RTOL)


def _with(state, **hp):
  return state.replace(hp=ml_collections.FrozenConfigDict({**state.hp.as_configdict(), **hp}))


def test_free_bits_leave_the_learned_prior_its_whole_kl_gradient(states):
  # float64 (see X64_RTOL): the gradients below are the same sums taken two ways
  with jax.enable_x64(True):
    state, batch = to_float64(states[True]), to_float64(random_batch(n=4, text=True))
    key = jax.random.key(5)
    loss_and_metrics = lambda s: lambda p: draw._negative_elbo(p, s, batch, key)
    grad = lambda s: jax.grad(lambda p: loss_and_metrics(s)(p)[0])(s.draw.params)
    _, out = draw._posterior_pass(state.hp, state.draw.params, batch, key)
    means = np.sort(np.asarray(jnp.mean(draw.kl_per_step(state.hp, out), axis=1)))
    middle = float(means[len(means) // 2])  # some steps below the allowance, some above
    loss, m = loss_and_metrics(_with(state, free_bits=middle))(state.draw.params)
    priced = draw.free_bits_kl(draw.kl_per_step(state.hp, out), middle)
    plain, huge = grad(state), grad(_with(state, free_bits=1e3))
    recon_only = jax.grad(lambda p: loss_and_metrics(state)(p)[1]["recon"])(state.draw.params)
  assert float(jnp.min(means)) < middle < float(jnp.max(means))
  np.testing.assert_allclose(loss, m["recon"] + priced, rtol=X64_RTOL)
  assert float(priced) > float(m["kl"])  # the steps under the allowance are priced up to it
  heads = lambda g: [
    np.asarray(g["step"][head][w])
    for head in ("prior_mean", "prior_log_std")
    for w in ("kernel", "bias")
  ]
  # the prior's heads feed only the KL: an allowance above every step leaves their gradient as
  # the whole KL gives it (without the split it would be 0), and reconstruction gives them none
  for with_bits, without, from_recon in zip(heads(huge), heads(plain), heads(recon_only)):
    assert np.abs(without).max() > 1e-6
    np.testing.assert_allclose(with_bits, without, rtol=X64_RTOL, atol=1e-12)
    np.testing.assert_array_equal(from_recon, 0.0)


def test_free_bits_above_every_step_leave_draw_only_the_reconstruction_gradient(states):
  with jax.enable_x64(True):
    state, batch = to_float64(_with(states[False], free_bits=1e3)), to_float64(random_batch(n=4))
    fn = lambda p: draw._negative_elbo(p, state, batch, jax.random.key(5))
    loss_grad = jax.grad(lambda p: fn(p)[0])(state.draw.params)
    recon_grad = jax.grad(lambda p: fn(p)[1]["recon"])(state.draw.params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=X64_RTOL, atol=1e-12), loss_grad, recon_grad
  )


def test_free_bits_must_not_be_negative():
  with pytest.raises(ConfigError, match="free_bits=-1.0 must be >= 0"):
    jax.eval_shape(
      lambda k: draw.init_state(draw_config(free_bits=-1.0), k, random_batch(2)),
      jax.random.key(0),
    )


def test_kl_beta_weighs_the_posterior_kl_and_leaves_the_prior_all_of_it(states):
  beta = 0.25
  # float64 (see X64_RTOL): the same sums and gradients taken two ways
  with jax.enable_x64(True):

    def loss_grads(text):  # d(loss)/d(params) at kl_beta 1 and beta, and d(recon)/d(params)
      state, batch = to_float64(states[text]), to_float64(random_batch(n=4, text=text))
      fn = lambda s, term: lambda p: draw._negative_elbo(p, s, batch, jax.random.key(5))[term]
      loss = lambda s: fn(s, 0)
      recon = lambda p: fn(state, 1)(p)["recon"]
      weighed = _with(state, kl_beta=beta)
      metrics = jax.tree.map(np.asarray, fn(weighed, 1)(state.draw.params))
      grads = [jax.grad(f)(state.draw.params) for f in (loss(state), loss(weighed), recon)]
      return jax.tree.map(np.asarray, grads), metrics  # numpy float64: the sums below stay so

    (plain, weighed, recon), m = loss_grads(text=False)
    (plain_text, weighed_text, _), m_text = loss_grads(text=True)
  for metrics in (m, m_text):  # both priors: the loss prices beta * KL, the bound all of it
    assert float(metrics["kl"]) > 1.0  # so that the weight moves the loss
    loss, recon_kl = metrics["loss"], metrics["recon"] + beta * metrics["kl"]
    np.testing.assert_allclose(loss, recon_kl, rtol=X64_RTOL)
    np.testing.assert_allclose(-metrics["elbo"], metrics["recon"] + metrics["kl"], rtol=X64_RTOL)

  def close(a, b, *terms):  # float64 sums of terms: rounding ~1e-16 of the largest of them
    scale = max(float(np.abs(t).max()) for t in terms)
    np.testing.assert_allclose(a, b, rtol=X64_RTOL, atol=X64_RTOL * scale)

  # N(0, I) prior: the KL's part of every gradient is scaled by beta
  jax.tree.map(lambda w, p, r: close(w, r + beta * (p - r), p, r), weighed, plain, recon)
  # learned prior: its heads (fed only by the KL) keep the whole KL's gradient. Nonzero (a
  # random init gives them O(1e-3..1) here), so that a beta on them would show.
  for head in ("prior_mean", "prior_log_std"):
    for w in ("kernel", "bias"):
      a, b = (np.asarray(g["step"][head][w]) for g in (weighed_text, plain_text))
      assert np.abs(b).max() > 1e-6
      close(a, b, b)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("kl_beta", 0.0, r"kl_beta=0.0 must be in \(0, 1\]"),
    ("kl_beta", 1.5, r"kl_beta=1.5 must be in \(0, 1\]"),
    ("kl_beta", float("nan"), r"kl_beta=nan must be in \(0, 1\]"),
    ("scan_unroll", 0, r"scan_unroll=0 must be an integer >= 1"),
    ("scan_unroll", -1, r"scan_unroll=-1 must be an integer >= 1"),
    ("scan_unroll", True, r"scan_unroll=True must be an integer >= 1"),  # (a float: ConfigDict)
  ],
)
def test_model_fields_out_of_range_are_one_line_errors(field, value, message):
  with pytest.raises(ConfigError, match=message):
    jax.eval_shape(
      lambda k: draw.init_state(draw_config(**{field: value}), k, random_batch(2)),
      jax.random.key(0),
    )


@pytest.mark.parametrize("field, ran", [("kl_beta", 1.0), ("free_bits", 0.0), ("scan_unroll", 1)])
def test_runs_saved_before_a_field_read_what_they_ran(field, ran):
  old = json.loads(draw_config().to_json_best_effort())
  del old["model"][field]
  assert config_lib.upgrade(old)["model"][field] == ran


@pytest.mark.parametrize("text", [False, True], ids=["draw", "aligndraw"])
def test_an_unrolled_scan_takes_the_same_step(states, text):
  # float64 (see X64_RTOL): one step's maths compiled as a loop over T, two steps per iteration
  # (T = 3: a remainder; DRAW only, to keep alignDRAW's compilations few) and fully unrolled;
  # only the order of XLA's fusions may differ
  with jax.enable_x64(True):
    state, batch = to_float64(states[text]), to_float64(random_batch(n=4, text=text))
    step = jax.jit(draw.train_step)
    unrolls = (1, 3) if text else (1, 2, 3)
    runs = [step(_with(state, scan_unroll=u), batch, jax.random.key(3)) for u in unrolls]
    key = jax.random.key(3)
    program = lambda u: str(
      jax.make_jaxpr(draw.train_step)(_with(state, scan_unroll=u), batch, key)
    )
    assert "unroll=3" in program(3) and "unroll=3" not in program(1)  # it reaches nn.scan
  assert runs[0][1]["loss"].dtype == jnp.float64
  (want, want_m), *others = runs
  for got, got_m in others:
    for k in want_m:
      np.testing.assert_allclose(got_m[k], want_m[k], rtol=X64_RTOL, err_msg=k)
    chex.assert_trees_all_close(got.draw.params, want.draw.params, rtol=X64_RTOL, atol=0)
  assert draw_config(text).model.scan_unroll == (1 if text else 10)  # draw_fashion.py unrolls


def _prior_pass(state, key, tokens):
  """Generation's per-step arrays [T, B, Z] "z", "p_mean", "p_logvar" (z drawn from the prior)."""
  model = draw._model(state.hp)
  return common.apply(
    model, state.draw.params, {}, None, tokens, num=len(tokens), train=False, rngs={"latent": key}
  )[0]


def test_temperature_scales_the_prior_noise_at_every_step(states):
  # z_t = mean_t + T * std_t * eps_t, with eps_t the same for the same key whatever T: so
  # (z_t - mean_t) / std_t at T equals T times that at 1, at every step although the means
  # differ after the first. Generation runs in float32 (its canvas is float32): z carries one
  # rounding of ~eps32 * |z| <= eps32 * (|mean| + |std eps|), and recomputing std here may
  # differ by an ulp or two, so the recovered noise is off by a few eps32 * (|mean| / std +
  # |eps|), with |mean| <= 1 and std >= e^-1 (tanh-bounded heads); 8 such units bound it.
  state = states[True]
  tokens = jnp.asarray(np.stack([draw.tokenize(state, c) for c in captions.EXAMPLE_CAPTIONS]))
  key, noise = jax.random.key(4), {}
  for t in (1.0, 0.5, 0.0):
    out = _prior_pass(draw.with_temperature(state, t), key, tokens)
    noise[t] = np.asarray((out["z"] - out["p_mean"]) / jnp.exp(0.5 * out["p_logvar"]))
  assert np.abs(noise[1.0]).max() > 0.1  # the check below is not vacuous
  atol = 8 * np.finfo(np.float32).eps * (np.e + np.abs(noise[1.0]).max())
  np.testing.assert_allclose(noise[0.5], 0.5 * noise[1.0], rtol=0, atol=atol)
  np.testing.assert_array_equal(noise[0.0], 0.0)  # T = 0: every z_t is the prior's mean
  # at T = 0 the samples no longer depend on the key; at 1 they do
  cold = draw.with_temperature(states[True], 0.0)
  a, b = (SAMPLE_FRAMES(cold, jax.random.key(k), len(tokens), tokens)[-1] for k in (1, 2))
  np.testing.assert_array_equal(a, b)
  a, b = (SAMPLE_FRAMES(states[True], jax.random.key(k), len(tokens), tokens)[-1] for k in (1, 2))
  assert float(jnp.abs(a - b).max()) > 1e-4


def test_temperature_leaves_training_reconstructions_and_the_bounds_alone(states):
  # the same programs, bit for bit: the temperature only enters generation's prior draw
  batch, key = random_batch(n=4, text=True), jax.random.key(5)
  warm, cold = states[True], draw.with_temperature(states[True], 0.25)
  train = jax.jit(lambda s: (lambda new, m: (new.draw.params, m))(*draw.train_step(s, batch, key)))
  bounds = jax.jit(lambda s: draw.log_likelihood_bounds(s, batch, key, 3))
  for fn in (train, bounds, jax.jit(lambda s: draw.reconstruct(s, batch, key))):
    chex.assert_trees_all_equal(fn(warm), fn(cold))


@pytest.mark.parametrize("t", [-0.5, float("nan"), float("inf")])
def test_temperature_must_be_finite_and_not_negative(t, states):
  with pytest.raises(ConfigError, match=f"--temperature={t!r} must be finite and >= 0"):
    draw.with_temperature(states[False], t)
  with pytest.raises(ConfigError, match=f"sample_temperature={t!r} must be finite and >= 0"):
    jax.eval_shape(
      lambda k: draw.init_state(draw_config(sample_temperature=t), k, random_batch(2)),
      jax.random.key(0),
    )


def test_temperature_is_refused_for_families_without_a_per_step_prior():
  gan = steps.get_family("gan")
  with pytest.raises(UserError, match="--temperature needs .*this run is 'gan'.*--truncation"):
    steps.at_temperature(gan, object(), 0.5)
  assert steps.at_temperature(gan, "state", None) == "state"  # no flag: nothing to refuse


def test_runs_saved_before_sample_temperature_read_it_as_one():
  old = json.loads(draw_config().to_json_best_effort())
  del old["model"]["sample_temperature"]
  assert config_lib.upgrade(old)["model"]["sample_temperature"] == 1.0
