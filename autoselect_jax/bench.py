"""Prefill benchmark: the full model against AutoSelect-pruned ones, stage by stage.

  python -m autoselect_jax.bench [--checkpoint DIR | --variant NAME] \\
      [--llm-layers L] [--vision-layers L] --k 64,128,192 --batch 1,8 \\
      [--dtype float32|bfloat16] [--repeats R] [--n-text T] \\
      [--decode-tokens M] --out FILE.json

Without --checkpoint the weights are random (timing does not need trained
ones), initialised under jit directly on the device and cast there to the
bench dtype. The Scorer is the method's default `Scorer()` architecture
(two pre-LN blocks at the encoder width), randomly initialised, computing in
the bench dtype.

For the full model (k = N, no pruner) and each K, at each batch, every stage
is its own jitted function, timed after a warm-up call with
`block_until_ready`; the repeats run in interleaved rounds (every function
once per round) so that load drifting on a shared machine hits all alike.

  encode    `vlm.encode_image`: images (B, H, W, 3) -> features (B, N, Dv).
  pruner    the paper's pruner, Scorer + hard top-K, and the gather of the
            kept ORIGINAL features: `forward.scores`, `selection.select_topk`,
            `selection.gather_tokens` -> (B, K, Dv). The projector is not
            included: it runs on the K kept tokens (N for the full model) as
            part of building the prefix, which is not timed.
  prefill   `decode.prefill` on a prefix already built by `decode.build_prefix`
            over K projected visual tokens and T text tokens (a prompt: all
            real, all in the bidirectional prefix), with a cache of K + T + M
            slots; includes the prefix-LM mask, the cache padding and the
            last token's logits.
  decode    M greedy `decode.extend` steps on the prefilled cache in one
            jitted `lax.fori_loop` (argmax included), divided by M.

Each record carries the analytic FLOP / byte model of the two prefills
(autoselect_jax/inference/cost.py) against the device's own peaks, measured
in the same run with a square matmul (FLOP/s) and the best of a reduction
and an elementwise op over a large array (bytes/s, read + write counted).

A plain-JAX reference runs in the same process: a hand-written jnp Gemma
decoder (no Flax, no scan: a Python loop over the layers), same width, heads,
MLP and depth as the benchmarked LLM, the same weights, inputs, dtype, dense
prefix-LM mask, RoPE, float32 norms and attention logits, the final norm and
the last token's logits, returning the keys and values; it only skips the
cache padding. Its full / pruned speedup at the smallest K is what the
project's prefill speedup is compared with (`vs_reference`).

The JSON (--out) is rewritten after every batch ("complete": false until
the end), so a run cut short still leaves its measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shlex
import statistics
import sys

from autoselect_jax.benchmarks.reference import (reference_prefill,
                                                reference_weights)
from autoselect_jax.benchmarks.timing import (Log, measure_bandwidth,
                                             measure_peak_flops, stats, timed)
from autoselect_jax.benchmarks.weights import (hash_params, init_params,
                                              load_params)

DTYPES = ("float32", "bfloat16")
DEFAULT_VARIANT = "paligemma-3b-224"

# Targets (the `targets` block of the JSON).
ROOFLINE_TARGET = 0.9       # pruned prefill speedup / roofline ideal, smallest K
PRUNER_SHARE_LIMIT = 1.5    # pruner time share <= this x its FLOP share
DECODE_TOLERANCE = 0.03     # pruned decode <= full decode x (1 + this): timer noise
REFERENCE_TARGET = 0.9      # project speedup / plain-JAX reference speedup

# Peak-measuring kernels, by platform: big enough to saturate the device.


def _int_list(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}") from None
  if not values:
    raise argparse.ArgumentTypeError("expected at least one integer")
  return values


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m autoselect_jax.bench", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  src = p.add_mutually_exclusive_group()
  src.add_argument("--checkpoint", help="converted checkpoint folder "
                   "(autoselect_jax.convert); default: random weights")
  src.add_argument("--variant", help="model variant for random weights "
                   f"(default {DEFAULT_VARIANT})")
  p.add_argument("--llm-layers", type=int, help="decoder depth override")
  p.add_argument("--vision-layers", type=int, help="SigLIP depth override")
  p.add_argument("--k", type=_int_list, default=[64, 128, 192],
                 help="kept visual tokens, comma-separated (default 64,128,192)")
  p.add_argument("--batch", type=_int_list, default=[1, 8],
                 help="batch sizes, comma-separated (default 1,8)")
  p.add_argument("--dtype", default="float32", choices=DTYPES)
  p.add_argument("--repeats", type=int, default=2,
                 help="timed rounds after the warm-up (default 2, sized for "
                 "a 2-layer model on a small CPU; use 5-10 on a GPU)")
  p.add_argument("--n-text", type=int, default=32,
                 help="prompt tokens T (default 32)")
  p.add_argument("--decode-tokens", type=int, default=2,
                 help="decode steps M timed per call (default 2, for a small "
                 "CPU; use 16 or more on a GPU)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--init", default="hash", choices=("hash", "flax"),
                 help="random weights: a fast index hash (default) or the "
                 "model's own initialisers (slow on CPU)")
  p.add_argument("--scan-layers", action="store_true",
                 help="time the scanned (training) layer layout instead of "
                 "the per-layer weights that inference uses")
  p.add_argument("--out", required=True, help="JSON file to write")
  return p


def _config(args, parser):
  """The model config from the arguments; parser.error on bad input."""
  from autoselect_jax.models.config import get_variant
  if args.checkpoint:
    from autoselect_jax.checkpoints import store
    try:
      config = store.load_config(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
      parser.error(f"--checkpoint: {e}")
  else:
    try:
      config = get_variant(args.variant or DEFAULT_VARIANT)
    except ValueError as e:
      parser.error(f"--variant: {e}")
  for flag, value, sub in (("--llm-layers", args.llm_layers, "llm"),
                           ("--vision-layers", args.vision_layers, "vision")):
    if value is None:
      continue
    depth = getattr(config, sub).depth
    if value < 1:
      parser.error(f"{flag} must be >= 1, got {value}")
    if args.checkpoint and value > depth:
      parser.error(f"{flag} {value} exceeds the checkpoint's {depth} layers")
    config = config.replace(
        **{sub: dataclasses.replace(getattr(config, sub), depth=value)})
  return config


def _check_args(args, parser, n: int) -> None:
  for k in args.k:
    if not 1 <= k <= n:
      parser.error(f"--k {k} is outside [1, N = {n}] (N visual tokens)")
  if len(set(args.k)) != len(args.k):
    parser.error(f"--k has duplicates: {args.k}")
  for b in args.batch:
    if b < 1:
      parser.error(f"--batch must be >= 1, got {b}")
  for flag, value in (("--repeats", args.repeats), ("--n-text", args.n_text),
                      ("--decode-tokens", args.decode_tokens)):
    if value < 1:
      parser.error(f"{flag} must be >= 1, got {value}")


# ----------------------------------------------------------------------------
# The project's stages, each its own jitted function.


def _stages():
  import jax
  import jax.numpy as jnp
  from autoselect_jax.inference import decode
  from autoselect_jax.method import forward, selection

  @functools.partial(jax.jit, static_argnums=0)
  def encode(vlm, params, images):
    return vlm.encode_image(params, images)

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def prune(method, params, features, k):
    idx = selection.select_topk(forward.scores(method, params, features), k)
    return selection.gather_tokens(features, idx), idx

  @functools.partial(jax.jit, static_argnums=0)
  def make_prefix(vlm, params, visual_features, visual_positions, tokens):
    b, n_all = tokens.shape[0], vlm.num_visual_tokens
    visual = vlm.project(params, visual_features)
    return decode.build_prefix(
        vlm, params, visual, visual_positions, tokens,
        jnp.ones(tokens.shape, bool), jnp.zeros(tokens.shape, jnp.int32),
        text_start=jnp.full((b,), n_all, jnp.int32))

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def prefill(vlm, params, prefix, cache_size):
    return decode.prefill(vlm, params, prefix, cache_size)

  @functools.partial(jax.jit, static_argnums=(0, 6))
  def decode_steps(vlm, params, logits, cache, cache_mask, last_pos, steps,
                   start):
    def body(t, state):
      logits, cache, cache_mask = state
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return decode.extend(vlm, params, token, last_pos + 1 + t, cache,
                           cache_mask, start + t)
    return jax.lax.fori_loop(0, steps, body, (logits, cache, cache_mask))[0]

  return encode, prune, make_prefix, prefill, decode_steps


# ----------------------------------------------------------------------------
# The benchmark.


def _pass(entries) -> bool:
  return all(e["pass"] for e in entries)


def _targets(records, reference) -> dict:
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
  }


def run_benchmark(config, params, *, dtype_name: str, ks, batches,
                  repeats: int, n_text: int, decode_tokens: int, seed: int,
                  init: str = "hash", scan_layers: bool = False, log=print,
                  on_batch=None) -> dict:
  """Times every stage; returns the JSON dict (without command / variant).

  `params` are in the stacked (checkpoint) layout. The project runs on
  per-layer weights (`models.unstack_layers`), as `inference.Pipeline` does,
  unless `scan_layers`.
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from autoselect_jax.inference import cost
  from autoselect_jax.method import AutoSelect, Scorer
  from autoselect_jax.models import VLM, unstack_layers

  dtype = jnp.dtype(dtype_name)
  dev = jax.devices()[0]
  vlm = VLM(config, dtype, scan_layers=scan_layers)
  n, t, m = config.num_image_tokens, n_text, decode_tokens
  itemsize = dtype.itemsize
  method = AutoSelect(vlm, scorer=Scorer(dtype=dtype))
  if init == "hash":
    scorer_params = {"scorer": hash_params(
        method.abstract_params()["scorer"], dtype, seed + 1)}
  else:
    scorer_params = jax.jit(lambda r: jax.tree_util.tree_map(
        lambda a: a.astype(dtype), method.init(r)))(jax.random.key(seed + 1))
  encode, prune, make_prefix, prefill, decode_steps = _stages()
  ref_w = reference_weights(params, config.llm)
  if not scan_layers:
    params = unstack_layers(params)
  ref_fn = jax.jit(functools.partial(reference_prefill, c=config.llm,
                                     dtype=dtype))

  log(f"measuring peaks on {dev.device_kind} ({dev.platform}), {dtype_name}")
  peak = measure_peak_flops(dtype, dev.platform)
  bw = measure_bandwidth(dtype, dev.platform)
  pf, pb = peak["flops_per_s"], bw["bytes_per_s"]
  log(f"peak {pf / 1e9:,.0f} GFLOP/s, {pb / 1e9:,.1f} GB/s")

  ks = sorted(ks)
  k_ref = ks[0]
  runs = [(n, False)] + [(k, True) for k in ks]
  sc = method.scorer
  out = {
      "device": f"{dev.device_kind} ({dev.platform})",
      "layer_layout": "scanned" if scan_layers else "per-layer",
      "platform": dev.platform, "dtype": dtype_name, "n_visual": n,
      "n_text": t, "decode_tokens": m, "repeats": repeats,
      "llm_layers": config.llm.depth, "vision_layers": config.vision.depth,
      "peak_flops": pf, "peak_bandwidth": pb,
      "peak_kernels": {"flops": peak, "bandwidth": bw},
      "pruner": "Scorer + top-K + gather of the kept features (no projector)",
      "records": [], "reference": [],
  }
  for b in batches:
    rng = np.random.default_rng([seed, b])
    s = config.vision.image_size
    images = jnp.asarray(rng.uniform(-1, 1, (b, s, s, 3)), jnp.float32)
    hi = min(config.image_token_id, config.llm.vocab_size)
    tokens = rng.integers(3, hi, (b, t), dtype=np.int32)
    tokens[:, 0] = config.bos_token_id
    tokens = jnp.asarray(tokens)

    # Warm-up: compile and run every function once.
    log(f"batch {b}: compiling encode")
    features = timed(encode, vlm, params, images)[1]
    state = {}
    for k, pruned in runs:
      log(f"batch {b}: compiling k={k}{'' if pruned else ' (full)'}")
      if pruned:
        kept, idx = timed(prune, method, scorer_params, features, k)[1]
      else:
        kept, idx = features, jnp.broadcast_to(
            jnp.arange(n, dtype=jnp.int32), (b, n))
      prefix = make_prefix(vlm, params, kept, idx, tokens)
      length = k + t
      pre = timed(prefill, vlm, params, prefix, length + m)[1]
      timed(decode_steps, vlm, params, *pre, m, length)
      state[(k, pruned)] = (prefix, pre, length)
    log(f"batch {b}: compiling the plain-JAX reference")
    ref_in = {}
    for k, pruned in ((n, False), (k_ref, True)):
      p = state[(k, pruned)][0]
      ref_in[pruned] = (p.x, p.positions, p.input_mask, p.mask_ar)
      ref_out = timed(ref_fn, ref_w, *ref_in[pruned])[1]
      if not pruned:  # Same weights and inputs: same logits as the project.
        proj = np.asarray(state[(n, False)][1][0], np.float32)
        err = float(np.max(np.abs(np.asarray(ref_out[0], np.float32) - proj))
                    / max(float(np.max(np.abs(proj))), 1e-30))
    del ref_out

    times = {}
    add = lambda key, sec: times.setdefault(key, []).append(sec)
    for r in range(repeats):
      log(f"batch {b}: round {r + 1}/{repeats}")
      add("encode", timed(encode, vlm, params, images)[0])
      for k, pruned in runs:
        prefix, pre, length = state[(k, pruned)]
        if pruned:
          add(("pruner", k), timed(prune, method, scorer_params, features,
                                    k)[0])
        add(("prefill", k, pruned),
            timed(prefill, vlm, params, prefix, length + m)[0])
        add(("decode", k, pruned),
            timed(decode_steps, vlm, params, *pre, m, length)[0])
      for pruned in (False, True):
        add(("ref", pruned), timed(ref_fn, ref_w, *ref_in[pruned])[0])

    full_cost = cost.prefill(config.llm, b, n + t, itemsize)
    full_ms = stats(times[("prefill", n, False)], "x")["x"]
    scorer_cost = cost.scorer(b, n, config.vision.width, sc.width,
                              sc.num_layers, sc.mlp_ratio, itemsize)
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
      rec["ttft_ms"] = rec["encode_ms"] + rec["pruner_ms"] + rec["prefill_ms"]
      out["records"].append(rec)
    ref_full = statistics.median(times[("ref", False)]) * 1e3
    ref_pruned = statistics.median(times[("ref", True)]) * 1e3
    project = next(r for r in out["records"]
                   if r["batch"] == b and r["pruned"] and r["k"] == k_ref)
    entry = {"batch": b, "k": k_ref, "full_length": n + t,
             "pruned_length": k_ref + t, "full_ms": ref_full,
             "pruned_ms": ref_pruned, "speedup": ref_full / ref_pruned,
             "logits_rel_err_vs_project": err}
    entry["vs_reference"] = project["prefill_speedup"] / entry["speedup"]
    out["reference"].append(entry)
    out["targets"] = _targets(out["records"], out["reference"])
    if on_batch is not None:
      on_batch(out)
  return out


