"""README walk-through: the commands of README.md's ```bash blocks and its ```python blocks, in
order, as a newcomer would type them, on a small budget; a failing command fails the test, so
the README cannot drift from the code.

The commands are parsed out of README.md at test time (`readme_commands`), so a changed README
is what gets tested. They run in-process (`cli.main`, the code behind .venv/bin/jaxgen) in a
fresh folder holding a link to experiments/, so `runs/...` paths land there and no extractor
exists until the README trains one.

Two forms:
  test_every_readme_command_runs (slow, `make test-all`; 4-6 min on 2 shared CPU cores): runs
      every command and both python blocks.
  test_readme_commands_parse_in_order_and_the_vae_section_runs (default suite, 1-1.5 min):
      every command through jaxgen's argument parser, train configs loaded with their
      overrides, each workdir read only after a command before it wrote it; then the VAE
      section's commands (train, sample, evaluate without an extractor, report) for real,
      and the first python block.

Small budget (`small_budget`), added after the README's own flags (later flags win):
  jaxgen train      --config.num_steps=2, --config.data.source_dir=<fashion_slice: 512 train /
                    128 test real images>, --config.data.data_dir=<a fresh folder>; captioned data
                    sets use their /small variant (2000 / 500 canvases, not 20000 / 2000); emoji
                    configs keep the Debian font and table (skipped where not installed)
  jaxgen evaluate   --num_samples 128 --num_importance 2 (with --workdir)
  sample, report    as written

Commands not run (`SKIPPED`, each with its reason) and one substituted (`SUBSTITUTED`):
  make demo         -> its Makefile recipe's `jaxgen` lines (read from the Makefile), so that
                       runs/demo exists for the Evaluation section
  make test         this test suite itself
  make bench, python -m benchmarks.throughput
                    benchmarks: minutes, and the PyTorch peer (tests/test_benchmarks.py)
  make device-check  the accelerator check: wheels, tests and benchmarks (tests/test_benchmarks.py)
  source .venv/bin/activate
                    the test is already in the environment .venv provides
  tensorboard --logdir runs/demo/tb
                    a server that runs until stopped (tests/test_report.py reads the events)
  jaxgen train --config ... (--coordinator 10.0.0.1:1234)
                    a multi-host launch with a placeholder config and a cluster address
                    (tests/test_trainer.py runs two real processes through that path)
A command matching no rule is run; one that is not a `jaxgen` command fails the test.
"""

import contextlib
import io
import re
import shlex
import time
from pathlib import Path

import pytest
from conftest import REPO

from jaxgen import cli, evaluation
from jaxgen import config as config_lib
from jaxgen.data import emoji

README = REPO / "README.md"
MAKEFILE = REPO / "Makefile"

SKIPPED = (  # (how the command starts, why it is not run)
  ("make test", "this test suite itself"),
  ("make bench", "benchmarks: minutes, and the PyTorch peer (tests/test_benchmarks.py)"),
  ("python -m benchmarks.", "benchmarks: minutes, and the PyTorch peer (tests/test_benchmarks.py)"),
  (
    "make device-check",
    "the accelerator check: installs wheels, then minutes of tests and benchmarks "
    "(tests/test_benchmarks.py runs its driver)",
  ),
  ("source .venv/bin/activate", "the test already runs in .venv's environment"),
  (
    "python experiments/gan_sampling.py",
    "needs a trained GAN run and the classifier the Evaluation section trains later "
    "(tests/test_gan_recipes.py checks what each variant samples)",
  ),
  (
    "python experiments/gan_recipes.py",
    "the GAN recipes study: minutes to hours of training (tests/test_gan_recipes.py runs "
    "every recipe's switches through the loop)",
  ),
  (
    "python experiments/aligndraw_diagnosis.py",
    "needs a trained alignDRAW run and the classifier the Evaluation section trains later "
    "(tests/test_evaluate.py runs its scoring on a tiny model)",
  ),
  (
    "gcloud compute tpus",
    "a TPU pod slice launch: needs Cloud TPUs; each worker runs the jaxgen train command "
    "run above, with JAXGEN_DISTRIBUTED=1 (tests/test_trainer.py runs the multi-process path)",
  ),
  (
    "tensorboard --logdir",
    "TensorBoard's server runs until stopped (an optional install); "
    "tests/test_report.py reads the same event files with its reader",
  ),
  (
    "jaxgen train --config ... ",
    "multi-host launch: placeholder config and cluster address "
    "(tests/test_trainer.py runs the 2-process path)",
  ),
)
SUBSTITUTED = {"make demo": "the Makefile's demo recipe (its jaxgen lines)"}
NUM_STEPS, NUM_SAMPLES, NUM_IMPORTANCE = 2, 128, 2
VAE_SECTION = "The VAE"


