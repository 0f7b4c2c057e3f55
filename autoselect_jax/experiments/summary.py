"""Mean and spread over seeds of per-seed tables; Markdown, JSON and plots.

A per-seed table is {method: {K (str): exact match}} (keys starting with "_"
are bookkeeping). The spread is the sample standard deviation over seeds (0
with one seed).
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

# Row order: the full model, AutoSelect and its variants, then the
# training-free baselines.
BASELINE_ORDER = ("oracle", "random", "grid", "norm", "attention", "divprune")


def aggregate(per_seed: Mapping[int, Mapping[str, Mapping[str, float]]]
              ) -> dict:
  """{method: {K: {"mean", "std", "n", "values"}}} over the seeds that have
  the method (every seed must have measured the same K)."""
  methods: dict[str, dict[str, list]] = {}
  for table in per_seed.values():
    for m, row in table.items():
      if m.startswith("_"):
        continue
      for k, v in row.items():
        methods.setdefault(m, {}).setdefault(str(k), []).append(float(v))
  out = {}
  for m, row in methods.items():
    out[m] = {}
    for k, vals in sorted(row.items(), key=lambda kv: int(kv[0])):
      a = np.asarray(vals)
      out[m][k] = {"mean": float(a.mean()),
                   "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                   "n": int(a.size), "values": vals}
  return out


def paired_differences(per_seed, base: str = "AutoSelect") -> dict:
  """{method: {K: {"mean", "std", "n"}}}: the method minus `base` on the
  seeds where both were measured (an ablation compared seed by seed, so a
  variant measured on fewer seeds is not judged against other seeds)."""
  diffs: dict[str, dict[str, list]] = {}
  for table in per_seed.values():
    if base not in table:
      continue
    for m, row in table.items():
      if m.startswith("_") or m in (base, "full") or m in BASELINE_ORDER:
        continue
      for k, v in row.items():
        if k in table[base]:
          diffs.setdefault(m, {}).setdefault(k, []).append(
              float(v) - float(table[base][k]))
  return {m: {k: {"mean": float(np.mean(d)),
                  "std": float(np.std(d, ddof=1)) if len(d) > 1 else 0.0,
                  "n": len(d)}
              for k, d in sorted(row.items(), key=lambda kv: int(kv[0]))}
          for m, row in diffs.items()}


def paired_markdown(diffs: Mapping[str, Mapping[str, Mapping]]) -> str:
  ks = sorted({k for row in diffs.values() for k in row}, key=int)
  lines = ["Each variant minus AutoSelect, on the seeds where both ran "
           "(mean ± std of the per-seed differences):", "",
           "| variant | " + " | ".join(f"K={k}" for k in ks) + " | seeds |",
           "|---|" + "---|" * (len(ks) + 1)]
  for m in ordered(diffs):
    cells = [f"{diffs[m][k]['mean']:+.3f}" + (
        f" ± {diffs[m][k]['std']:.3f}" if diffs[m][k]["n"] > 1 else "")
        if k in diffs[m] else "" for k in ks]
    n = max(c["n"] for c in diffs[m].values())
    lines.append(f"| {m} | " + " | ".join(cells) + f" | {n} |")
  return "\n".join(lines)


def ordered(methods) -> list[str]:
  names = list(methods)
  first = [m for m in ("full", "AutoSelect") if m in names]
  base = [m for m in BASELINE_ORDER if m in names]
  rest = [m for m in names if m not in first and m not in base]
  return first + rest + base


def markdown(agg: Mapping[str, Mapping[str, Mapping]], title: str) -> str:
  """A table of mean +- std per method and K, and AutoSelect's retention
  (its mean over the full model's mean)."""
  ks = sorted({k for row in agg.values() for k in row}, key=int)
  n = max(c["n"] for row in agg.values() for c in row.values())
  lines = [f"**{title}** (caption exact match, mean ± std over the seeds "
           f"measured, at most {n})", "",
           "| method | " + " | ".join(f"K={k}" for k in ks) + " | seeds |",
           "|---|" + "---|" * (len(ks) + 1)]
  for m in ordered(agg):
    cells = []
    for k in ks:
      c = agg[m].get(k)
      if c is None and m == "full":  # Measured once, the same at every K.
        c = next(iter(agg[m].values()))
      cells.append("" if c is None else f"{c['mean']:.3f}" + (
          f" ± {c['std']:.3f}" if c["n"] > 1 else ""))
    seeds = max(c["n"] for c in agg[m].values())
    lines.append(f"| {m} | " + " | ".join(cells) + f" | {seeds} |")
  if "full" in agg and "AutoSelect" in agg:
    full = next(iter(agg["full"].values()))["mean"]
    ret = [f"{agg['AutoSelect'][k]['mean'] / full:.1%}"
           if k in agg["AutoSelect"] and full > 0 else "" for k in ks]
    lines.append("| AutoSelect / full | " + " | ".join(ret) + " | |")
  return "\n".join(lines)


def write(out: str, tables: Mapping[str, Mapping[int, Mapping]],
          settings: Mapping, seconds: float) -> dict:
  """Writes out/results.json, out/results.md and the plots per task;
  returns {"markdown": path, "json": path, "figures": [paths]}."""
  from autoselect_jax.figures.plots import plot_accuracy_vs_k
  os.makedirs(out, exist_ok=True)
  result = {"settings": dict(settings), "seconds": round(seconds, 1),
            "tasks": {}}
  parts, figures = [], []
  for task, per_seed in tables.items():
    agg = aggregate(per_seed)
    result["tasks"][task] = {"seeds": sorted(per_seed), "methods": agg}
    parts.append(markdown(agg, f"Task `{task}`"))
    diffs = paired_differences(per_seed)
    result["tasks"][task]["minus_autoselect"] = diffs
    if diffs:
      parts.append(paired_markdown(diffs))
    mean = {m: {int(k): c["mean"] for k, c in row.items()}
            for m, row in agg.items()}
    std = {m: {int(k): c["std"] for k, c in row.items()}
           for m, row in agg.items()}
    def plot(methods, name, title):
      ns = sorted({c["n"] for m in methods for c in agg[m].values()})
      seeds = (f"{ns[0]} seed{'s' if ns[0] > 1 else ''}" if len(ns) == 1
               else f"{ns[0]}-{ns[-1]} seeds per method")
      figures.append(plot_accuracy_vs_k(
          {m: mean[m] for m in methods}, os.path.join(out, f"{name}.png"),
          spread={m: std[m] for m in methods}, n=64,
          title=f"Task {task}: {title} ({seeds})"))

    plot([m for m in ordered(agg) if m in ("full", "AutoSelect")
          or m in BASELINE_ORDER], f"accuracy_vs_k_{task}",
         "exact match vs tokens kept")
    variants = [m for m in ordered(agg) if m not in BASELINE_ORDER]
    if len(variants) > 2:  # full, AutoSelect and at least one variant.
      plot(variants, f"ablations_{task}", "AutoSelect's training choices")
  md = os.path.join(out, "results.md")
  with open(md, "w") as f:
    f.write("\n\n".join(parts) + "\n")
  js = os.path.join(out, "results.json")
  with open(js, "w") as f:
    json.dump(result, f, indent=2)
  return {"markdown": md, "json": js, "figures": figures}
