"""`jaxgen report`: the family's pictures and one self-contained HTML page per run (or runs).

    report.html   curves (inline SVG), sample grids over training, the family's pictures,
                  the evaluation table (metrics.json) with its floor and protocol, the config
                  and provenance; images embedded as data URIs, so the file is all there is.

Several runs: curves overlaid, one comparison table. Nothing here trains or evaluates.
"""

import base64
import datetime
import html
import json
import math
from pathlib import Path

from jaxgen import runlog
from jaxgen.errors import UserError

MAX_GRIDS = 6  # sample grids shown per run, evenly spaced over training
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


# ------------------------------------------------------------------- run data


def read_metrics(workdir: str | Path) -> tuple[dict[int, dict], dict[int, dict]]:
  """(train rows, eval rows) of metrics.jsonl keyed by step; a step logged again after a
  resume keeps its last row. Raises UserError if the folder is not a run or has no metrics."""
  workdir = Path(workdir)
  if not (workdir / "config.json").is_file():
    raise UserError(
      f"{workdir} holds no jaxgen run ({workdir / 'config.json'} is missing); "
      f"pass the --workdir of a `jaxgen train` run"
    )
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.is_file() else []
  train, evals = {}, {}
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue  # a line cut short by a kill mid-write
    if "eval" in row:
      evals[int(row["step"])] = row["eval"]
    elif "step" in row:
      train[int(row["step"])] = {k: v for k, v in row.items() if k != "step"}
  if not train:
    raise UserError(
      f"{path} holds no metrics yet; wait for the run's first log_every steps "
      f"(or train it: `jaxgen train --config CONFIG --workdir {workdir}`)"
    )
  return train, evals


def series(rows: dict[int, dict]) -> dict[str, tuple[list[int], list[float]]]:
  """{key: (steps, values)} of every numeric key in rows keyed by step, steps ascending."""
  out: dict[str, tuple[list[int], list[float]]] = {}
  for step in sorted(rows):
    for key, value in rows[step].items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        steps, values = out.setdefault(key, ([], []))
        steps.append(step)
        values.append(float(value))
  return out


def sample_grids(workdir: str | Path, num: int = MAX_GRIDS) -> list[tuple[int, Path]]:
  """Up to `num` (step, path) of samples/step_*.png, evenly spaced, first and last included."""
  paths = sorted(Path(workdir, "samples").glob("step_*.png"))
  grids = [(int(p.stem.split("_")[1]), p) for p in paths]
  if len(grids) <= num:
    return grids
  picks = sorted({round(i * (len(grids) - 1) / (num - 1)) for i in range(num)})
  return [grids[i] for i in picks]


def load_results(workdir: str | Path) -> dict | None:
  """metrics.json (from `jaxgen evaluate`), or None if the run was not evaluated."""
  path = Path(workdir) / "metrics.json"
  return json.loads(path.read_text()) if path.is_file() else None


def has_checkpoint(workdir: str | Path) -> bool:
  folder = Path(workdir) / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def write_pictures(
  workdir: str | Path, out: str | Path, num: int = 64, seed: int = 0, step: int | None = None
) -> list[Path]:
  """The family's pictures of a trained run (restored checkpoint, `num` test images) in `out`.

  Returns [] for a family that draws none (the classifier).
  """
  import jax

  from jaxgen import data, pictures, trainer

  config, _, state = trainer.load_run(workdir, step)
  if config.model.family not in pictures.BY_FAMILY:
    return []
  source, _ = trainer.load_data(config, "test")
  batch = next(data.make_loader(source, batch_size=num, seed=seed, shuffle=False))
  return pictures.write(config.model.family, state, batch, jax.random.key(seed), out)


# -------------------------------------------------------------------- drawing


def _fmt(v: float) -> str:
  return f"{v:.4g}"


