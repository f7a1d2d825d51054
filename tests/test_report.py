"""Seeing a run: TensorBoard events read back against metrics.jsonl across an interrupted run,
the progress line's rate and ETA, and report.html opened in headless Chromium."""

import base64
import html
import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from jaxgen import cli, evaluation, report, runlog, trainer
from jaxgen import config as config_lib

DCGAN = REPO / "experiments/configs/dcgan_fashion.py"
BROWSER = next(
  (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
  None,
)
CHROMIUM_FLAGS = (
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--hide-scrollbars",
)


def fake_eval(state, step: int) -> dict:
  """In-training evaluation numbers that depend on the step, and a non-numeric entry."""
  return {"fd": 100.0 / step, "recall": 0.5 + step / 100, "flags": []}


@pytest.fixture(scope="module")
def gan_run(fashion_slice, tfds_dir, tmp_path_factory) -> Path:
  """A tiny DCGAN trained to step 7, 'killed' after logging 6-7 but before saving them (only
  checkpoint 5 kept), then resumed to step 10: steps 6 and 7 are run and logged again."""
  c = config_lib.load(DCGAN)
  c.data.name, c.data.source_dir, c.data.data_dir = "idx", str(fashion_slice), str(tfds_dir)
  c.model.width, c.model.latent_dim = 8, 16
  c.batch_size, c.num_steps, c.log_every = 64, 7, 1
  c.checkpoint_every, c.sample_every, c.num_grid_samples, c.eval_every = 5, 5, 16, 5
  workdir = tmp_path_factory.mktemp("gan_run")
  trainer.train_and_evaluate(c, workdir, eval_fn=fake_eval)
  shutil.rmtree(workdir / "checkpoints/7")
  c.num_steps = 10
  trainer.train_and_evaluate(c, workdir, eval_fn=fake_eval)
  return workdir


def jsonl_rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_events_match_metrics_jsonl_across_a_resume(gan_run):
  from tensorboard.backend.event_processing import event_accumulator as ea

  rows = jsonl_rows(gan_run)
  # the resume cut metrics.jsonl back to the restored step 5: 6 and 7 were logged again once
  assert [r["step"] for r in rows if "eval" not in r] == list(range(1, 11))
  train, evals = report.read_metrics(gan_run)
  acc = ea.EventAccumulator(
    str(gan_run / runlog.TB_DIR), size_guidance={ea.SCALARS: 0, ea.IMAGES: 0}
  )
  acc.Reload()
  keys = [
    "images_per_s",
    "d_loss",
    "g_loss",
    "d_real",
    "d_fake",
    "d_lr",
    "g_lr",
    "d_grad_norm",
    "g_grad_norm",
  ]
  assert sorted(acc.Tags()["scalars"]) == sorted(
    [f"train/{k}" for k in keys] + ["eval/fd", "eval/recall"]
  )
  for key in keys:
    events = acc.Scalars(f"train/{key}")
    assert [e.step for e in events] == list(range(1, 11)), key  # 6, 7 once: purged on resume
    assert [e.value for e in events] == [np.float32(train[s][key]) for s in range(1, 11)], key
  for key in ("fd", "recall"):
    events = acc.Scalars(f"eval/{key}")
    assert [e.step for e in events] == [5, 10]
    assert [e.value for e in events] == [np.float32(evals[s][key]) for s in (5, 10)]
  # grids at 5, 7 (the end of the first session; purged) and 10
  images = acc.Images("samples")
  assert [e.step for e in images] == [5, 10]
  for e in images:
    import io

    got = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))
    want = np.asarray(Image.open(gan_run / f"samples/step_{e.step:07d}.png").convert("RGB"))
    np.testing.assert_array_equal(got, want)


def test_provenance_records_each_session(gan_run):
  sessions = runlog.read_provenance(gan_run)
  assert [(s["start_step"], s["end_step"]) for s in sessions] == [(0, 7), (5, 10)]
  for s in sessions:
    assert s["versions"]["jax"] == jax.__version__ and s["versions"]["jaxgen"]
    assert s["device_count"] == jax.device_count() and s["process_count"] == 1
    assert s["seconds"] > 0


# --------------------------------------------------------------------- progress


def test_progress_line_has_smoothed_rate_elapsed_and_remaining():
  assert trainer.smoothed(None, 4.0) == 4.0
  assert trainer.smoothed(2.0, 4.0) == pytest.approx(2.6)
  assert trainer.progress_line(25, 100, 2.5, 10.0, 160.0, {"d_loss": 0.5}) == (
    "step 25/100 (25%)  2.50 step/s  elapsed 00:10  remaining 00:30  160.0 img/s  d_loss 0.5"
  )
  assert "remaining ?" in trainer.progress_line(0, 100, 0.0, 0.0, 0.0, {})


