"""Evaluating a run or a state: sample metrics (or caption accuracy) against the floor,
likelihood bounds, flags and protocol; metrics.json; the trainer's in-training eval_fn."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgen import metrics, parallel, steps, trainer
from jaxgen.errors import UserError
from jaxgen.evaluation import captions, likelihood, quality, sharded, splits
from jaxgen.evaluation import extractor as extractor_lib
from jaxgen.evaluation import floor as floor_lib
from jaxgen.evaluation.extractor import Extractor
from jaxgen.evaluation.quality import (
  COLLAPSE_FRACTION,
  DENSITY_COVERAGE_K,
  DIVERSITY_POINTS,
  DUPLICATE_FACTOR,
  DUPLICATE_MIN_RATE,
  HIGH_PRECISION_FRACTION,
  IS_SPLITS,
  KID_SUBSET_SIZE,
  KID_SUBSETS,
  PRECISION_RECALL_K,
)

DEFAULT_NUM_SAMPLES = 10_000
IN_TRAINING_NUM_SAMPLES = 2_000  # config.eval_num_samples overrides
CACHE_DIR = "eval"  # in the run evaluated: the extractor's accuracy and the floors, cached


def _sample_results(
  config: ml_collections.ConfigDict,
  family: Any,
  state: Any,
  extractor: Extractor,
  num_samples: int,
  seed: int,
  step: int,
  mesh: jax.sharding.Mesh,
  reference: floor_lib.Reference | None,
) -> dict:
  """Sample metrics of `num_samples` samples vs the test split, the floor, flags and protocol."""
  ref = reference or floor_lib.real_reference(
    extractor, config, num_samples, num_samples, seed, mesh
  )
  num_classes = config.model.get("num_classes") or 0
  model_labels, labels = requested_labels(config, num_samples, len(ref.protocol["class_names"]))
  feats, logits, _ = sharded.generate_features(
    family,
    state,
    extractor.features_fn,
    jax.random.key(seed),
    num_samples,
    num_classes,
    mesh,
    labels=model_labels,
  )
  values = quality.sample_metrics(
    ref.test_features, feats, logits, labels, seed, real_labels_N=ref.test_labels
  )
  return dict(
    family=config.model.family,
    dataset=config.data.name,
    metrics=values,
    floor=ref.floor,
    flags=quality.sample_flags(values, ref.floor),
    protocol=dict(
      extractor=dict(extractor.protocol(), feature_dim=int(feats.shape[1])),
      num_samples=num_samples,
      **ref.protocol,
      checkpoint_step=step,
      conditional=bool(num_classes),
      **_conditioning(config),
      kid=dict(
        subsets=KID_SUBSETS, subset_size=min(KID_SUBSET_SIZE, num_samples, ref.protocol["num_real"])
      ),
      precision_recall_k=PRECISION_RECALL_K,
      density_coverage_k=DENSITY_COVERAGE_K,
      inception_score_splits=min(IS_SPLITS, num_samples),
      diversity_points=min(DIVERSITY_POINTS, num_samples),
      collapse_fraction=COLLAPSE_FRACTION,
      duplicates=dict(
        percentile=metrics.duplicates.DUPLICATE_PERCENTILE,
        factor=DUPLICATE_FACTOR,
        min_rate=DUPLICATE_MIN_RATE,
      ),
      high_precision_fraction=HIGH_PRECISION_FRACTION,
    ),
  )


def requested_labels(
  config: ml_collections.ConfigDict, num: int, num_groups: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """(the model's labels [num], the requested classes [num] in the data's own labels, which
  conditional accuracy compares with the extractor's reading); (None, None) if unconditional.

  The data's classes are requested in turn, 0..K-1 cycled. A run conditioned on a finer
  feature (data.label_feature, e.g. emoji's subgroups within its groups: data.class_groups)
  gets, for each requested group, one of its classes in proportion to their training counts
  (`weighted_cycle`), so it is asked for what a run conditioned on the groups is; where its
  classes have no single group each, they are cycled and not scored (None)."""
  k = config.model.get("num_classes") or 0
  if not k:
    return None, None
  if config.data.get("label_feature", "label") == "label":
    labels = np.arange(num) % k
    return labels, labels
  class_groups = np.asarray(config.data.get("class_groups") or (), np.int32)
  if not len(class_groups):
    return np.arange(num) % k, None
  counts = splits.class_counts(config, "train")
  groups = np.arange(num) % num_groups
  labels = np.zeros(num, np.int32)
  for g in range(num_groups):
    members = np.flatnonzero(class_groups == g)
    at = np.flatnonzero(groups == g)
    if len(members) and len(at):
      labels[at] = members[weighted_cycle(counts[members], len(at))]
  return labels, groups


def weighted_cycle(weights: np.ndarray, num: int) -> np.ndarray:
  """`num` picks of the indices of `weights`, each index's share of every prefix within one pick
  of its share of the weights (smooth weighted round-robin); equal weights give 0, 1, ..., K-1,
  0, ...; an index of weight 0 is never picked."""
  w = np.asarray(weights, np.float64)
  current, picks = np.zeros_like(w), np.empty(num, np.int32)
  for i in range(num):
    current += w
    picks[i] = np.argmax(current)
    current[picks[i]] -= w.sum()
  return picks


def _conditioning(config: ml_collections.ConfigDict) -> dict:
  """The protocol's note of a run conditioned on a feature other than the data's labels."""
  feature = config.data.get("label_feature", "label")
  if feature == "label" or not config.model.get("num_classes"):
    return {}
  scored = "each class's group" if config.data.get("class_groups") else "not scored"
  return dict(conditioned_on=feature, conditional_accuracy_by=scored)


def _bounds_only_results(config: ml_collections.ConfigDict, step: int, note: str) -> dict:
  """The result skeleton of a run evaluated without an extractor: no sample metrics, a note."""
  return dict(
    family=config.model.family,
    dataset=config.data.name,
    metrics={},
    floor={},
    flags=[],
    protocol=dict(checkpoint_step=step, sample_metrics=note),
  )


def evaluate_state(
  config: ml_collections.ConfigDict,
  family: Any,
  state: Any,
  extractor: Extractor | None,
  *,
  num_samples: int = DEFAULT_NUM_SAMPLES,
  seed: int = 0,
  num_importance: int | None = None,
  step: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
  reference: floor_lib.Reference | None = None,
  likelihood_seed: int | None = None,
  note: str = "",
) -> dict:
  """All metrics of a generative `state` vs the test split, its floor, flags and protocol.

  Sample metrics, or for captioned runs (`is_captioned`) caption accuracy; with `extractor`
  None neither (families with likelihood bounds only) and protocol.sample_metrics = `note`,
  which should say how to get them. `reference`: a precomputed `real_reference` for these
  counts and seed (else computed or read from the cache; unused for captioned runs).
  Likelihood bounds (families with `log_likelihood_bounds`) use `num_importance` and
  `likelihood_seed` where given, else config.eval.num_importance / seed, on the first
  config.eval.num_test_images test examples (default: num_samples).
  """
  t0 = time.perf_counter()
  mesh = mesh or parallel.make_mesh()
  step = int(jax.device_get(state.step)) if step is None else step
  if extractor is None:
    if not hasattr(family, "log_likelihood_bounds"):
      raise ValueError(
        f"the {config.model.family!r} family has no likelihood bounds: its "
        "evaluation needs a feature extractor"
      )
    results = _bounds_only_results(config, step, note or "not computed: no feature extractor")
  elif captions.is_captioned(config, family):
    results = captions.caption_results(
      config, family, state, extractor, num_samples, seed, step, mesh
    )
  else:
    results = _sample_results(
      config, family, state, extractor, num_samples, seed, step, mesh, reference
    )
  if extractor is not None and (t := steps.sample_temperature(family, state)) is not None:
    results["protocol"]["sample_temperature"] = t  # how the samples were drawn
  if hasattr(family, "log_likelihood_bounds"):
    results["likelihood"], results["protocol"]["likelihood"] = likelihood.likelihood_results(
      config,
      family,
      state,
      num_samples=num_samples,
      seed=seed,
      num_importance=num_importance,
      likelihood_seed=likelihood_seed,
      step=step,
      mesh=mesh,
    )
  results["protocol"]["seconds"] = round(time.perf_counter() - t0, 1)
  return results


def evaluate_run(
  workdir: str | Path,
  *,
  num_samples: int = DEFAULT_NUM_SAMPLES,
  seed: int | None = None,
  extractor: str | Path | None = None,
  num_importance: int | None = None,
  step: int | None = None,
  cache_dir: str | Path | None = None,
  temperature: float | None = None,
) -> dict:
  """Evaluates a run's checkpoint (latest by default) and writes workdir/metrics.json.

  `temperature` (DRAW, alignDRAW; default: the run's config.model.sample_temperature) scales
  the prior's noise in the samples; the protocol records the one used.

  `seed` (default 0) draws the samples and real subsets; likelihood bounds use it where
  given, else config.eval.seed. The extractor's test accuracy and the floors are cached in
  `cache_dir` (default workdir/eval); nothing is written outside it and workdir.
  """
  t0 = time.perf_counter()
  workdir = Path(workdir)
  config = trainer.load_run_config(workdir)
  mesh = parallel.make_mesh()
  if config.model.family == "classifier":
    config, _, state = trainer.load_run(workdir, step)
    values = make_eval_fn(config, mesh=mesh)(state, 0)
    results = dict(
      family="classifier",
      dataset=config.data.name,
      metrics=values,
      floor={},
      flags=[],
      protocol=dict(
        split="test", checkpoint_step=int(state.step), seconds=round(time.perf_counter() - t0, 1)
      ),
    )
  else:
    # Before the run is loaded: a missing extractor fails fast (or, for families with
    # likelihood bounds, leaves only them to compute).
    cache_dir = workdir / CACHE_DIR if cache_dir is None else cache_dir
    ext, note = extractor_lib.optional_extractor(config, extractor, mesh, cache_dir)
    if ext is None and temperature is not None:
      raise UserError(
        f"--temperature scales the samples' prior noise, but no samples are drawn: {note}"
      )
    config, family, state = trainer.load_run(workdir, step)
    state = steps.at_temperature(family, state, temperature)
    results = evaluate_state(
      config,
      family,
      state,
      ext,
      num_samples=num_samples,
      seed=seed or 0,
      num_importance=num_importance,
      mesh=mesh,
      likelihood_seed=seed,
      note=note,
    )
  results["run"] = str(workdir)
  if jax.process_index() == 0:
    (workdir / "metrics.json").write_text(json.dumps(results, indent=2))
  return results


def load_results(workdir: str | Path) -> dict:
  """A run's metrics.json (written by `jaxgen evaluate --workdir`)."""
  path = Path(workdir) / "metrics.json"
  if not path.is_file():
    raise UserError(
      f"{path} not found; evaluate the run first with `jaxgen evaluate --workdir {workdir}`"
    )
  return json.loads(path.read_text())


def make_eval_fn(
  config: ml_collections.ConfigDict,
  extractor: str | Path | None = None,
  mesh: jax.sharding.Mesh | None = None,
  cache_dir: str | Path | None = None,
) -> Callable[[Any, int], dict]:
  """`eval_fn(state, step) -> {metric: value}` for the trainer (every config.eval_every steps).

  Classifiers: test-split accuracy and loss. Generative families: the sample metrics on
  config.eval_num_samples (default IN_TRAINING_NUM_SAMPLES) samples vs as many test images
  (captioned runs: caption accuracy on as many test captions), flags and, where the family
  has them, likelihood bounds. The extractor and the real features are loaded here, so a
  missing extractor fails before training starts (families with likelihood bounds get only
  those, see `optional_extractor`); its accuracy is cached in `cache_dir` where given.
  """
  mesh = mesh or parallel.make_mesh()
  if config.model.family == "classifier":
    images, labels = splits.read_split(config, "test")
    return lambda state, step: {
      f"test_{k}": v
      for k, v in extractor_lib.classifier_accuracy(
        extractor_lib.classifier_features_fn(state), images, labels, mesh
      ).items()
    }
  family = steps.get_family(config.model.family)
  ext, note = extractor_lib.optional_extractor(config, extractor, mesh, cache_dir)
  if note and jax.process_index() == 0:
    print(f"evaluation every {config.eval_every} steps: likelihood bounds only; {note}", flush=True)
  num = config.get("eval_num_samples") or IN_TRAINING_NUM_SAMPLES
  ref = None
  if ext is not None and not captions.is_captioned(config, family):
    ref = floor_lib.real_reference(ext, config, num, num, config.seed, mesh)

  def eval_fn(state: Any, step: int) -> dict:
    results = evaluate_state(
      config,
      family,
      state,
      ext,
      num_samples=num,
      seed=config.seed,
      step=step,
      mesh=mesh,
      reference=ref,
      note=note,
    )
    return dict(results["metrics"], **results.get("likelihood", {}), flags=results["flags"])

  return eval_fn
