"""Model families. Each module implements the train-step contract:

    state = init_state(config, key, sample_batch)
    state, metrics = train_step(state, batch, key)
    metrics = eval_step(state, batch, key)
    images = sample(state, key, num, conditioning=None)

`get_family(name)` looks a family up by the name used in configs (`config.model.family`).
"""

import importlib
import types

from jaxgen.errors import ConfigError

FAMILIES = ("gan", "vae", "draw", "classifier")


def get_family(name: str) -> types.ModuleType:
  """Returns the module implementing family `name` (one of FAMILIES)."""
  if name not in FAMILIES:
    raise ConfigError(
      f"unknown model family {name!r}; set config.model.family to one of {FAMILIES}"
    )
  return importlib.import_module(f"jaxgen.steps.{name}")
