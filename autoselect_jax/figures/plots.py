"""Accuracy against the token budget K, one line per method (matplotlib).

  plot_accuracy_vs_k({"full": {4: 0.9, 8: 0.9}, "AutoSelect": {4: 0.5, ...}},
                     "out/accuracy_vs_k.png", spread={...}, n=64)

`spread` (same layout as the table) draws error bars (e.g. the standard
deviation over seeds). The full model is drawn as a dashed horizontal line.
The PNG is written atomically (a temporary sibling renamed into place), with
the non-interactive Agg backend, so it works without a display.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

FULL = "full"
# One fixed colour per method name, so that figures agree with each other.
COLOURS = {"AutoSelect": "#d62728", "oracle": "#2ca02c", "random": "#7f7f7f",
           "grid": "#8c564b", "norm": "#9467bd", "attention": "#1f77b4",
           "divprune": "#ff7f0e", "visionzip": "#17becf", "fastv": "#e377c2"}


def plot_accuracy_vs_k(table: Mapping[str, Mapping[int, float]], out_path: str,
                       *, spread: Optional[Mapping[str, Mapping[int, float]]]
                       = None, n: Optional[int] = None,
                       title: str = "Caption exact match vs visual tokens kept",
                       ylabel: str = "exact match") -> str:
  """Writes the plot to `out_path` (PNG); returns its absolute path.

  table: {method: {K: accuracy}}; the "full" row (any K) is a horizontal
  line. spread: optional {method: {K: error bar half-height}}. n: the number
  of visual tokens, for the x-axis label.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not table:
    raise ValueError("nothing to plot: empty table")
  rows = {m: dict(sorted((int(k), float(v)) for k, v in r.items()))
          for m, r in table.items()}
  ks = sorted({k for m, r in rows.items() if m != FULL for k in r})
  if not ks:
    raise ValueError("nothing to plot: no method besides 'full'")
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  if FULL in rows:
    full = next(iter(rows[FULL].values()))
    ax.axhline(full, color="black", linestyle="--", linewidth=1.2,
               label=f"full ({n} tokens)" if n else "full")
  lines = [(m, r) for m, r in rows.items() if m != FULL]
  for i, (m, r) in enumerate(lines):
    xs = sorted(r)
    ys = [r[k] for k in xs]
    # With error bars, nudge each method sideways (log2 x axis) so the bars
    # of methods with close means stay readable; the ticks mark the true K.
    dodge = 2.0 ** (0.03 * (i - (len(lines) - 1) / 2)) if spread else 1.0
    err = None
    if spread and m in spread:
      err = [float(spread[m].get(k, spread[m].get(str(k), 0.0))) for k in xs]
    colour = COLOURS.get(m, f"C{i % 10}")
    width = 2.4 if m == "AutoSelect" else 1.4
    ax.errorbar([k * dodge for k in xs], ys, yerr=err, marker="o",
                markersize=4, capsize=3, linewidth=width, color=colour,
                label=m)
  ax.set_xscale("log", base=2)
  ax.set_xticks(ks)
  ax.set_xticklabels([str(k) for k in ks])
  ax.set_xlabel(f"visual tokens kept (K of {n})" if n else "visual tokens kept")
  ax.set_ylabel(ylabel)
  ax.set_ylim(0.0, 1.02)
  ax.set_title(title, fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  out_path = os.path.abspath(out_path)
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  tmp = os.path.join(os.path.dirname(out_path),
                     f".{os.path.basename(out_path)}.tmp-{os.getpid()}")
  try:
    fig.savefig(tmp, format="png")
    os.replace(tmp, out_path)
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
  return out_path
