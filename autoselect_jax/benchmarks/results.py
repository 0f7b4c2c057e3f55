"""The benchmark's JSON: its header, the `targets` block, the table, the file."""

from __future__ import annotations

import json
import os

from autoselect_jax.benchmarks.timing import host_allocator, process_peak

# Targets (the `targets` block of the JSON).
ROOFLINE_TARGET = 0.9       # pruned prefill speedup / roofline ideal, smallest K
PRUNER_SHARE_LIMIT = 1.5    # pruner time share <= this x its FLOP share
DECODE_TOLERANCE = 0.03     # pruned decode <= full decode x (1 + this): timer noise
REFERENCE_TARGET = 0.9      # project speedup / plain-JAX reference speedup
REFERENCE_TIME_LIMIT = 1.2  # project prefill time / plain-JAX time
TTFT_ROOFLINE_TARGET = 0.9  # TTFT speedup / its roofline ideal, smallest K


def header(device, config, *, dtype_name: str, n_text: int,
           decode_tokens: int, repeats: int, scan_layers: bool, peak: dict,
           bandwidth: dict, scorer_width: int | None = None,
           query_chunk: int = 0) -> dict:
  """The run's fields before any measurement: device, shapes, peaks, and
  empty `records` / `reference` lists."""
  return {
      "device": f"{device.device_kind} ({device.platform})",
      "layer_layout": "scanned" if scan_layers else "per-layer",
      "platform": device.platform, "dtype": dtype_name,
      "n_visual": config.num_image_tokens, "n_text": n_text,
      "decode_tokens": decode_tokens, "repeats": repeats,
      "llm_layers": config.llm.depth, "vision_layers": config.vision.depth,
      "peak_flops": peak["flops_per_s"],
      "peak_bandwidth": bandwidth["bytes_per_s"],
      "peak_kernels": {"flops": peak, "bandwidth": bandwidth},
      "pruner": "Scorer + top-K + gather of the kept features (no projector)",
      "scorer_width": scorer_width or config.vision.width,
      "query_chunk": query_chunk,
      "process_peak_source": process_peak(device)[0],
      "host_allocator": host_allocator(),
      "records": [], "reference": [],
  }


def _pass(entries) -> bool:
  return all(e["pass"] for e in entries)


def targets(records, reference) -> dict:
  """Pass / fail of each target over every batch so far."""
  by = {(r["k"], r["batch"], r["pruned"]): r for r in records}
  pruned = [r for r in records if r["pruned"]]
  k_min = min((r["k"] for r in pruned), default=None)
  roof = [{"batch": r["batch"], "k": r["k"],
           "roofline_fraction": r["roofline_fraction"],
           "pass": r["roofline_fraction"] >= ROOFLINE_TARGET}
          for r in pruned if r["k"] == k_min]
  share = [{"batch": r["batch"], "k": r["k"],
            "pruner_share": r["pruner_share"],
            "limit": PRUNER_SHARE_LIMIT * r["pruner_flop_share"],
            "pass": r["pruner_share"]
            <= PRUNER_SHARE_LIMIT * r["pruner_flop_share"]} for r in pruned]
  dec = []
  for r in pruned:
    full = by[(r["n_visual"], r["batch"], False)]
    ratio = r["decode_ms_per_token"] / full["decode_ms_per_token"]
    dec.append({"batch": r["batch"], "k": r["k"], "pruned_over_full": ratio,
                "pass": ratio <= 1.0 + DECODE_TOLERANCE})
  ref = [{"batch": e["batch"], "vs_reference": e["vs_reference"],
          "pass": e["vs_reference"] >= REFERENCE_TARGET} for e in reference]
  ref_time = [{"batch": e["batch"], "full": e["full_time_vs_reference"],
               "pruned": e["pruned_time_vs_reference"],
               "pass": max(e["full_time_vs_reference"],
                           e["pruned_time_vs_reference"])
               <= REFERENCE_TIME_LIMIT} for e in reference]
  ttft = [{"batch": r["batch"], "k": r["k"], "ttft_speedup": r["ttft_speedup"],
           "ttft_roofline_fraction": r["ttft_roofline_fraction"],
           "pass": r["ttft_roofline_fraction"] >= TTFT_ROOFLINE_TARGET}
          for r in pruned if r["k"] == k_min]
  return {
      "prefill_roofline": {
          "description": f"pruned prefill speedup at the smallest K >= "
                         f"{ROOFLINE_TARGET} x its roofline ideal speedup",
          "entries": roof, "pass": _pass(roof)},
      "pruner_share": {
          "description": f"pruner time / full prefill time <= "
                         f"{PRUNER_SHARE_LIMIT} x scorer FLOPs / full "
                         "prefill FLOPs",
          "entries": share, "pass": _pass(share)},
      "decode_not_slower": {
          "description": "per-token decode on the pruned cache <= full "
                         f"cache x (1 + {DECODE_TOLERANCE}) (timer noise)",
          "entries": dec, "pass": _pass(dec)},
      "vs_reference": {
          "description": f"project prefill speedup >= {REFERENCE_TARGET} x "
                         "plain-JAX reference speedup (smallest K)",
          "entries": ref, "pass": _pass(ref)},
      "reference_time": {
          "description": f"each project prefill (full, smallest K) <= "
                         f"{REFERENCE_TIME_LIMIT} x the plain-JAX time",
          "entries": ref_time, "pass": _pass(ref_time)},
      "ttft_roofline": {
          "description": f"TTFT speedup (one call, pixels to first token) "
                         f"at the smallest K >= {TTFT_ROOFLINE_TARGET} x its "
                         "roofline ideal speedup",
          "entries": ttft, "pass": _pass(ttft)},
  }


