"""DCGAN on colour emoji (64x64x3, jaxgen.data.emoji), conditional on the emoji's group.

    jaxgen train --config experiments/configs/dcgan_emoji.py --workdir runs/dcgan_emoji

The reference DCGAN (Radford et al. 2016) at width 64 with 4x4 kernels. Generator: z (+ one-hot
group) -> dense -> 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64x3, stride-2 transposed
convolutions with BatchNorm and ReLU, tanh output. Discriminator: stride-2 convolutions 64 ->
128 -> 256 -> 512 with LeakyReLU(0.2) and BatchNorm on all but the first, a dense logit and a
projection term for the group; conditional BatchNorm in G (model.class_bn). 1,858 base emoji
(1,659 train). On 2 CPU cores, before class_bn: 59 images/s, 1,651 steps in 30 minutes, where
flags are recognisable and most other groups are not yet (README "Colour pictures"). With
class_bn and --config.optim.g_lr=1e-3 --config.optim.d_lr=1e-3: 1,501 steps in 30 minutes, four
groups recognisable, group accuracy 0.733. The 20,000 steps are a GPU run.
--config.data.label_feature=subgroup --config.model.num_classes=99 conditions on the 99 subgroups
instead: at 32x32 in 30 minutes, recognisable emoji in all nine groups (group accuracy 0.907
against 0.836), but small subgroups collapse to copies of their training emoji (README "Emoji");
adding --config.model.augment=translation --config.model.ada_target=0.8 (adaptive augmentation)
stops the copying at group accuracy 0.754 (target 0.9: 0.810, with some copying). Transitional
training (--config.model.transition_start=500 --config.model.transition_end=1500) did not stop
the collapse: duplicates 0.918 against 0.755 for the same run without it (README, session 32).
Mode seeking (--config.model.mode_seeking=1.0) did: duplicates 0.122, FD 30.77 (floor 35.40),
group accuracy 0.832; that 30-minute recipe is `dcgan_emoji_sub32.py` (session 34).
"""

from jaxgen.config import GAN_RECIPES, base_config


def get_config():
  c = base_config()
  c.data.name = "emoji"  # = emoji/base64; emoji/all64 adds skin-tone and hair variants
  c.data.image_shape = (64, 64, 3)
  c.batch_size = 64
  c.num_steps = 20000  # about 770 epochs of the 1,659 training emoji
  c.sample_every = 1000
  c.checkpoint_every = 1000

  c.model.family = "gan"
  c.model.width = 64  # channels 8w, 4w, 2w, w at 4x4, 8x8, 16x16, 32x32
  c.model.kernel_size = 4
  c.model.latent_dim = 100
  c.model.num_classes = 9  # the emoji groups (Smileys & Emotion ... Flags); 0: unconditional
  c.model.loss = "nonsaturating"
  c.model.d_steps = 1
  c.model.ema_decay = 0.999
  c.model.update(GAN_RECIPES)  # the recipe switches, all off (README "GAN recipes")
  # Conditional BatchNorm: every layer of G depends on the group, not only the latent's one-hot
  # (at 32x32 in 30 minutes: group accuracy 0.729 against 0.667 without; README "Colour pictures").
  c.model.class_bn = True

  c.optim.name = "adam"
  c.optim.g_lr = 2e-4
  c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  return c
