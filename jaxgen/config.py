"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict.

`load(path, overrides)` imports the file and applies `key.sub=value` overrides (the
`--config.key.sub=value` flags of the CLI) through ml_collections.config_flags, which parses each
value as the type of its field.
"""

import ast
import importlib.util
import json
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_dict, config_flags

from jaxgen.errors import ConfigError


def base_config() -> ml_collections.ConfigDict:
  """Settings every experiment shares: data, loop cadence, checkpoints."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 64  # global, over all devices and hosts
  c.num_steps = 1000
  c.log_every = 50  # metrics to metrics.jsonl and the progress bar
  c.sample_every = 500  # a sample grid PNG in workdir/samples/ (0: only at the end)
  c.checkpoint_every = 500  # Orbax save of state + data position (always at the end)
  c.keep_checkpoints = 3
  c.num_grid_samples = 64  # 0: no sample grids (e.g. for classifiers)
  c.eval_every = 0  # jaxgen.evaluation metrics every N steps into metrics.jsonl (0: off)
  c.eval_num_samples = 2000  # samples vs test images per in-training evaluation
  c.max_loss = 1e6  # a loss (metric named *loss) above this stops the run as diverged
  c.xla_cpu_eigen_convs = True  # CPU: XLA's Eigen convolutions, not YNNPACK's (jaxgen.ops.compile)
  # jaxgen.ops' custom-VJP passes: "auto" (on XLA:CPU, where they were measured faster; off on
  # GPU/TPU) | True | False (plain flax autodiff); any of the three types may be assigned.
  c.fast_ops = config_dict.FieldReference("auto", field_type=object)
  # Computation dtype (README "Mixed precision"): "float32" | "bfloat16" (activations and
  # matmuls/convolutions in bfloat16; params, optimizer state, BatchNorm statistics and losses
  # in float32) | "float16" (the same, with dynamic loss scaling: steps/common.LossScale).
  c.dtype = "float32"
  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist"  # or "idx" (MNIST-format files in source_dir) or a TFDS name
  c.data.source_dir = ""  # folder of IDX files ("" = the data set's default)
  c.data.data_dir = (
    ""  # where TFDS data sets are prepared ("" = JAXGEN_DATA_DIR or ~/tensorflow_datasets)
  )
  c.data.image_shape = config_dict.placeholder(tuple)  # checked against the data when set
  # The integer feature conditional models (and classifiers) take as the class: "label", or
  # another of the data's, e.g. emoji's "subgroup" (99 classes within its 9 groups; README "Emoji").
  c.data.label_feature = "label"
  # Input: the training split is decoded into host memory once (Fashion-MNIST: 47 MB, about 4 s)
  # and each batch is one index into it; in_memory=False reads and decodes every batch from disk
  # (data sets larger than memory), best with num_workers=2 or more: threads that build batches
  # ahead of the loop and keep `prefetch` ready (0: in the loop's thread, the right choice in
  # memory, where a batch takes microseconds and threads only take cores from the step).
  # `device_prefetch` global batches sit on the devices at once (2: the next is copied while the
  # step runs). None of the four changes the batches, so all may change on resume.
  c.data.in_memory = True
  c.data.num_workers = 0
  c.data.prefetch = 4
  c.data.device_prefetch = 2
  c.model = ml_collections.ConfigDict()
  # Gradient accumulation: each step averages the gradients of accum_steps micro-batches of
  # batch_size / accum_steps (jaxgen.steps.common.accumulate); one optimizer update per step.
  c.accum_steps = 1
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # "adam" | "adamw" (with weight_decay) | "sgd"
  c.optim.schedule = "constant"  # or "cosine" (to final_lr_fraction * lr at num_steps)
  c.optim.warmup_steps = 0  # linear warm-up from 0 over this many steps
  c.optim.final_lr_fraction = 0.0  # where a cosine schedule ends, as a fraction of the peak
  return c


def _field(config: ml_collections.ConfigDict, key: str) -> tuple[ml_collections.ConfigDict, str]:
  """The ConfigDict holding dotted `key` and its last name; ConfigErrors name what is wrong."""
  node, path = config, []
  for name in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f"--config.{key}: config.{'.'.join(path)} is a value, not a group")
    if name not in node:
      raise ConfigError(
        f"--config.{key}: no field {name!r} in the config; fields here: {sorted(node.keys())}"
      )
    parent, node = node, node[name]
    path.append(name)
  if isinstance(node, ml_collections.ConfigDict):
    raise ConfigError(
      f"--config.{key} is a group of fields; set one of them: --config.{key}.{sorted(node)[0]}=..."
    )
  return parent, name


def _field_type(parent: ml_collections.ConfigDict, leaf: str) -> type:
  """The field's declared type (object for fast_ops, tuple for a placeholder(tuple))."""
  try:
    return parent.get_ref(leaf).get_type()
  except ValueError:  # a plain None has no reference, hence no type
    return type(None)