# ----------------------------------------------------------------------------
# Output.


def format_table(res: dict) -> str:
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
      f"{'roof-id':>7} {'frac':>5} {'prun-sh':>7} {'flop-sh':>7}"]
  for r in res["records"]:
    pre = (f"{r['prefill_ms']:8.2f} [{r['prefill_ms_min']:.1f}-"
           f"{r['prefill_ms_max']:.1f}]")
    lines.append(
        f"{r['batch']:>5} {r['k']:>4} {r['encode_ms']:8.2f} "
        f"{r['pruner_ms']:8.2f} {pre:>21} {r['decode_ms_per_token']:10.2f} "
        f"{r['prefill_speedup']:7.2f} {r['flop_ideal_speedup']:7.2f} "
        f"{r['roofline_ideal_speedup']:7.2f} {r['roofline_fraction']:5.2f} "
        f"{r['pruner_share']:7.3f} {r['pruner_flop_share']:7.3f}")
  lines.append("plain-JAX reference (same weights, inputs, dtype, dense mask):")
  for e in res["reference"]:
    lines.append(
        f"  batch {e['batch']}: {e['full_length']} tokens {e['full_ms']:.2f} "
        f"ms, {e['pruned_length']} tokens {e['pruned_ms']:.2f} ms, speedup "
        f"{e['speedup']:.2f}x; project/reference {e['vs_reference']:.3f} "
        f"(logits rel. err {e['logits_rel_err_vs_project']:.1e})")
  lines.append("targets:")
  for name, tgt in res.get("targets", {}).items():
    lines.append(f"  {'PASS' if tgt['pass'] else 'FAIL'} {name}: "
                 f"{tgt['description']}")
    for e in tgt["entries"]:
      vals = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in e.items() if k != "pass")
      lines.append(f"      {'ok  ' if e['pass'] else 'MISS'} {vals}")
  return "\n".join(lines)