def format_table(res: dict) -> str:
  """The human-readable summary of a result (with `variant`)."""
  lines = [
      f"{res['device']}  {res['dtype']}  {res['variant']}  LLM layers "
      f"{res['llm_layers']}  vision layers {res['vision_layers']}  "
      f"N={res['n_visual']}  T={res['n_text']}  decode M="
      f"{res['decode_tokens']}  repeats {res['repeats']}",
      f"measured peak: {res['peak_flops'] / 1e9:,.0f} GFLOP/s, "
      f"{res['peak_bandwidth'] / 1e9:,.1f} GB/s",
      "times: median ms [min-max]",
      f"{'batch':>5} {'k':>4} {'encode':>8} {'pruner':>8} "
      f"{'prefill':>21} {'decode/tok':>10} {'speedup':>7} {'flop-id':>7} "
      f"{'roof-id':>7} {'frac':>5} {'prun-sh':>7} {'flop-sh':>7} "
      f"{'ttft':>9} {'stage-sum':>9} {'ttft-x':>6} {'ttft-id':>7} "
      f"{'mem MB':>8}"]
  for r in res["records"]:
    pre = (f"{r['prefill_ms']:8.2f} [{r['prefill_ms_min']:.1f}-"
           f"{r['prefill_ms_max']:.1f}]")
    lines.append(
        f"{r['batch']:>5} {r['k']:>4} {r['encode_ms']:8.2f} "
        f"{r['pruner_ms']:8.2f} {pre:>21} {r['decode_ms_per_token']:10.2f} "
        f"{r['prefill_speedup']:7.2f} {r['flop_ideal_speedup']:7.2f} "
        f"{r['roofline_ideal_speedup']:7.2f} {r['roofline_fraction']:5.2f} "
        f"{r['pruner_share']:7.3f} {r['pruner_flop_share']:7.3f} "
        f"{r['ttft_ms']:9.2f} {r['ttft_sum_ms']:9.2f} "
        f"{r['ttft_speedup']:6.2f} {r['ttft_roofline_ideal_speedup']:7.2f} "
        f"{r['ttft_memory_bytes'] / 2 ** 20:8.1f}")
  lines.append("plain-JAX reference (same weights, inputs, dtype, dense mask):")
  for e in res["reference"]:
    lines.append(
        f"  batch {e['batch']}: {e['full_length']} tokens {e['full_ms']:.2f} "
        f"ms, {e['pruned_length']} tokens {e['pruned_ms']:.2f} ms, speedup "
        f"{e['speedup']:.2f}x; project/reference {e['vs_reference']:.3f} "
        f"(logits rel. err {e['logits_rel_err_vs_project']:.1e}); project "
        f"time / reference: full {e['full_time_vs_reference']:.2f}, pruned "
        f"{e['pruned_time_vs_reference']:.2f}")
  lines.append("targets:")
  for name, tgt in res.get("targets", {}).items():
    lines.append(f"  {'PASS' if tgt['pass'] else 'FAIL'} {name}: "
                 f"{tgt['description']}")
    for e in tgt["entries"]:
      vals = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in e.items() if k != "pass")
      lines.append(f"      {'ok  ' if e['pass'] else 'MISS'} {vals}")
  if "methods" in res:
    from autoselect_jax.benchmarks.methods import format_table as per_method
    lines.append(per_method(res["methods"]))
  return "\n".join(lines)


def write_json(path: str, res: dict) -> None:
  """Writes `res` to `path` atomically (a temp file, then a rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)
