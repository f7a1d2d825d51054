"""Test-set likelihood bounds (-ELBO, -IWAE_k) of families with `log_likelihood_bounds`, and
their protocol."""

import math
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgen.evaluation import sharded, splits

DEFAULT_NUM_IMPORTANCE = 100  # IWAE k; --num_importance or config.num_importance overrides
LIKELIHOOD_IMAGES_PER_CALL = 8192  # batch x k for likelihood bounds


def eval_setting(config: ml_collections.ConfigDict, name: str, default: Any = None) -> Any:
  """config.eval.<name> (the family configs' evaluation block), else `default`."""
  value = config.get("eval", {}).get(name)
  return default if value is None else value


def likelihood_bounds(
  family: Any,
  state: Any,
  batch: dict[str, np.ndarray],
  *,
  num_importance: int,
  seed: int = 0,
  batch_size: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
  """Test-set bounds from `family.log_likelihood_bounds`: -ELBO, -IWAE_k (nats/image, bits/dim).

  batch: image [N, H, W, C] and every other feature the family may read (label, tokens, ...),
  each [N, ...]; the family gets them all, `batch_size` rows at a time. The family binarises
  (or not) with the fixed key it is given; batch b uses fold_in(key(seed), b).
  """
  bounds = jax.jit(family.log_likelihood_bounds, static_argnames="num_samples")
  key = jax.random.fold_in(jax.random.key(seed), 1)

  def fn(i: int, block: dict, size: int) -> dict[str, jax.Array]:
    result = bounds(state, block, jax.random.fold_in(key, i), num_samples=num_importance)
    return {k: result[k] for k in ("elbo", "iwae")}

  batch_size = batch_size or max(LIKELIHOOD_IMAGES_PER_CALL // num_importance, 1)
  out = sharded.map_batches(fn, batch, len(batch["image"]), mesh, batch_size)
  dims = math.prod(batch["image"].shape[1:]) * math.log(2)
  nats = {k: -float(np.mean(np.asarray(v, np.float64))) for k, v in out.items()}
  return dict(
    nll_elbo=nats["elbo"],
    nll_iwae=nats["iwae"],
    bpd_elbo=nats["elbo"] / dims,
    bpd_iwae=nats["iwae"] / dims,
  )


def likelihood_results(
  config: ml_collections.ConfigDict,
  family: Any,
  state: Any,
  *,
  num_samples: int,
  seed: int,
  num_importance: int | None,
  likelihood_seed: int | None,
  step: int,
  mesh: jax.sharding.Mesh,
) -> tuple[dict[str, float], dict]:
  """(bounds, protocol) on the first config.eval.num_test_images test examples (default
  num_samples), every feature of them; k and seed: the arguments where given, else config.eval.*,
  else DEFAULT_NUM_IMPORTANCE and `seed`."""
  k = int(num_importance or eval_setting(config, "num_importance", DEFAULT_NUM_IMPORTANCE))
  lk_seed = eval_setting(config, "seed", seed) if likelihood_seed is None else likelihood_seed
  num_images = min(
    eval_setting(config, "num_test_images", num_samples), splits.split_size(config, "test")
  )
  batch = splits.read_batch(config, "test", np.arange(num_images))  # the first N, every feature
  bounds = likelihood_bounds(
    family,
    state,
    batch,
    num_importance=k,
    seed=lk_seed,
    batch_size=eval_setting(config, "batch_size"),
    mesh=mesh,
  )
  likelihood = config.model.get("likelihood", "bernoulli")
  protocol = dict(
    num_importance=k,
    num_images=num_images,
    split="test",
    first_images=True,
    checkpoint_step=step,
    seed=lk_seed,
    model_likelihood=likelihood,
    binarisation=(
      f"each test image binarised once, Bernoulli(pixel), from seed {lk_seed}"
      if likelihood == "bernoulli"
      else "none (8-bit grey levels)"
    ),
    units="nats per image; bits/dim = nats / (H*W*C ln 2)",
  )
  return bounds, protocol
