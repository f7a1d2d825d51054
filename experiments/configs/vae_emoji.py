"""Convolutional VAE on colour emoji (64x64x3, jaxgen.data.emoji), each RGB value a discretised
logistic over its 256 levels (model.likelihood = "logistic": the decoder gives a location and a
log-scale per channel, 6 output channels).

    jaxgen train --config experiments/configs/vae_emoji.py --workdir runs/vae_emoji
"""

import ml_collections

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.data.name = "emoji"  # = emoji/base64
  c.data.image_shape = (64, 64, 3)
  c.batch_size = 64
  c.num_steps = 20000
  c.sample_every = 1000
  c.checkpoint_every = 1000

  c.model.family = "vae"
  c.model.width = 32  # encoder 64x64 -> 32x32x(w) -> 16x16x(2w) -> 8x8x(4w) -> 4x4x(8w)
  c.model.kernel_size = 4  # decoder mirrors it with transposed convolutions
  c.model.latent_dim = 128
  c.model.num_classes = 0  # 9: conditional on the emoji group
  c.model.likelihood = "logistic"  # the 8-bit RGB values as they are

  c.optim.name = "adam"
  c.optim.lr = 1e-3

  # Likelihood bounds for `jaxgen evaluate` on the 199 test emoji.
  c.eval = ml_collections.ConfigDict()
  c.eval.num_importance = 1000
  c.eval.num_test_images = 192  # the first 192 of the 199 test emoji (divides the batch)
  c.eval.batch_size = 64
  c.eval.seed = 0
  return c
