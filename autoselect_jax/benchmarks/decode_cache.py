"""Decode ms/token over a long KV cache, where the cache's layout matters.

  python -m autoselect_jax.benchmarks.decode_cache --out docs/bench_decode_cache_cpu.json

A random Gemma decoder of 4 layers with 4 KV heads of dim 64 (width 256,
vocabulary 320, so the output head is negligible) decodes 16 greedy tokens
with `decode.extend` inside one jitted `fori_loop` (as `autoselect_jax.bench`
times decode), on a cache of S slots that is already nearly full, at batch 1
and 8. Medians of `--repeats` calls after a warm-up. The cache's keys and
values are 2 x L x B x S x K x E float32: 32 MB at batch 1 and S = 4096.
This is the regime of long prompts, high resolution (4096 visual tokens at
896 px) and large batches; at PaliGemma-3B-224 sizes the 257k-vocabulary
head dominates a decode step instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time


def measure(batch: int, slots: int, steps: int = 16, repeats: int = 5) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from autoselect_jax.inference import decode
  from autoselect_jax.models import (VLM, GemmaConfig, KVCache, get_variant,
                                     unstack_layers)

  cfg = get_variant("tiny").replace(llm=GemmaConfig(
      vocab_size=320, width=256, depth=4, num_heads=4, num_kv_heads=4,
      head_dim=64, mlp_dim=512))
  c = cfg.llm
  vlm = VLM(cfg, scan_layers=False)
  params = unstack_layers(VLM(cfg).init_params(jax.random.key(0)))
  shape = (batch, slots, c.num_kv_heads, c.head_dim)
  rng = np.random.default_rng(0)
  layer = lambda: jnp.asarray(rng.normal(size=shape), jnp.float32)
  cache = KVCache(tuple(layer() for _ in range(c.depth)),
                  tuple(layer() for _ in range(c.depth)))
  start = slots - 2 * steps
  cache_mask = jnp.broadcast_to(jnp.arange(slots) < start, (batch, slots))

  @functools.partial(jax.jit, static_argnums=0)
  def run(vlm, params, cache, cache_mask):
    def body(t, state):
      token, cache, cache_mask = state
      pos = jnp.full((batch,), start + t, jnp.int32)
      logits, cache, cache_mask = decode.extend(vlm, params, token, pos, cache,
                                                cache_mask, start + t)
      return jnp.argmax(logits, -1).astype(jnp.int32), cache, cache_mask
    init = (jnp.zeros((batch,), jnp.int32), cache, cache_mask)
    return jax.lax.fori_loop(0, steps, body, init)[0]

  jax.block_until_ready(run(vlm, params, cache, cache_mask))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(vlm, params, cache, cache_mask))
    times.append((time.perf_counter() - t0) * 1e3 / steps)
  return {"batch": batch, "slots": slots,
          "cache_mb": 2 * c.depth * int(np.prod(shape)) * 4 / 2 ** 20,
          "ms_per_token": float(np.median(times)),
          "min_ms": float(min(times)), "max_ms": float(max(times))}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--slots", type=int, default=4096)
  p.add_argument("--batch", default="1,8")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="")
  a = p.parse_args(argv)
  records = []
  for b in (int(v) for v in a.batch.split(",")):
    records.append(measure(b, a.slots, repeats=a.repeats))
    print(json.dumps(records[-1]), flush=True)
  if a.out:
    with open(a.out, "w") as f:
      json.dump({"command": "python -m autoselect_jax.benchmarks.decode_cache "
                            + " ".join(argv or sys.argv[1:]),
                 "records": records}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
