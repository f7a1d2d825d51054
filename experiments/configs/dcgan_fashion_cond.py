"""Class-conditional DCGAN on Fashion-MNIST (28x28x1): `dcgan_fashion.py` with the label in both
networks, conditional BatchNorm in the generator and a projection discriminator.

    jaxgen train --config experiments/configs/dcgan_fashion_cond.py --workdir runs/dcgan_cond
    jaxgen sample --workdir runs/dcgan_cond --num 16 --label 7 --out sneakers.png

The same 5000 steps as the demo; README "Class-conditional quality" has its conditional accuracy.
"""

from pathlib import Path

from jaxgen import config as config_lib


def get_config():
  c = config_lib.load(Path(__file__).with_name("dcgan_fashion.py"))
  c.model.num_classes = 10  # the generator draws the class it is given; the grid is class-per-row
  c.model.class_bn = True  # every BatchNorm of G gets per-class scale and bias offsets
  return c
