"""Does an alignDRAW run draw the item its caption names, and if not, where is it lost?

    python experiments/aligndraw_diagnosis.py --workdir runs/aligndraw --num 2000

Caption accuracy (jaxgen.evaluation's score: every item the caption names recognised at its
place) on the first --num test captions, held-out combinations apart, of three sets of images:
the real canvases (the ceiling), reconstructions (z_1..T from the posterior given the real canvas
and its caption, `jaxgen.steps.draw.reconstruct`) and prior samples (`jaxgen evaluate`'s row).
Reconstructions bound samples: when they are wrong too, what is short is the drawing (cell, write
window, steps, training time), not the prior; when only samples are wrong, it is the prior.
Then, per named class, the share of items recognised and the class they are most often taken for:
which items a model draws as the blurred mean of their class (a mean sandal reads as an ankle
boot, a mean coat or shirt as a pullover). Then caption accuracy by kind of caption: a held-out
one-item caption puts its item at a place the pair captions use (left, right, top, bottom: the
item is there in training pairs) or at a corner or the centre, where training never shows that
item at all. And the samples' variety: the mean per-pixel standard deviation of 16 samples per
example caption. `--temperature T` draws the samples at a reduced temperature.
The extractor is the items' classifier, as for `jaxgen evaluate` (--extractor to choose one).
"""

import argparse
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxgen import parallel, steps, trainer
from jaxgen.data import captions as caption_data
from jaxgen.evaluation import captions, splits
from jaxgen.evaluation.extractor import load_extractor
from jaxgen.steps import draw

ROWS = ("real canvases", "reconstructions", "samples")


def diagnose(
  state: Any,
  batch: dict,
  classify_fn: Callable[[jax.Array], jax.Array],
  key: jax.Array,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = 250,
) -> dict[str, dict]:
  """{row: {"caption": captions.caption_summary, "items": item_summary, "kinds": kind_summary}}
  for ROWS.

  batch: test canvases, tokens [N, L], image [N, S, S, C], classes and positions [N, 2],
  held_out [N]; classify_fn: 28 x 28 crops [M, 28, 28, C] -> logits [M, K]. Samples and
  reconstructions of block i (batch_size rows) use fold_in(key, i).
  """
  mesh = mesh or parallel.make_mesh()
  recon_fn = jax.jit(draw.reconstruct)
  sample_fn = jax.jit(draw.sample, static_argnums=2)
  images = {
    "real canvases": None,
    "reconstructions": lambda i, block: recon_fn(state, block, jax.random.fold_in(key, i)),
    "samples": lambda i, block: sample_fn(
      state, jax.random.fold_in(key, i), len(block["tokens"]), block["tokens"]
    ),
  }
  classes_Nx2 = np.asarray(batch["classes"])
  rows = {}
  for row, images_fn in images.items():
    predicted_Nx2 = captions.canvas_item_predictions(
      batch, classify_fn, images_fn, mesh, batch_size
    )
    correct_N = np.asarray(caption_data.all_named_right(predicted_Nx2, classes_Nx2))
    rows[row] = {
      "caption": captions.caption_summary(correct_N, batch["held_out"]),
      "items": item_summary(predicted_Nx2, classes_Nx2),
      "kinds": kind_summary(correct_N, batch),
    }
  return rows


def kind_summary(correct_N: np.ndarray, batch: dict) -> dict[str, tuple[float, int]]:
  """{kind: (caption accuracy, number of captions)} per kind of caption (kinds without captions
  left out); correct [N] 1 / 0 (bool or float), batch as for `diagnose`."""
  classes, held = np.asarray(batch["classes"]), np.asarray(batch["held_out"]).astype(bool)
  one = classes[:, 1] == caption_data.NONE
  pair_places = {p for places in caption_data.RELATIONS.values() for p in places}
  in_pairs = np.isin(np.asarray(batch["positions"])[:, 0], list(pair_places))
  masks = {
    "seen, one item": ~held & one,
    "seen, two items": ~held & ~one,
    "held-out, two items": held & ~one,
    "held-out, one item where pairs put it": held & one & in_pairs,
    "held-out, one item where training never has it": held & one & ~in_pairs,
  }
  return {k: (float(correct_N[m].mean()), int(m.sum())) for k, m in masks.items() if m.any()}


