"""Conv classifier of the emoji group (9 classes) on 64x64x3 emoji: the feature extractor for
`jaxgen evaluate` of the emoji models.

    jaxgen train --config experiments/configs/classifier_emoji.py --workdir runs/classifier_emoji

`jaxgen evaluate` looks for it in runs/classifier_<data.name>, i.e. runs/classifier_emoji.
Only 1,659 training emoji: random flips and dropout against over-fitting.
"""

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.data.name = "emoji"  # = emoji/base64; the generators' data set
  c.data.image_shape = (64, 64, 3)
  c.batch_size = 64
  c.num_steps = 2600  # about 100 epochs of 1,659 images
  c.log_every = 100
  c.eval_every = 520  # test-split loss and accuracy into metrics.jsonl
  c.checkpoint_every = 520
  c.keep_checkpoints = 1
  c.sample_every = 0  # a classifier draws no images
  c.num_grid_samples = 0

  c.model.family = "classifier"
  c.model.width = 32  # 3x3 convs: 32 @64x64, pool, 64 @32x32, pool, 128 @16x16
  c.model.feature_dim = 128
  c.model.dropout = 0.5
  c.model.flip = True  # most emoji read the same mirrored, and the group does not change

  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.schedule = "cosine"  # decayed to 0 over num_steps
  c.optim.weight_decay = 1e-4
  return c
