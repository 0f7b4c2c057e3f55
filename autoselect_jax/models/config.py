"""Model configurations: SigLIP vision encoder, Gemma decoder, PaliGemma.

Plain frozen dataclasses, serialisable to JSON (``to_dict`` / ``from_dict``), so
that a converted checkpoint folder carries its own architecture. Named variants
live in ``VARIANTS``; ``get_variant(name)`` returns one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  """SigLIP ViT without pooling head (PaliGemma's image encoder)."""
  image_size: int = 224
  patch_size: int = 14
  width: int = 1152
  depth: int = 27
  num_heads: int = 16
  mlp_dim: int = 4304
  layer_norm_eps: float = 1e-6

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return self.grid ** 2

  def validate(self) -> None:
    _positive(self, "image_size", "patch_size", "width", "depth", "num_heads",
              "mlp_dim")
    if self.image_size % self.patch_size:
      raise ValueError(f"SiglipConfig: image_size={self.image_size} is not a "
                       f"multiple of patch_size={self.patch_size}")
    if self.width % self.num_heads:
      raise ValueError(f"SiglipConfig: width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Gemma (v1) decoder: MHA/MQA/GQA, RoPE, RMSNorm (1 + w), GeGLU, tied embeddings."""
  vocab_size: int = 257216
  width: int = 2048
  depth: int = 18
  num_heads: int = 8
  num_kv_heads: int = 1
  head_dim: int = 256
  mlp_dim: int = 16384
  rms_norm_eps: float = 1e-6
  rope_base: float = 10_000.0

  def validate(self) -> None:
    _positive(self, "vocab_size", "width", "depth", "num_heads",
              "num_kv_heads", "head_dim", "mlp_dim")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"GemmaConfig: num_heads={self.num_heads} is not a "
                       f"multiple of num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"GemmaConfig: head_dim={self.head_dim} must be even "
                       "for RoPE")


@dataclasses.dataclass(frozen=True)
class PaliGemmaConfig:
  """SigLIP + linear projector + Gemma, and the special-token ids."""
  vision: SiglipConfig = SiglipConfig()
  llm: GemmaConfig = GemmaConfig()
  image_token_id: int = 257152
  bos_token_id: int = 2
  eos_token_id: int = 1
  pad_token_id: int = 0

  @property
  def num_image_tokens(self) -> int:
    return self.vision.num_tokens

  def validate(self) -> "PaliGemmaConfig":
    self.vision.validate()
    self.llm.validate()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
      value = getattr(self, name)
      if not 0 <= value < self.llm.vocab_size:
        raise ValueError(f"PaliGemmaConfig: {name}={value} outside the "
                         f"vocabulary [0, {self.llm.vocab_size})")
    return self

  def replace(self, **kw) -> "PaliGemmaConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "PaliGemmaConfig":
    d = dict(d)
    try:
      vision = SiglipConfig(**d.pop("vision", {}))
      llm = GemmaConfig(**d.pop("llm", {}))
      return cls(vision=vision, llm=llm, **d).validate()
    except TypeError as e:  # Unknown key: name it.
      raise ValueError(f"Bad PaliGemma config: {e}") from None


def _positive(cfg, *names):
  for name in names:
    if getattr(cfg, name) <= 0:
      raise ValueError(f"{type(cfg).__name__}: {name}={getattr(cfg, name)} "
                       "must be positive")


def _paligemma_3b(image_size: int) -> PaliGemmaConfig:
  return PaliGemmaConfig(vision=SiglipConfig(image_size=image_size))


def _tiny(num_kv_heads: int) -> PaliGemmaConfig:
  """Builds a random model in tests within seconds."""
  return PaliGemmaConfig(
      vision=SiglipConfig(image_size=32, patch_size=8, width=32, depth=2,
                          num_heads=4, mlp_dim=64),
      llm=GemmaConfig(vocab_size=320, width=32, depth=2, num_heads=4,
                      num_kv_heads=num_kv_heads, head_dim=8, mlp_dim=64),
      image_token_id=319, bos_token_id=2, eos_token_id=1, pad_token_id=0)



VARIANTS: dict[str, PaliGemmaConfig] = {
    "paligemma-3b-224": _paligemma_3b(224),
    "paligemma-3b-448": _paligemma_3b(448),
    "paligemma-3b-896": _paligemma_3b(896),
    "tiny": _tiny(num_kv_heads=1),
    "tiny-gqa": _tiny(num_kv_heads=2),
    # The embedded demo's frozen VLM (autoselect_jax/demo): 64 px shapes
    # images, 64 visual tokens, the demo tokenizer's 102 ids (<image> last).
    # One encoder block and a 2-layer decoder with 4 KV heads: it reads the
    # caption from the object tokens, so it keeps its captions when the
    # background is pruned (docs/demo_task.md).
    "demo": PaliGemmaConfig(
        vision=SiglipConfig(image_size=64, patch_size=8, width=128, depth=1,
                            num_heads=4, mlp_dim=256),
        llm=GemmaConfig(vocab_size=102, width=128, depth=2, num_heads=4,
                        num_kv_heads=4, head_dim=32, mlp_dim=256),
        image_token_id=101, bos_token_id=2, eos_token_id=1, pad_token_id=0),
}

# The first demo VLM (2 encoder blocks, a 1-layer decoder with 1 KV head):
# it finds objects through the background and breaks when the background is
# pruned; kept to reproduce that diagnosis (docs/demo_task.md).
VARIANTS["demo-v1"] = VARIANTS["demo"].replace(
    vision=dataclasses.replace(VARIANTS["demo"].vision, depth=2),
    llm=dataclasses.replace(VARIANTS["demo"].llm, depth=1, num_kv_heads=1))


def get_variant(name: str) -> PaliGemmaConfig:
  if name not in VARIANTS:
    raise ValueError(f"Unknown model variant {name!r}; known: "
                     f"{', '.join(sorted(VARIANTS))}")
  return VARIANTS[name].validate()
