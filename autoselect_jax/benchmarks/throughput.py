"""Serving throughput with pruned KV caches: `bench --throughput`.

For the full model (all N visual tokens) and AutoSelect at each K, at each
batch B, one jitted call generates exactly T = --new-tokens greedy tokens per
request from pixels (no EOS stop: a fixed amount of work):

  generate     `prune.prefill_images`, the deployed pixels-to-first-logits
               call (`pruned_prefix`: encode; for K < N the Scorer's top-K
               through a `pruners.Pruner`; project; the LLM's Sequence; then
               `decode.prefill` into a cache of K + T_prompt + T slots), the
               first token by argmax, then T - 1 `decode.extend` steps in a
               `lax.fori_loop` (argmax each) -> tokens (B, T) int32.
  first_token  the same `prefill_images` (cache included) and the first
               token: time to first token. decode-only = generate -
               first_token (medians).

The largest batch that fits a memory budget comes from XLA's compiled memory
of `generate`: a line through B = 1 and B = 2 gives a guess, and compiling
(never running) around it finds the B that fits with B + 1 over the budget
(`benchmarks.memory_fit`).

Axes: B batch, N visual tokens, K kept, T text (prompt), D width.
"""

from __future__ import annotations

import functools
import math
import statistics
from typing import Any, Callable, NamedTuple

from autoselect_jax.benchmarks.memory_fit import (FIT_BATCHES, GB,
                                                  fit_max_batch,
                                                  max_batch_block,
                                                  memory_budget,
                                                  verify_max_batch)

# Gemma's longest sequence (RoPE positions and cache slots), as
# `inference.pipeline.Pipeline.max_positions`.
MAX_POSITIONS = 8192

DEFINITIONS = {
    "generate": "one jitted call, pixels -> (B, new_tokens) greedy tokens: "
                "prune.prefill_images (pruned_prefix + decode.prefill into "
                "cache_slots slots), argmax, new_tokens - 1 decode.extend "
                "steps in a fori_loop (no EOS stop)",
    "first_token": "one jitted call: the same prune.prefill_images (the "
                   "cache of cache_slots slots is an output) and the first "
                   "token",
    "total_s": "median seconds of the generate call (min / max over repeats)",
    "decode_s": "total_s - first_token_s (medians)",
    "requests_per_s": "batch / total_s",
    "tokens_per_s": "batch * new_tokens / total_s",
    "decode_tokens_per_s": "batch * (new_tokens - 1) / decode_s (null when "
                           "new_tokens = 1 or decode_s <= 0)",
    "kv_cache_bytes_per_request": "llm depth * 2 (keys, values) * "
                                  "num_kv_heads * head_dim * cache_slots * "
                                  "itemsize",
    "compiled_memory": "generate's XLA memory_analysis() at this batch "
                       "(stages.memory_plan); total = argument + output + "
                       "temp - alias",
    "process_peak_bytes": "the high-water mark so far (timing.process_peak, "
                          "its kind in process_peak_source): the device's "
                          "peak_bytes_in_use (GPU, TPU), else the process's "
                          "peak RSS (CPU); cumulative over the run",
}


def check_args(args, parser, n: int) -> None:
  """parser.error on bad --throughput / --new-tokens / --memory-budget-gb."""
  if args.new_tokens < 1:
    parser.error(f"--new-tokens must be >= 1, got {args.new_tokens}")
  budget = args.memory_budget_gb
  if budget is not None and not (math.isfinite(budget) and budget > 0):
    parser.error(f"--memory-budget-gb must be > 0, got {budget}")
  if not args.throughput:
    if budget is not None:
      parser.error("--memory-budget-gb needs --throughput")
    return
  if args.max_batch_compiles < 0:
    parser.error(f"--max-batch-compiles must be >= 0, got "
                 f"{args.max_batch_compiles}")
  if args.method:
    parser.error("--throughput times the full model and AutoSelect only; "
                 "drop --method (per-method costs are a prefill run)")
  total = n + args.n_text + args.new_tokens
  if total > MAX_POSITIONS:
    parser.error(f"--throughput needs N + --n-text + --new-tokens = {n} + "
                 f"{args.n_text} + {args.new_tokens} = {total} positions, "
                 f"over Gemma's {MAX_POSITIONS}")


def kv_cache_bytes(llm, slots: int, itemsize: int) -> int:
  """Bytes of one request's KV cache of `slots` slots: depth * 2 (keys and
  values) * num_kv_heads * head_dim * slots * itemsize."""
  return llm.depth * 2 * llm.num_kv_heads * llm.head_dim * slots * itemsize