def _type_error(key: str, text: str, field_type: type) -> ConfigError:
  if field_type is bool:
    return ConfigError(f"--config.{key}={text}: expected true or false")
  try:
    got = type(ast.literal_eval(text)).__name__
  except (ValueError, SyntaxError):
    return ConfigError(f"--config.{key}={text}: cannot parse as {field_type.__name__}")
  return ConfigError(f"--config.{key}={text}: expected {field_type.__name__}, got {got}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
  """Sets each dotted `key` of `config` to its string value, in place, parsed by
  ml_collections.config_flags (absl) as the field's type: bool, int, float, str, tuple, or
  a Python literal (else the text) for object-typed FieldReferences such as fast_ops."""
  for key, text in overrides.items():
    parent, leaf = _field(config, key)
    # One override per parse: a bad value is named by its key. `--config.key=text` always
    # carries its value, so absl's bare boolean form cannot swallow the next argument.
    argv = ["jaxgen", f"--config.{key}={text}"]
    flag_values = flags.FlagValues()
    field_type = _field_type(parent, leaf)
    try:
      config_flags.DEFINE_config_dict(  # defines a flag for each --config.* in argv
        "config", config, flag_values=flag_values, lock_config=False, sys_argv=argv
      )
      flag_values(argv)
    except flags.IllegalFlagValueError:
      raise _type_error(key, text, field_type) from None
    except flags.Error:  # absl has no parser for the type: None without a type, or a list
      raise ConfigError(
        f"--config.{key}={text}: a {field_type.__name__} field cannot be overridden; give it "
        f"a value or a config_dict.placeholder(TYPE) of bool, int, float, str or tuple"
      ) from None


def load(path: str | Path, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """Imports `path`, calls its get_config() and applies `overrides`."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(
      f"config file {path} not found; pass e.g. --config experiments/configs/dcgan_fashion.py"
    )
  spec = importlib.util.spec_from_file_location(f"jaxgen_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} has no get_config() function returning a ConfigDict")
  config = module.get_config()
  apply_overrides(config, overrides or {})
  return config


# Fields a resumed run may change: they set how long it runs and what it records, not what
# its steps compute. Every other field is the run's identity (model, data, optimiser, seed...).
RESUMABLE = (
  "num_steps",
  "log_every",
  "sample_every",
  "checkpoint_every",
  "keep_checkpoints",
  "num_grid_samples",
  "eval_every",
  "eval_num_samples",
  "max_loss",
  "eval.",
  "data.num_workers",
  "data.prefetch",
  "data.in_memory",
  "data.device_prefetch",
)


def _require(
  config: ml_collections.ConfigDict, key: str, minimum: int | float, kind: type = int
) -> None:
  value = config
  for part in key.split("."):
    value = value.get(part) if value is not None else None
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
    expected = "a number" if kind is float else "an integer"
    raise ConfigError(f"config.{key}={value!r}: expected {expected}")
  if not value >= minimum:
    bound = "positive" if minimum == 1 or (kind is float and minimum > 0) else f">= {minimum}"
    raise ConfigError(f"config.{key}={value}: must be {bound}; set --config.{key}=...")


DTYPES = ("float32", "bfloat16", "float16")  # config.dtype; float16 with dynamic loss scaling


def check_dtype(name: object) -> str:
  """`name` if it is a supported computation dtype (DTYPES); else a one-line ConfigError."""
  if name not in DTYPES:
    raise ConfigError(f"config.dtype={name!r}: set --config.dtype to one of {DTYPES}")
  return name


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the loop's counts and cadences before any work; raises one-line ConfigErrors."""
  check_dtype(config.get("dtype", "float32"))
  for key in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
    _require(config, key, 1)
  for key in ("sample_every", "num_grid_samples", "eval_every", "optim.warmup_steps"):
    _require(config, key, 0)
  _require(config, "accum_steps", 1)
  accum = config.get("accum_steps") or 1
  if config.get("batch_size") and config.batch_size % accum:
    raise ConfigError(
      f"batch_size {config.batch_size} does not split into accum_steps={accum} micro-batches; "
      f"set --config.batch_size to a multiple of {accum}"
    )
  if config.get("eval_every"):
    _require(config, "eval_num_samples", 1)
  _require(config, "max_loss", 1e-30, float)
  for key in ("data.num_workers", "data.prefetch"):
    _require(config, key, 0)
  _require(config, "data.device_prefetch", 1)


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, object]:
  """{"a.b": value} of a config as its config.json holds it (tuples as lists)."""
  tree = (
    json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config
  )
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[prefix + k] = v

  walk(tree, "")
  return out


def _resumable(key: str) -> bool:
  return any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE)


