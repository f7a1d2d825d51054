"""`jaxgen train | sample | report | evaluate`.

    jaxgen train --config experiments/configs/dcgan_fashion.py --workdir runs/dcgan [--config.key=value ...]
    jaxgen sample --workdir runs/dcgan --num 64 --out grid.png [--label 3]
    jaxgen sample --workdir runs/dcgan --num 16 --walk 5 --truncation 0.8 --label 0,3 --upscale 4
    jaxgen sample --workdir runs/aligndraw --caption "the sneaker is on the left of the trouser"
    jaxgen sample --workdir runs/aligndraw --temperature 0.5  # DRAW: the prior's noise x 0.5
    jaxgen report --workdir runs/dcgan          # report.html: curves, samples, pictures, evaluation
    jaxgen report --workdir runs/dcgan runs/vae # several runs: overlaid curves, one table
    jaxgen evaluate --workdir runs/dcgan        # metrics.json + table; --compare RUN1 RUN2 ...
    jaxgen evaluate --workdir runs/dcgan --memorization  # does it copy training images?

Config overrides, `--config.key.sub=value` or `--config.key.sub value` (any number, after
--config FILE), are parsed by ml_collections.config_flags (absl) as the field's type: true/false
for bools, ints, floats, text for strings, `(28,28,1)` for tuples, a Python literal (else the
text) for object-typed fields such as fast_ops. `train` is the one command that takes a config;
sample, report and evaluate read the run's own config.json, so --config.* is an error there.
An unknown key or a value of the wrong type is a one-line error naming the key, e.g.
`--config.model.widht: no field 'widht' in the config; fields here: [...]` or
`--config.num_steps=5.5: expected int, got float`.

Errors caused by the input print one line (exit 1); --debug (or JAXGEN_DEBUG=1) shows the
traceback. SIGTERM/SIGINT during `train` save the current step and exit 143/130.
"""

import argparse
import os
import sys
from pathlib import Path

from jaxgen.errors import Preempted, UserError, find_os_error