def bash_blocks(markdown: str) -> list[str]:
  """The bodies of the ```bash blocks (indented ones too), in order."""
  return [m.group(2) for m in re.finditer(r"^([ \t]*)```bash\n(.*?)^\1```", markdown, re.M | re.S)]


def python_blocks(markdown: str) -> list[str]:
  """The bodies of the ```python blocks, in order."""
  return re.findall(r"^```python\n(.*?)^```", markdown, re.M | re.S)


def sections(markdown: str) -> dict[str, str]:
  """{"## heading": text up to the next such heading}."""
  parts = re.split(r"^## (.+)\n", markdown, flags=re.M)
  return dict(zip(parts[1::2], parts[2::2]))


def commands(block: str) -> list[str]:
  """One string per command: backslash continuations joined, comments and blanks dropped."""
  out = []
  for line in re.sub(r"\\\n", " ", block).splitlines():
    words = shlex.split(line, comments=True)
    if words:
      out.append(shlex.join(words))
  return out


def readme_commands(markdown: str) -> list[str]:
  return [c for block in bash_blocks(markdown) for c in commands(block)]


def demo_recipe(makefile: str) -> list[str]:
  """`make demo`'s jaxgen commands, as the Makefile's demo recipe runs them."""
  recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
  return [
    re.sub(r"^\$\(VENV\)/bin/", "", line.strip())
    for line in recipe.splitlines()
    if "bin/jaxgen " in line
  ]


def plan(markdown: str, makefile: str) -> tuple[list[str], list[tuple[str, str]]]:
  """(jaxgen commands to run, in order; [(README command, why it is skipped)])."""
  run, skipped = [], []
  for command in readme_commands(markdown):
    if command in SUBSTITUTED:
      run += demo_recipe(makefile)
    elif why := next((why for start, why in SKIPPED if command.startswith(start)), None):
      skipped.append((command, why))
    elif "_emoji.py" in command and not all(p.is_file() for p in emoji.source_paths()):
      skipped.append((command, "the emoji font and table are not installed (make data-emoji)"))
    else:
      assert command.startswith("jaxgen "), (
        f"no rule for README command `{command}`: run, skip or substitute it (tests/test_readme.py)"
      )
      run.append(command)
  return run, skipped


def small_budget(command: str, source_dir: Path, data_dir: Path) -> list[str]:
  """The argv (after `jaxgen`) of a README command with the budget of the module docstring."""
  argv = shlex.split(command)[1:]
  if argv[0] == "train":
    name = config_lib.load(argv[argv.index("--config") + 1]).data.name
    extra = [
      f"--config.num_steps={NUM_STEPS}",
      *([] if name.startswith("emoji") else [f"--config.data.source_dir={source_dir}"]),
      f"--config.data.data_dir={data_dir}",
    ]
    if name.startswith(evaluation.CAPTIONED_PREFIX) and "/" not in name:
      extra.append(f"--config.data.name={name}/small")
    return argv + extra
  if argv[0] == "evaluate" and "--workdir" in argv:
    return argv + ["--num_samples", str(NUM_SAMPLES), "--num_importance", str(NUM_IMPORTANCE)]
  return argv