def svg_chart(
  title: str, lines: list[tuple[str, list[int], list[float]]], width: int = 380, height: int = 210
) -> str:
  """An inline SVG line chart of (label, steps, values) lines over a shared step axis."""
  points = [(s, v) for _, xs, ys in lines for s, v in zip(xs, ys) if math.isfinite(v)]
  left, right, top, bottom = 58, 10, 24, 28
  w, h = width - left - right, height - top - bottom
  parts = [
    f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
    f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
    f"<title>{html.escape(title)}</title>",
    f'<text x="{left}" y="15" font-size="13" font-weight="bold">{html.escape(title)}</text>',
  ]
  if not points:
    return "".join(parts) + "</svg>"
  x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
  y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
  x1 = x1 if x1 > x0 else x0 + 1
  pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
  y0, y1 = y0 - pad, y1 + pad
  px = lambda s: left + w * (s - x0) / (x1 - x0)
  py = lambda v: top + h * (1 - (v - y0) / (y1 - y0))
  parts.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
  for v in (y0 + pad, (y0 + y1) / 2, y1 - pad):
    parts.append(
      f'<line x1="{left}" x2="{left + w}" y1="{py(v):.1f}" y2="{py(v):.1f}" '
      f'stroke="#eee"/><text x="{left - 4}" y="{py(v) + 4:.1f}" font-size="10" '
      f'text-anchor="end">{_fmt(v)}</text>'
    )
  for s, anchor in ((x0, "start"), (x1, "end")):
    parts.append(
      f'<text x="{px(s):.1f}" y="{top + h + 14}" font-size="10" text-anchor="{anchor}">{s}</text>'
    )
  parts.append(
    f'<text x="{left + w / 2:.1f}" y="{height - 2}" font-size="10" text-anchor="middle">step</text>'
  )
  for i, (label, xs, ys) in enumerate(lines):
    color = COLORS[i % len(COLORS)]
    pts = [(px(s), py(v)) for s, v in zip(xs, ys) if math.isfinite(v)]
    if len(pts) == 1:
      parts.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="3" fill="{color}"/>')
    elif pts:
      coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
      parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    if len(lines) > 1:
      parts.append(
        f'<text x="{left + w - 4}" y="{top + 12 + 12 * i}" font-size="10" '
        f'text-anchor="end" fill="{color}">{html.escape(label)}</text>'
      )
  return "".join(parts) + "</svg>"


def data_uri(path: str | Path) -> str:
  """The file as a base64 data URI (PNG, GIF or JPEG)."""
  path = Path(path)
  mime = MIME.get(path.suffix.lower())
  if mime is None:
    raise ValueError(f"{path}: not an image this report embeds ({sorted(MIME)})")
  return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _img(path: Path, caption: str) -> str:
  return (
    f'<figure><img src="{data_uri(path)}" alt="{html.escape(caption)}">'
    f"<figcaption>{html.escape(caption)}</figcaption></figure>"
  )


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
  head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
  body = "".join(
    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
  )
  return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --------------------------------------------------------------------- sections


def curves_section(runs: list[dict]) -> str:
  """One chart per training metric (then per in-training evaluation metric), runs overlaid."""
  charts = []
  for kind, prefix in (("train", ""), ("eval", "eval ")):
    keys: list[str] = []
    for run in runs:
      keys += [k for k in run[kind] if k not in keys]
    for key in sorted(keys, key=lambda k: k == "images_per_s"):  # losses first, speed last
      lines = [(run["name"], *run[kind][key]) for run in runs if key in run[kind]]
      charts.append(svg_chart(prefix + key, lines))
  return '<h2 id="curves">Curves</h2><div class="charts">' + "".join(charts) + "</div>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, str]]:
  out = []
  for k, v in d.items():
    if isinstance(v, dict):
      out += _flatten(v, f"{prefix}{k}.")
    else:
      out.append((prefix + k, json.dumps(v) if not isinstance(v, str) else v))
  return out


def evaluation_section(runs: list[dict]) -> str:
  """metrics.json of each evaluated run: metric rows x runs, the floor, flags and protocol."""
  from jaxgen import evaluation  # imported here: it pulls in the data and metrics stacks

  done = [r for r in runs if r["results"]]
  if not done:
    cmd = " ; ".join(f"jaxgen evaluate --workdir {r['workdir']}" for r in runs)
    return (
      f'<h2 id="evaluation">Evaluation</h2><p class="note">not evaluated yet '
      f"(no metrics.json): <code>{html.escape(cmd)}</code></p>"
    )
  merged, floor, shown = evaluation.metric_rows([r["results"] for r in done])
  captioned = "captions" in done[0]["results"].get("protocol", {})
  floor_name = "floor: real test canvases" if captioned else "floor: train vs test"
  header = ["metric", *[r["name"] for r in done]] + ([floor_name] if floor else [])
  rows = []
  for row in shown:
    cells = [
      evaluation.format_cell(row, m, r["results"].get("flags", [])) for m, r in zip(merged, done)
    ]
    rows.append([row[1], *cells] + ([evaluation.format_cell(row, floor)] if floor else []))
  parts = [
    '<h2 id="evaluation">Evaluation</h2><div class="side"><div>',
    _table(header, rows, "eval"),
  ]
  for r in done:
    for flag in r["results"].get("flags", []):
      kind_evidence = ": ".join(evaluation.flag_kind_and_evidence(flag))  # as jaxgen evaluate
      parts.append(f'<p class="flag">! {html.escape(r["name"])}: {html.escape(kind_evidence)}</p>')
  if len(done) > 1:
    parts.append('<p class="note">the floor is the first run\'s</p>')
  parts.append("</div>")
  for r in done:
    protocol = _flatten(r["results"].get("protocol", {}))
    parts.append(
      f"<div><h3>Protocol: {html.escape(r['name'])}</h3>"
      + _table(["setting", "value"], [list(p) for p in protocol], "protocol")
      + "</div>"
    )
  return "".join(parts) + "</div>"


