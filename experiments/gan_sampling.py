"""A finished GAN run's sample metrics under other ways of sampling it, with no training: is a
gap in the weights, or in how they are sampled?

    python experiments/gan_sampling.py --workdir runs/cond_long \
      --variants ema,z1.1,z0.9,trunc2,online,standing,q8

Each variant is scored as `jaxgen evaluate` scores the run (`evaluation.run.evaluate_state`: the
same samples' seed, the test split, the run's extractor; the run's metrics.json is not
written). Variants (README "Class-conditional DCGAN", session 30):
  ema       as `jaxgen evaluate`: the EMA weights, z ~ N(0, I)
  z<S>      z ~ N(0, S^2 I), e.g. z1.1 (wider) or z0.9 (narrower)
  trunc<T>  z truncated to [-T, T] elementwise (`jaxgen sample --truncation T`)
  online    the online generator's weights in place of the EMA's
  standing  the EMA weights with BatchNorm statistics recomputed for them (model.ema_bn=standing)
  q8        the images rounded to 8 bits, as the real ones are and as a saved PNG is
"""

import argparse
import types
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxgen import art, parallel, trainer
from jaxgen import config as config_lib
from jaxgen.errors import UserError
from jaxgen.evaluation import extractor as extractor_lib
from jaxgen.evaluation import run as run_lib
from jaxgen.steps import gan

COLUMNS = ("fd", "precision", "recall", "density", "coverage", "conditional_accuracy")


def _with_sample(sample) -> types.SimpleNamespace:
  """The GAN family with its `sample` replaced."""
  return types.SimpleNamespace(**{**vars(gan), "sample": sample})


def variant(name: str, state: gan.GANState) -> tuple[Any, gan.GANState]:
  """(family, state) that sample as variant `name` does (module docstring)."""
  if name == "ema":
    return gan, state
  if name == "online":
    return gan, state.replace(ema_params=state.g.params)
  if name == "standing":
    hp = {**config_lib.GAN_RECIPES, **state.hp, "ema_bn": "standing"}  # a plain run's hp lacks them
    return gan, state.replace(hp=ml_collections.FrozenConfigDict(hp))
  if name == "q8":
    # viz.to_uint8's levels, read back as the input pipeline reads uint8 (x / 127.5 - 1); in jnp,
    # since the samples are drawn inside jit
    to_8_bits = lambda x: jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0
    return _with_sample(lambda s, key, num, c=None: to_8_bits(gan.sample(s, key, num, c))), state
  for prefix, draw in (
    ("trunc", art.draw_latents),
    ("z", lambda key, shape, s: s * jax.random.normal(key, shape)),
  ):
    if name.startswith(prefix):
      try:
        value = float(name[len(prefix) :])
      except ValueError:
        break

      def sample(s, key, num, c=None, draw=draw, value=value):
        return gan.sample_latents(s, draw(key, (num, s.hp.latent_dim), value), c)

      return _with_sample(sample), state
  raise UserError(
    f"unknown variant {name!r}; choose from ema, z<scale>, trunc<T>, online, standing, q8"
  )


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--workdir", required=True, help="a GAN run")
  p.add_argument("--variants", default="ema,z1.1,z0.9,trunc2,online,standing,q8")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--extractor", default=None, help="classifier workdir (as jaxgen evaluate)")
  p.add_argument("--num_samples", type=int, default=run_lib.DEFAULT_NUM_SAMPLES)
  args = p.parse_args()
  config, family, state = trainer.load_run(args.workdir, args.step)
  if family is not gan:
    raise UserError(f"{args.workdir} is a {config.model.family!r} run; this script takes a GAN run")
  mesh = parallel.make_mesh()
  ext, note = extractor_lib.optional_extractor(
    config, args.extractor, mesh, f"{args.workdir}/{run_lib.CACHE_DIR}"
  )
  if ext is None:
    raise UserError(note)
  print("| variant | " + " | ".join(COLUMNS) + " |")
  print("|---" * (len(COLUMNS) + 1) + "|")
  for name in args.variants.split(","):
    fam, st = variant(name, state)
    m = run_lib.evaluate_state(config, fam, st, ext, num_samples=args.num_samples, mesh=mesh)
    m = m["metrics"]
    print(f"| {name} | " + " | ".join(f"{m[c]:.4g}" for c in COLUMNS if c in m) + " |", flush=True)


if __name__ == "__main__":
  main()
