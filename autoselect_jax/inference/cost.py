"""Analytic FLOP and byte model of the LLM prefill, the SigLIP encoder, the
projector and the Scorer, and of their sum, time to first token: rooflines.

FLOPs count matmuls only, 2 per multiply-add; norms, RoPE, softmax, GELU and
top-K are elementwise or sort work, below 1% of a Gemma layer's matmuls, and
are left out. Attention is counted dense, as the project computes it: every
query against every key of the prefix (S = L), the prefix-LM mask applied by
`where`, no causal skipping.

Bytes are the HBM / DRAM traffic of an ideal fused implementation:

  weights     every weight of the component read once (norm scales included);
  KV written  this prefill's keys and values, L slots (no cache padding);
  activations every per-token intermediate written once and read once: the
              block's input x (D), q, k, v and the attention output
              ((2 H + 2 Hkv) E), the MLP gate and up (2 F). Attention scores
              are not counted (a fused attention kernel keeps them on chip).

A component's roofline time is max(FLOPs / peak FLOP/s, bytes / bandwidth);
a prefill's is the sum over its components, the `depth` identical decoder
layers and the head (final norm + last-token logits through the tied
embedding, which reads the whole (V, D) table). Summing per component rather
than taking one max over the whole prefill lets a compute-bound layer stack
and a bandwidth-bound head each cost what they cost.

Axes: B batch, L prefix length (K visual + T text), D width, H query heads,
Hkv KV heads, E head dim, F MLP width, V vocabulary, N visual tokens,
W Scorer width.
"""

from __future__ import annotations

import dataclasses

from autoselect_jax.models.config import GemmaConfig, SiglipConfig

__all__ = ["Cost", "PrefillCost", "encoder", "llm_layer", "llm_head",
           "prefill", "projector", "scorer", "Total", "ttft"]

_F32 = 4  # Logits are float32 whatever the compute dtype.


@dataclasses.dataclass(frozen=True)
class Cost:
  """FLOPs and bytes moved by one component."""
  flops: float
  bytes: float

  def time(self, peak_flops: float, bandwidth: float) -> float:
    """Roofline seconds: max(FLOPs / peak, bytes / bandwidth)."""
    return max(self.flops / peak_flops, self.bytes / bandwidth)


@dataclasses.dataclass(frozen=True)
class PrefillCost:
  """`depth` identical decoder layers and the head."""
  layer: Cost
  depth: int
  head: Cost

  @property
  def flops(self) -> float:
    return self.depth * self.layer.flops + self.head.flops

  @property
  def bytes(self) -> float:
    return self.depth * self.layer.bytes + self.head.bytes

  def time(self, peak_flops: float, bandwidth: float) -> float:
    """Roofline seconds, summed per component (see the module docstring)."""
    return (self.depth * self.layer.time(peak_flops, bandwidth)
            + self.head.time(peak_flops, bandwidth))


def llm_layer(c: GemmaConfig, batch: int, length: int, itemsize: int) -> Cost:
  """One Gemma decoder layer over a prefix of `length` tokens."""
  b, l, d, f, e = batch, length, c.width, c.mlp_dim, c.head_dim
  h, hkv = c.num_heads, c.num_kv_heads
  proj = d * e * (2 * h + 2 * hkv)   # q, out (H heads); k, v (Hkv heads)
  mlp = 3 * d * f                    # gate, up (D -> F), down (F -> D)
  flops = (2 * b * l * (proj + mlp)  # token-wise matmuls
           + 4 * b * h * l * l * e)  # q k^T and probs v, dense over L keys
  weights = (proj + mlp + 2 * d) * itemsize  # + two RMSNorm scales
  kv = 2 * b * l * hkv * e * itemsize
  acts = 2 * b * l * (d + (2 * h + 2 * hkv) * e + 2 * f) * itemsize
  return Cost(float(flops), float(weights + kv + acts))


def llm_head(c: GemmaConfig, batch: int, itemsize: int) -> Cost:
  """Final RMSNorm and the last token's logits, (B, D) x (V, D) -> (B, V)."""
  b, d, v = batch, c.width, c.vocab_size
  flops = 2 * b * d * v
  nbytes = (v * d + d + b * d) * itemsize + b * v * _F32
  return Cost(float(flops), float(nbytes))


