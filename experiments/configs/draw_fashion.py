"""DRAW on Fashion-MNIST (28x28x1), dynamically binarised: about 10 minutes on 2 CPU cores."""

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.batch_size = 64
  c.num_steps = 10000
  c.sample_every = 2500
  c.checkpoint_every = 2500

  c.model.family = "draw"
  c.model.draw_steps = 10  # T: glimpses / canvas updates per image
  c.model.read_n = 2  # N x N read window (0: read the whole image and error image)
  c.model.write_n = 5  # N x N write window (0: write the whole canvas)
  c.model.write_attention = "gaussian"  # the patch: DRAW's window | "shift": learned offsets
  c.model.write_offsets = "soft"  # shift: the offset distribution | "hard": its mode
  c.model.write_patches = 1  # shift: patches per step, each with its own offsets
  c.model.write_coarse = 0  # shift: f > 0 adds a dense (H/f) x (W/f) canvas, upsampled
  c.model.write_stride = 1  # shift: offsets are multiples of this many pixels
  c.model.enc_features = 256  # encoder RNN hidden units
  c.model.dec_features = 256  # decoder RNN hidden units
  c.model.latent_dim = 10  # z_t per step
  c.model.cell = "tanh"  # h_t = tanh(W_hh h_{t-1} + W_xh x_t + b_h) | "lstm" | "gru"
  c.model.learned_prior = False  # N(0, I) per step | alignDRAW's prior from h^dec_{t-1}
  c.model.binarization = "dynamic"  # | "expected": train on the pixel probabilities
  c.model.kl_warmup_steps = 0  # N > 0: the KL weight rises linearly to 1 over N steps
  c.model.free_bits = 0.0  # > 0: nats per step of KL the loss does not price (free bits)
  c.model.kl_beta = 1.0  # < 1: the posterior's KL weight (the learned prior still fits all of it)
  c.model.sample_temperature = 1.0  # < 1: samples scale the prior's noise (more typical)
  c.model.scan_unroll = 10  # = draw_steps: unrolled, 1.3x the steps/s of a loop (1) on 2 CPU cores
  c.model.captions = False

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.grad_clip = 10.0  # recurrent nets: clip the global gradient norm
  return c
