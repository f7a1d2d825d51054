"""The documented longer run (at most 60 minutes on 2 CPU cores; 38.6 measured): the demo's
class-conditional DCGAN (`dcgan_fashion_cond.py`) twice as wide (width 64: 21.2 against 5.5 GFLOP
per step), with the R1 gradient penalty (gamma 0.1) on every discriminator update (30.1 GFLOP
per step in all), 11,000 steps with the learning rate decayed to 0 on a cosine. Without R1
(24,000 steps in 49 minutes) it reached FD 11.99 / recall 0.779 / coverage 0.837; with it
FD 9.57 / 0.810 / 0.848 (README).

    jaxgen train --config experiments/configs/dcgan_fashion_cond_long.py --workdir runs/cond_long

`--config.eval_every=2750` adds the in-training curve README shows (it needs the classifier that
README's Evaluation section trains).

At width 32 the same recipe stopped improving after about 20,000 steps (README "Class-conditional
DCGAN: the demo" has the runs' curves and evaluations). R1 on every D update, as measured: lazy R1
(`--config.model.r1_every=4`, 1.17x the cost of a step without R1 against 1.66x) over 13,000 steps
in 45 minutes gave coverage 0.851 and recall 0.791, no better (README). Nor did minibatch
standard deviation in D (`--config.model.mbstd_group=4`): coverage 0.840 against this config's
0.848, FD 8.21 against 7.89, one run each in session 24.
"""

from pathlib import Path

from jaxgen import config as config_lib


def get_config():
  c = config_lib.load(Path(__file__).with_name("dcgan_fashion_cond.py"))
  c.model.width = 64
  c.model.r1_gamma = 0.1
  c.model.r1_every = 1
  c.num_steps = 11000
  c.optim.schedule = "cosine"
  c.sample_every = 2750
  c.checkpoint_every = 2750
  return c
