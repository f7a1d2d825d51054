"""Config overrides (`--config.key=value`, parsed by ml_collections.config_flags as the field's
type) and their one-line errors, through jaxgen.config and the CLI."""

import json

import pytest
from conftest import REPO

from jaxgen import cli
from jaxgen import config as config_lib
from jaxgen.errors import ConfigError

DCGAN = REPO / "experiments/configs/dcgan_fashion.py"
MODEL_FIELDS = (
  "['ada_kimg', 'ada_target', 'arch', 'augment', 'augment_p', 'class_bn', 'd_steps', 'ema_bn', "
  "'ema_decay', 'family', "
  "'fresh_real_batches', 'full_res_width', 'kernel_size', 'latent_dim', 'loss', 'mbstd_group', "
  "'mid_layers', 'mode_seeking', "
  "'num_classes', 'r1_every', 'r1_gamma', 'spectral_norm', 'standing_batches', "
  "'transition_end', 'transition_start', 'width']"
)


@pytest.mark.parametrize(
  "key, text, value",
  [
    ("num_steps", "5", 5),
    ("model.num_classes", "0x10", 16),
    ("max_loss", "10", 10.0),  # an int for a float field is the float
    ("max_loss", "inf", float("inf")),
    ("optim.g_lr", "1e-3", 1e-3),
    ("xla_cpu_eigen_convs", "false", False),
    ("xla_cpu_eigen_convs", "True", True),
    ("data.name", "a=b", "a=b"),  # text after the first '=' is the value
    ("data.source_dir", "/tmp/a b", "/tmp/a b"),
    ("data.image_shape", "(32,32,3)", (32, 32, 3)),  # a placeholder(tuple), None until set
    # fast_ops is FieldReference("auto", field_type=object): a Python literal, else the text.
    ("fast_ops", "false", False),
    ("fast_ops", "True", True),
    ("fast_ops", "auto", "auto"),
  ],
)
def test_overrides_are_parsed_as_the_fields_type(key, text, value):
  c = config_lib.load(DCGAN, {key: text})
  got = c
  for name in key.split("."):
    got = got[name]
  assert got == value and type(got) is type(value)


def test_an_object_field_keeps_its_type_and_takes_any_value():
  c = config_lib.load(DCGAN, {"fast_ops": "false"})
  assert c.get_ref("fast_ops").get_type() is object
  c.fast_ops = "auto"  # still assignable from any type afterwards
  assert c.fast_ops == "auto"


@pytest.mark.parametrize(
  "key, text, message",
  [
    (
      "model.widht",
      "8",
      f"--config.model.widht: no field 'widht' in the config; fields here: {MODEL_FIELDS}",
    ),
    (
      "modl.width",
      "8",
      "--config.modl.width: no field 'modl' in the config; fields here: ['accum_steps', "
      "'batch_size', 'checkpoint_every', 'data', 'dtype', 'eval_every', 'eval_num_samples', 'fast_ops', "
      "'keep_checkpoints', 'log_every', 'max_loss', 'model', 'num_grid_samples', 'num_steps', "
      "'optim', 'sample_every', 'seed', 'xla_cpu_eigen_convs']",
    ),
    ("num_steps.x", "1", "--config.num_steps.x: config.num_steps is a value, not a group"),
    (
      "model",
      "{'width': 8}",
      "--config.model is a group of fields; set one of them: --config.model.ada_kimg=...",
    ),
    ("num_steps", "abc", "--config.num_steps=abc: cannot parse as int"),
    ("num_steps", "5.5", "--config.num_steps=5.5: expected int, got float"),
    ("model.width", "'8'", "--config.model.width='8': expected int, got str"),
    ("max_loss", "abc", "--config.max_loss=abc: cannot parse as float"),
    ("xla_cpu_eigen_convs", "maybe", "--config.xla_cpu_eigen_convs=maybe: expected true or false"),
    ("data.image_shape", "(28, 28", "--config.data.image_shape=(28, 28: cannot parse as tuple"),
  ],
)
def test_unknown_keys_and_bad_values_are_one_line_errors(key, text, message):
  with pytest.raises(ConfigError) as e:
    config_lib.load(DCGAN, {key: text})
  assert str(e.value) == message


