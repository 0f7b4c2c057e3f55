"""big_vision PaliGemma `.npz` -> this project's parameter tree.

The parameter tree of this project uses big_vision's names (see
models/siglip.py and models/gemma.py), so the mapping is structural. What
big_vision writes (google-research/big_vision, models/proj/paligemma/):
- `paligemma.Model` names its towers `img` (models/vit.py) and `llm`
  (gemma_bv.py wraps ppp/gemma.py's Model without adding a level), so keys
  read `img/embedding/kernel`, `img/head/kernel` (the projector),
  `llm/embedder/input_embedding`, `llm/final_norm/scale`, ...
- Scanned layers (`scan=True`, the published configs) are one subtree with a
  leading L axis: `img/Transformer/encoderblock/...`, `llm/layers/...`.
- Unscanned ViT blocks are modules `encoderblock_{i}`
  (`img/Transformer/encoderblock_0/...`); unscanned Gemma blocks are bound
  to the scope `layers/{i}` (`llm/layers/0/attn/...`). Remat does not
  change names. They are stacked into the scanned layout here.
- Files hold the `params` subtree (`params/img/...`, as the published ones),
  or the params alone; other subtrees (optimizer state) are ignored.
- bfloat16 arrays come back from np.load as 2-byte void (`|V2`, as in the
  published `*.bf16.npz`); they are viewed as bfloat16 again.
The architecture is read off the array shapes. `np.load(allow_pickle=False)`:
object arrays are refused rather than unpickled.
"""

from __future__ import annotations

import re
import zipfile
from typing import Mapping

import ml_dtypes
import numpy as np

from autoselect_jax.checkpoints.tree import ConversionError, check_tree, unflatten
from autoselect_jax.models.config import GemmaConfig, PaliGemmaConfig, SiglipConfig

# Unscanned block names -> (scanned subtree, layer index, rest of the key).
_UNSCANNED = (re.compile(r"^(img/Transformer/encoderblock)_(\d+)/(.+)$"),
              re.compile(r"^(llm/layers)/(\d+)/(.+)$"))


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Flat {'img/embedding/kernel': array, ...}; unscanned blocks stacked."""
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k: _recover_bfloat16(k, z[k]) for k in z.files}
  except FileNotFoundError:
    raise FileNotFoundError(f"big_vision checkpoint {path} does not exist") from None
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise ConversionError(f"{path} is not a readable .npz file: {e}") from None
  if any(k.startswith("params/") for k in flat):
    flat = {k.removeprefix("params/"): v for k, v in flat.items()
            if k.startswith("params/")}
  return _stack_unscanned(flat)


def _recover_bfloat16(key: str, a: np.ndarray) -> np.ndarray:
  if a.dtype.kind != "V":
    return a
  if a.dtype.itemsize != 2 or a.dtype.fields:
    raise ConversionError(f"array {key!r} has dtype {a.dtype}: not a number")
  return a.view(ml_dtypes.bfloat16)


def _stack_unscanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  groups: dict[str, dict[int, np.ndarray]] = {}
  out = {}
  for key, value in flat.items():
    m = next(filter(None, (p.match(key) for p in _UNSCANNED)), None)
    if m:
      groups.setdefault(f"{m[1]}/{m[3]}", {})[int(m[2])] = value
    else:
      out[key] = value
  for key, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ConversionError(f"{key}: layer indices {sorted(layers)} are not "
                            "0..L-1")
    if key in out:
      raise ConversionError(f"{key} is stored both scanned and unscanned")
    shapes = {layers[i].shape for i in layers}
    if len(shapes) > 1:
      raise ConversionError(f"{key}: layers have different shapes {shapes}")
    out[key] = np.stack([layers[i] for i in range(len(layers))])
  return out


def _shape(flat, key, ndim):
  if key not in flat:
    raise ConversionError(f"missing array {key!r}")
  shape = flat[key].shape
  if len(shape) != ndim:
    raise ConversionError(f"array {key!r} has shape {shape}, expected {ndim} "
                          "dimensions")
  return shape


def config_from_big_vision(flat: Mapping[str, np.ndarray], *, bos_token_id=2,
                           eos_token_id=1, pad_token_id=0,
                           image_token_id=257152) -> PaliGemmaConfig:
  """Reads the architecture off the shapes of a big_vision PaliGemma.

  img/embedding/kernel (P, P, 3, Dv); img/pos_embedding (1, N, Dv);
  encoderblock query/kernel (L, Dv, heads, Dv/heads), Dense_0 (L, Dv, M);
  llm/embedder/input_embedding (V, D); llm/layers: qkv_einsum/w
  (L, 3, H, D, E) when H = KH, else q_einsum/w (L, H, D, E) and kv_einsum/w
  (L, 2, KH, D, E); mlp/gating_einsum (L, 2, D, F), mlp/linear (L, F, D).
  """
  if "llm/layers/post_attention_norm/scale" in flat:
    raise ConversionError("llm/layers/post_attention_norm is a Gemma 2 "
                          "(PaliGemma 2) block: only Gemma v1 is supported")
  p, _, _, dv = _shape(flat, "img/embedding/kernel", 4)
  _, n, _ = _shape(flat, "img/pos_embedding", 3)
  blk = "img/Transformer/encoderblock/"
  depth, _, heads, _ = _shape(flat, blk + "MultiHeadDotProductAttention_0/"
                              "query/kernel", 4)
  mlp = _shape(flat, blk + "MlpBlock_0/Dense_0/kernel", 3)[2]
  grid = int(round(n ** 0.5))
  if grid * grid != n:
    raise ConversionError(f"img/pos_embedding holds {n} positions, not a "
                          "square grid")
  vocab, d = _shape(flat, "llm/embedder/input_embedding", 2)
  if "llm/layers/attn/qkv_einsum/w" in flat:
    ldepth, _, h, _, e = _shape(flat, "llm/layers/attn/qkv_einsum/w", 5)
    kh = h
  else:
    ldepth, h, _, e = _shape(flat, "llm/layers/attn/q_einsum/w", 4)
    kh = _shape(flat, "llm/layers/attn/kv_einsum/w", 5)[2]
  f = _shape(flat, "llm/layers/mlp/linear", 3)[1]
  return PaliGemmaConfig(
      vision=SiglipConfig(image_size=grid * p, patch_size=p, width=dv,
                          depth=depth, num_heads=heads, mlp_dim=mlp),
      llm=GemmaConfig(vocab_size=vocab, width=d, depth=ldepth, num_heads=h,
                      num_kv_heads=kh, head_dim=e, mlp_dim=f),
      image_token_id=image_token_id, bos_token_id=bos_token_id,
      eos_token_id=eos_token_id, pad_token_id=pad_token_id).validate()


def big_vision_to_params(flat: Mapping[str, np.ndarray],
                         config: PaliGemmaConfig) -> dict:
  params = unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})
  check_tree(params, config)
  return params