def summary_section(runs: list[dict]) -> str:
  """One row per run: family, data, last step, latest losses, images/s, wall time."""
  rows = []
  for r in runs:
    last = max(r["train_rows"])
    losses = ", ".join(
      f"{k} {_fmt(v)}"
      for k, v in r["train_rows"][last].items()
      if k != "images_per_s" and isinstance(v, (int, float))
    )
    ips = [row.get("images_per_s") for row in r["train_rows"].values() if row.get("images_per_s")]
    wall = sum(s.get("seconds", 0.0) for s in r["sessions"])
    rows.append(
      [
        r["name"],
        r["config"].get("model", {}).get("family", "?"),
        str(r["config"].get("data", {}).get("name", "?")),
        f"{last}/{r['config'].get('num_steps', '?')}",
        losses,
        f"{sorted(ips)[len(ips) // 2]:.1f}" if ips else "-",
        _duration(wall) if r["sessions"] else "not recorded",
      ]
    )
  return '<h2 id="runs">Runs</h2>' + _table(
    ["run", "family", "data", "step", "latest losses", "median images/s", "wall time"],
    rows,
    "summary",
  )


def _duration(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"


def provenance_rows(sessions: list[dict]) -> list[list[str]]:
  """One row per training session: start, steps, seconds, versions, commit, devices."""
  rows = []
  for s in sessions:
    v = s.get("versions", {})
    rows.append(
      [
        s.get("started", "?"),
        f"{s.get('start_step')} -> {s.get('end_step')}",
        _duration(s.get("seconds", 0.0)),
        v.get("jaxgen") or "?",
        s.get("git_commit") or "not a git checkout",
        f"jax {v.get('jax')} / jaxlib {v.get('jaxlib')} / flax {v.get('flax')}",
        f"{s.get('device_count')} x {s.get('device_kind')} ({s.get('platform')}), "
        f"{s.get('process_count')} process(es)",
        s.get("host", "?"),
      ]
    )
  return rows


def run_section(run: dict) -> str:
  """Sample grids over training, the family's pictures, config and provenance of one run."""
  name = html.escape(run["name"])
  parts = [f'<h2 id="run-{run["index"]}">{name}</h2>', "<h3>Samples during training</h3>"]
  if run["grids"]:
    parts.append(
      '<div class="grids">' + "".join(_img(p, f"step {s}") for s, p in run["grids"]) + "</div>"
    )
  else:
    parts.append(
      '<p class="note">no sample grids (config.num_grid_samples = 0 or no '
      "sample_every step reached)</p>"
    )
  parts.append("<h3>Pictures</h3>")
  images = [p for p in run["pictures"] if p.suffix.lower() in MIME]
  if images:
    parts.append('<div class="pictures">' + "".join(_img(p, p.name) for p in images) + "</div>")
  for p in run["pictures"]:
    if p.suffix == ".json":  # e.g. kl_per_unit.json: its single numbers (lists are drawn)
      info = json.loads(p.read_text())
      rows = [
        [k, _fmt(v) if isinstance(v, float) else str(v)]
        for k, v in info.items()
        if isinstance(v, (int, float, str))
      ]
      parts.append(f"<p>{html.escape(p.name)}</p>" + _table(["", ""], rows, "info"))
  parts += [f'<p class="note">{html.escape(n)}</p>' for n in run["notes"]]
  parts.append(
    "<h3>Config</h3><details><summary>config.json</summary><pre>"
    + html.escape(json.dumps(run["config"], indent=2))
    + "</pre></details>"
  )
  parts.append("<h3>Provenance</h3>")
  if run["sessions"]:
    parts.append(
      _table(
        [
          "session started (UTC)",
          "steps",
          "wall time",
          "jaxgen",
          "git commit",
          "versions",
          "devices",
          "host",
        ],
        provenance_rows(run["sessions"]),
        "provenance",
      )
    )
  else:
    parts.append(
      '<p class="note">not recorded (provenance.json is missing: trained before '
      "jaxgen recorded it)</p>"
    )
  return "".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
table.eval td:not(:first-child){text-align:right;font-family:monospace}
.charts,.grids,.pictures,.side{display:flex;flex-wrap:wrap;gap:12px}
.side{gap:32px;align-items:flex-start} .side h3{margin-top:8px} .side>div{max-width:600px}
.chart{border:1px solid #eee;background:#fff}
figure{margin:0} figcaption{font-size:12px;color:#555}
img{image-rendering:pixelated;max-width:100%;height:auto}
.grids img{width:232px} .pictures img{max-width:560px}
.note{color:#666;font-style:italic} .flag{color:#b00;font-size:13px;margin:4px 0}
pre{background:#f6f6f6;padding:8px;font-size:12px;overflow:auto}
"""

# Marks on <body> how many images the browser decoded, for people and for the report test.
SCRIPT = """window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = ok + "/" + imgs.length;
});"""


def render(runs: list[dict]) -> str:
  """The whole page for `runs` (dicts from `collect`)."""
  now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  v = runlog.versions()
  made = (
    f"written {now} by jaxgen {v.get('jaxgen')} (commit {runlog.git_commit() or '?'}), "
    f"jax {v.get('jax')}, jaxlib {v.get('jaxlib')}, flax {v.get('flax')}"
  )
  nav = " · ".join(f'<a href="#run-{r["index"]}">{html.escape(r["name"])}</a>' for r in runs)
  title = "jaxgen report: " + ", ".join(r["name"] for r in runs)
  body = [
    f"<h1>{html.escape(title)}</h1>",
    f'<p class="note">{html.escape(made)}</p>',
    f'<p><a href="#curves">curves</a> · <a href="#evaluation">evaluation</a> · {nav}</p>',
    summary_section(runs),
    curves_section(runs),
    evaluation_section(runs),
    *map(run_section, runs),
  ]
  return (
    f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
    f"{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>"
    f"<body>{''.join(body)}</body></html>"
  )


def collect(workdir: str | Path, pictures: list[Path], notes: list[str], index: int = 0) -> dict:
  """Everything the page shows about one run (read from its folder)."""
  workdir = Path(workdir)
  train, evals = read_metrics(workdir)
  return dict(
    index=index,
    name=str(workdir),
    workdir=workdir,
    train_rows=train,
    train=series(train),
    eval=series(evals),
    config=json.loads((workdir / "config.json").read_text()),
    grids=sample_grids(workdir),
    pictures=pictures,
    notes=notes,
    results=load_results(workdir),
    sessions=runlog.read_provenance(workdir),
  )


def write_report(
  workdirs: list[str | Path],
  out: str | Path | None = None,
  *,
  num: int = 64,
  seed: int = 0,
  step: int | None = None,
  pictures: bool = True,
) -> tuple[Path, list[Path]]:
  """Writes each run's pictures to RUN/report/ (or OUT/ for one run) and report.html to OUT
  (default: the first run's report folder); returns (the HTML's path, the pictures' paths).

  Every run is checked before anything is drawn, so a bad --workdir fails at once.
  """
  workdirs = [Path(w) for w in workdirs]
  for w in workdirs:
    read_metrics(w)
  out = Path(out) if out else workdirs[0] / "report"
  runs = []
  for i, w in enumerate(workdirs):
    folder = out if len(workdirs) == 1 else w / "report"
    paths, notes = [], []
    if not pictures:
      notes.append("pictures not drawn (--no_pictures)")
    elif not has_checkpoint(w):
      notes.append("no checkpoint yet: the family's pictures come after the first save")
    else:
      paths = write_pictures(w, folder, num=num, seed=seed, step=step)
      if not paths:
        notes.append("this family draws no pictures")
    runs.append(collect(w, paths, notes, i))
  out.mkdir(parents=True, exist_ok=True)
  path = out / "report.html"
  path.write_text(render(runs))
  return path, [p for r in runs for p in r["pictures"]]