def prefill(c: GemmaConfig, batch: int, length: int,
            itemsize: int) -> PrefillCost:
  """`decode.prefill` of a (batch, length) prefix: the layers and the head."""
  if batch < 1 or length < 1:
    raise ValueError(f"need batch >= 1 and length >= 1, got {batch}, {length}")
  return PrefillCost(llm_layer(c, batch, length, itemsize), c.depth,
                     llm_head(c, batch, itemsize))


def scorer(batch: int, n: int, in_width: int, width: int | None = None,
           num_layers: int = 2, mlp_ratio: float = 4.0,
           itemsize: int = 4) -> Cost:
  """`method.Scorer` on (B, N, Dv) features (see method/modules.py).

  Per pre-LN block: q, k, v, out projections (4 W^2 per token), dense
  attention (4 N W per token), MLP W -> rW -> W (2 r W^2 per token); then
  the bias-free head W -> 1, and an input projection Dv -> W when W != Dv.
  Bytes: weights once, plus each block's input and q, k, v, out and MLP
  hidden written and read once, like `llm_layer`.
  """
  w = in_width if width is None else width
  f = max(1, int(round(mlp_ratio * w)))
  tokens = batch * n
  block_flops = 2 * tokens * (4 * w * w + 2 * w * f) + 4 * batch * n * n * w
  flops = num_layers * block_flops + 2 * tokens * w
  weights = num_layers * (4 * w * w + 2 * w * f + 4 * w + f + 5 * w) + 3 * w
  acts = num_layers * 2 * tokens * (5 * w + f)
  if w != in_width:
    flops += 2 * tokens * in_width * w
    weights += in_width * w + w
  return Cost(float(flops), float((weights + acts + tokens * in_width)
                                  * itemsize))


def encoder(c: SiglipConfig, batch: int, itemsize: int) -> PrefillCost:
  """`vlm.encode_image`: the patch embedding (as `head`) and `depth` SigLIP
  blocks over N tokens of width Dv (MLP width F): per token q, k, v, out
  (4 Dv^2), MLP (2 Dv F), dense attention over N keys (4 N Dv); bytes as
  `llm_layer` (weights once, each block's input, q, k, v, out and MLP hidden
  written and read once). The final LayerNorm is left out like norms."""
  b, n, d, f, p = batch, c.num_tokens, c.width, c.mlp_dim, c.patch_size
  tokens = b * n
  flops = 2 * tokens * (4 * d * d + 2 * d * f) + 4 * b * n * n * d
  weights = 4 * d * d + 2 * d * f + 9 * d + f  # + biases, two LayerNorms
  acts = 2 * tokens * (5 * d + f)
  layer = Cost(float(flops), float((weights + acts) * itemsize))
  patch = p * p * 3
  embed = Cost(float(2 * tokens * patch * d),
               float((patch * d + d + tokens * (patch + 2 * d)) * itemsize))
  return PrefillCost(layer, c.depth, embed)


def projector(vision_width: int, width: int, batch: int, kept: int,
              itemsize: int) -> Cost:
  """PaliGemma's linear projector on the K kept tokens: Dv -> D."""
  flops = 2 * batch * kept * vision_width * width
  nbytes = (vision_width * width + width
            + batch * kept * (vision_width + width)) * itemsize
  return Cost(float(flops), float(nbytes))


@dataclasses.dataclass(frozen=True)
class Total:
  """Components run one after the other (Cost or PrefillCost each)."""
  parts: tuple

  @property
  def flops(self) -> float:
    return sum(part.flops for part in self.parts)

  @property
  def bytes(self) -> float:
    return sum(part.bytes for part in self.parts)

  def time(self, peak_flops: float, bandwidth: float) -> float:
    """Roofline seconds, summed per component."""
    return sum(part.time(peak_flops, bandwidth) for part in self.parts)


def ttft(config, batch: int, kept: int, n_text: int, itemsize: int,
         scorer_cost: Cost | None = None) -> Total:
  """Time to first token of a `models.VLM` config keeping `kept` visual
  tokens: the encoder, the pruner (`scorer_cost`; None for the full model,
  kept = N), the projector on the kept tokens and the prefill of K + T
  tokens, as `prune.prefill_images` runs them."""
  parts = (encoder(config.vision, batch, itemsize),
           projector(config.vision.width, config.llm.width, batch, kept,
                     itemsize),
           prefill(config.llm, batch, kept + n_text, itemsize))
  return Total(parts + ((scorer_cost,) if scorer_cost is not None else ()))
