"""Dense against blocked attention: SigLIP's encode and the Scorer, side by side.

  python -m autoselect_jax.benchmarks.attention_blocks \\
      [--variant paligemma-3b-896] [--vision-layers L] [--chunks 0,256] \\
      [--batch 1] [--k K] [--dtype float32] [--scorer-width W] \\
      [--repeats 5] --out FILE.json

For each query chunk C (`models.attention.QUERY_CHUNK`; 0 is dense: all N
query rows at once) the two stages whose attention spans the N visual tokens
are compiled with that chunk: `vlm.encode_image` (images -> features) and the
pruner (Scorer, top-K, gather of the kept features). Every round times each
(stage, chunk) once, interleaved, after a warm-up. Each record holds the
median / min / max ms, XLA's temporary bytes of the compiled call
(`memory_analysis`), the minor page faults per call, and the largest
absolute difference of its output from the first chunk's: blocks change the
memory and the speed, not the result.
Weights are random (`benchmarks.weights`).

Axes: B batch, N visual tokens, K kept, Dv vision width.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys

from autoselect_jax.benchmarks.args import int_list


def _chunks(text: str) -> list[int]:
  values = int_list(text)
  if min(values) < 0 or len(set(values)) != len(values):
    raise argparse.ArgumentTypeError(
        f"expected distinct integers >= 0 (0 = dense), got {text!r}")
  return values


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m autoselect_jax.benchmarks.attention_blocks",
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variant", default="paligemma-3b-896")
  p.add_argument("--vision-layers", type=int, default=1,
                 help="SigLIP depth (default 1)")
  p.add_argument("--chunks", type=_chunks, default=[0, 256],
                 help="query chunks to compare, 0 = dense (default 0,256)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--k", type=int, default=0,
                 help="kept tokens for the pruner (default N / 8)")
  p.add_argument("--dtype", default="float32",
                 choices=("float32", "bfloat16"))
  p.add_argument("--scorer-width", type=int, default=0,
                 help="the Scorer's width (0: the vision width Dv)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", required=True, help="JSON file to write")
  return p


def _stages(vlm, method, k: int):
  """Fresh jitted (encode, pruner) functions: each traces with the
  QUERY_CHUNK in force at its first call."""
  import jax
  from autoselect_jax.method import forward, selection
  encode = jax.jit(lambda params, images: vlm.encode_image(params, images))

  def prune(params, features):
    idx = selection.select_topk(forward.scores(method, params, features), k)
    return selection.gather_tokens(features, idx)
  return encode, jax.jit(prune)


def run(args, log=print) -> dict:
  """Every record of one run (the JSON without `command`)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from autoselect_jax.benchmarks.stages import batch_inputs
  import statistics
  from autoselect_jax.benchmarks.timing import (allocator_hint,
                                                 host_allocator, stats,
                                                 time_rounds, timed)
  from autoselect_jax.benchmarks.weights import init_params, scorer_params
  from autoselect_jax.method import AutoSelect, Scorer
  from autoselect_jax.models import VLM, attention, get_variant
  hint = allocator_hint(jax.devices()[0].platform)
  if hint:
    log(hint)
  config = get_variant(args.variant)
  config = config.replace(vision=dataclasses.replace(
      config.vision, depth=args.vision_layers))
  dtype = jnp.dtype(args.dtype)
  n = config.num_image_tokens
  k = args.k or n // 8
  vlm = VLM(config, dtype, scan_layers=False)
  method = AutoSelect(vlm, scorer=Scorer(width=args.scorer_width or None,
                                         dtype=dtype))
  params = init_params(vlm, dtype, args.seed)
  sparams = scorer_params(method, dtype, args.seed + 1)
  images, _ = batch_inputs(config, args.batch, 1, args.seed)
  previous = attention.QUERY_CHUNK
  calls, outputs, memory = [], {}, {}
  try:
    for chunk in args.chunks:
      attention.QUERY_CHUNK = chunk
      encode, prune = _stages(vlm, method, k)
      log(f"compiling chunk {chunk}")
      features = timed(encode, params, images)[1]
      kept = timed(prune, sparams, features)[1]
      outputs[chunk] = (np.asarray(features, np.float32),
                        np.asarray(kept, np.float32))
      for name, fn, fargs in (("encode", encode, (params, images)),
                              ("pruner", prune, (sparams, features))):
        plan = fn.lower(*fargs).compile().memory_analysis()
        memory[(name, chunk)] = plan.temp_size_in_bytes
        calls.append(((name, chunk), fn, fargs))
  finally:
    attention.QUERY_CHUNK = previous
  faults = {}
  times = time_rounds(calls, args.repeats, log, faults)
  first = outputs[args.chunks[0]]
  dev = jax.devices()[0]
  records = []
  for chunk in args.chunks:
    rec = {"query_chunk": chunk}
    for i, name in enumerate(("encode", "pruner")):
      rec.update(stats(times[(name, chunk)], f"{name}_ms"))
      rec[f"{name}_temp_bytes"] = memory[(name, chunk)]
      rec[f"{name}_minor_faults"] = statistics.median(faults[(name, chunk)])
      rec[f"{name}_max_abs_diff"] = float(np.max(np.abs(
          outputs[chunk][i] - first[i])))
    records.append(rec)
  return {"device": f"{dev.device_kind} ({dev.platform})",
          "variant": args.variant, "vision_layers": args.vision_layers,
          "n_visual": n, "k": k, "batch": args.batch, "dtype": args.dtype,
          "scorer_width": args.scorer_width or config.vision.width,
          "repeats": args.repeats, "host_allocator": host_allocator(),
          "records": records}