class Functions(NamedTuple):
  """The jitted calls; positional args (vlm, pruner, k, new_tokens, params,
  pruner_params, images (B, H, W, 3), tokens (B, T)), the first four
  static."""
  generate: Callable    # -> tokens (B, new_tokens) int32
  first_token: Callable  # -> (token (B,) int32, KVCache of L + new_tokens)


@functools.cache
def make_functions() -> Functions:
  """`Functions`, built once per process (one jit cache for every run)."""
  import jax
  import jax.numpy as jnp
  from autoselect_jax.benchmarks.stages import prompt_masks
  from autoselect_jax.inference import decode, prune
  greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def prefilled(vlm, pruner, k, new_tokens, params, pruner_params, images,
                tokens):
    """The deployed `prune.prefill_images`, the prompt all real and in the
    bidirectional prefix; k = N is the full model (no pruner)."""
    full = k == vlm.num_visual_tokens
    return prune.prefill_images(
        vlm, params, images, tokens, *prompt_masks(tokens), k=k,
        new_tokens=new_tokens,
        pruner=None if full else pruner,
        pruner_params=None if full else pruner_params)[0]

  @functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
  def generate(vlm, pruner, k, new_tokens, params, pruner_params, images,
               tokens):
    logits, cache, cache_mask, pos = prefilled(
        vlm, pruner, k, new_tokens, params, pruner_params, images, tokens)
    l = cache_mask.shape[1] - new_tokens           # K + T, the first slot.
    out = jnp.zeros((logits.shape[0], new_tokens), jnp.int32)
    out = out.at[:, 0].set(greedy(logits))

    def body(t, state):  # Token t from token t - 1, written at slot L + t - 1.
      out, cache, cache_mask = state
      logits, cache, cache_mask = decode.extend(
          vlm, params, out[:, t - 1], pos + t, cache, cache_mask, l + t - 1)
      return out.at[:, t].set(greedy(logits)), cache, cache_mask

    return jax.lax.fori_loop(1, new_tokens, body, (out, cache, cache_mask))[0]

  @functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
  def first_token(vlm, pruner, k, new_tokens, params, pruner_params, images,
                  tokens):
    logits, cache, _, _ = prefilled(
        vlm, pruner, k, new_tokens, params, pruner_params, images, tokens)
    return greedy(logits), cache

  return Functions(generate, first_token)


class Setup(NamedTuple):
  """What every call shares: the VLM, its params (the bench layout), the
  AutoSelect pruner and its Scorer params."""
  vlm: Any
  params: Any
  pruner: Any
  pruner_params: Any
  scorer_width: int


def make_setup(config, params, dtype, *, seed: int, init: str = "hash",
               scan_layers: bool = False, scorer_width: int = 0) -> Setup:
  """The VLM in `dtype` and the AutoSelect pruner with random Scorer weights
  (`weights.scorer_params`, seed + 1 as bench's core records), as
  `pruners.make_pruner("autoselect", ...)` builds it. `params` are stacked;
  they are split per layer (`models.unstack_layers`) unless `scan_layers`."""
  from autoselect_jax.benchmarks.weights import scorer_params
  from autoselect_jax.inference.pruners import make_pruner
  from autoselect_jax.method import AutoSelect, Scorer
  from autoselect_jax.models import VLM, unstack_layers
  vlm = VLM(config, dtype, scan_layers=scan_layers)
  method = AutoSelect(vlm, scorer=Scorer(width=scorer_width or None,
                                         dtype=dtype))
  sp = scorer_params(method, dtype, seed + 1, init)["scorer"]
  pruner, pparams = make_pruner("autoselect", scorer=method.scorer,
                                scorer_params=sp)
  if not scan_layers:
    params = unstack_layers(params)
  return Setup(vlm, params, pruner, pparams, method.scorer.width)


def call_args(setup: Setup, k: int, new_tokens: int, images, tokens) -> tuple:
  """The positional arguments of a `Functions` call."""
  return (setup.vlm, setup.pruner, k, new_tokens, setup.params,
          setup.pruner_params, images, tokens)


