"""big_vision PaliGemma `.npz` -> this project's parameter tree.

The parameter tree of this project uses big_vision's names (see
models/siglip.py and models/gemma.py), so the mapping is structural:
strip an optional `params/` prefix, split keys on '/', and stack unscanned
checkpoints (`encoderblock_0`, `layers_0`, ...) into the scanned layout. The
architecture is read off the array shapes. `np.load(allow_pickle=False)`:
object arrays are refused rather than unpickled.
"""

from __future__ import annotations

import re
import zipfile
from typing import Mapping

import numpy as np

from autoselect_jax.checkpoints.tree import ConversionError, check_tree, unflatten
from autoselect_jax.models.config import GemmaConfig, PaliGemmaConfig, SiglipConfig

_UNSCANNED = re.compile(r"^(.*/)(encoderblock|layers)_(\d+)/(.*)$")


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Flat {'img/embedding/kernel': array, ...}; unscanned blocks stacked."""
  try:
    with np.load(path, allow_pickle=False) as z:
      flat = {k.removeprefix("params/"): z[k] for k in z.files}
  except FileNotFoundError:
    raise FileNotFoundError(f"big_vision checkpoint {path} does not exist") from None
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise ConversionError(f"{path} is not a readable .npz file: {e}") from None
  return _stack_unscanned(flat)


def _stack_unscanned(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  groups: dict[str, dict[int, np.ndarray]] = {}
  out = {}
  for key, value in flat.items():
    m = _UNSCANNED.match(key)
    if m:
      groups.setdefault(m[1] + m[2] + "/" + m[4], {})[int(m[3])] = value
    else:
      out[key] = value
  for key, layers in groups.items():
    if sorted(layers) != list(range(len(layers))):
      raise ConversionError(f"{key}: layer indices {sorted(layers)} are not "
                            "0..L-1")
    if key in out:
      raise ConversionError(f"{key} is stored both scanned and unscanned")
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
  """Reads the architecture off the shapes of a big_vision PaliGemma."""
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
