"""Pictures of what each pruner keeps, one column per method.

  python -m autoselect_jax.visualize --checkpoint DIR [--scorer DIR] \\
      --image cat.jpg [--image dog.jpg ...] --method autoselect,random,divprune \\
      --k 64 --out selections.png

For every image (a row) and method (a column): the image with the kept
patches in full colour and the dropped ones greyed, and under it the
method's per-token scores as a heat map ("no scores" for grid, DivPrune and
FastV). Every method runs through the same selection code as generation and
evaluation (`inference.pruners`); FastV, which selects inside the LLM from the
prompt, runs a generation with `--prompt` to get its kept tokens. The PNG is
written atomically (`figures.pictures`).
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np


def selection_panels(pipe, images, methods, k: int, *, scorer_dir=None,
                     seed: int = 0, fastv_layer: int = 2,
                     prompt: str = "caption en"):
  """[[Panel per method] per image] for `k` kept tokens with `pipe`'s model.

  images: PIL images, uint8 arrays or paths (as `Pipeline.generate`).
  """
  from autoselect_jax.figures.pictures import Panel
  columns = []
  for m in methods:
    p = pipe.with_method(m, scorer_dir=scorer_dir if m == "autoselect"
                         else None, seed=seed, fastv_layer=fastv_layer)
    if m == "fastv":
      chosen = [{"kept": r["kept"], "scores": None} for r in p.generate(
          images, [prompt] * len(images), k=k, max_new_tokens=1)]
    else:
      chosen = p.select(images, k)
    columns.append([Panel(m, np.asarray(c["kept"]), None if c["scores"] is None
                          else np.asarray(c["scores"], np.float32))
                    for c in chosen])
  return [list(row) for row in zip(*columns)]


def _display_image(path: str) -> np.ndarray:
  from PIL import Image
  try:
    with Image.open(path) as f:
      return np.asarray(f.convert("RGB"), np.uint8)
  except FileNotFoundError:
    raise FileNotFoundError(f"image {path} does not exist") from None
  except OSError as e:
    raise ValueError(f"cannot read image {path}: {e}") from None


def main(argv=None) -> int:
  from autoselect_jax.inference.pruners import METHODS
  parser = argparse.ArgumentParser(
      prog="python -m autoselect_jax.visualize", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="folder written by autoselect_jax.convert")
  parser.add_argument("--scorer", default=None,
                      help="exported Scorer folder, for method autoselect")
  parser.add_argument("--image", action="append", required=True)
  parser.add_argument("--method", required=True,
                      help=f"comma-separated, from {', '.join(METHODS)}")
  parser.add_argument("--k", type=int, required=True)
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--prompt", default="caption en",
                      help="FastV's prompt (it selects by the prompt)")
  parser.add_argument("--seed", type=int, default=0,
                      help="the random baseline's seed")
  parser.add_argument("--fastv-layer", type=int, default=2)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  args = parser.parse_args(argv)
  methods = [m.strip() for m in args.method.split(",") if m.strip()]
  bad = [m for m in methods if m not in METHODS]
  if not methods or bad:
    parser.error(f"--method: unknown {bad or 'empty list'}; choose from "
                 f"{', '.join(METHODS)}")
  if "autoselect" in methods and not args.scorer:
    parser.error("--method autoselect needs --scorer DIR")

  from autoselect_jax.figures.pictures import draw_grid_of_examples
  from autoselect_jax.inference.pipeline import Pipeline
  try:
    images = [_display_image(p) for p in args.image]
    pipe = Pipeline.from_checkpoint(args.checkpoint, args.dtype)
    rows = selection_panels(pipe, images, methods, args.k,
                            scorer_dir=args.scorer, seed=args.seed,
                            fastv_layer=args.fastv_layer, prompt=args.prompt)
    n = pipe.vlm.num_visual_tokens
    path = draw_grid_of_examples(
        images, math.isqrt(n), rows, args.out,
        title=f"K = {args.k} of {n} visual tokens", labels=args.image)
  except (FileNotFoundError, ValueError) as e:
    print(f"visualize: error: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
