"""Memory of the generate call and the largest batch under a budget.

XLA's compiled memory of a jitted call (`stages.memory_plan`: compiled,
never run) at two batches gives a line bytes(B) = intercept + slope * B; the
weights are the arguments' intercept. max_batch = floor((budget - intercept)
/ slope). The budget is --memory-budget-gb, else the device's
memory_stats()["bytes_limit"] (GPU / TPU), else none (CPU).
"""

from __future__ import annotations

import math

GB = 10 ** 9          # --memory-budget-gb counts decimal gigabytes.
FIT_BATCHES = (1, 2)  # The two compiled points of the memory fit.


def fit_max_batch(points: list, budget) -> dict:
  """The line through two (batch, compiled memory) points and the largest
  batch under `budget` bytes (None: no budget, max_batch null).

  points: [{"batch", "total_bytes", ...}] at two batches. bytes(B) =
  intercept + slope * B; max_batch = floor((budget - intercept) / slope),
  0 when even B = 1 does not fit, null when the slope is not positive.
  """
  (b1, y1), (b2, y2) = [(p["batch"], p["total_bytes"]) for p in points]
  slope = (y2 - y1) / (b2 - b1)
  intercept = y1 - slope * b1
  fit = {"points": points, "intercept_bytes": intercept,
         "slope_bytes_per_request": slope, "max_batch": None}
  if budget is not None and slope > 0:
    fit["max_batch"] = max(0, math.floor((budget - intercept) / slope))
  return fit


def memory_budget(budget_gb, device) -> tuple:
  """(bytes or None, source, note): --memory-budget-gb x 10^9, else the
  device's memory_stats()["bytes_limit"] (GPU / TPU), else None (CPU)."""
  if budget_gb is not None:
    return budget_gb * GB, "--memory-budget-gb", None
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    return float(stats["bytes_limit"]), "device bytes_limit", None
  return None, None, (f"no --memory-budget-gb and {device.platform} reports "
                      "no bytes_limit: max_batch omitted")


def fit_checks(fit: dict, records: list) -> list:
  """The fit against the compiled memory of the timed batches outside the
  fit (`records` of one K): compiled_over_fit > 1 where it underestimates."""
  out = []
  for r in records:
    if r["batch"] not in FIT_BATCHES:
      line = fit["intercept_bytes"] + fit["slope_bytes_per_request"] * r[
          "batch"]
      got = r["compiled_memory"]["total_bytes"]
      out.append({"batch": r["batch"], "compiled_total_bytes": got,
                  "fit_bytes": line, "compiled_over_fit": got / line})
  return out


def max_batch_block(fits: dict, budget, source, note, records=()) -> dict:
  """The JSON's `max_batch` block from {(k, pruned): fit_max_batch(...)},
  each entry checked against the timed `records` (`fit_checks`)."""
  full = next(f["max_batch"] for (_, p), f in fits.items() if not p)
  entries = []
  for (k, pruned), fit in fits.items():
    ratio = (fit["max_batch"] / full if pruned and full
             and fit["max_batch"] is not None else None)
    entries.append({"k": k, "pruned": pruned, **fit,
                    "max_batch_vs_full": ratio, "checks": fit_checks(
                        fit, [r for r in records if r["k"] == k])})
  return {"budget_bytes": budget, "budget_source": source, "note": note,
          "fit_batches": list(FIT_BATCHES),
          "method": "bytes(B) = intercept + slope * B through generate's "
                    "compiled total_bytes at the two fit batches; max_batch "
                    "= floor((budget - intercept) / slope)",
          "entries": entries}