def test_a_none_field_without_a_type_is_a_one_line_error(tmp_path):
  path = tmp_path / "untyped.py"
  path.write_text(
    "import ml_collections\n\n"
    "def get_config():\n"
    "  c = ml_collections.ConfigDict()\n"
    "  c.steps = None\n"
    "  return c\n"
  )
  with pytest.raises(ConfigError) as e:
    config_lib.load(path, {"steps": "3"})
  assert str(e.value) == (
    "--config.steps=3: a NoneType field cannot be overridden; give it a value or a "
    "config_dict.placeholder(TYPE) of bool, int, float, str or tuple"
  )


def _train_exit(tmp_path, *overrides: str) -> str:
  """The one-line message `jaxgen train` exits with for `overrides` (nothing is written)."""
  argv = ["train", "--config", str(DCGAN), "--workdir", str(tmp_path / "run"), *overrides]
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert not (tmp_path / "run").exists()
  return e.value.code


def test_cli_errors_are_one_line(tmp_path):
  assert _train_exit(tmp_path, "--config.num_steps", "5.5") == (
    "jaxgen train: error: --config.num_steps=5.5: expected int, got float"
  )
  assert _train_exit(tmp_path, "--config.model.widht=8") == (
    f"jaxgen train: error: --config.model.widht: no field 'widht' in the config; "
    f"fields here: {MODEL_FIELDS}"
  )
  assert _train_exit(tmp_path, "--config.data.name", "--config.num_steps=3") == (
    "jaxgen: --config.data.name needs a value (--config.data.name=VALUE)"
  )
  with pytest.raises(SystemExit) as e:
    cli.main(["sample", "--workdir", str(tmp_path), "--config.num_steps=3"])
  assert e.value.code == (
    "jaxgen sample: error: --config.* overrides apply to `train` only; sample uses the run's "
    "own config (WORKDIR/config.json)"
  )


def test_spaced_and_joined_overrides_give_the_same_config():
  # absl alone would read `--config.fast_ops false` as the bare boolean form (True) and leave
  # "false" over; jaxgen joins each flag with its value first.
  spaced = ["--config.fast_ops", "false", "--config.xla_cpu_eigen_convs", "false"]
  spaced += ["--config.num_steps", "7", "--config.seed", "-1"]
  joined = ["--config.fast_ops=false", "--config.xla_cpu_eigen_convs=false"]
  joined += ["--config.num_steps=7", "--config.seed=-1"]
  configs = []
  for flags in (spaced, joined):
    rest, overrides = cli._split_overrides(["train", "--config", str(DCGAN), *flags])
    assert rest == ["train", "--config", str(DCGAN)]
    configs.append(config_lib.load(DCGAN, overrides))
  assert configs[0].to_dict() == configs[1].to_dict()
  assert (configs[0].fast_ops, configs[0].xla_cpu_eigen_convs) == (False, False)
  assert (configs[0].num_steps, configs[0].seed) == (7, -1)


def test_a_run_saved_before_this_waves_fields_resumes_as_it_ran():
  """A classifier run from before accumulation, schedules and the optimizer names: its
  config.json lacks the new fields and says "adam" with a weight decay (which built AdamW).
  upgrade() reads it as what it ran (AdamW, cosine schedule, one micro-batch), so today's
  classifier config resumes it without a change, while a real change is still refused."""
  today = config_lib.load(REPO / "experiments/configs/classifier_fashion.py")
  old = json.loads(today.to_json_best_effort())
  for key in ("accum_steps",):
    del old[key]
  for key in ("schedule", "warmup_steps", "final_lr_fraction"):
    del old["optim"][key]
  for key in ("num_workers", "prefetch", "device_prefetch", "in_memory"):
    del old["data"][key]
  old["optim"]["name"] = "adam"
  up = config_lib.upgrade(old)
  assert (up["optim"]["name"], up["optim"]["schedule"], up["accum_steps"]) == ("adamw", "cosine", 1)
  assert config_lib.drift(config_lib.flatten(up), today) == []
  today.optim.lr = 1.0
  with pytest.raises(ConfigError, match=r"^config.optim.lr is 0.002 in this run's config.json"):
    config_lib.drift(config_lib.flatten(up), today)
  assert "schedule" not in old["optim"]  # the stored dict itself is not modified
