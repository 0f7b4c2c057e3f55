"""One batch's timings against the FLOP / byte model: the JSON's `records`.

The model is `autoselect_jax.inference.cost`: each prefill's FLOPs and bytes
and its roofline time max(FLOPs / peak, bytes / bandwidth) per component,
against the device peaks measured in the same run.
"""

from __future__ import annotations

import statistics

from autoselect_jax.benchmarks.timing import stats


def batch_records(config, scorer, batch: int, n_text: int, decode_tokens: int,
                  itemsize: int, runs, times, peak_flops: float,
                  peak_bandwidth: float, memory=None,
                  process_peak_bytes: float = 0.0,
                  faults=None) -> list[dict]:
  """One record per run (k, pruned), in `runs` order.

  scorer: the `Scorer` module (its width, depth and MLP ratio feed the cost
  model); times: `time_rounds` output with keys "encode", ("pruner", k),
  ("prefill", k, pruned), ("decode", k, pruned), ("ttft", k, pruned); the
  full run (N, False) must be among `runs`. Times are medians / min / max in
  ms; speedups are over the full model of the same batch. memory: {run:
  {"ttft": plan, "prefill": plan}} (`stages.memory_plan`); process_peak_bytes:
  the process's high-water mark after the batch (`timing.process_peak`);
  faults: `time_rounds`'s minor page faults per call, {key: [count]}, whose
  medians become `ttft_minor_faults` and `pruner_minor_faults`.

  TTFT is measured as one call (`prune.prefill_images`, pixels to the first
  token's logits); `ttft_sum_ms` is the sum of the stage medians beside it.
  """
  from autoselect_jax.inference import cost
  n, t, m, b = config.num_image_tokens, n_text, decode_tokens, batch
  pf, pb = peak_flops, peak_bandwidth
  full_cost = cost.prefill(config.llm, b, n + t, itemsize)
  full_ms = stats(times[("prefill", n, False)], "x")["x"]
  scorer_cost = cost.scorer(b, n, config.vision.width, scorer.width,
                            scorer.num_layers, scorer.mlp_ratio, itemsize)
  ttft_full_ms = stats(times[("ttft", n, False)], "x")["x"]
  ttft_full_roof = cost.ttft(config, b, n, t, itemsize).time(pf, pb)
  records = []
  for k, pruned in runs:
    c = cost.prefill(config.llm, b, k + t, itemsize)
    rec = {"k": k, "batch": b, "pruned": pruned, "n_visual": n,
           "prefix_length": k + t}
    rec.update(stats(times["encode"], "encode_ms"))
    if pruned:
      rec.update(stats(times[("pruner", k)], "pruner_ms"))
    else:
      rec.update(pruner_ms=0.0, pruner_ms_min=0.0, pruner_ms_max=0.0)
    rec.update(stats(times[("prefill", k, pruned)], "prefill_ms"))
    rec.update(stats(times[("decode", k, pruned)], "decode_ms_per_token",
                     scale=m))
    roof_full = full_cost.time(pf, pb)
    roof = c.time(pf, pb)
    rec.update(
        prefill_flops=c.flops, prefill_bytes=c.bytes,
        prefill_roofline_ms=roof * 1e3,
        scorer_flops=scorer_cost.flops if pruned else 0.0,
        prefill_speedup=full_ms / rec["prefill_ms"],
        flop_ideal_speedup=full_cost.flops / c.flops,
        roofline_ideal_speedup=roof_full / roof)
    rec["roofline_fraction"] = (rec["prefill_speedup"]
                                / rec["roofline_ideal_speedup"])
    rec["prefill_roofline_fraction_abs"] = roof * 1e3 / rec["prefill_ms"]
    rec["pruner_share"] = rec["pruner_ms"] / full_ms
    rec["pruner_flop_share"] = rec["scorer_flops"] / full_cost.flops
    rec.update(stats(times[("ttft", k, pruned)], "ttft_ms"))
    rec["ttft_sum_ms"] = (rec["encode_ms"] + rec["pruner_ms"]
                          + rec["prefill_ms"])
    tc = cost.ttft(config, b, k, t, itemsize,
                   scorer_cost if pruned else None)
    roof = tc.time(pf, pb)
    rec.update(ttft_speedup=ttft_full_ms / rec["ttft_ms"],
               ttft_flops=tc.flops, ttft_bytes=tc.bytes,
               ttft_roofline_ms=roof * 1e3,
               ttft_roofline_ideal_speedup=ttft_full_roof / roof)
    rec["ttft_roofline_fraction"] = (rec["ttft_speedup"]
                                     / rec["ttft_roofline_ideal_speedup"])
    rec["ttft_roofline_fraction_abs"] = roof * 1e3 / rec["ttft_ms"]
    plans = (memory or {}).get((k, pruned), {})
    rec["ttft_memory_bytes"] = plans.get("ttft", {}).get("total_bytes", 0)
    rec["prefill_memory_bytes"] = plans.get("prefill", {}).get(
        "total_bytes", 0)
    rec["process_peak_bytes"] = process_peak_bytes
    if faults:
      rec["ttft_minor_faults"] = statistics.median(faults[("ttft", k, pruned)])
      rec["pruner_minor_faults"] = (
          statistics.median(faults[("pruner", k)]) if pruned else 0)
    records.append(rec)
  return records
