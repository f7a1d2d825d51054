"""The documented longer run (at most 60 minutes on 2 CPU cores): the demo's class-conditional
DCGAN (`dcgan_fashion_cond.py`) twice as wide (width 64: 21.2 against 5.5 GFLOP per step), 24,000
steps with the learning rate decayed to 0 on a cosine.

    jaxgen train --config experiments/configs/dcgan_fashion_cond_long.py --workdir runs/cond_long

`--config.eval_every=4000` adds the in-training curve README shows (it needs the classifier that
README's Evaluation section trains).

At width 32 the same recipe stopped improving after about 20,000 steps (README "Class-conditional
DCGAN: the demo" has both runs' curves and evaluations).
"""

from pathlib import Path

from jaxgen import config as config_lib


def get_config():
  c = config_lib.load(Path(__file__).with_name("dcgan_fashion_cond.py"))
  c.model.width = 64
  c.num_steps = 24000
  c.optim.schedule = "cosine"
  c.sample_every = 4000
  c.checkpoint_every = 4000
  return c