def test_progress_prints_plain_lines_off_a_terminal(monkeypatch, capsys):
  clock = iter([100.0, 105.0, 107.5])  # start, then the two updates
  monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(clock))
  progress = trainer._Progress(total=100, enabled=True, start=0)  # capsys: not a terminal
  progress.update(10, 64.0, {"loss": 1.0})  # 10 steps in 5 s: 2 step/s
  progress.update(20, 64.0, {"loss": 0.5})  # 4 step/s now, smoothed 0.3 * 4 + 0.7 * 2 = 2.6
  progress.close()
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("step 10/100 (10%)  2.00 step/s  elapsed 00:05  remaining 00:45")
  # 80 steps left at 2.6 step/s: 30.8 s
  assert lines[1].startswith("step 20/100 (20%)  2.60 step/s  elapsed 00:07  remaining 00:30")
  assert lines[1].endswith("loss 0.5")


# ----------------------------------------------------------------------- report


def projection_extractor() -> evaluation.Extractor:
  """A plug-in extractor (random projection of the pixels; logits from the grey level)."""
  w_PxD = jax.random.normal(jax.random.key(0), (784, 32)) / 28.0

  def features_fn(x):
    level = jnp.mean(x, axis=(1, 2, 3)) * 5 + 4.5
    return x.reshape(x.shape[0], -1) @ w_PxD, -((level[:, None] - jnp.arange(10)) ** 2)

  return evaluation.Extractor(
    "random projection", jax.jit(features_fn), test_accuracy=0.5, checkpoint_step=7
  )


@pytest.fixture(scope="module")
def evaluated_run(gan_run) -> tuple[Path, dict]:
  """gan_run with a metrics.json written by the evaluation code (128 samples)."""
  config, family, state = trainer.load_run(gan_run)
  results = evaluation.evaluate_state(
    config, family, state, projection_extractor(), num_samples=128, seed=1, step=10
  )
  results["run"] = str(gan_run)
  (gan_run / "metrics.json").write_text(json.dumps(results))
  return gan_run, results


class Tables(html.parser.HTMLParser):
  """Cell texts of every <table>, by its class: {class: [[cell, ...] per row]}."""

  def __init__(self):
    super().__init__()
    self.tables, self.current, self.cell = {}, None, None

  def handle_starttag(self, tag, attrs):
    if tag == "table":
      self.current = self.tables.setdefault(dict(attrs).get("class", ""), [])
    elif tag == "tr" and self.current is not None:
      self.current.append([])
    elif tag in ("td", "th") and self.current is not None:
      self.cell = ""

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self.cell is not None:
      self.current[-1].append(self.cell)
      self.cell = None
    elif tag == "table":
      self.current = None

  def handle_data(self, data):
    if self.cell is not None:
      self.cell += data


