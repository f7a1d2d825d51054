"""Data: IDX / TFDS data sets as random-access sources and grain batch loaders."""

from jaxgen.data.idx import (
  DataError,
  IdxConfig,
  IdxImages,
  default_data_dir,
  idx_config,
  read_idx,
)
from jaxgen.data.pipeline import (
  ArraySource,
  DatasetInfo,
  Loader,
  in_memory,
  load,
  make_loader,
  num_batches_per_epoch,
)

__all__ = [
  "ArraySource",
  "DataError",
  "DatasetInfo",
  "IdxConfig",
  "IdxImages",
  "Loader",
  "default_data_dir",
  "idx_config",
  "in_memory",
  "load",
  "make_loader",
  "num_batches_per_epoch",
  "read_idx",
]
