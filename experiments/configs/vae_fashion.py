"""Convolutional VAE on Fashion-MNIST (28x28x1), dynamically binarised; ~10 min on 2 CPU cores."""

import ml_collections

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.batch_size = 64
  c.num_steps = 6000
  c.sample_every = 1000
  c.checkpoint_every = 1000

  c.model.family = "vae"
  c.model.width = 16  # encoder 28x28 -> 14x14x(2w) -> 7x7x(4w) -> (mean, log-variance);
  c.model.kernel_size = 4  # decoder mirrors it with transposed convolutions
  c.model.latent_dim = 32
  c.model.num_classes = 0  # 10: conditional VAE (label into encoder and decoder)
  c.model.likelihood = "bernoulli"  # dynamic binarisation | "logistic": the 8-bit grey levels

  c.optim.name = "adam"
  c.optim.lr = 1e-3

  # Likelihood bounds for `jaxgen evaluate` (Burda et al. 2016 use k=5000 on all 10000 test images;
  # these defaults fit a few minutes on 2 CPU cores).
  c.eval = ml_collections.ConfigDict()
  c.eval.num_importance = 1000  # k importance samples per test image (IWAE bound)
  c.eval.num_test_images = 1000  # first N test images (10000: the whole split)
  c.eval.batch_size = 200  # divides over 1, 2, 4, 8 devices and into num_test_images
  c.eval.seed = 0  # fixes the test binarisation and importance samples
  return c
