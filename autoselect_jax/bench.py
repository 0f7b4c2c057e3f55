"""Prefill benchmark: the full model against AutoSelect-pruned ones, stage by stage.

  python -m autoselect_jax.bench [--checkpoint DIR | --variant NAME] \\
      [--llm-layers L] [--vision-layers L] --k 64,128,192 --batch 1,8 \\
      [--dtype float32|bfloat16] [--repeats R] [--n-text T] \\
      [--decode-tokens M] [--method autoselect,random,...,fastv] \\
      [--fastv-layer R] [--scorer-width W] [--query-chunk C] \\
      [--throughput [--new-tokens T] [--memory-budget-gb G] \\
      [--max-batch-compiles C]] --out FILE.json

--query-chunk C sets the attention blocks of SigLIP and the Scorer
(`models.attention.QUERY_CHUNK`, 0 = dense) for the whole run.
--throughput measures serving throughput instead (`benchmarks/throughput.py`).

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
  prefill   `decode.prefill` on a sequence already built by `VLM.sequence`
            over K projected visual tokens and T text tokens (a prompt: all
            real, all in the bidirectional prefix), with a cache of K + T + M
            slots; includes the prefix-LM mask, the cache padding and the
            last token's logits.
  decode    M greedy `decode.extend` steps on the prefilled cache in one
            jitted `lax.fori_loop` (argmax included), divided by M.
  ttft      time to first token as users get it: one call of
            `prune.jit_prefill_images`, the function `Pipeline.generate`
            runs, from pixels to the first token's logits (encode, Scorer,
            top-K, gather, project, sequence, prefill into K + T + M slots).
            Each record also keeps the sum of the stage medians beside it
            (`ttft_sum_ms`), the TTFT speedup over the full model and its
            roofline ideal (encoder + pruner + projector + prefill in the
            cost model), and XLA's memory plan of the call
            (`ttft_memory_bytes`: arguments + outputs + temporaries).

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

--method NAME,... adds each method's own cost (`benchmarks/methods.py`): per
(batch, method, K) the encode stage it deploys (with last_attention=True for
attention and visionzip), its pruner call (selection + gather / merge), the
K-token prefill above, their total and its speedup over the full model's
encode + prefill (the JSON's `methods` block). FastV prunes inside the LLM:
its prefill is `fastv_prefill` and it has no pruner stage. Without --method
the JSON is the AutoSelect-only one above, field for field.

The JSON (--out) is rewritten after every batch ("complete": false until
the end), so a run cut short still leaves its measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

from autoselect_jax.benchmarks import methods as method_stages
from autoselect_jax.benchmarks.args import int_list
from autoselect_jax.benchmarks import reference, stages
from autoselect_jax.benchmarks.records import batch_records
from autoselect_jax.benchmarks.results import (format_table, header, targets,
                                              write_json)
from autoselect_jax.benchmarks.timing import (Log, allocator_hint,
                                             device_peaks, process_peak,
                                             time_rounds)
from autoselect_jax.benchmarks.weights import (init_params, load_params,
                                              scorer_params)

DTYPES = ("float32", "bfloat16")
# --method choices: `inference.pruners.PRE_LLM_METHODS` + fastv, spelled out
# so that argument errors come before importing JAX; "full" is always
# measured, as every speedup's baseline.
BENCH_METHODS = ("autoselect", "random", "grid", "norm", "attention",
                 "divprune", "visionzip", "fastv")
DEFAULT_VARIANT = "paligemma-3b-224"


def _method_list(text: str) -> list[str]:
  names = [v.strip() for v in text.split(",") if v.strip()]
  if not names:
    raise argparse.ArgumentTypeError("expected at least one method name")
  for name in names:
    if name not in BENCH_METHODS:
      why = (" (the full model is always measured)" if name == "full"
             else "")
      raise argparse.ArgumentTypeError(
          f"unknown method {name!r}{why}; choose from "
          f"{', '.join(BENCH_METHODS)}")
  if len(set(names)) != len(names):
    raise argparse.ArgumentTypeError(f"duplicate method names in {text!r}")
  return names


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
  p.add_argument("--k", type=int_list, default=[64, 128, 192],
                 help="kept visual tokens, comma-separated (default 64,128,192)")
  p.add_argument("--batch", type=int_list, default=[1, 8],
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
  p.add_argument("--method", type=_method_list, default=None,
                 help="comma-separated methods to time, each with its own "
                 f"encode / pruner / prefill: {', '.join(BENCH_METHODS)} "
                 "(default: autoselect in the core records only, no "
                 "`methods` block)")
  p.add_argument("--fastv-layer", type=int, default=2,
                 help="FastV's decoder layer r, 1 <= r < LLM depth (default "
                 "2, FastV's; use 1 with --llm-layers 2)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--init", default="hash", choices=("hash", "flax"),
                 help="random weights: a fast index hash (default) or the "
                 "model's own initialisers (slow on CPU)")
  p.add_argument("--scan-layers", action="store_true",
                 help="time the scanned (training) layer layout instead of "
                 "the per-layer weights that inference uses")
  p.add_argument("--scorer-width", type=int, default=0,
                 help="the Scorer's width W: 0 (default) keeps the vision "
                 "width Dv; another W adds a linear down-projection before "
                 "its blocks (autoselect.scorer_width)")
  p.add_argument("--throughput", action="store_true",
                 help="serving throughput instead of the prefill stages: "
                 "one jitted call per (batch, K) from pixels to --new-tokens "
                 "greedy tokens, the full model and AutoSelect "
                 "(benchmarks/throughput.py)")
  p.add_argument("--new-tokens", type=int, default=32,
                 help="--throughput: tokens generated per request, no EOS "
                 "stop (default 32)")
  p.add_argument("--memory-budget-gb", type=float, default=None,
                 help="--throughput: memory budget G x 10^9 bytes for the "
                 "largest batch that fits (default: the device's "
                 "bytes_limit; none on CPU)")
  p.add_argument("--max-batch-compiles", type=int, default=12,
                 help="--throughput: compiles (never runs) of the generate "
                 "call around the memory line's max batch, to find the "
                 "largest batch that fits the budget (default 12; 0: the "
                 "line's guess alone)")
  p.add_argument("--query-chunk", type=int, default=None,
                 help="query rows per attention block in SigLIP and the "
                 "Scorer (default models.attention.QUERY_CHUNK, 256; 0: "
                 "dense attention, all N rows at once)")
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


def _check_args(args, parser, n: int, llm_depth: int) -> None:
  for k in args.k:
    if not 1 <= k <= n:
      parser.error(f"--k {k} is outside [1, N = {n}] (N visual tokens)")
  if len(set(args.k)) != len(args.k):
    parser.error(f"--k has duplicates: {args.k}")
  for b in args.batch:
    if b < 1:
      parser.error(f"--batch must be >= 1, got {b}")
  if args.query_chunk is not None and args.query_chunk < 0:
    parser.error(f"--query-chunk must be >= 0, got {args.query_chunk}")
  if args.scorer_width < 0 or args.scorer_width % 16:
    parser.error(f"--scorer-width {args.scorer_width} must be 0 or a "
                 "positive multiple of the Scorer's 16 heads")
  for flag, value in (("--repeats", args.repeats), ("--n-text", args.n_text),
                      ("--decode-tokens", args.decode_tokens)):
    if value < 1:
      parser.error(f"{flag} must be >= 1, got {value}")
  if args.method and "fastv" in args.method:
    if not 1 <= args.fastv_layer < llm_depth:
      parser.error(f"--fastv-layer {args.fastv_layer} is outside [1, "
                   f"{llm_depth}) (the LLM has {llm_depth} layers)")
    if args.scan_layers:
      parser.error("--method fastv needs the per-layer layout; drop "
                   "--scan-layers")


# ----------------------------------------------------------------------------
# The benchmark, step by step.


def _setup(config, params, dtype, *, decode_tokens: int, seed: int, init: str,
           scan_layers: bool, scorer_width: int = 0):
  """Weights and jitted functions: (StageSetup, reference fn, its weights).

  `params` are in the stacked (checkpoint) layout; the reference takes its
  2-D matrices from them, the project runs on per-layer weights
  (`models.unstack_layers`) unless `scan_layers`.
  """
  from autoselect_jax.inference.pruners import make_pruner
  from autoselect_jax.method import AutoSelect, Scorer
  from autoselect_jax.models import VLM, unstack_layers
  vlm = VLM(config, dtype, scan_layers=scan_layers)
  method = AutoSelect(vlm, scorer=Scorer(width=scorer_width or None,
                                         dtype=dtype))
  scorer = scorer_params(method, dtype, seed + 1, init)
  jitted = stages.make_stages()
  ref_w = reference.reference_weights(params, config.llm)
  if not scan_layers:
    params = unstack_layers(params)
  ref_fn = reference.reference_fn(config.llm, dtype)
  pruner, pruner_params = make_pruner("autoselect", scorer=method.scorer,
                                      scorer_params=scorer["scorer"])
  setup = stages.StageSetup(vlm=vlm, params=params, method=method,
                            scorer_params=scorer, stages=jitted,
                            decode_tokens=decode_tokens, pruner=pruner,
                            pruner_params=pruner_params)
  return setup, ref_fn, ref_w


def _measure_batch(setup, ref_fn, ref_w, config, b: int, runs, k_ref: int, *,
                   n_text: int, repeats: int, seed: int, log, methods=None):
  """Warm-up, then `repeats` interleaved rounds of every stage, of the
  reference and of the `methods` (MethodStages, {name: (pruner, params)}) or
  None: ({key: [seconds]}, the reference's logits error, {run: memory
  plans}, {key: [minor page faults]})."""
  n = config.num_image_tokens
  blog = lambda msg: log(f"batch {b}: {msg}")
  images, tokens = stages.batch_inputs(config, b, n_text, seed)
  features, state = stages.warm_up(setup, images, tokens, runs, blog)
  blog("compiling the plain-JAX reference")
  ref_in, err = reference.warm_up_reference(
      ref_fn, ref_w, state[(n, False)].prefix, state[(k_ref, True)].prefix,
      state[(n, False)].prefill_out[0])
  calls = (stages.timed_calls(setup, images, tokens, features, state, runs)
           + reference.timed_calls(ref_fn, ref_w, ref_in))
  if methods is not None:
    mst, pruners = methods
    calls += method_stages.timed_calls(
        mst, setup, pruners, images, features, state[(n, False)].prefix,
        sorted(k for k, pruned in runs if pruned),
        cache_size=n + n_text + setup.decode_tokens, log=blog)
  faults = {}
  times = time_rounds(calls, repeats, blog, faults)
  return times, err, {run: p.memory for run, p in state.items()}, faults


def run_benchmark(config, params, *, dtype_name: str, ks, batches,
                  repeats: int, n_text: int, decode_tokens: int, seed: int,
                  init: str = "hash", scan_layers: bool = False, log=print,
                  on_batch=None, methods=None, fastv_layer: int = 2,
                  scorer_width: int = 0) -> dict:
  """Times every stage; returns the JSON dict (without command / variant).

  methods: names (`BENCH_METHODS`) to time each with its own stages, in the
  JSON's `methods` block (`benchmarks.methods`); None: no such block.

  `params` are in the stacked (checkpoint) layout. The project runs on
  per-layer weights (`models.unstack_layers`), as `inference.Pipeline` does,
  unless `scan_layers`. `on_batch(result)` is called after every batch.
  scorer_width: the Scorer's width (0: the vision width).
  """
  import jax
  import jax.numpy as jnp
  from autoselect_jax.models import attention
  dtype = jnp.dtype(dtype_name)
  dev = jax.devices()[0]
  n = config.num_image_tokens
  setup, ref_fn, ref_w = _setup(config, params, dtype,
                                decode_tokens=decode_tokens, seed=seed,
                                init=init, scan_layers=scan_layers,
                                scorer_width=scorer_width)
  peak, bw = device_peaks(dtype, dev, log)
  ks = sorted(ks)
  runs = [(n, False)] + [(k, True) for k in ks]
  out = header(dev, config, dtype_name=dtype_name, n_text=n_text,
               decode_tokens=decode_tokens, repeats=repeats,
               scan_layers=scan_layers, peak=peak, bandwidth=bw,
               scorer_width=setup.method.scorer.width,
               query_chunk=attention.QUERY_CHUNK)
  mset = None
  if methods is not None:
    pruners = method_stages.method_pruners(
        methods, setup.vlm, setup.method.scorer,
        setup.scorer_params["scorer"], seed=seed, fastv_layer=fastv_layer)
    mset = (method_stages.make_method_stages(), pruners)
    out["methods"] = method_stages.header(methods, fastv_layer)
  for b in batches:
    times, err, memory, faults = _measure_batch(
        setup, ref_fn, ref_w, config, b, runs, ks[0], n_text=n_text,
        repeats=repeats, seed=seed, log=log, methods=mset)
    if mset is not None:
      out["methods"]["records"].extend(method_stages.method_records(
          methods, mset[1], b, n, n_text, ks, times))
    peak_bytes = process_peak(dev)[1]
    records = batch_records(config, setup.method.scorer, b, n_text,
                            decode_tokens, dtype.itemsize, runs, times,
                            out["peak_flops"], out["peak_bandwidth"],
                            memory, peak_bytes, faults)
    out["records"].extend(records)
    project = next(r for r in records if r["pruned"] and r["k"] == ks[0])
    out["reference"].append(reference.reference_entry(
        b, n, n_text, ks[0], times, err, project["prefill_speedup"]))
    out["targets"] = targets(out["records"], out["reference"])
    if on_batch is not None:
      on_batch(out)
  return out


def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  config = _config(args, parser)
  from autoselect_jax.benchmarks import throughput
  throughput.check_args(args, parser, config.num_image_tokens)
  _check_args(args, parser, config.num_image_tokens, config.llm.depth)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  if not os.path.isdir(out_dir):
    parser.error(f"--out: folder {out_dir} does not exist")

  from autoselect_jax.models import attention
  previous = attention.QUERY_CHUNK
  if args.query_chunk is not None:  # Before anything is traced.
    attention.QUERY_CHUNK = args.query_chunk
  try:
    return _run(args, argv, config)
  finally:
    attention.QUERY_CHUNK = previous


def _run(args, argv, config) -> int:
  """main after the arguments are checked: the weights, then the run."""
  import jax
  import jax.numpy as jnp
  from autoselect_jax.benchmarks import throughput
  from autoselect_jax.models import VLM
  log = Log()
  dtype = jnp.dtype(args.dtype)
  log(f"initialising parameters ({args.dtype}) on {jax.devices()[0]}")
  hint = allocator_hint(jax.devices()[0].platform)
  if hint:
    log(hint)
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
    write_json(args.out, {**head, **res, "complete": complete})

  if args.throughput:
    res = throughput.run_throughput(
        config, params, dtype_name=args.dtype, ks=args.k, batches=args.batch,
        repeats=args.repeats, n_text=args.n_text, new_tokens=args.new_tokens,
        seed=args.seed, init=args.init, scan_layers=args.scan_layers,
        scorer_width=args.scorer_width,
        memory_budget_gb=args.memory_budget_gb, log=log, on_batch=save,
        max_batch_compiles=args.max_batch_compiles)
    save(res, complete=True)
    print(throughput.format_table({**head, **res}))
    log(f"wrote {args.out}")
    return 0
  res = run_benchmark(config, params, dtype_name=args.dtype, ks=args.k,
                      batches=args.batch, repeats=args.repeats,
                      n_text=args.n_text, decode_tokens=args.decode_tokens,
                      seed=args.seed, init=args.init,
                      scan_layers=args.scan_layers, log=log, on_batch=save,
                      methods=args.method, fastv_layer=args.fastv_layer,
                      scorer_width=args.scorer_width)
  save(res, complete=True)
  print(format_table({**head, **res}))
  log(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
