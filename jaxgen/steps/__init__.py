"""Model families: one module per family, each implementing the `Family` contract.

`get_family(name)` looks a family up by the name used in configs (`config.model.family`);
`register(name, module)` adds one. Both check the module against the contract once, when it
is registered, so a missing function fails there in one line rather than mid-run.
"""

import importlib
import types
from typing import Any, Protocol

import jax
import ml_collections

from jaxgen.errors import ConfigError, UserError

FAMILIES = ("gan", "vae", "draw", "classifier")  # jaxgen's own, as modules jaxgen.steps.<name>


class Family(Protocol):
  """The four pure functions the loop, `jaxgen sample` and `jaxgen evaluate` call.

  Optional functions, looked up where used:
    sample_frames(state, key, num, conditioning=None) -> images over time [T, num, H, W, C]
    tokenize(state, caption) -> int32 tokens [L]: the family samples from captions
    log_likelihood_bounds(state, batch, key, num_samples) -> {"elbo": [B], "iwae": [B]} nats
    with_temperature(state, temperature) -> state whose `sample` scales the prior's noise (the
      one it samples at is state.hp.sample_temperature)
    step_variants(state) -> tuple of dicts: static keyword arguments of train_step over a cycle
      of training steps (step n runs entry n % len); the loop compiles one step per distinct
      entry (the GAN's lazy R1: steps without the penalty compile without it)
  A family's report pictures are registered in jaxgen.pictures.
  """

  def init_state(
    self, config: ml_collections.ConfigDict, key: jax.Array, sample_batch: dict
  ) -> Any: ...

  def train_step(self, state: Any, batch: dict, key: jax.Array) -> tuple[Any, dict]:
    """(new state, metrics); may take static keyword arguments, those of `step_variants`."""

  def eval_step(self, state: Any, batch: dict, key: jax.Array) -> dict: ...

  def sample(self, state: Any, key: jax.Array, num: int, conditioning: Any = None) -> jax.Array: ...


CONTRACT = tuple(n for n in vars(Family) if not n.startswith("_"))  # the functions, in order
_registered: dict[str, Family] = {}


def register(name: str, module: types.ModuleType) -> Family:
  """Checks that `module` implements `Family` and makes it the family `name`; returns it."""
  for function in CONTRACT:
    if not callable(getattr(module, function, None)):
      raise ConfigError(
        f"model family {name!r} ({module.__name__}) has no {function}(); define it as "
        f"jaxgen.steps.Family.{function} describes"
      )
  _registered[name] = module
  return module


def get_family(name: str) -> Family:
  """The module implementing family `name` (one of FAMILIES, or a registered one)."""
  if name not in _registered:
    if name not in FAMILIES:
      known = tuple(dict.fromkeys(FAMILIES + tuple(_registered)))
      raise ConfigError(f"unknown model family {name!r}; set config.model.family to one of {known}")
    register(name, importlib.import_module(f"jaxgen.steps.{name}"))
  return _registered[name]


def at_temperature(family: Family, state: Any, temperature: float | None) -> Any:
  """`state` sampling at `temperature` (None: as it is), or a UserError for a family without
  `with_temperature` (GAN and VAE: `jaxgen sample --truncation` is the analogue)."""
  if temperature is None:
    return state
  if not hasattr(family, "with_temperature"):
    name = family.__name__.rsplit(".", 1)[-1]
    raise UserError(
      f"--temperature needs a model that draws its latents from a prior at every step (DRAW, "
      f"alignDRAW); this run is {name!r} (for GAN and VAE, jaxgen sample --truncation is the "
      "analogue)"
    )
  return family.with_temperature(state, temperature)


def sample_temperature(family: Family, state: Any) -> float | None:
  """The temperature `state`'s samples are drawn at, for protocols; None for a family without
  one."""
  return float(state.hp.sample_temperature) if hasattr(family, "with_temperature") else None
