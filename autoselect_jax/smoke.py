"""Smoke run: a random PaliGemma-architecture model encodes an image, prefills
and greedily decodes, with no weights or data needed.

  python -m autoselect_jax.smoke [--variant tiny] [--llm-layers L] [--vision-layers L]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from autoselect_jax.inference.decode import greedy_decode
from autoselect_jax.inference.prune import full_prefix
from autoselect_jax.models import VLM, get_variant


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m autoselect_jax.smoke",
                                   description=__doc__)
  parser.add_argument("--variant", default="tiny")
  parser.add_argument("--llm-layers", type=int)
  parser.add_argument("--vision-layers", type=int)
  parser.add_argument("--max-new-tokens", type=int, default=8)
  args = parser.parse_args(argv)
  cfg = get_variant(args.variant)
  if args.llm_layers:
    cfg = cfg.replace(llm=dataclasses.replace(cfg.llm, depth=args.llm_layers))
  if args.vision_layers:
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision,
                                                 depth=args.vision_layers))
  vlm = VLM(cfg)
  t0 = time.perf_counter()
  params = jax.jit(vlm.init_params)(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  s = cfg.vision.image_size
  images = jax.random.uniform(jax.random.key(1), (2, s, s, 3), minval=-1)
  tokens = jnp.array([[cfg.bos_token_id, 5, 6, 7], [cfg.bos_token_id, 8, 9,
                                                    cfg.pad_token_id]])
  input_mask = tokens != cfg.pad_token_id
  input_mask = input_mask.at[:, 0].set(True)
  prefix = jax.jit(full_prefix, static_argnums=0)(
      vlm, params, images, tokens, input_mask, jnp.zeros_like(tokens))
  out = greedy_decode(vlm, params, prefix, max_new_tokens=args.max_new_tokens,
                      eos_id=cfg.eos_token_id, pad_id=cfg.pad_token_id)
  out = np.asarray(out)
  print(f"{args.variant}: {n_params:,} parameters, {cfg.num_image_tokens} "
        f"visual tokens; greedy ids {out.tolist()} "
        f"({time.perf_counter() - t0:.1f} s with compilation)")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
