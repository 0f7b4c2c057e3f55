"""Parameter count of the trainable Scorer + Denoiser for a VLM variant.

  python -m autoselect_jax.method.params_count --variant paligemma-3b-224

Shapes only (jax.eval_shape): nothing is allocated, the 3B VLM included.
"""

from __future__ import annotations

import argparse

from autoselect_jax.method.forward import count_params
from autoselect_jax.method.modules import Denoiser, Scorer

__all__ = ["main"]


def main(argv=None) -> dict[str, int]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--variant", default="paligemma-3b-224")
  p.add_argument("--scorer-layers", type=int, default=2)
  p.add_argument("--scorer-width", type=int, default=None)
  p.add_argument("--num-heads", type=int, default=16)
  p.add_argument("--mlp-ratio", type=float, default=4.0)
  a = p.parse_args(argv)
  from autoselect_jax.models import get_variant
  config = get_variant(a.variant)
  c = count_params(
      config,
      Scorer(num_layers=a.scorer_layers, width=a.scorer_width,
             num_heads=a.num_heads, mlp_ratio=a.mlp_ratio),
      Denoiser(num_heads=a.num_heads, mlp_ratio=a.mlp_ratio))
  print(f"variant {a.variant}: Dv={config.vision.width}, "
        f"N={config.vision.num_tokens}")
  for name in ("scorer", "denoiser", "total"):
    print(f"{name:>9}: {c[name]:>13,d}  ({100 * c[name] / c['vlm']:.3f}% of "
          "the VLM)")
  print(f"{'vlm':>9}: {c['vlm']:>13,d}")
  return c


if __name__ == "__main__":
  main()