def chromium(*args: str, tmp_path: Path) -> str:
  profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
  out = subprocess.run(
    [BROWSER, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def test_report_html_in_headless_chromium(evaluated_run, tmp_path):
  if BROWSER is None:
    pytest.skip("no headless browser: apt-get install chromium (make test does so as root)")
  run, results = evaluated_run
  page, pictures = report.write_report([run], tmp_path / "out", num=16)
  assert [p.name for p in pictures] == ["interpolations.png"]
  text = page.read_text()
  assert not re.findall(r'(?:src|href)="(?!data:|#)', text)  # self-contained: no links out

  # every image the page references is embedded, byte for byte, and the browser decodes it
  sources = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
  # grids: 5, 7 (written by the interrupted session, still on disk) and 10
  files = [run / f"samples/step_{s:07d}.png" for s in (5, 7, 10)] + pictures
  assert [base64.b64decode(s) for s in sources] == [f.read_bytes() for f in files]
  dom = chromium("--virtual-time-budget=10000", "--dump-dom", page.as_uri(), tmp_path=tmp_path)
  assert 'data-images-loaded="4/4"' in dom

  # curves: one chart per logged metric, one line over the 10 unique steps each
  charts = re.findall(r'<svg class="chart".*?</svg>', dom)
  assert len(charts) == 9 + 2
  for chart in charts[:9]:
    assert len(re.search(r'points="([^"]+)"', chart).group(1).split()) == 10
  for chart in charts[9:]:  # evaluations at 5 and 10 (the resume cut the log's step 7 away)
    assert len(re.search(r'points="([^"]+)"', chart).group(1).split()) == 2

  # the evaluation table holds metrics.json's numbers and its floor; the protocol is there
  tables = Tables()
  tables.feed(dom)
  header, *rows = tables.tables["eval"]
  assert header == ["metric", str(run), "floor: train vs test"]
  cells = {row[0]: row[1:] for row in rows}
  m, floor = results["metrics"], results["floor"]
  assert cells["FD (lower better)"] == [f"{m['fd']:.2f}", f"{floor['fd']:.2f}"]
  assert cells["precision"] == [f"{m['precision']:.3f}", f"{floor['precision']:.3f}"]
  assert cells["KID (lower)"][0] == f"{m['kid']:.4g} ±{m['kid_std']:.2g}"
  # a row per metric of ROWS, and under coverage one per class of the real test images
  per_class, floor_per_class = m["coverage_per_class"], floor["coverage_per_class"]
  at = [row[0] for row in rows].index("coverage")
  assert [row[1:] for row in rows[at + 1 : at + 11]] == [
    [f"{a:.3f}", f"{b:.3f}"] for a, b in zip(per_class, floor_per_class)
  ]
  assert len(rows) == sum(any(row[0] == k for row in evaluation.ROWS) for k in m) + len(per_class)
  protocol = dict(tables.tables["protocol"][1:])
  assert protocol["num_samples"] == "128" and protocol["extractor.name"] == "random projection"
  provenance = tables.tables["provenance"]
  assert len(provenance) == 3 and provenance[1][1] == "0 -> 7" and provenance[2][1] == "5 -> 10"

  # what the browser draws is not blank
  shot = tmp_path / "shot.png"
  chromium(f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri(), tmp_path=tmp_path)
  rgb = np.asarray(Image.open(shot).convert("RGB"), np.int32)
  assert rgb.shape == (2000, 1280, 3)
  grey = rgb.mean(-1)
  assert np.mean(grey < 200) > 0.01 and grey.std() > 10  # a blank page: 0 and 0
  curve_blue = np.all(np.abs(rgb - [0x1F, 0x77, 0xB4]) < 40, axis=-1)
  assert curve_blue.sum() > 500  # the charts' lines were drawn


def test_report_compares_runs_in_one_page(evaluated_run, tmp_path, capsys):
  run, results = evaluated_run
  other = tmp_path / "other"
  shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoints", "report"))
  rows = jsonl_rows(other)
  for r in rows:
    if "d_loss" in r:
      r["d_loss"] += 1.0
  (other / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  better = dict(results, run=str(other), metrics=dict(results["metrics"], fd=1.25))
  (other / "metrics.json").write_text(json.dumps(better))

  cli.main(
    ["report", "--workdir", str(run), str(other), "--no_pictures", "--out", str(tmp_path / "both")]
  )
  assert f"wrote {tmp_path / 'both/report.html'}" in capsys.readouterr().out
  page = (tmp_path / "both/report.html").read_text()
  d_loss = re.search(r'<svg class="chart"[^>]*><title>d_loss</title>.*?</svg>', page).group(0)
  assert len(re.findall("<polyline", d_loss)) == 2 and str(other) in d_loss
  tables = Tables()
  tables.feed(page)
  header, *body = tables.tables["eval"]
  assert header == ["metric", str(run), str(other), "floor: train vs test"]
  fd = next(row for row in body if row[0].startswith("FD"))
  assert fd[1:3] == [f"{results['metrics']['fd']:.2f}", "1.25"]
  assert [row[0] for row in tables.tables["summary"][1:]] == [str(run), str(other)]


def test_report_bad_workdirs_are_one_line_errors(tmp_path, gan_run):
  with pytest.raises(SystemExit, match=r"holds no jaxgen run .*config.json is missing") as e:
    cli.main(["report", "--workdir", str(tmp_path)])
  assert "\n" not in str(e.value)
  empty = tmp_path / "fresh"
  empty.mkdir()
  shutil.copy(gan_run / "config.json", empty / "config.json")
  with pytest.raises(SystemExit, match=r"metrics.jsonl holds no metrics yet; wait") as e:
    cli.main(["report", "--workdir", str(empty)])
  assert "\n" not in str(e.value)
  assert not (empty / "report").exists()


def test_evaluation_section_states_each_flag_as_jaxgen_evaluate_does():
  flag = "low diversity or coverage: recall 0.1 < 0.5 x floor 0.9"
  results = {
    "metrics": {"recall": 0.1, "precision": 0.5},
    "floor": {"recall": 0.9, "precision": 0.9},
    "flags": [flag],
    "protocol": {},
  }
  page = report.evaluation_section([{"name": "runs/x", "workdir": "runs/x", "results": results}])
  assert f"! runs/x: {html.escape(flag)}</p>" in page and "possible mode collapse" not in page
  assert "0.100 !</td>" in page and "0.500</td>" in page  # the flagged metric's cell, another's