TEMPERATURE_HELP = (
  "DRAW, alignDRAW: z_t = prior mean + T * prior std * eps (default: the run's "
  "model.sample_temperature, 1 unless its config sets it, as aligndraw_captions.py sets 0.5; "
  "1: the model's own prior; 0.5: more typical images, less variety)"
)


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.key=value` (or `--config.key value`) flags from the rest."""
  rest, overrides, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config.") :].partition("=")
      if not eq:
        if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
          raise SystemExit(f"jaxgen: {arg} needs a value (--config.{key}=VALUE)")
        value, i = argv[i + 1], i + 1
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="jaxgen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  sub = p.add_subparsers(dest="command", required=True)
  t = sub.add_parser("train", help="train a config (resumes if --workdir has checkpoints)")
  t.add_argument("--config", required=True, help="Python file with get_config()")
  t.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go")
  s = sub.add_parser("sample", help="write a grid of samples from a trained run")
  s.add_argument("--workdir", required=True)
  s.add_argument("--num", type=int, default=64)
  s.add_argument("--out", default=None, help="PNG path (default: WORKDIR/samples/sample.png)")
  s.add_argument(
    "--label",
    default=None,
    help="class to draw (conditional models), by number or name; 0,3,7: one row each",
  )
  s.add_argument(
    "--caption",
    default=None,
    help='text to draw (caption-conditioned models), e.g. "the bag is on the left of the coat"; '
    '"A;B": one row each',
  )
  s.add_argument("--seed", type=int, default=0, help="same images on any device count")
  s.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  s.add_argument(
    "--walk",
    type=int,
    default=None,
    metavar="N",
    help="latent walk through N key points: OUT.gif and OUT_frames/frame_*.png (GAN, VAE)",
  )
  s.add_argument(
    "--truncation",
    type=float,
    default=None,
    metavar="T",
    help="z from N(0, I) truncated to "
    "[-T, T] (GAN, VAE; smaller: more typical images, less variety)",
  )
  s.add_argument("--upscale", type=int, default=2, metavar="K", help="pixels per model pixel")
  s.add_argument("--temperature", type=float, default=None, metavar="T", help=TEMPERATURE_HELP)
  r = sub.add_parser(
    "report",
    help="report.html (curves, samples, the family's pictures, "
    "evaluation, config, provenance) and the pictures as files",
  )
  r.add_argument(
    "--workdir", required=True, nargs="+", metavar="RUN", help="one run, or several to compare"
  )
  r.add_argument(
    "--out",
    default=None,
    help="folder for report.html (and, for one run, its "
    "pictures; several runs write theirs to RUN/report) (default: WORKDIR/report "
    "of the first run)",
  )
  r.add_argument("--num", type=int, default=64, help="test images to use")
  r.add_argument("--seed", type=int, default=0)
  r.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  r.add_argument(
    "--no_pictures",
    action="store_true",
    help="skip the family's pictures (no checkpoint restore): curves and tables only",
  )
  e = sub.add_parser(
    "evaluate",
    help="sample metrics (and likelihood bounds) vs real data; writes WORKDIR/metrics.json",
  )
  runs = e.add_mutually_exclusive_group(required=True)
  runs.add_argument("--workdir", help="run to evaluate")
  runs.add_argument("--compare", nargs="+", metavar="RUN", help="one table of evaluated runs")
  e.add_argument("--num_samples", type=int, default=10_000, help="samples (and test images)")
  e.add_argument(
    "--seed", type=int, default=None, help="default 0 (likelihood bounds: the config's eval.seed)"
  )
  e.add_argument(
    "--extractor",
    default=None,
    help="classifier workdir (default: $JAXGEN_EXTRACTOR, else runs/classifier_<data.name>)",
  )
  e.add_argument("--num_importance", type=int, default=None, help="IWAE samples k")
  e.add_argument(
    "--cache_dir",
    default=None,
    help="where the extractor's accuracy and the floors are cached (default: WORKDIR/eval)",
  )
  e.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  e.add_argument(
    "--memorization",
    action="store_true",
    help="only the memorisation check: nearest training images of samples (features, pixels), "
    "WORKDIR/memorization.json and .png",
  )
  e.add_argument("--temperature", type=float, default=None, metavar="T", help=TEMPERATURE_HELP)
  for cmd in (t, e):  # several processes (e.g. hosts) take part in one run or evaluation
    cmd.add_argument("--coordinator", help="host:port of process 0, for multi-host runs")
    cmd.add_argument("--num_processes", type=int)
    cmd.add_argument("--process_id", type=int)
  return p


def _train(args: argparse.Namespace, overrides: dict[str, str]) -> None:
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()  # one "prepared" line instead of per-example bars
  from jaxgen import config as config_lib
  from jaxgen import parallel

  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  from jaxgen import trainer

  config = config_lib.load(args.config, overrides)
  config_lib.validate(config)
  eval_fn = None
  if config.get("eval_every"):
    from jaxgen import evaluation

    eval_fn = evaluation.make_eval_fn(config, cache_dir=Path(args.workdir) / evaluation.CACHE_DIR)
  trainer.train_and_evaluate(config, args.workdir, eval_fn=eval_fn)


def _sample(args: argparse.Namespace) -> None:
  from jaxgen import art

  for path in art.write_samples(
    args.workdir,
    args.out,
    num=args.num,
    seed=args.seed,
    step=args.step,
    label=args.label,
    caption=args.caption,
    walk=args.walk,
    truncation=args.truncation,
    upscale=args.upscale,
    temperature=args.temperature,
  ):
    print(f"wrote {path}")


def _report(args: argparse.Namespace) -> None:
  from jaxgen import report

  path, pictures = report.write_report(
    args.workdir,
    args.out,
    num=args.num,
    seed=args.seed,
    step=args.step,
    pictures=not args.no_pictures,
  )
  for picture in pictures:
    print(f"wrote {picture}")
  print(f"wrote {path}  (open {path.resolve().as_uri()})")


def _evaluate(args: argparse.Namespace) -> None:
  from jaxgen import parallel

  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  import jax

  from jaxgen import evaluation

  if args.compare:
    if args.temperature is not None:
      raise UserError(
        "--compare tabulates each run's metrics.json as evaluated; evaluate a run with "
        "--workdir RUN --temperature T first"
      )
    print(evaluation.format_table([evaluation.load_results(w) for w in args.compare]))
    return
  if args.memorization:  # art.check_run: samples' nearest training images, rate vs floor
    from jaxgen import art

    results, paths = art.check_run(
      args.workdir,
      args.extractor,
      num_samples=args.num_samples,
      seed=args.seed or 0,
      step=args.step,
      temperature=args.temperature,
    )
    if jax.process_index() == 0:
      print(art.format_memorization(results))
      print("\n".join(f"wrote {p}" for p in paths))
    return
  results = evaluation.evaluate_run(
    args.workdir,
    num_samples=args.num_samples,
    seed=args.seed,
    extractor=args.extractor,
    num_importance=args.num_importance,
    step=args.step,
    cache_dir=args.cache_dir,
    temperature=args.temperature,
  )
  if jax.process_index() == 0:
    print(evaluation.format_table([results]))
    if results["protocol"].get("sample_metrics"):
      print(f"note: {results['protocol']['sample_metrics']}")
    seconds = results["protocol"].get("seconds", "?")
    print(f"wrote {Path(args.workdir) / 'metrics.json'} ({seconds}s)")


def _check_counts(args: argparse.Namespace) -> None:
  for name in ("num", "num_samples", "num_importance"):
    value = getattr(args, name, None)
    if value is not None and value < 1:
      raise UserError(f"--{name} {value}: must be at least 1")


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  debug = "--debug" in argv or os.environ.get("JAXGEN_DEBUG") == "1"
  rest, overrides = _split_overrides([a for a in argv if a != "--debug"])
  args = _parser().parse_args(rest)
  if overrides and args.command != "train":
    raise SystemExit(
      f"jaxgen {args.command}: error: --config.* overrides apply to `train` only; "
      f"{args.command} uses the run's own config (WORKDIR/config.json)"
    )
  if not debug:
    _quiet_library_logs()
  try:
    _check_counts(args)
    if args.command == "train":
      _train(args, overrides)
    elif args.command == "sample":
      _sample(args)
    elif args.command == "report":
      _report(args)
    elif args.command == "evaluate":
      _evaluate(args)
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves and exits itself)
    if debug:
      raise
    print(f"jaxgen {args.command}: interrupted", file=sys.stderr)
    raise SystemExit(130) from None
  except Exception as e:  # one line naming the problem and the fix; other errors keep tracebacks
    if isinstance(e, Preempted):
      print(f"jaxgen {args.command}: {e}", file=sys.stderr, flush=True)
      raise SystemExit(e.exit_code) from None
    os_error = None if isinstance(e, UserError) else find_os_error(e)
    if debug or not (isinstance(e, UserError) or os_error):
      raise
    if os_error is not None:
      e = f"{os_error.filename or ''}{': ' if os_error.filename else ''}{os_error.strerror}"
    raise SystemExit(f"jaxgen {args.command}: error: {e}") from None


def _quiet_library_logs() -> None:
  """Orbax (and asyncio, for its save tasks) log the traceback of a failed background save or
  restore before the error is raised; that error is reported in one line, so these logs show
  only with --debug."""
  import logging

  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.FATAL)
  logging.getLogger("absl").setLevel(logging.CRITICAL)
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved"
  sys.unraisablehook = lambda unraisable: None
  import threading

  threading.excepthook = lambda args: None


if __name__ == "__main__":
  main()
