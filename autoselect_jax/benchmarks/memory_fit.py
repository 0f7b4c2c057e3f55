"""Memory of the generate call and the largest batch under a budget.

XLA's compiled memory of a jitted call (`stages.memory_plan`: compiled,
never run) at two batches gives a line bytes(B) = intercept + slope * B; the
weights are the arguments' intercept. max_batch = floor((budget - intercept)
/ slope). The line is a first guess: temporaries grow faster than linearly
at some batches (XLA picks other fusions), so `verify_max_batch` compiles
the guess and its neighbour and moves it until B fits and B + 1 does not.
The budget is --memory-budget-gb, else the device's
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


def verify_max_batch(compiled_bytes, guess: int, budget: float,
                     known=(), max_compiles: int = 12) -> dict:
  """The largest batch whose compiled memory fits `budget`, by compiling.

  compiled_bytes(B) -> the call's compiled total bytes at batch B (compile
  only); known: [{"batch", "total_bytes"}] already compiled (the fit's
  points). Keeps the largest batch that fits (lo) and the smallest that does
  not (hi), starting from `guess` (the line's max_batch); the next batch
  comes, in turn, from the line through the two largest batches that fit,
  from the line through lo and hi, and from halving the bracket (doubling
  lo while nothing is over), so a memory curve that bends or jumps still
  closes in.
  Returns {"max_batch": lo once hi = lo + 1, None if the compiles ran out
  first; "fits": lo and "over": hi (None: none seen), the bracket so far;
  "compiled": [{"batch", "total_bytes"}] compiled here, in order}.
  """
  seen = {p["batch"]: float(p["total_bytes"]) for p in known}
  compiled = []

  def at(b):
    if b not in seen:
      seen[b] = float(compiled_bytes(b))
      compiled.append({"batch": b, "total_bytes": seen[b]})
    return seen[b]

  def bracket():
    fit = [b for b, y in seen.items() if y <= budget]
    over = [b for b, y in seen.items() if y > budget]
    return max(fit, default=0), min(over, default=None)

  def along(b0, b1):  # The batch where the line through b0, b1 meets it.
    slope = (seen[b1] - seen[b0]) / (b1 - b0)
    return b1 + math.floor((budget - seen[b1]) / slope) if slope > 0 else None

  b, step = max(1, guess), 0
  while True:
    at(b)
    lo, hi = bracket()
    if hi == lo + 1 or len(compiled) >= max_compiles:
      return {"max_batch": lo if hi == lo + 1 else None, "fits": lo,
              "over": hi, "compiled": compiled}
    step += 1
    below = sorted(x for x in seen if seen[x] <= budget)
    # In turn: the line through the two largest batches that fit (it
    # overshoots where memory grows faster than linearly), the line through
    # lo and hi (it undershoots then), and halving the bracket, which is
    # also the fallback for a line that leaves it (XLA's plan can jump).
    b = None
    if step % 3 == 1 and len(below) >= 2:
      b = along(below[-2], below[-1])
    elif step % 3 == 2 and hi is not None and lo > 0:
      b = along(lo, hi)
    if b is None or b <= lo or (hi is not None and b >= hi):
      b = 2 * lo if hi is None else (lo + hi) // 2


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
                    "compiled total_bytes at the two fit batches gives "
                    "max_batch_line = floor((budget - intercept) / slope); "
                    "max_batch is then found by compiling generate around "
                    "it (verify_compiled): it fits, max_batch + 1 does not",
          "entries": entries}