def throughput_record(llm, *, k: int, n: int, batch: int, n_text: int,
                      new_tokens: int, itemsize: int, total, first,
                      compiled: dict, peak_bytes: float) -> dict:
  """One (batch, K) record from the seconds of the generate (`total`) and
  first_token (`first`) calls over the repeats; see `DEFINITIONS`."""
  slots = k + n_text + new_tokens
  per_request = kv_cache_bytes(llm, slots, itemsize)
  rec = {"k": k, "pruned": k < n, "batch": batch, "n_visual": n,
         "n_text": n_text, "new_tokens": new_tokens, "cache_slots": slots,
         "kv_cache_bytes_per_request": per_request,
         "kv_cache_bytes_per_batch": batch * per_request}
  for name, seconds in (("total_s", total), ("first_token_s", first)):
    rec.update({name: statistics.median(seconds), f"{name}_min": min(seconds),
                f"{name}_max": max(seconds)})
  rec["decode_s"] = rec["total_s"] - rec["first_token_s"]
  rec["requests_per_s"] = batch / rec["total_s"]
  rec["tokens_per_s"] = batch * new_tokens / rec["total_s"]
  rec["decode_tokens_per_s"] = (
      batch * (new_tokens - 1) / rec["decode_s"]
      if new_tokens > 1 and rec["decode_s"] > 0 else None)
  rec["compiled_memory"] = compiled
  rec["process_peak_bytes"] = peak_bytes
  return rec


def with_ratios(records: list) -> list:
  """Each record with tokens_per_s_vs_full: its tokens/s over the full
  model's at the same batch (null before the full record exists)."""
  full = {r["batch"]: r["tokens_per_s"] for r in records if not r["pruned"]}
  return [{**r, "tokens_per_s_vs_full": r["tokens_per_s"] / full[r["batch"]]
           if r["batch"] in full else None} for r in records]


def memory_fits(fns: Functions, setup: Setup, config, runs, *, n_text: int,
                new_tokens: int, seed: int, budget, log,
                max_batch_compiles: int = 12) -> dict:
  """{(k, pruned): `fit_max_batch`} of generate compiled (not run) at
  `FIT_BATCHES` for each k in `runs` (N: the full model); then up to
  `max_batch_compiles` more compiles per k (`verify_max_batch`, 0: none)
  replace the line's max_batch (kept as max_batch_line) by one that fits
  with one more request over the budget, or by None with the bracket
  found (max_batch_fits, max_batch_over) if the compiles ran out."""
  import jax
  from autoselect_jax.benchmarks.stages import batch_inputs, memory_plan
  n, fits = config.num_image_tokens, {}
  for k in runs:
    def plan(b, k=k):
      log(f"compiling generate for the memory fit: k={k} batch {b}")
      images, tokens = (jax.ShapeDtypeStruct(a.shape, a.dtype)
                        for a in batch_inputs(config, b, n_text, seed))
      return {"batch": b, **memory_plan(
          fns.generate, *call_args(setup, k, new_tokens, images, tokens))}
    fit = fit_max_batch([plan(b) for b in FIT_BATCHES], budget)
    fit["max_batch_line"] = fit["max_batch"]
    if fit["max_batch"] is not None and max_batch_compiles > 0:
      found = verify_max_batch(lambda b: plan(b)["total_bytes"],
                               fit["max_batch"], budget, fit["points"],
                               max_compiles=max_batch_compiles)
      fit.update(max_batch=found["max_batch"], max_batch_fits=found["fits"],
                 max_batch_over=found["over"],
                 verify_compiled=found["compiled"])
    fits[(k, k < n)] = fit
  return fits


