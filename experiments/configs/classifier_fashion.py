"""Conv classifier on Fashion-MNIST: jaxgen's feature extractor for sample metrics.

    jaxgen train --config experiments/configs/classifier_fashion.py --workdir runs/classifier_fashion_mnist

`jaxgen evaluate` finds it there (runs/classifier_<data.name>) without flags. About 4 epochs,
a few minutes on 2 CPU cores, ~93% test accuracy (logged every eval_every steps).
"""

from jaxgen.config import base_config


def get_config():
  c = base_config()
  c.batch_size = 128
  c.num_steps = 1900          # ~4 epochs of 60,000 images
  c.log_every = 100
  c.eval_every = 950          # test-set loss and accuracy into metrics.jsonl
  c.checkpoint_every = 950
  c.keep_checkpoints = 1
  c.sample_every = 0          # a classifier draws no images: no sample grids
  c.num_grid_samples = 0

  c.model.family = "classifier"
  c.model.width = 32          # convs: 32 @28x28, 64 /2, 64, 128 /2 -> 7x7x128
  c.model.feature_dim = 128   # penultimate features fed to the sample metrics
  c.model.dropout = 0.3
  c.model.flip = True         # random horizontal flips

  c.optim.name = "adam"
  c.optim.lr = 2e-3           # cosine-decayed to 0 over num_steps
  c.optim.weight_decay = 1e-4
  return c
