"""alignDRAW text-to-image on colour emoji (emoji/base32, 32x32x3): the caption is the emoji's
CLDR name, e.g. "red heart". 15,000 steps took 37 minutes on 2 CPU cores shared with other jobs
(README "Colour pictures").

    jaxgen train --config experiments/configs/aligndraw_emoji.py --workdir runs/aligndraw_emoji
    jaxgen sample --workdir runs/aligndraw_emoji --caption "red heart"

The vocabulary is the training split's words (jaxgen.data.emoji.training_vocabulary), stored in
the run's config.json as data.vocabulary; the test split's names are held out of training, and
their words that no training name uses read as <unk>. `jaxgen evaluate` reports group accuracy
(does the emoji classifier give a sample the name's group) for seen and held-out names.

Likelihood: DRAW's only one, Bernoulli on each RGB value, binarised afresh with probability
(x + 1) / 2 (as for Fashion-MNIST); the samples are the Bernoulli means, so colours come out as
intensities, but its nats are not 8-bit likelihoods (compare vae_emoji's only with each other).
"""

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.data.name = "emoji/base32"
  c.data.image_shape = (32, 32, 3)
  c.batch_size = 32
  c.num_steps = 15000
  c.sample_every = 2500
  c.checkpoint_every = 2500

  c.model.family = "draw"
  c.model.draw_steps = 16  # T, the canvas updates per image
  c.model.read_n = 5  # N x N read window (per colour channel)
  c.model.write_n = 6  # N x N write window
  c.model.write_attention = "gaussian"  # the patch: DRAW's window | "shift": learned offsets
  c.model.write_offsets = "soft"  # shift: the offset distribution | "hard": its mode
  c.model.write_patches = 1  # shift: patches per step, each with its own offsets
  c.model.write_coarse = 0  # shift: f > 0 adds a dense (H/f) x (W/f) canvas, upsampled
  c.model.write_stride = 1  # shift: offsets are multiples of this many pixels
  c.model.enc_features = 256
  c.model.dec_features = 256
  c.model.latent_dim = 16
  c.model.cell = "tanh"
  c.model.learned_prior = True  # p(z_t | h^dec_{t-1}): the prior depends on the name
  c.model.binarization = "dynamic"  # | "expected": train on the pixel probabilities
  c.model.kl_warmup_steps = 0  # N > 0: the KL weight rises linearly to 1 over N steps
  c.model.free_bits = 0.0  # > 0: nats per step of KL the loss does not price (free bits)
  c.model.kl_beta = 1.0  # < 1: the posterior's KL weight (the learned prior still fits all of it)
  c.model.sample_temperature = 1.0  # < 1: samples scale the prior's noise (more typical)
  c.model.scan_unroll = 1  # T steps per loop iteration (T: unrolled)
  c.model.captions = True
  c.model.embed_dim = 64
  c.model.lang_features = 128
  c.model.align_features = 128
  # Sample grids: 8 names, one per group but Flags; all training names except "red heart", a
  # held-out (test) name whose two words training names use ("red apple" is held out too).
  c.model.example_captions = (
    "grinning face",
    "red heart",
    "thumbs up",
    "cat face",
    "pizza",
    "rocket",
    "soccer ball",
    "light bulb",
  )

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.grad_clip = 10.0

  return c
