"""Evaluation of trained runs: sample metrics in a classifier's feature space, against a floor.

    jaxgen evaluate --workdir RUN [--num_samples 10000] [--seed 0] [--extractor DIR]
                    [--num_importance K] [--cache_dir DIR]
    jaxgen evaluate --compare RUN1 RUN2 ...

The feature extractor is a parameter: any `features_fn(images_BxHxWxC in [-1, 1]) ->
(features_BxD, logits_BxK)`. By default it is the jaxgen classifier trained on the run's
data set, found at (first that is set) --extractor, $JAXGEN_EXTRACTOR, or
runs/classifier_<data.name> relative to the working directory.

Every number is shown beside its floor: the same metric between real train images (as
if they were samples) and the real test images, with the same counts. The extractor's test
accuracy and the floor's test features and numbers are cached in the run evaluated
(RUN/eval/extractor_<name>_<hash>/) or in --cache_dir; the extractor's folder is only read.
Flags (`sample_flags`) say what the numbers show: recall, coverage or sample diversity below
COLLAPSE_FRACTION of the floor is "low diversity or coverage" (blurry samples show it too);
"possible mode collapse" is kept for its own signs: near-duplicate samples
(metrics.duplicate_rate far above its floor) or high precision with low recall.
Families with `log_likelihood_bounds(state, batch, key, num_samples)` also get ELBO / IWAE
bounds on the test split, in nats per image and bits per dimension; their batches carry
every feature the loader yields (image, label, caption tokens, ...). They need no
extractor: without one (at the default place) only the bounds are computed, with a note
saying how to get the sample metrics.

Caption-conditioned runs (data.name "captioned_*", or test items with "tokens" and a family
with `tokenize`) draw canvases the 28 x 28 metrics do not apply to. They get caption accuracy
instead: a sample for each of the first num_samples test captions, correct where the items'
data-set classifier (fashion_mnist's, for captioned Fashion-MNIST) recognises every item the
caption names at its place; over all captions, the held-out combinations and the seen ones.
Its floor (a ceiling) is the same accuracy of the real test canvases. Runs on named images
(emoji: the caption is the CLDR name, the label its group) get group accuracy instead: does the
data set's classifier give a sample drawn for a name that name's group; for the first
num_samples held-out (test) names and as many seen (training) names, the floor being the real
images' accuracy.
Evaluation runs on every process of a run (features are gathered to every host for the metrics).

Modules: extractor (finding and checking it), splits (real examples), sharded (the one
pad / shard / gather pass: features, samples), quality (metrics, flags), floor, captions,
likelihood (bounds), run (states, runs, in-training eval_fn), table.
"""

from jaxgen.evaluation.captions import caption_correct, caption_metrics, is_captioned
from jaxgen.evaluation.extractor import (
  CAPTIONED_PREFIX,
  EXTRACTOR_ENV,
  Extractor,
  ExtractorNotFound,
  classifier_accuracy,
  extractor_config,
  load_extractor,
  optional_extractor,
)
from jaxgen.evaluation.floor import Reference, real_reference
from jaxgen.evaluation.likelihood import likelihood_bounds
from jaxgen.evaluation.quality import flag_kind_and_evidence, sample_flags, sample_metrics
from jaxgen.evaluation.run import (
  CACHE_DIR,
  evaluate_run,
  evaluate_state,
  load_results,
  make_eval_fn,
  requested_labels,
  weighted_cycle,
)
from jaxgen.evaluation.sharded import FeaturesFn, compute_features, generate_features
from jaxgen.evaluation.splits import read_batch, read_split, subset_indices
from jaxgen.evaluation.table import ROWS, format_cell, format_table, metric_rows

__all__ = [
  "CACHE_DIR",
  "CAPTIONED_PREFIX",
  "EXTRACTOR_ENV",
  "ROWS",
  "Extractor",
  "ExtractorNotFound",
  "FeaturesFn",
  "Reference",
  "caption_correct",
  "caption_metrics",
  "classifier_accuracy",
  "compute_features",
  "evaluate_run",
  "evaluate_state",
  "extractor_config",
  "flag_kind_and_evidence",
  "format_cell",
  "format_table",
  "metric_rows",
  "generate_features",
  "is_captioned",
  "likelihood_bounds",
  "load_extractor",
  "load_results",
  "make_eval_fn",
  "optional_extractor",
  "read_batch",
  "read_split",
  "subset_indices",
  "real_reference",
  "requested_labels",
  "sample_flags",
  "sample_metrics",
  "weighted_cycle",
]