def format_table(res: dict) -> str:
  lines = [f"{res['device']}  {res['dtype']}  {res['variant']}  vision "
           f"layers {res['vision_layers']}  N={res['n_visual']}  "
           f"K={res['k']}  batch {res['batch']}  Scorer width "
           f"{res['scorer_width']}  repeats {res['repeats']}",
           "| query chunk | encode ms | pruner ms | encode temp MB | "
           "pruner temp MB | page faults per call (encode / pruner) | "
           "max diff vs first |", "|---|---|---|---|---|---|---|"]
  for r in res["records"]:
    diff = max(r["encode_max_abs_diff"], r["pruner_max_abs_diff"])
    lines.append(
        f"| {r['query_chunk'] or 'dense'} | {r['encode_ms']:.0f} "
        f"[{r['encode_ms_min']:.0f}-{r['encode_ms_max']:.0f}] | "
        f"{r['pruner_ms']:.0f} [{r['pruner_ms_min']:.0f}-"
        f"{r['pruner_ms_max']:.0f}] | {r['encode_temp_bytes'] / 2**20:.0f} | "
        f"{r['pruner_temp_bytes'] / 2**20:.0f} | "
        f"{r['encode_minor_faults']:.0f} / {r['pruner_minor_faults']:.0f} | "
        f"{diff:.1e} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from autoselect_jax.models import get_variant
  try:
    n = get_variant(args.variant).num_image_tokens
  except ValueError as e:
    parser.error(f"--variant: {e}")
  for flag, value in (("--vision-layers", args.vision_layers),
                      ("--batch", args.batch), ("--repeats", args.repeats)):
    if value < 1:
      parser.error(f"{flag} must be >= 1, got {value}")
  if not 0 <= args.k <= n:
    parser.error(f"--k {args.k} is outside [0, N = {n}] (0: N / 8)")
  if args.scorer_width < 0 or args.scorer_width % 16:
    parser.error(f"--scorer-width {args.scorer_width} must be 0 or a "
                 "positive multiple of the Scorer's 16 heads")
  from autoselect_jax.benchmarks.results import write_json
  from autoselect_jax.benchmarks.timing import Log
  res = run(args, Log())
  cmd = shlex.join(sys.argv[1:] if argv is None else argv)
  write_json(args.out, {"command": "python -m autoselect_jax.benchmarks."
                        f"attention_blocks {cmd}", **res})
  print(format_table(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