def run_jaxgen(argv: list[str]) -> str:
  """cli.main(argv) -> its stdout; a SystemExit (jaxgen's one-line errors) fails the test."""
  out = io.StringIO()
  try:
    with contextlib.redirect_stdout(out):
      cli.main(argv)
  except SystemExit as e:
    pytest.fail(f"`jaxgen {shlex.join(argv)}` exited: {e}\n{out.getvalue()}")
  return out.getvalue()


def check_parses(argv: list[str], written: set[str], evaluated: set[str]) -> None:
  """argv through jaxgen's parser (train: its config loaded with the overrides); a workdir may
  be read only once an earlier command wrote it (`written`, `evaluated`: updated here)."""
  rest, overrides = cli._split_overrides(argv)
  try:
    args = cli._parser().parse_args(rest)
  except SystemExit:
    pytest.fail(f"`jaxgen {shlex.join(argv)}`: jaxgen's parser refuses it")
  if args.command == "train":
    config_lib.load(args.config, overrides)
    written.add(args.workdir)
    return
  compare = getattr(args, "compare", None)
  workdirs = args.workdir if isinstance(args.workdir, list) else [args.workdir]  # report: 1+
  for workdir in compare or workdirs:
    assert workdir in (evaluated if compare else written), (
      f"`jaxgen {shlex.join(argv)}` reads {workdir} before a README command writes it"
    )
  if args.command == "evaluate" and args.workdir:
    evaluated.add(args.workdir)


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
  """A fresh folder as the working directory, experiments/ linked in, no extractor set."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv(evaluation.EXTRACTOR_ENV, raising=False)
  (tmp_path / "experiments").symlink_to(REPO / "experiments")
  return tmp_path


def test_readme_is_parsed_into_the_commands_it_shows():
  markdown = README.read_text()
  run, skipped = plan(markdown, MAKEFILE.read_text())
  assert run[0] == (
    "jaxgen train --config experiments/configs/dcgan_fashion_cond.py --workdir runs/demo"
  )
  # continuation lines joined, comments dropped, quoted captions kept whole
  assert (
    "jaxgen train --config experiments/configs/dcgan_fashion.py --workdir runs/dcgan_cond "
    "--config.model.num_classes=10 --config.num_steps=5000"
  ) in run
  assert (
    "jaxgen sample --workdir runs/aligndraw --caption 'the sneaker is on the left of the trouser'"
  ) in run
  assert [c.split()[:2] for c, _ in skipped] == [
    ["make", "test"],
    ["tensorboard", "--logdir"],
    ["source", ".venv/bin/activate"],
    ["jaxgen", "train"],  # indented block
    ["gcloud", "compute"],
    ["python", "experiments/gan_sampling.py"],
    ["python", "experiments/gan_recipes.py"],
    ["python", "experiments/gan_recipes.py"],
    ["python", "experiments/gan_recipes.py"],  # the study's measured budget
    ["python", "experiments/gan_recipes.py"],  # second round: the conditional recipe, 5 min each
    ["python", "experiments/gan_recipes.py"],  # ... the two combinations, 8 min each
    ["python", "experiments/gan_recipes.py"],  # ... replotted together
    ["python", "experiments/gan_recipes.py"],  # third round: switches on top of the demo
    ["python", "experiments/aligndraw_diagnosis.py"],
    ["python", "experiments/aligndraw_diagnosis.py"],  # the grid write's two runs (session 31)
    ["make", "bench"],
    ["python", "-m"],
    ["python", "-m"],  # --peers eager,compile --require_quiet
    ["python", "-m"],  # benchmarks.loop
    ["python", "-m"],  # benchmarks.loop, the measured run
    ["python", "-m"],  # the measured throughput table: three commands
    ["python", "-m"],
    ["python", "-m"],
    ["python", "-m"],  # benchmarks.layers
    ["make", "device-check"],
  ]
  assert readme_commands(sections(markdown)[VAE_SECTION])[0].startswith("jaxgen train")
  assert len(python_blocks(markdown)) == 2
  with pytest.raises(AssertionError, match="no rule for README command `pip install x`"):
    plan("```bash\npip install x\n```\n", "")


def test_readme_commands_parse_in_order_and_the_vae_section_runs(fashion_slice, newcomer):
  markdown = README.read_text()
  run, _ = plan(markdown, MAKEFILE.read_text())
  written, evaluated = set(), set()
  for command in run:
    check_parses(small_budget(command, fashion_slice, newcomer / "tfds"), written, evaluated)
  with pytest.raises(AssertionError, match="reads runs/nothing before"):
    check_parses(["sample", "--workdir", "runs/nothing"], written, evaluated)

  vae = readme_commands(sections(markdown)[VAE_SECTION])
  assert [c.split()[1] for c in vae] == ["train", "sample", "evaluate", "report"]
  outputs = {c: run_jaxgen(small_budget(c, fashion_slice, newcomer / "tfds")) for c in vae}
  evaluated = outputs[vae[2]]
  assert "-IWAE nats/image" in evaluated and "FD (lower better)" not in evaluated
  assert "note: sample metrics (FD, KID, precision/recall, ...) skipped" in evaluated
  assert (newcomer / "runs/vae/metrics.json").is_file()
  assert (newcomer / "runs/vae/report").is_dir()

  namespace = {}
  with contextlib.redirect_stdout(io.StringIO()):
    exec(compile(python_blocks(markdown)[0], "README.md", "exec"), namespace)
  assert namespace["x"].shape == (16, 28, 28, 1) and namespace["logits"].shape == (16,)


@pytest.mark.slow
def test_every_readme_command_runs(fashion_slice, newcomer, capsys):
  markdown = README.read_text()
  run, skipped = plan(markdown, MAKEFILE.read_text())
  outputs, seconds = {}, {}
  for command in run:
    t0 = time.perf_counter()
    outputs[command] = run_jaxgen(small_budget(command, fashion_slice, newcomer / "tfds"))
    seconds[command] = time.perf_counter() - t0
  namespace = {}
  for i, block in enumerate(python_blocks(markdown)):
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
      exec(compile(block, "README.md", "exec"), namespace)
    seconds[f"python block {i + 1}"] = time.perf_counter() - t0
  with capsys.disabled():
    print(
      f"\nREADME walk-through: ran {len(run)} commands and the python blocks, skipped "
      f"{len(skipped)}:",
      *(f"  {t:6.1f}s  {c}" for c, t in seconds.items()),
      *(f"  skipped  {c}  ({why})" for c, why in skipped),
      sep="\n",
    )

  # What the README says of them.
  output_of = lambda start: next(out for c, out in outputs.items() if c.startswith(start))
  vae = output_of("jaxgen evaluate --workdir runs/vae")
  assert "-IWAE nats/image" in vae and "FD (lower better)" not in vae  # no extractor yet
  assert "note: sample metrics (FD, KID, precision/recall, ...) skipped" in vae
  demo = output_of("jaxgen evaluate --workdir runs/demo")
  assert "FD (lower better)" in demo and "duplicates" in demo
  compare = output_of("jaxgen evaluate --compare runs/demo runs/vae")
  assert compare.splitlines()[0].split()[1:3] == ["runs/demo", "runs/vae"]
  for path in (
    "runs/demo/metrics.json",
    "runs/vae/metrics.json",
    "runs/draw/metrics.json",
    "grid.png",
    "sneakers.png",
    "runs/vae/samples/sample.png",
    "runs/aligndraw/samples/sample.gif",
  ):
    assert (newcomer / path).is_file(), path
  # The extractor's accuracy is cached in the run evaluated; the extractor's folder is only read.
  cached = (newcomer / "runs/demo/eval").glob("extractor_classifier_fashion_mnist_*/extractor.json")
  assert len(list(cached)) == 1
  assert not (newcomer / "runs/classifier_fashion_mnist/extractor.json").exists()
  assert namespace["images"].shape == (16, 28, 28, 1)  # what the README's comments say