def _write(path: str, res: dict) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  config = _config(args, parser)
  _check_args(args, parser, config.num_image_tokens)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    parser.error(f"--out: folder {out_dir} does not exist")

  import jax
  import jax.numpy as jnp
  from autoselect_jax.models import VLM
  log = Log()
  dtype = jnp.dtype(args.dtype)
  log(f"initialising parameters ({args.dtype}) on {jax.devices()[0]}")
  if args.checkpoint:
    from autoselect_jax.checkpoints import store
    params = load_params(args.checkpoint, config,
                         store.load_config(args.checkpoint), dtype)
    variant = f"checkpoint:{args.checkpoint}"
  else:
    params = init_params(VLM(config, dtype), dtype, args.seed, args.init)
    variant = args.variant or DEFAULT_VARIANT
  jax.block_until_ready(params)
  head = {"variant": variant, "command": "python -m autoselect_jax.bench "
          + shlex.join(sys.argv[1:] if argv is None else argv)}

  def save(res, complete=False):
    _write(args.out, {**head, **res, "complete": complete})

  res = run_benchmark(config, params, dtype_name=args.dtype, ks=args.k,
                      batches=args.batch, repeats=args.repeats,
                      n_text=args.n_text, decode_tokens=args.decode_tokens,
                      seed=args.seed, init=args.init,
                      scan_layers=args.scan_layers, log=log, on_batch=save)
  save(res, complete=True)
  print(format_table({**head, **res}))
  log(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
