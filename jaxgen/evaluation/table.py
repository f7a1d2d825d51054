"""The text table of evaluated runs: metric rows x run columns, the floor, flags, protocol."""

import json

from jaxgen.evaluation.quality import flag_kind_and_evidence

ROWS = (  # key, label, format[, key of its std over subsets]; metrics, then likelihood bounds
  ("fd", "FD (lower better)", "{:.2f}"),
  ("kid", "KID (lower)", "{:.4g}", "kid_std"),  # its scale follows the features' (cubic kernel)
  ("inception_score", "IS (higher)", "{:.2f}", "inception_score_std"),
  ("precision", "precision", "{:.3f}"),
  ("recall", "recall", "{:.3f}"),
  ("density", "density", "{:.3f}"),
  ("coverage", "coverage", "{:.3f}"),
  ("diversity", "diversity", "{:.2f}"),
  ("duplicate_rate", "duplicates", "{:.3f}"),  # metrics.duplicate_rate
  ("conditional_accuracy", "cond. accuracy", "{:.3f}"),
  ("caption_accuracy", "caption accuracy", "{:.3f}"),
  ("caption_accuracy_held_out", "  held-out captions", "{:.3f}"),
  ("caption_accuracy_seen", "  seen captions", "{:.3f}"),
  ("group_accuracy", "group accuracy", "{:.3f}"),  # named images (emoji): the name's group
  ("group_accuracy_held_out", "  held-out names", "{:.3f}"),
  ("group_accuracy_seen", "  seen names", "{:.3f}"),
  ("test_accuracy", "test accuracy", "{:.4f}"),
  ("test_loss", "test loss", "{:.4f}"),
  ("nll_elbo", "-ELBO nats/image", "{:.2f}"),
  ("nll_iwae", "-IWAE nats/image", "{:.2f}"),
  ("bpd_elbo", "-ELBO bits/dim", "{:.4f}"),
  ("bpd_iwae", "-IWAE bits/dim", "{:.4f}"),
)


def format_cell(row: tuple, values: dict, flags: list[str] = ()) -> str:
  """One table cell: the value of ROWS entry `row` in `values` (± its std where it has one),
  marked "!" when one of `flags` gives that metric as its evidence; "-" if absent."""
  key, _, fmt, *std = row
  if values.get(key) is None:
    return "-"
  text = fmt.format(values[key])
  if std and values.get(std[0]) is not None:
    text += f" ±{values[std[0]]:.2g}"
  flagged = any(flag_kind_and_evidence(f)[1].startswith(key + " ") for f in flags)
  return text + (" !" if flagged else "")


def _protocol_line(r: dict) -> str:
  p = r["protocol"]
  if "extractor" not in p and "likelihood" in p:  # bounds only, no extractor
    lk = p["likelihood"]
    return (
      f"{r['run']}: {r['family']} at step {p['checkpoint_step']}; bounds on "
      f"{lk['num_images']} {lk['split']} images, k={lk['num_importance']}; no sample metrics"
    )
  if "extractor" not in p:
    return f"{r['run']}: {r['family']} at step {p.get('checkpoint_step')}, {p.get('split')} split"
  e = p["extractor"]
  acc = f"{e['test_accuracy']:.2%}" if e.get("test_accuracy") is not None else "?"
  if "captions" in p and p["captions"].get("score") == "group":
    c = p["captions"]
    line = (
      f"{r['run']}: step {p['checkpoint_step']}, a sample for each of {c['num']} names "
      f"({c['held_out']} held out: test split; the rest seen: train split), seed {p['seed']}; "
      f"images' groups by {e['name']} (step {e['checkpoint_step']}, test accuracy {acc}) vs "
      f"the names' groups; floor: {p['floor']}"
    )
  elif "captions" in p:
    c = p["captions"]
    line = (
      f"{r['run']}: step {p['checkpoint_step']}, a sample for each of the first {c['num']} "
      f"{c['split']} captions ({c['held_out']} held out), seed {p['seed']}; items at the "
      f"captions' places classified by {e['name']} (step {e['checkpoint_step']}, test "
      f"accuracy {acc}); floor: {p['floor']}"
    )
  else:
    line = (
      f"{r['run']}: step {p['checkpoint_step']}, {p['num_samples']} samples vs "
      f"{p['num_real']} {p['real_split']} images, seed {p['seed']}; extractor {e['name']} "
      f"(step {e['checkpoint_step']}, test accuracy {acc}, {e['feature_dim']}-d)"
    )
  if p.get("sample_temperature", 1.0) != 1.0:
    line += f"; samples at temperature {p['sample_temperature']:g}"
  if "likelihood" in p:
    lk = p["likelihood"]
    line += f"; bounds on {lk['num_images']} {lk['split']} images, k={lk['num_importance']}"
  return line


