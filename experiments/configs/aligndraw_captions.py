"""alignDRAW text-to-image on 60x60 captioned Fashion-MNIST canvases: about 17 minutes on 2 CPU
cores. `jaxgen sample --workdir RUN --caption "the sneaker is on the left of the trouser"`.

The decoder writes two 28x28 patches (an item's size) at every step, each moved by its own
learned offset distribution over a grid of 16-pixel steps (`write_attention = "shift"`,
`write_stride = 16`: the nine places of these canvases). The patch weights are the same at every
place, so an item learnt at one place can be drawn at another, which the dense write (one weight
per canvas pixel, the default until session 31) could not. Caption accuracy on the 2,000 test
captions (`jaxgen evaluate`, all / held-out / seen) after 15,000 steps, at temperature 0.5 (the
config's `sample_temperature`): 0.745 / 0.636 / 0.759 (seed 0) and 0.772 / 0.760 / 0.774 (seed
1), against 0.729 / 0.516 / 0.756 for the dense write's 9,000 steps; at temperature 1 held-out
captions score 0.564-0.640 and seen ones 0.672-0.682 (README "DRAW and alignDRAW" has the
measurements)."""

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.batch_size = 32
  c.num_steps = 15000
  c.sample_every = 3000
  c.checkpoint_every = 3000
  c.data.name = "captioned_fashion_mnist"  # 20000 train / 2000 test canvases (/small: 2000 / 500)

  c.model.family = "draw"
  c.model.draw_steps = 16  # T
  c.model.read_n = 6  # N x N read window
  c.model.write_n = 28  # 0: a dense layer writes the whole canvas | N: an N x N patch
  c.model.write_attention = "shift"  # the patch: learned offsets | "gaussian": DRAW's window
  c.model.write_offsets = "soft"  # shift: the offset distribution | "hard": its mode
  c.model.write_patches = 2  # shift: patches per step, each with its own offsets
  c.model.write_coarse = 0  # shift: f > 0 adds a dense (H/f) x (W/f) canvas, upsampled
  c.model.write_stride = 16  # shift: offsets are multiples of this many pixels (the 9 places)
  c.model.enc_features = 256
  c.model.dec_features = 256
  c.model.latent_dim = 16
  c.model.cell = "tanh"  # | "lstm" | "gru"
  c.model.learned_prior = True  # p(z_t | h^dec_{t-1}): the prior depends on the caption
  c.model.binarization = "dynamic"  # | "expected": train on the pixel probabilities
  c.model.kl_warmup_steps = 0  # N > 0: the KL weight rises linearly to 1 over N steps
  c.model.free_bits = 0.0  # > 0: nats per step of KL the loss does not price (free bits)
  c.model.kl_beta = 1.0  # < 1: the posterior's KL weight (the learned prior still fits all of it)
  # samples scale the prior's noise by this (1: the model's own prior; 0.5 names the item more
  # often, README "Sampling temperature"); training and the likelihood bounds are unaffected
  c.model.sample_temperature = 0.5
  c.model.scan_unroll = 1  # T steps per loop iteration (T: unrolled; no faster here)
  c.model.captions = True  # bidirectional caption encoder + alignment attention
  c.model.embed_dim = 64  # word embedding
  c.model.lang_features = 128  # caption RNN hidden units per direction
  c.model.align_features = 128

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.grad_clip = 10.0
  return c
