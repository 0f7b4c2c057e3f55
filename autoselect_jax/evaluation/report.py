"""`evaluate report`: the retention table over finished runs, Markdown and JSON.

One row per (method, K), one column per benchmark. A cell holds the
benchmark's headline score and its retention, pruned score / the full
model's score on the same benchmark (so MME's perception sum and percent
accuracies are normalised alike); the last column is the average retention
over the row's benchmarks that have a full-model run. The full model's row
is 100% by definition and is listed first.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from autoselect_jax.evaluation.runner import METRICS_FILE

FULL = "full"


def load_runs(run_dirs: Sequence[str]) -> list[dict]:
  """metrics.json of each finished run folder (errors name the folder)."""
  runs, seen = [], {}
  for d in run_dirs:
    path = os.path.join(d, METRICS_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{d} has no {METRICS_FILE}: not a finished "
                              "`evaluate run` folder")
    with open(path, encoding="utf-8") as f:
      m = json.load(f)
    for field in ("benchmark", "method", "k", "score"):
      if field not in m:
        raise ValueError(f"{path}: missing field {field!r}")
    k = None if m["method"] == FULL else m["k"]
    cell = (m["method"], k, m["benchmark"])
    if cell in seen:
      raise ValueError(f"{seen[cell]} and {d} are both {m['method']} k={k} "
                       f"on {m['benchmark']}: pass one of them")
    seen[cell] = d
    runs.append({**m, "k": k, "dir": d})
  return runs


def retention_table(runs: Sequence[dict]) -> dict:
  """{"benchmarks", "full": {bench: score}, "rows": [{"method", "k",
  "scores", "retention" (percent), "average_retention"}]}."""
  benches = sorted({r["benchmark"] for r in runs})
  full = {r["benchmark"]: r["score"] for r in runs if r["method"] == FULL}
  rows = {}
  for r in runs:
    row = rows.setdefault((r["method"], r["k"]), {
        "method": r["method"], "k": r["k"], "scores": {}, "retention": {}})
    row["scores"][r["benchmark"]] = r["score"]
    ref = full.get(r["benchmark"])
    row["retention"][r["benchmark"]] = (100.0 * r["score"] / ref
                                        if ref else None)
  for row in rows.values():
    kept = [v for v in row["retention"].values() if v is not None]
    row["average_retention"] = sum(kept) / len(kept) if kept else None

  def order(row):
    return (row["method"] != FULL, row["k"] or 0, row["method"])
  return {"benchmarks": benches, "full": full,
          "rows": sorted(rows.values(), key=order)}


def _pct(v: Optional[float]) -> str:
  return "-" if v is None else f"{v:.1f}%"


def to_markdown(table: dict) -> str:
  benches = table["benchmarks"]
  head = "| method | K | " + " | ".join(benches) + " | avg. retention |"
  lines = [head, "|" + "---|" * (len(benches) + 3)]
  for row in table["rows"]:
    cells = []
    for b in benches:
      if b not in row["scores"]:
        cells.append("")
        continue
      cells.append(f"{row['scores'][b]:.2f} ({_pct(row['retention'][b])})")
    k = "all" if row["k"] is None else str(row["k"])
    lines.append(f"| {row['method']} | {k} | " + " | ".join(cells)
                 + f" | {_pct(row['average_retention'])} |")
  return ("Headline score per benchmark (retention = score / the full "
          "model's score).\n\n" + "\n".join(lines) + "\n")


def write_report(run_dirs: Sequence[str], out: str) -> dict:
  """Writes `out` (Markdown) and the same table as JSON beside it."""
  table = retention_table(load_runs(run_dirs))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  stem = os.path.splitext(out)[0]
  for path, text in ((out, to_markdown(table)),
                     (stem + ".json", json.dumps(table, indent=2) + "\n")):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  return table
