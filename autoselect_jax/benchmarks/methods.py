"""Each pruning method's cost in the prefill benchmark: the JSON's `methods`.

`bench --method a,b,...` times, for every method and K, the stages the
deployed path (`inference.prune.select`, then the prefill) runs:

  encode    the plain `encode_image`, the core's "encode" measurement; or,
            for methods that need the encoder's last-block attention
            (attention, visionzip), `Pruner.encode`, i.e. `encode_image(...,
            last_attention=True)`, measured as its own stage.
  pruner    `pruner(params, features, k, attention)` under jit: the method's
            selection and the gather of the kept features (VisionZip: its
            merge), the `Kept` that `selected_sequence` receives. As in the
            core records, the projector is not included.
  prefill   the K-token prefill of the core records, ("prefill", k, True):
            K + T rows, whatever picked them. One measurement shared by every
            pre-LLM method: same jitted function, same shapes.
  fastv     FastV selects inside the LLM, so it has no pruner stage: its
            prefill is `inference.fastv.fastv_prefill` on the full sequence
            (N + T rows through layers < r, the K kept visual rows plus T
            after), its encode the plain one.

total = encode + pruner + prefill (sums of medians); the speedup is the full
model's encode + prefill over it, same batch; the pruner share is pruner /
total. Keys of the timed calls: "encode" (the core's), ENCODE_ATTENTION,
("method_pruner", name, k), ("fastv_prefill", k); the core's ("prefill", k,
pruned) supplies the other prefills.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

from autoselect_jax.benchmarks.timing import stats, timed

ENCODE = "encode"
ENCODE_ATTENTION = ("encode", "last_attention")
# Stage names in the records -> what they time (the JSON's description).
STAGES = {
    "encode": "vlm.encode_image(params, images) -> (B, N, Dv)",
    "encode_last_attention": "Pruner.encode = vlm.encode_image(params, "
                             "images, last_attention=True): the encoder plus "
                             "its last block's received attention and keys",
    "pruner": "pruner(params, features, k, attention) under jit: selection "
              "and gather of the kept features (VisionZip: merge); no "
              "projector",
    "prefill": "decode.prefill on K + T rows (the core records' prefill, "
               "one measurement shared by every pre-LLM method)",
    "fastv_prefill": "inference.fastv.fastv_prefill on the full N + T rows: "
                     "layers < fastv_layer on all rows, then K + T rows; "
                     "FastV's selection happens inside it (no pruner stage)",
}


def method_pruners(names, vlm, scorer, scorer_params, *, seed: int,
                   fastv_layer: int) -> dict:
  """{name: (pruner, pruner params)} through `pruners.make_pruner`, the
  learned one from the random `Scorer` (`scorer_params` its own tree)."""
  from autoselect_jax.inference.pruners import make_pruner
  return {name: make_pruner(name, scorer=scorer, scorer_params=scorer_params,
                            seed=seed, fastv_layer=fastv_layer,
                            vision_heads=vlm.config.vision.num_heads)
          for name in names}


class MethodStages(NamedTuple):
  """The jitted per-method stages (see `make_method_stages`)."""
  encode: Callable
  prune: Callable
  fastv_prefill: Callable


def make_method_stages() -> MethodStages:
  """encode: `pruner.encode` (pruner static); prune: `pruner(...)` -> `Kept`
  (pruner and k static); fastv_prefill: `fastv_prefill` (vlm, k, layer and
  cache size static)."""
  import jax
  from autoselect_jax.inference.fastv import fastv_prefill

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def encode(vlm, params, images, pruner):
    return pruner.encode(vlm, params, images)

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def prune(pruner, params, features, k, attention):
    return pruner(params, features, k, attention)

  @functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
  def fastv(vlm, params, seq, k, layer, cache_size):
    return fastv_prefill(vlm, params, seq, k=k, layer=layer,
                         cache_size=cache_size)

  return MethodStages(encode, prune, fastv)


def encode_stage(pruner) -> str:
  """The record's encode stage of a pruner: "encode_last_attention" where
  it needs the encoder's attention, else "encode" (FastV's too)."""
  return ("encode_last_attention" if getattr(pruner, "needs_attention", False)
          else "encode")


def timed_calls(mst: MethodStages, setup, pruners: dict, images, features,
                full_prefix, ks, *, cache_size: int, log=None) -> list:
  """(key, fn, args) of one round of the methods' own stages, each compiled
  and run once here (the warm-up).

  setup: the core's `stages.StageSetup`; features: the core's plain encoder
  output; full_prefix: the full model's Sequence (FastV's input);
  cache_size: N + T + M, the full run's cache.
  """
  log = log or (lambda msg: None)
  vlm, params = setup.vlm, setup.params
  calls, attention = [], None
  for pruner, _ in pruners.values():
    if getattr(pruner, "needs_attention", False):
      args = (vlm, params, images, pruner)
      log(f"compiling encode (last_attention=True, for {pruner.name})")
      attention = timed(mst.encode, *args)[1][1]
      calls.append((ENCODE_ATTENTION, mst.encode, args))
      break
  for name, (pruner, pparams) in pruners.items():
    for k in ks:
      log(f"compiling {name} k={k}")
      if name == "fastv":
        args = (vlm, params, full_prefix, k, pruner.layer, cache_size)
        timed(mst.fastv_prefill, *args)
        calls.append((("fastv_prefill", k), mst.fastv_prefill, args))
        continue
      att = attention if pruner.needs_attention else None
      args = (pruner, pparams, features, k, att)
      timed(mst.prune, *args)
      calls.append((("method_pruner", name, k), mst.prune, args))
  return calls


def _stage(times, key, name: str) -> dict:
  return stats(times[key], name)


def method_records(names, pruners: dict, batch: int, n: int, n_text: int, ks,
                   times) -> list[dict]:
  """The methods' records of one batch: the full model (method "full"),
  then per method (in `names` order) each K ascending. `times` holds the
  core's and `timed_calls`' keys."""
  full = {**_stage(times, ENCODE, "encode_ms"),
          **_stage(times, ("prefill", n, False), "prefill_ms")}
  full_total = full["encode_ms"] + full["prefill_ms"]
  out = [_record("full", batch, n, n, n_text, "encode", None, "prefill",
                 full, full_total)]
  for name in names:
    pruner = pruners[name][0]
    for k in sorted(ks):
      if name == "fastv":
        ms = {**_stage(times, ENCODE, "encode_ms"),
              **_stage(times, ("fastv_prefill", k), "prefill_ms")}
        out.append(_record(name, batch, k, n, n_text, "encode", None,
                           "fastv_prefill", ms, full_total))
        continue
      enc = encode_stage(pruner)
      ms = {**_stage(times, ENCODE if enc == "encode" else ENCODE_ATTENTION,
                     "encode_ms"),
            **_stage(times, ("method_pruner", name, k), "pruner_ms"),
            **_stage(times, ("prefill", k, True), "prefill_ms")}
      out.append(_record(name, batch, k, n, n_text, enc, "pruner", "prefill",
                         ms, full_total))
  return out


def _record(method, batch, k, n, n_text, enc, pruner, prefill, ms,
            full_total) -> dict:
  rec = {"method": method, "batch": batch, "k": k, "n_visual": n,
         "n_text": n_text, "encode_stage": enc, "pruner_stage": pruner,
         "prefill_stage": prefill}
  if pruner is None:
    ms = {**ms, "pruner_ms": None, "pruner_ms_min": None,
          "pruner_ms_max": None}
  for name in ("encode_ms", "pruner_ms", "prefill_ms"):
    for end in ("", "_min", "_max"):
      rec[name + end] = ms[name + end]
  rec["total_ms"] = rec["encode_ms"] + (rec["pruner_ms"] or 0.0) + rec[
      "prefill_ms"]
  rec["speedup"] = full_total / rec["total_ms"]
  rec["pruner_share"] = (None if pruner is None
                         else rec["pruner_ms"] / rec["total_ms"])
  return rec


def header(names, fastv_layer: int) -> dict:
  """The `methods` block before any batch: names, stage descriptions,
  definitions and an empty `records` list."""
  return {
      "names": list(names),
      "fastv_layer": fastv_layer if "fastv" in names else None,
      "stages": dict(STAGES),
      "total_ms": "encode_ms + pruner_ms + prefill_ms (sums of medians; "
                  "pruner_ms is null, counted 0, where there is no pruner "
                  "stage)",
      "speedup": "the full model's encode_ms + prefill_ms over total_ms, "
                 "same batch",
      "pruner_share": "pruner_ms / total_ms",
      "records": [],
  }


def format_table(block: dict) -> str:
  """The methods' table: median ms, speedup of the total, pruner share."""
  lines = [f"per method (fastv_layer {block['fastv_layer']}): median ms; "
           "total = encode + pruner + prefill",
           f"{'batch':>5} {'method':<10} {'k':>4} {'encode':>9} "
           f"{'enc-stage':<13} {'pruner':>8} {'prefill':>9} {'total':>9} "
           f"{'speedup':>7} {'prun-sh':>7}"]
  dash = lambda x, f: "-" if x is None else format(x, f)
  for r in block["records"]:
    enc = "last_attn" if r["encode_stage"] == "encode_last_attention" else (
        "plain")
    lines.append(
        f"{r['batch']:>5} {r['method']:<10} {r['k']:>4} {r['encode_ms']:9.2f} "
        f"{enc:<13} {dash(r['pruner_ms'], '8.2f'):>8} "
        f"{r['prefill_ms']:9.2f} {r['total_ms']:9.2f} {r['speedup']:7.2f} "
        f"{dash(r['pruner_share'], '7.3f'):>7}")
  return "\n".join(lines)
