"""The family contract (checked once, at registration) and the import graph: families do not
import each other; what two of them share lives in models/common.py or steps/common.py."""

import ast
import types
from pathlib import Path

import pytest
from conftest import REPO

from jaxgen import pictures, steps
from jaxgen.errors import ConfigError

FAMILY_PACKAGES = ("models", "steps")


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
  """Families registered by a test are forgotten after it."""
  monkeypatch.setattr(steps, "_registered", dict(steps._registered))


def _module(name: str, *functions: str) -> types.ModuleType:
  module = types.ModuleType(name)
  for f in functions:
    setattr(module, f, lambda *args, **kwargs: None)
  return module


def test_a_module_without_train_step_is_rejected_at_registration():
  module = _module("my_family", "init_state", "eval_step", "sample")
  with pytest.raises(ConfigError) as e:
    steps.register("mine", module)
  message = str(e.value)
  assert message == (
    "model family 'mine' (my_family) has no train_step(); define it as "
    "jaxgen.steps.Family.train_step describes"
  )
  with pytest.raises(ConfigError, match="unknown model family 'mine'"):
    steps.get_family("mine")  # the rejected module was not registered


def test_a_registered_family_is_looked_up_by_name():
  module = _module("my_family", *steps.CONTRACT)
  assert steps.register("mine_ok", module) is module
  assert steps.get_family("mine_ok") is module
  assert steps.CONTRACT == ("init_state", "train_step", "eval_step", "sample")


@pytest.mark.parametrize("name", steps.FAMILIES)
def test_jaxgen_families_implement_the_contract(name):
  family = steps.get_family(name)
  assert all(callable(getattr(family, f)) for f in steps.CONTRACT)
  assert steps.get_family(name) is family  # registered once


def test_unknown_family_names_the_choices():
  with pytest.raises(ConfigError, match=r"set config.model.family to one of \('gan', 'vae'"):
    steps.get_family("flow")


def test_pictures_cover_the_image_families_only():
  assert set(pictures.BY_FAMILY) == set(steps.FAMILIES) - {"classifier"}
  assert pictures.write("classifier", None, {}, None, Path("unused")) == []


def _imported_modules(path: Path) -> set[str]:
  """Dotted names a module imports (`from a.b import c` gives a.b and a.b.c)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def _sibling_imports(package: str, root: Path = REPO) -> dict[str, list[str]]:
  """{module path: the sibling family modules it imports} in jaxgen/<package> under `root`."""
  folder = root / "jaxgen" / package
  # modules named after a family; others (common, rnn: DRAW's recurrent cells) are pieces
  families = {p.stem for p in folder.glob("*.py")} & set(steps.FAMILIES)
  found = {}
  for path in sorted(folder.glob("*.py")):
    siblings = {f"jaxgen.{package}.{f}" for f in families - {path.stem}}
    hits = sorted(_imported_modules(path) & siblings)
    if hits:
      found[f"jaxgen/{package}/{path.name}"] = hits
  return found


@pytest.mark.parametrize("package", FAMILY_PACKAGES)
def test_no_family_module_imports_a_sibling_family(package):
  assert _sibling_imports(package) == {}


def test_the_import_check_sees_a_sibling_import(tmp_path):
  """The check above can fail: a models module importing another family is reported."""
  models = tmp_path / "jaxgen" / "models"
  models.mkdir(parents=True)
  (models / "gan.py").write_text("")
  (models / "common.py").write_text("")
  (models / "draw.py").write_text("")
  (models / "vae.py").write_text(
    "from jaxgen.models import gan, common\nimport jaxgen.models.draw\n"
  )
  assert _sibling_imports("models", tmp_path) == {
    "jaxgen/models/vae.py": ["jaxgen.models.draw", "jaxgen.models.gan"]
  }
