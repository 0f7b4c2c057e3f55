"""Answers prompts about images with a converted checkpoint, pruned or not.

  python -m autoselect_jax.generate --checkpoint DIR [--scorer DIR --k K] \\
      [--method NAME] --image FILE [--image FILE ...] --prompt "caption en" \\
      --max-new-tokens 20 [--temperature T --top-p P --seed S] [--json]

With --scorer (a folder written by autoselect_jax.train, WORKDIR/scorer) and
--k K < N, the Scorer picks K of the N visual tokens and the LLM prefills only
those; without --scorer, or with K = N, it is the full model. --method picks
a training-free baseline instead (random, grid, norm, attention, divprune,
visionzip, fastv; `inference/pruners.py`). Greedy unless
--temperature > 0. Several --image / --prompt pairs run as one batch; one
prompt is shared by all images and one image by all prompts. With --json each
answer is one JSON object per line: {"image", "prompt", "ids", "text",
"kept"} (kept: the visual token indices the LLM saw).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m autoselect_jax.generate", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="folder written by autoselect_jax.convert")
  parser.add_argument("--scorer", default=None,
                      help="exported Scorer folder (WORKDIR/scorer)")
  parser.add_argument("--k", type=int, default=None,
                      help="visual tokens to keep (default: all N)")
  parser.add_argument("--method", default=None,
                      help="autoselect (default with --scorer), full (default "
                      "without), random, grid, norm, attention, divprune, "
                      "visionzip, fastv")
  parser.add_argument("--fastv-layer", type=int, default=2,
                      help="FastV prunes after this decoder layer")
  parser.add_argument("--policy", default=None, choices=("original", "packed"),
                      help="position ids of kept tokens (default: the "
                      "Scorer's training policy)")
  parser.add_argument("--image", action="append", required=True)
  parser.add_argument("--prompt", action="append", required=True)
  parser.add_argument("--max-new-tokens", type=int, default=32)
  parser.add_argument("--temperature", type=float, default=0.0,
                      help="0 = greedy (default)")
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds sampling and the random baseline")
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--json", action="store_true",
                      help="one JSON object per answer")
  args = parser.parse_args(argv)
  images, prompts = args.image, args.prompt
  if len(images) != len(prompts):
    if len(prompts) == 1:
      prompts = prompts * len(images)
    elif len(images) == 1:
      images = images * len(prompts)
    else:
      parser.error(f"{len(images)} --image but {len(prompts)} --prompt: give "
                   "as many of each, or one of either")
  if args.max_new_tokens <= 0:
    parser.error(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
  if args.k is not None and args.k < 1:
    parser.error(f"--k must be positive, got {args.k}")
  if args.temperature < 0:
    parser.error(f"--temperature must be >= 0, got {args.temperature}")
  if not 0 < args.top_p <= 1:
    parser.error(f"--top-p must be in (0, 1], got {args.top_p}")

  from autoselect_jax.inference.pipeline import Pipeline  # Heavy imports.
  try:
    pipe = Pipeline.from_checkpoint(args.checkpoint, args.dtype,
                                    scorer_dir=args.scorer, policy=args.policy,
                                    method=args.method, seed=args.seed,
                                    fastv_layer=args.fastv_layer)
    results = pipe.generate(images, prompts, k=args.k,
                            max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f"generate: error: {e}", file=sys.stderr)
    return 2
  for image, prompt, r in zip(images, prompts, results):
    if args.json:
      print(json.dumps({"image": image, "prompt": prompt, **r}))
    else:
      print(f"{image} | {prompt} -> {r['text']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
