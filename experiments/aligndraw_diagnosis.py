"""Does an alignDRAW run draw the item its caption names, and if not, where is it lost?

    python experiments/aligndraw_diagnosis.py --workdir runs/aligndraw --num 2000

Caption accuracy (jaxgen.evaluation's score: every item the caption names recognised at its
place) on the first --num test captions, held-out combinations apart, of three sets of images:
the real canvases (the ceiling), reconstructions (z_1..T from the posterior given the real canvas
and its caption, `jaxgen.steps.draw.reconstruct`) and prior samples (`jaxgen evaluate`'s row).
Reconstructions bound samples: when they are wrong too, what is short is the drawing (cell, write
window, steps, training time), not the prior; when only samples are wrong, it is the prior.
The extractor is the items' classifier, as for `jaxgen evaluate` (--extractor to choose one).
"""

import argparse
from typing import Any

import jax
import numpy as np

from jaxgen import parallel, trainer
from jaxgen.evaluation import captions, sharded, splits
from jaxgen.evaluation.extractor import load_extractor
from jaxgen.steps import draw

ROWS = ("real canvases", "reconstructions", "samples")


def diagnose(
  state: Any,
  batch: dict,
  classify_fn: Any,
  key: jax.Array,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int = 250,
) -> dict[str, dict]:
  """{row: captions.caption_summary} for ROWS. batch: test canvases as `captions.caption_correct`
  takes them, with held_out [N]; sample i and reconstruction i use fold_in(key, block)."""
  mesh = mesh or parallel.make_mesh()
  n = len(batch["tokens"])
  recon_fn = jax.jit(draw.reconstruct)
  recon = sharded.map_batches(
    lambda i, block, size: recon_fn(state, block, jax.random.fold_in(key, i)),
    {"image": batch["image"], "tokens": batch["tokens"]},
    n,
    mesh,
    batch_size,
  )
  sample = jax.jit(draw.sample, static_argnums=2)
  sample_fn = lambda i, tokens: sample(state, jax.random.fold_in(key, i), len(tokens), tokens)
  correct = {
    "real canvases": captions.caption_correct(batch, classify_fn, None, mesh, batch_size),
    "reconstructions": captions.caption_correct(
      dict(batch, image=recon), classify_fn, None, mesh, batch_size
    ),
    "samples": captions.caption_correct(batch, classify_fn, sample_fn, mesh, batch_size),
  }
  return {row: captions.caption_summary(c, batch["held_out"]) for row, c in correct.items()}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a trained alignDRAW run")
  parser.add_argument("--num", type=int, default=2000, help="first test captions scored")
  parser.add_argument("--extractor", default=None, help="classifier run (default: evaluation's)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  config, _, state = trainer.load_run(args.workdir, args.step)
  mesh = parallel.make_mesh()
  extractor = load_extractor(config, args.extractor, mesh)
  n = min(args.num, splits.split_size(config, "test"))
  batch = splits.read_batch(config, "test", np.arange(n))
  classify_fn = lambda images: extractor.features_fn(images)[1]
  rows = diagnose(state, batch, classify_fn, jax.random.key(args.seed), mesh)
  held = int(np.sum(batch["held_out"]))
  print(f"{args.workdir} step {int(state.step)}: caption accuracy on {n} test captions")
  print(f"{'':18s} {'all':>6s} {'held-out (' + str(held) + ')':>16s} {'seen':>6s}")
  for row, s in rows.items():
    acc = [s["caption_accuracy"], s["caption_accuracy_held_out"], s["caption_accuracy_seen"]]
    cells = ["-" if v is None else f"{v:.3f}" for v in acc]
    print(f"{row:18s} {cells[0]:>6s} {cells[1]:>16s} {cells[2]:>6s}")


if __name__ == "__main__":
  main()