# per-class lists, each shown as a row per class under its overall metric's row
PER_CLASS = {
  "coverage": "coverage_per_class",
  "conditional_accuracy": "conditional_accuracy_per_class",
}


def _with_classes(values: dict) -> dict:
  """`values` with each per-class list's entries also as keys <list>/k."""
  out = dict(values)
  for per_class in PER_CLASS.values():
    out.update({f"{per_class}/{k}": a for k, a in enumerate(values.get(per_class) or [])})
  return out


def metric_rows(results: list[dict]) -> tuple[list[dict], dict, list[tuple]]:
  """Each result's values (metrics and likelihood bounds), the first result's floor, and the
  ROWS some result has; under the overall coverage and conditional accuracy a row per class,
  named by the first class_names a result's protocol records ("class k" where none does)."""
  merged = [_with_classes(dict(r.get("metrics", {}), **r.get("likelihood", {}))) for r in results]
  floor = _with_classes(results[0].get("floor") or {})
  names = next((n for r in results if (n := r.get("protocol", {}).get("class_names"))), [])

  def class_rows(per_class: str) -> list[tuple]:
    most = max(len(m.get(per_class) or []) for m in merged)
    return [
      (f"{per_class}/{k}", f"  {names[k] if k < len(names) else f'class {k}'}", "{:.3f}")
      for k in range(most)
    ]

  rows = []
  for row in ROWS:
    if any(m.get(row[0]) is not None for m in merged):
      rows += [row] + (class_rows(PER_CLASS[row[0]]) if row[0] in PER_CLASS else [])
  return merged, floor, rows


def format_table(results: list[dict]) -> str:
  """Metric rows x run columns, then the floor of the first run (real train vs test, or for
  captioned runs the real test canvases). Coverage (of the real images of each class) and a
  conditional model's accuracy have a row per class under them, named by the data set's labels.

  A value carries a "!" where a flag's evidence starts with its metric (`sample_flags`).
  """
  merged, floor, rows = metric_rows(results)
  names = [r.get("run", f"run{i}") for i, r in enumerate(results)]
  described = results[0].get("protocol", {}).get("captions")
  floor_name = "train vs test" if described is None else "real test canvases"
  if described is not None and described.get("score") == "group":
    floor_name = "real images"
  header = ["metric", *names] + ([f"floor: {floor_name}"] if floor else [])
  body = []
  for row in rows:
    cells = [format_cell(row, m, r.get("flags", [])) for m, r in zip(merged, results)]
    body.append([row[1], *cells] + ([format_cell(row, floor)] if floor else []))
  widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
  fmt = lambda line: "  ".join(
    c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))
  ).rstrip()
  out = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, body)]
  for name, r in zip(names, results):
    for flag in r.get("flags", []):
      out.append(f"! {name}: {': '.join(flag_kind_and_evidence(flag))}")
  out.append("protocol:")
  out += [f"  {_protocol_line(r)}" for r in results]
  keys = {json.dumps(_comparable(r), sort_keys=True) for r in results}
  if len(keys) > 1:
    out.append("  note: the runs differ in extractor, counts or seed; the floor is the first run's")
  return "\n".join(out)


def _comparable(r: dict) -> dict:
  p = r.get("protocol", {})
  e = p.get("extractor", {})
  return dict(
    extractor=e.get("name"),
    step=e.get("checkpoint_step"),
    n=p.get("num_samples"),
    real=p.get("num_real"),
    seed=p.get("seed"),
    data=r.get("dataset"),
    temperature=p.get("sample_temperature", 1.0),
  )