def run_throughput(config, params, *, dtype_name: str, ks, batches,
                   repeats: int, n_text: int, new_tokens: int, seed: int,
                   init: str = "hash", scan_layers: bool = False,
                   scorer_width: int = 0, memory_budget_gb=None, log=print,
                   on_batch=None, max_batch_compiles: int = 12) -> dict:
  """Times generate and first_token for the full model and each K at each
  batch (warm-up, then `repeats` interleaved rounds per batch); returns the
  JSON dict (without command / variant). `on_batch(result)` after every
  batch."""
  import jax
  import jax.numpy as jnp
  from autoselect_jax.benchmarks.stages import batch_inputs, memory_plan
  from autoselect_jax.benchmarks.timing import (host_allocator, process_peak,
                                                 time_rounds, timed)
  dtype = jnp.dtype(dtype_name)
  dev = jax.devices()[0]
  n = config.num_image_tokens
  setup = make_setup(config, params, dtype, seed=seed, init=init,
                     scan_layers=scan_layers, scorer_width=scorer_width)
  fns = make_functions()
  runs = [n] + sorted(ks)
  out = {"benchmark": "throughput", "device": f"{dev.device_kind} "
         f"({dev.platform})", "platform": dev.platform, "dtype": dtype_name,
         "layer_layout": "scanned" if scan_layers else "per-layer",
         "n_visual": n, "n_text": n_text, "new_tokens": new_tokens,
         "repeats": repeats, "llm_layers": config.llm.depth,
         "vision_layers": config.vision.depth,
         "scorer_width": setup.scorer_width,
         "kv_bytes_per_slot": kv_cache_bytes(config.llm, 1, dtype.itemsize),
         "process_peak_source": process_peak(dev)[0],
         "host_allocator": host_allocator(),
         "definitions": dict(DEFINITIONS), "records": []}
  budget, source, note = memory_budget(memory_budget_gb, dev)
  fits = memory_fits(fns, setup, config, runs, n_text=n_text,
                     new_tokens=new_tokens, seed=seed, budget=budget, log=log,
                     max_batch_compiles=max_batch_compiles)
  out["max_batch"] = max_batch_block(fits, budget, source, note)
  for b in batches:
    blog = lambda msg: log(f"batch {b}: {msg}")
    images, tokens = batch_inputs(config, b, n_text, seed)
    calls, compiled = [], {}
    for k in runs:
      args = call_args(setup, k, new_tokens, images, tokens)
      blog(f"compiling and warming up k={k}{'' if k < n else ' (full)'}")
      for name, fn in (("generate", fns.generate),
                       ("first_token", fns.first_token)):
        timed(fn, *args)
        calls.append(((name, k), fn, args))
      compiled[k] = memory_plan(fns.generate, *args)
    times = time_rounds(calls, repeats, blog)
    peak = process_peak(dev)[1]
    out["records"] = with_ratios(out["records"] + [throughput_record(
        config.llm, k=k, n=n, batch=b, n_text=n_text, new_tokens=new_tokens,
        itemsize=dtype.itemsize, total=times[("generate", k)],
        first=times[("first_token", k)], compiled=compiled[k],
        peak_bytes=peak) for k in runs])
    out["max_batch"] = max_batch_block(fits, budget, source, note,
                                       out["records"])
    if on_batch is not None:
      on_batch(out)
  return out


def format_table(res: dict) -> str:
  """The Markdown table of a result (with `variant`): one row per record."""
  mb = lambda x: f"{x / 2 ** 20:,.1f}"
  fits = {e["k"]: e for e in res.get("max_batch", {}).get("entries", [])}
  mbudget = res.get("max_batch", {}).get("budget_bytes")
  lines = [
      f"{res['device']}, {res['dtype']}, {res['variant']}, LLM layers "
      f"{res['llm_layers']}, vision layers {res['vision_layers']}, "
      f"N = {res['n_visual']}, prompt T = {res['n_text']}, "
      f"{res['new_tokens']} new tokens, medians of {res['repeats']}",
      "",
      "| batch | K | cache slots | KV MiB / request | total s | first token "
      "s | decode s | tokens/s | decode tokens/s | tokens/s vs full | "
      "compiled MiB | max batch |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in res["records"]:
    fit = fits.get(r["k"], {})
    most = fit.get("max_batch")
    if most is None and fit.get("max_batch_fits") is not None:
      over = fit.get("max_batch_over")
      most = f">= {fit['max_batch_fits']}" + (
          f", < {over}" if over is not None else "")
    most = "-" if most is None else (
        f"{most}" + (f" ({fit['max_batch_vs_full']:.2f}x)"
                     if fit.get("max_batch_vs_full") is not None else ""))
    dec = r["decode_tokens_per_s"]
    vs = r.get("tokens_per_s_vs_full")
    lines.append(
        f"| {r['batch']} | {r['k']}{'' if r['pruned'] else ' (full)'} | "
        f"{r['cache_slots']} | {mb(r['kv_cache_bytes_per_request'])} | "
        f"{r['total_s']:.3f} | {r['first_token_s']:.3f} | "
        f"{r['decode_s']:.3f} | {r['tokens_per_s']:.2f} | "
        f"{'-' if dec is None else f'{dec:.2f}'} | "
        f"{'-' if vs is None else f'{vs:.2f}x'} | "
        f"{mb(r['compiled_memory']['total_bytes'])} | {most} |")
  if mbudget is not None:
    lines.append(f"\nmax batch: under {mbudget / GB:,.2f} GB "
                 f"({res['max_batch']['budget_source']}), from the compiled "
                 f"memory at batch {' and '.join(map(str, FIT_BATCHES))}")
  elif res.get("max_batch", {}).get("note"):
    lines.append(f"\n{res['max_batch']['note']}")
  for e in fits.values():
    for c in e.get("checks", []):
      lines.append(f"fit check, k={e['k']}: at batch {c['batch']} compiled "
                   f"{mb(c['compiled_total_bytes'])} MiB against the line's "
                   f"{mb(c['fit_bytes'])} MiB "
                   f"({c['compiled_over_fit']:.2f}x)")
  return "\n".join(lines)
