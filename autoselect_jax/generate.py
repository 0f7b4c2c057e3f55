"""Answers prompts about images greedily with a converted checkpoint.

  python -m autoselect_jax.generate --checkpoint DIR --image FILE \\
      --prompt "caption en" --max-new-tokens 20 [--json]

Several --image / --prompt pairs run as one batch; one prompt is shared by all
images and one image by all prompts. With --json each answer is printed as one
JSON object per line: {"image", "prompt", "ids", "text"}.
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
  parser.add_argument("--image", action="append", required=True)
  parser.add_argument("--prompt", action="append", required=True)
  parser.add_argument("--max-new-tokens", type=int, default=32)
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

  from autoselect_jax.inference.pipeline import Pipeline  # Heavy imports.
  try:
    pipe = Pipeline.from_checkpoint(args.checkpoint, args.dtype)
    results = pipe.generate(images, prompts,
                            max_new_tokens=args.max_new_tokens)
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
