"""The 30-minute emoji recipe: `dcgan_emoji.py` at 32x32, conditioned on the 99 subgroups, with
lr 1e-3, lazy R1 and MSGAN's mode-seeking term.

    jaxgen train --config experiments/configs/dcgan_emoji_sub32.py --workdir runs/emoji_sub32
    jaxgen sample --workdir runs/emoji_sub32 --label "Animals & Nature,food-fruit" --seed 0

Told the subgroup ("animal-bird", "food-fruit", 1 to 232 training emoji each) the generator draws
recognisable emoji of all nine groups within 30 minutes on 2 CPU cores, where conditioned on the
nine groups it draws about four; but without more, every latent of a small subgroup drew the same
training emoji (duplicates 0.755, 36% of samples closer in pixels to a training emoji than training
emoji are to one another, at 4,550 steps). The mode-seeking term (`model.mode_seeking`, Mao et al.
2019) makes two latents of one subgroup give two images: at weight 1, same host and budget,
duplicates 0.122 (floor 0.038), memorisation 0.030 / 0.082 in features / pixels (floor 0.045 /
0.050), FD 30.77 (floor 35.40), recall 0.598, group accuracy 0.832 (README "Emoji (colour)",
session 34). Weight 2 trades sharpness for variety: duplicates 0.081 (no flag), memorisation
0.016 / 0.037, recall 0.668, group accuracy 0.775. Weight 1.5 (session 35, one run) lies between:
duplicates 0.101 (no flag), memorisation 0.025 / 0.051, group accuracy 0.830, with the faces of
a subgroup nearly one image again; not enough to move from 1.

4,500 steps are 30 minutes on a 2-core AMD EPYC VM (2.5 steps/s); the Intel VMs of earlier
sessions ran this step 1.45x slower, session 35's fresh AMD VM 1.9x (about 58 min). `jaxgen
evaluate` needs the 32x32 group classifier (`runs/classifier_emoji/base32`, README "Emoji
(colour)"); `jaxgen sample --label` takes group names (each row cycles through the group's
subgroups) or subgroup names.
"""

from pathlib import Path

from jaxgen import config as config_lib


def get_config():
  c = config_lib.load(Path(__file__).with_name("dcgan_emoji.py"))
  c.data.name = "emoji/base32"
  c.data.image_shape = (32, 32, 3)
  c.data.label_feature = "subgroup"
  c.model.num_classes = 99
  c.optim.g_lr = 1e-3
  c.optim.d_lr = 1e-3
  c.model.r1_gamma = 0.1
  c.model.r1_every = 4  # lazy R1: the penalty's FLOPs on one D update in four
  c.model.mode_seeking = 1.0  # against the collapse of small subgroups onto one training emoji
  c.num_steps = 4500
  c.checkpoint_every = 500
  c.keep_checkpoints = 10  # the run's history, for `jaxgen evaluate --step`
  return c
