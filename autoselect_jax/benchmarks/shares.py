"""The pruner's FLOP share at full depth, from the cost model alone.

  python -m autoselect_jax.benchmarks.shares [--variants paligemma-3b-224,...]
      [--widths 0,512,256,128] [--batch 1] [--n-text 32]

For each model variant (its full depth) and Scorer width W (0: the vision
width Dv, no projection), the Scorer's FLOPs (`cost.scorer`) over the full
model's prefill FLOPs (`cost.prefill` of N + T tokens) and over its time to
first token (`cost.ttft`: encoder, projector and prefill). What the
benchmark measures at reduced depth; here every layer counts. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import sys

from autoselect_jax.inference import cost

VARIANTS = ("paligemma-3b-224", "paligemma-3b-448", "paligemma-3b-896")


def shares(config, width: int, batch: int = 1, n_text: int = 32) -> dict:
  """{"n", "width", "scorer_gflops", "prefill_share", "ttft_share"} of one
  variant config and Scorer width (0: Dv)."""
  n, dv = config.num_image_tokens, config.vision.width
  sc = cost.scorer(batch, n, dv, width or None)
  prefill = cost.prefill(config.llm, batch, n + n_text, 4)
  ttft = cost.ttft(config, batch, n, n_text, 4)
  return {"n": n, "width": width or dv, "scorer_gflops": sc.flops / 1e9,
          "prefill_share": sc.flops / prefill.flops,
          "ttft_share": sc.flops / ttft.flops}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m autoselect_jax.benchmarks.shares",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--widths", default="0,512,256,128")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--n-text", type=int, default=32)
  args = p.parse_args(argv)
  from autoselect_jax.models.config import get_variant
  try:
    configs = [(v, get_variant(v)) for v in args.variants.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
  except ValueError as e:
    p.error(str(e))
  for w in widths:
    if w < 0 or w % 16:
      p.error(f"--widths: {w} must be 0 or a positive multiple of the "
              "Scorer's 16 heads")
  print("| variant | N | Scorer width | Scorer GFLOP | share of the full "
        "prefill | share of the full TTFT |")
  print("|---|---|---|---|---|---|")
  for name, config in configs:
    for w in widths:
      s = shares(config, w, args.batch, args.n_text)
      print(f"| {name} | {s['n']} | {s['width']} | {s['scorer_gflops']:.1f} "
            f"| {s['prefill_share']:.2%} | {s['ttft_share']:.2%} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