# The GAN recipe switches (jaxgen.steps.gan, README "GAN recipes"), all off: the plain DCGAN.
# Every GAN config declares them (`c.model.update(GAN_RECIPES)`), so `--config.model.augment=...`
# works on any of them, and a run saved before one existed resumes with it off.
GAN_RECIPES = dict(
  arch="dcgan",  # | "resnet"
  spectral_norm="none",  # | "d" | "dg"
  r1_gamma=0.0,  # zero-centred gradient penalty on reals (0: off)
  r1_every=1,  # lazy R1: every k-th D update, scaled by k
  augment="",  # DiffAugment policy, e.g. "translation,cutout,color"
  augment_p=1.0,  # the probability each op of the policy is applied to each image
  ada_target=0.0,  # ADA: adapt that probability (from 0) so E[sign D(real)] -> this (0: off)
  ada_kimg=100.0,  # ADA: thousands of real images for the probability to cross [0, 1]
  ema_bn="online",  # | "standing": BatchNorm statistics recomputed for the EMA generator
  standing_batches=8,  # batches those statistics average
  fresh_real_batches=False,  # d_steps > 1: a new real batch for each D update
  class_bn=False,  # conditional BatchNorm in G (needs num_classes > 0)
  mbstd_group=0,  # minibatch standard deviation in D over groups of this many images (0: off)
  full_res_width=0,  # DCGAN: G and D get a layer of this many channels at full resolution
  mid_layers=0,  # DCGAN: G and D get this many stride-1 3x3 layers at the lowest resolution
  transition_start=0,  # transitional training: the label fades in from this step...
  transition_end=0,  # ...to this one (0: off, conditional from the start; needs num_classes)
  mode_seeking=0.0,  # MSGAN: weight of G's mode-seeking term on latent pairs per label (0: off)
)
# DRAW's shift-write switches (model.write_offsets, write_patches, write_coarse, write_stride) and
# the values that give the plain shift write, as runs saved before them ran it
SHIFT_WRITE_DEFAULTS = dict(write_offsets="soft", write_patches=1, write_coarse=0, write_stride=1)
# Fields added after runs were saved, with the values that reproduce what those runs did.
ADDED = {
  "accum_steps": 1,
  "dtype": "float32",
  "optim.schedule": "constant",
  "optim.warmup_steps": 0,
  "optim.final_lr_fraction": 0.0,
  "data.num_workers": 0,  # input settings: any value gives the same batches
  "data.prefetch": 4,
  "data.device_prefetch": 2,
  "data.in_memory": True,
  "data.label_feature": "label",
}
# Fields one family's configs gained since, with the value runs saved before them ran with; every
# config file of that family sets them, so a resumed run compares like with like.
ADDED_FOR_FAMILY = {
  "draw": {
    "model.binarization": "dynamic",
    "model.kl_warmup_steps": 0,
    "model.free_bits": 0.0,
    "model.kl_beta": 1.0,
    "model.sample_temperature": 1.0,
    "model.write_attention": "gaussian",
    **{f"model.{k}": v for k, v in SHIFT_WRITE_DEFAULTS.items()},
    "model.scan_unroll": 1,
  },
  "gan": {f"model.{k}": v for k, v in GAN_RECIPES.items()},
}
RENAMED = {"model.num_steps": "model.draw_steps"}  # DRAW's T, before training steps shared its name


def added(family: str | None) -> dict[str, object]:
  """Dotted fields added since runs of `family` were saved, with the values those runs ran."""
  out = {**ADDED, **ADDED_FOR_FAMILY.get(family, {})}
  if family == "classifier":  # its learning rate was always cosine-decayed over num_steps
    out["optim.schedule"] = "cosine"
  return out


def upgrade(stored: dict) -> dict:
  """A run's config.json (nested dict) as today's code reads it: fields added since it was
  saved get the values it ran with, renamed fields their new names, and "adam" with a weight
  decay (which built AdamW before the optimizers were named for what they build) is "adamw"."""
  tree = json.loads(json.dumps(stored))  # a deep copy

  def node(path: str) -> tuple[dict | None, str]:
    *parents, leaf = path.split(".")
    d = tree
    for p in parents:
      d = d.get(p) if isinstance(d, dict) else None
    return (d if isinstance(d, dict) else None), leaf

  for old, new in RENAMED.items():
    (src, a), (dst, b) = node(old), node(new)
    if src is not None and a in src and dst is not None and b not in dst:
      dst[b] = src.pop(a)
  model, optim = tree.get("model") or {}, tree.get("optim")
  family = model.get("family") if isinstance(model, dict) else None
  for key, value in added(family).items():
    d, leaf = node(key)
    if d is not None and leaf not in d:
      d[leaf] = value
  if isinstance(optim, dict) and optim.get("name") == "adam" and optim.get("weight_decay"):
    optim["name"] = "adamw"
  return tree


def drift(stored: dict, requested: ml_collections.ConfigDict) -> list[str]:
  """Fields a resumed run changes, as "key: stored -> requested" lines.

  Raises ConfigError naming the first field that would change what the run computes.
  """
  want = flatten(requested)
  # A config file that does not declare a field added since (one written before it) runs as
  # the saved run did: compare it with that value, not "<absent>".
  for key, value in added(want.get("model.family")).items():
    if key in stored:
      want.setdefault(key, value)
  changes = []
  for key in sorted(set(stored) | set(want)):
    old = stored.get(key, "<absent>")
    new = want.get(key, "<absent>")
    if old == new:
      continue
    if not _resumable(key):
      raise ConfigError(
        f"config.{key} is {old!r} in this run's config.json but {new!r} was requested; only "
        f"step counts and cadences may change on resume (--config.{key}={old} keeps it), or "
        f"train in a new --workdir"
      )
    changes.append(f"config.{key}: {old!r} -> {new!r}")
  return changes