def variety(state: Any, key: jax.Array, num: int = 16) -> float:
  """Mean per-pixel standard deviation (pixels in [0, 1]) of `num` samples of each of the
  run's example captions: how much samples of one caption differ."""
  sample_fn = jax.jit(draw.sample, static_argnums=2)
  stds = [
    np.std((np.asarray(sample_fn(state, jax.random.fold_in(key, i), num, tokens)) + 1) / 2, 0)
    for i, tokens in enumerate(draw.caption_tokens(state, len(state.hp.example_captions)))
  ]
  return float(np.mean(stds))


def item_summary(predicted_Nx2: np.ndarray, classes_Nx2: np.ndarray) -> dict[str, np.ndarray]:
  """Per named class k [K] (K = len(ITEMS)): "accuracy", the share of its items seen as k (NaN
  where none are named), and "mistaken_for", the class its items are most often seen as instead
  (-1 where never wrong; a tie goes to the lower class). predicted, classes: int [N, 2], classes
  NONE where the caption names no second item."""
  named = classes_Nx2 != caption_data.NONE
  true_M, seen_M = classes_Nx2[named], predicted_Nx2[named]
  k = len(caption_data.ITEMS)
  if seen_M.size and seen_M.max() >= k:
    raise ValueError(f"the classifier predicts class {seen_M.max()}; Fashion-MNIST has {k}")
  confusion_KxK = np.zeros((k, k), np.int64)
  np.add.at(confusion_KxK, (true_M, seen_M), 1)
  total_K = confusion_KxK.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    accuracy_K = np.diag(confusion_KxK) / total_K
  wrong_KxK = confusion_KxK - np.diag(np.diag(confusion_KxK))
  mistaken_K = np.where(wrong_KxK.sum(axis=1) > 0, np.argmax(wrong_KxK, axis=1), -1)
  return {"accuracy": accuracy_K, "mistaken_for": mistaken_K}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained alignDRAW run")
  parser.add_argument("--num", type=int, default=2000, help="first test captions scored")
  parser.add_argument("--extractor", default=None, help="classifier run (default: evaluation's)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--temperature", type=float, default=None, help="samples' (default: run's)")
  args = parser.parse_args(argv)
  config, family, state = trainer.load_run(args.workdir, args.step)
  state = steps.at_temperature(family, state, args.temperature)
  mesh = parallel.make_mesh()
  extractor = load_extractor(config, args.extractor, mesh)
  n = min(args.num, splits.split_size(config, "test"))
  batch = splits.read_batch(config, "test", np.arange(n))
  classify_fn = lambda images: extractor.features_fn(images)[1]
  rows = diagnose(state, batch, classify_fn, jax.random.key(args.seed), mesh)
  held = int(np.sum(batch["held_out"]))
  print(
    f"{args.workdir} step {int(state.step)}, sample temperature {state.hp.sample_temperature}: "
    f"caption accuracy on {n} test captions"
  )
  print(f"{'':18s} {'all':>6s} {'held-out (' + str(held) + ')':>16s} {'seen':>6s}")
  for row, r in rows.items():
    s = r["caption"]
    acc = [s["caption_accuracy"], s["caption_accuracy_held_out"], s["caption_accuracy_seen"]]
    cells = ["-" if v is None else f"{v:.3f}" for v in acc]
    print(f"{row:18s} {cells[0]:>6s} {cells[1]:>16s} {cells[2]:>6s}")
  print("\nitems recognised, per named class (most often mistaken for)")
  for row, r in rows.items():
    acc, mistaken = r["items"]["accuracy"], r["items"]["mistaken_for"]
    cells = [
      f"{caption_data.ITEMS[k]} {a:.2f}" + (f" ({caption_data.ITEMS[m]})" if m >= 0 else "")
      for k, (a, m) in enumerate(zip(acc, mistaken))
      if not np.isnan(a)
    ]
    print(f"{row}: " + ", ".join(cells))
  print("\ncaption accuracy by kind of caption (number of captions)")
  for row, r in rows.items():
    cells = [f"{kind} {a:.3f} ({k})" for kind, (a, k) in r["kinds"].items()]
    print(f"{row}: " + ", ".join(cells))
  print(f"\nsample variety: {variety(state, jax.random.key(args.seed + 1)):.4f}")


if __name__ == "__main__":
  main()
