"""The GAN-recipes study: each recipe trained for the same training time, FD and coverage vs minutes.

    python experiments/gan_recipes.py --budget_minutes 180 --recipes dcgan,sn_hinge,diffaug,all
    python experiments/gan_recipes.py --budget_minutes 30 --base cond_lr2e3_k4 --recipes dcgan,r1

Each recipe (RECIPES: config.model / config.optim overrides of experiments/configs/dcgan_fashion.py)
runs through jaxgen.trainer.train_and_evaluate in runs/gan_recipes/<recipe> for budget/len(recipes)
minutes of training (then SIGTERM: the loop saves and stops; time spent evaluating is not
counted, the deadline moves by it), with the in-training evaluation every
--eval_every steps (FD, coverage, recall in the feature space of a trained classifier:
runs/classifier_fashion_mnist from the README's command, or --extractor). Each evaluation is logged
with `train_minutes`, the wall time spent outside evaluation. Writes runs/gan_recipes/curves.png
(FD and coverage against minutes per recipe) and table.md (the last evaluation of each).
With --base RECIPE every recipe is applied on top of that one (runs/gan_recipes/<base>+<recipe>),
e.g. each switch on top of the demo's recipe. Sized for 2 CPU cores: the default 180 minutes
over the 20 recipes gives 9 minutes each.
"""

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from jaxgen import config as config_lib
from jaxgen import evaluation, trainer
from jaxgen.errors import Preempted

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments/configs/dcgan_fashion.py"
SN_HINGE = dict(spectral_norm="d", loss="hinge")
COND = dict(num_classes=10, class_bn=True)
RECIPES = {
  # name: ({model overrides}, {optim overrides}, {top-level overrides})
  "dcgan": ({}, {}, {}),
  "hinge": (dict(loss="hinge"), {}, {}),
  "sn_hinge": (SN_HINGE, {}, {}),
  "r1": (dict(r1_gamma=0.1, r1_every=16), {}, {}),
  "diffaug": (dict(augment="translation,cutout,color"), {}, {}),
  "ttur": ({}, dict(g_lr=1e-4, d_lr=4e-4), {}),
  "ema_standing": (dict(ema_bn="standing"), {}, {}),
  "resnet_sn_hinge": (dict(arch="resnet", **SN_HINGE), {}, {}),
  "fresh_d2": (dict(d_steps=2, fresh_real_batches=True), {}, dict(batch_size=128)),
  "mbstd": (dict(mbstd_group=4), {}, {}),
  "full_res": (dict(full_res_width=32), {}, {}),
  # cond: the label in G (conditional BatchNorm) and D (projection), as in dcgan_fashion_cond.py;
  # sampled with labels 0..9 in turn, so the evaluation scores the same balanced mixture of classes
  "cond": (COND, {}, {}),
  # its learning rate (both players), kernel size and EMA decay; cond_lr2e3_k4 is the model and
  # optimiser of dcgan_fashion_cond.py (`make demo`; cond_lr2e3_k3 until session 28)
  "cond_lr5e4": (COND, dict(g_lr=5e-4, d_lr=5e-4), {}),
  "cond_lr1e3": (COND, dict(g_lr=1e-3, d_lr=1e-3), {}),
  "cond_k3": (dict(**COND, kernel_size=3), {}, {}),
  "cond_ema99": (dict(**COND, ema_decay=0.99), {}, {}),
  "cond_lr1e3_k3": (dict(**COND, kernel_size=3), dict(g_lr=1e-3, d_lr=1e-3), {}),
  "cond_lr2e3_k3": (dict(**COND, kernel_size=3), dict(g_lr=2e-3, d_lr=2e-3), {}),
  "cond_lr2e3_k4": (dict(**COND, kernel_size=4), dict(g_lr=2e-3, d_lr=2e-3), {}),
  # the demo's model with one more layer at 7x7 in G and D, or with MSGAN's mode-seeking term
  "cond_lr2e3_k4_mid1": (dict(**COND, kernel_size=4, mid_layers=1), dict(g_lr=2e-3, d_lr=2e-3), {}),
  "cond_lr2e3_k4_ms1": (
    dict(**COND, kernel_size=4, mode_seeking=1.0),
    dict(g_lr=2e-3, d_lr=2e-3),
    {},
  ),
  "all": (
    dict(
      **SN_HINGE,
      r1_gamma=0.1,
      r1_every=16,
      augment="translation,cutout,color",
      ema_bn="standing",
      d_steps=2,
      fresh_real_batches=True,
    ),
    dict(g_lr=1e-4, d_lr=4e-4),
    dict(batch_size=128),
  ),
}
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
COLOURS += [(140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def run_name(name: str, args: argparse.Namespace) -> str:
  """The recipe's folder and label: `base+name` on top of a --base recipe, else the name."""
  return f"{args.base}+{name}" if args.base else name


def recipe_config(name: str, args: argparse.Namespace):
  """dcgan_fashion.py with the --base recipe's overrides (if any), then the recipe's, and the
  study's cadence."""
  c = config_lib.load(BASE)
  for part in filter(None, (args.base, name)):
    model, optim, top = RECIPES[part]
    c.model.update(model)
    c.optim.update(optim)
    c.update(top)
  c.num_steps = 10**7  # stopped by the time budget
  c.eval_every, c.eval_num_samples = args.eval_every, args.eval_samples
  c.sample_every, c.checkpoint_every, c.log_every = args.eval_every, args.eval_every, 50
  if args.width:
    c.model.width = args.width
  return c


def run_recipe(name: str, args: argparse.Namespace, out: Path) -> list[dict]:
  """Trains one recipe for its share of the budget; its evaluation rows from metrics.jsonl."""
  config = recipe_config(name, args)
  workdir = out / run_name(name, args)
  eval_fn = evaluation.make_eval_fn(config, extractor=args.extractor, cache_dir=out / "cache")
  budget_s = 60 * args.budget_minutes / len(args.recipes)
  start, in_eval, fired = time.monotonic(), [0.0], [False]

  def stop() -> None:  # one SIGTERM per recipe: the loop saves and raises Preempted
    fired[0] = True
    os.kill(os.getpid(), signal.SIGTERM)

  timer = [threading.Timer(budget_s, stop)]

  def timed_eval(state, step):
    # The budget is training time: the timer is re-armed after each evaluation for what is left
    # (unless it already fired: a second SIGTERM would make the loop exit without saving).
    timer[0].cancel()
    t = time.monotonic()
    results = dict(eval_fn(state, step), train_minutes=(t - start - in_eval[0]) / 60)
    in_eval[0] += time.monotonic() - t
    if not fired[0]:
      left = budget_s - (time.monotonic() - start - in_eval[0])
      timer[0] = threading.Timer(max(left, 0.0), stop)
      timer[0].start()
    return results

  timer[0].start()
  try:
    trainer.train_and_evaluate(config, workdir, eval_fn=timed_eval)
  except Preempted:
    pass  # the budget ran out: the loop saved the step it reached
  finally:
    timer[0].cancel()
  return read_curve(workdir)


def read_curve(workdir: Path) -> list[dict]:
  """The evaluation rows of a recipe's run (its metrics.jsonl), oldest first."""
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [dict(step=r["step"], **r["eval"]) for r in rows if "eval" in r]


def plot(
  curves: dict[str, list[dict]], path: Path, keys=("fd", "coverage"), log_keys=("fd",)
) -> None:
  """One panel per metric: the metric against train_minutes, a coloured line per recipe (FD on a
  log scale: it spans 1000 to 10 over a study)."""
  w, h, margin = 480, 320, 50
  img = Image.new("RGB", (w * len(keys), h + 20 * len(curves)), "white")
  draw = ImageDraw.Draw(img)
  for p, key in enumerate(keys):
    log = key in log_keys

    def value(r, key=key, log=log):
      return float(np.log10(max(r[key], 1e-9))) if log else r[key]

    pts = [(r["train_minutes"], value(r)) for rows in curves.values() for r in rows if key in r]
    if not pts:
      continue
    xs, ys = np.array(pts).T
    x0, x1 = 0.0, max(xs.max(), 1e-9)
    if log:  # whole decades
      y0, y1 = np.floor(ys.min()), max(np.ceil(ys.max()), np.floor(ys.min()) + 1)
    else:
      y0, y1 = min(ys.min(), 0.0), max(ys.max(), 1e-9)
    left, right, top, bottom = p * w + margin, (p + 1) * w - margin, margin, h - margin
    scale = np.array([(right - left) / (x1 - x0), (bottom - top) / (y1 - y0)])

    def to_px(x, y, left=left, bottom=bottom, scale=scale, x0=x0, y0=y0):
      return (left + (x - x0) * scale[0], bottom - (y - y0) * scale[1])

    draw.rectangle([p * w + margin, margin, (p + 1) * w - margin, h - margin], outline="black")
    scale_name = " (log scale)" if log else ""
    draw.text((p * w + margin, 10), f"{key}{scale_name} vs training minutes", fill="black")
    draw.text((p * w + margin, h - margin + 5), f"0 .. {x1:.1f} min", fill="black")
    for tick in np.arange(y0, y1 + 0.5) if log else (y0, y1):
      _, y = to_px(x0, tick)
      draw.text((p * w + 2, y - 5), f"{10**tick if log else tick:.3g}", fill="black")
      if log:
        draw.line([(left, y), (right, y)], fill=(220, 220, 220))
    for i, rows in enumerate(curves.values()):
      line = [to_px(r["train_minutes"], value(r)) for r in rows if key in r]
      colour = COLOURS[i % len(COLOURS)]
      if len(line) > 1:
        draw.line(line, fill=colour, width=2)
      for x, y in line:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
  for i, name in enumerate(curves):
    draw.text((margin, h + 20 * i), name, fill=COLOURS[i % len(COLOURS)])
  img.save(path)


def lowest_class(per_class: list[float | None] | None) -> str:
  """The lowest of an evaluation's per-class values and its class index, e.g. "0.752 (6)";
  "-" without any (runs evaluated before per-class coverage existed)."""
  known = [(v, k) for k, v in enumerate(per_class or []) if v is not None]
  if not known:
    return "-"
  value, k = min(known)
  return f"{value:.4g} ({k})"


def table(curves: dict[str, list[dict]], keys=("fd", "coverage", "recall")) -> str:
  """Markdown: each recipe's last evaluation (step, minutes, metrics, and the class whose real
  images the samples cover least)."""
  lines = ["| recipe | step | train minutes | " + " | ".join(keys) + " | coverage, lowest class |"]
  lines.append("|" + "---|" * (4 + len(keys)))
  for name, rows in curves.items():
    if not rows:
      lines.append(f"| {name} | - | - | " + " | ".join("-" for _ in keys) + " | - |")
      continue
    last = rows[-1]
    values = " | ".join(f"{last[k]:.4g}" if k in last else "-" for k in keys)
    lowest = lowest_class(last.get("coverage_per_class"))
    lines.append(f"| {name} | {last['step']} | {last['train_minutes']:.1f} | {values} | {lowest} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--budget_minutes", type=float, default=180.0, help="total, all recipes")
  parser.add_argument("--recipes", default=",".join(RECIPES), help=f"from {','.join(RECIPES)}")
  parser.add_argument("--out", default="runs/gan_recipes")
  parser.add_argument(
    "--base",
    default="",
    help="a recipe under every other (e.g. cond_lr2e3_k3: each switch on top of the demo's "
    "recipe; the recipe dcgan is then the base alone); runs are named base+recipe",
  )
  parser.add_argument("--eval_every", type=int, default=500)
  parser.add_argument("--eval_samples", type=int, default=2000)
  parser.add_argument("--width", type=int, default=0, help="model.width override (0: config's)")
  parser.add_argument("--extractor", default=None, help="classifier run (default: evaluation's)")
  parser.add_argument(
    "--replot", action="store_true", help="no training: curves and table of the runs in --out"
  )
  args = parser.parse_args(argv)
  args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
  unknown = [r for r in args.recipes + [args.base] if r and r not in RECIPES]
  if unknown:
    parser.error(f"unknown recipes {unknown}; choose from {','.join(RECIPES)}")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  names = [run_name(name, args) for name in args.recipes]
  if args.replot:  # the figure and table of runs already in --out
    curves = {n: read_curve(out / n) for n in names if (out / n).is_dir()}
  else:
    curves = {n: run_recipe(name, args, out) for n, name in zip(names, args.recipes)}
  (out / "curves.json").write_text(json.dumps(curves, indent=1))
  plot(curves, out / "curves.png")
  (out / "table.md").write_text(table(curves))
  print(table(curves))


if __name__ == "__main__":
  main()
