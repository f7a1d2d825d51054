"""Conv classifier on Fashion-MNIST: jaxgen's feature extractor for sample metrics.

    jaxgen train --config experiments/configs/classifier_fashion.py --workdir runs/classifier_fashion_mnist

`jaxgen evaluate` finds it there (runs/classifier_<data.name>) without flags. 5 epochs, about
5 minutes on 2 free CPU cores; test accuracy (logged every eval_every steps) ends near 92.5%.
"""

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.batch_size = 128
  c.num_steps = 2350  # 5 epochs of 60,000 images
  c.log_every = 100
  c.eval_every = 1175  # test-split loss and accuracy into metrics.jsonl
  c.checkpoint_every = 1175
  c.keep_checkpoints = 1
  c.sample_every = 0  # a classifier draws no images: no sample grids
  c.num_grid_samples = 0

  c.model.family = "classifier"
  c.model.width = 32  # 3x3 convs: 32 @28x28, pool, 64 @14x14, pool, 128 @7x7
  c.model.feature_dim = 128  # penultimate features fed to the sample metrics
  c.model.dropout = 0.3
  c.model.flip = False  # random horizontal flips (slower to converge in 5 epochs)

  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.schedule = "cosine"  # decayed to 0 over num_steps
  c.optim.weight_decay = 1e-4
  return c
