"""DCGAN on Fashion-MNIST (28x28x1), unconditional: 5000 steps, about 7 minutes on 2 CPU cores (the
`make demo` run before the class-conditional `dcgan_fashion_cond.py`)."""

from jaxgen.config import GAN_RECIPES, base_config


def get_config():
  c = base_config()
  c.batch_size = 64
  c.num_steps = 5000
  c.sample_every = 500
  c.checkpoint_every = 500

  c.model.family = "gan"
  c.model.width = 32  # generator: dense -> 7x7x(4w) -> 14x14x(2w) -> 28x28x1
  c.model.kernel_size = 5
  c.model.latent_dim = 64
  c.model.num_classes = 0  # 10: class-conditional (label in, image of that class out)
  c.model.loss = "nonsaturating"  # | "minimax" | "hinge"
  c.model.d_steps = 1  # discriminator updates per generator update
  c.model.ema_decay = 0.999  # EMA of generator weights, used for sampling
  c.model.update(GAN_RECIPES)  # the recipe switches, all off (README "GAN recipes")

  c.optim.name = "adam"
  c.optim.g_lr = 2e-4
  c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  return c
