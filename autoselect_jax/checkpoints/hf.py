"""HF PaliGemma (safetensors) -> this project's parameter tree.

Accepts every key spelling seen in the wild: the published checkpoints
(`vision_tower.vision_model.*`, `multi_modal_projector.*`,
`language_model.model.*`, optional `language_model.lm_head.weight`), files
written by transformers 5.x `save_pretrained` (`vision_tower.*` without
`vision_model`) and the 5.x in-memory names (`model.vision_tower.*`,
`model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.weight`).
The output head is tied to the embedding; a stored lm_head must equal it.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
import numpy as np

from autoselect_jax.checkpoints.tree import ConversionError, check_tree
from autoselect_jax.models.config import GemmaConfig, PaliGemmaConfig, SiglipConfig

_PREFIXES = (  # (spelling, canonical prefix)
    ("model.vision_tower.vision_model.", "vision."),
    ("vision_tower.vision_model.", "vision."),
    ("model.vision_tower.", "vision."),  # transformers 5.x, no vision_model.
    ("vision_tower.", "vision."),
    ("model.multi_modal_projector.", "projector."),
    ("multi_modal_projector.", "projector."),
    ("model.language_model.", "lm."),
    ("language_model.model.", "lm."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
)


def canonical_keys(names) -> dict[str, str]:
  """Maps each canonical key ('vision.*', 'projector.*', 'lm.*', 'lm_head.*')
  to the key spelled in the file."""
  out = {}
  for name in names:
    for prefix, canon in _PREFIXES:
      if name.startswith(prefix):
        key = canon + name[len(prefix):]
        if key in out:
          raise ConversionError(f"both {out[key]!r} and {name!r} map to {key!r}")
        out[key] = name
        break
    else:
      raise ConversionError(f"unexpected tensor {name!r}: not a PaliGemma key")
  return out


def special_token_ids(hf: Mapping, generation: Mapping) -> dict[str, int]:
  """bos/eos/pad ids as HF `generate` resolves them.

  Per id, the first that is set of: `generation_config.json`, the top level
  of `config.json`, its `text_config` (GenerationConfig.from_model_config
  falls back to the text config only for ids the top level leaves unset).
  One difference: HF uses generation_config.json alone when the file exists,
  while an id it lacks is taken from config.json here. An eos list (HF stops
  on any of them) keeps its first id, since the model config holds one.
  """
  text = hf.get("text_config") or {}
  ids = {}
  for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
    for level in (generation, hf, text):
      value = level.get(name)
      if isinstance(value, list):
        value = value[0] if value else None
      if value is not None:
        ids[name] = int(value)
        break
  return ids


def config_from_hf(hf: Mapping, generation: Mapping | None = None
                   ) -> PaliGemmaConfig:
  """PaliGemmaConfig from an HF `config.json` dict and, if the folder has one,
  its `generation_config.json` dict (missing fields: HF defaults)."""
  v, t = hf.get("vision_config", {}), hf.get("text_config", {})
  if hf.get("model_type", "paligemma") != "paligemma":
    raise ConversionError(f"config.json has model_type={hf.get('model_type')!r}"
                          ", expected 'paligemma'")
  if v.get("vision_use_head", False):
    raise ConversionError("vision_use_head=True is not PaliGemma's encoder")
  if t.get("model_type", "gemma") != "gemma":
    raise ConversionError(f"text_config.model_type={t.get('model_type')!r}: "
                          "only Gemma (v1) decoders are supported so far")
  heads = t.get("num_attention_heads", 8)
  width = t.get("hidden_size", 2048)
  rope = t.get("rope_parameters") or {}
  vocab = t.get("vocab_size", hf.get("vocab_size", 257152))
  ids = special_token_ids(hf, generation or {})
  return PaliGemmaConfig(
      vision=SiglipConfig(
          image_size=v.get("image_size", 224),
          patch_size=v.get("patch_size", 14),
          width=v.get("hidden_size", 1152),
          depth=v.get("num_hidden_layers", 27),
          num_heads=v.get("num_attention_heads", 16),
          mlp_dim=v.get("intermediate_size", 4096),
          layer_norm_eps=v.get("layer_norm_eps", 1e-6)),
      llm=GemmaConfig(
          vocab_size=vocab, width=width,
          depth=t.get("num_hidden_layers", 18),
          num_heads=heads,
          num_kv_heads=t.get("num_key_value_heads", heads),
          head_dim=t.get("head_dim") or width // heads,
          mlp_dim=t.get("intermediate_size", 16384),
          rms_norm_eps=t.get("rms_norm_eps", 1e-6),
          rope_base=float(rope.get("rope_theta", t.get("rope_theta", 10000.0)))),
      image_token_id=hf.get("image_token_id", hf.get("image_token_index",
                                                     257152)),
      **ids).validate()


def read_hf_config(folder: str) -> PaliGemmaConfig:
  """From `folder/config.json` and, if present, `generation_config.json`."""
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: not an HF model folder")
  gen_path = os.path.join(folder, "generation_config.json")
  return config_from_hf(_read_json(path), _read_json(gen_path)
                        if os.path.exists(gen_path) else None)


def _read_json(path: str) -> dict:
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f"{path} is not valid JSON: {e}") from None


class _Source:
  """Fetches canonical keys with shape checks and remembers what was used."""

  def __init__(self, tensors: Mapping[str, np.ndarray]):
    self.tensors = tensors
    self.keys = canonical_keys(tensors.keys())
    self.used: set[str] = set()

  def __call__(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in self.keys:
      raise ConversionError(f"missing tensor {key!r} (any accepted spelling, "
                            f"e.g. {_spell(key)!r}), expected shape {shape}")
    name = self.keys[key]
    x = self.tensors[name]
    if tuple(x.shape) != tuple(shape):
      raise ConversionError(f"tensor {name!r} has shape {tuple(x.shape)}, "
                            f"expected {tuple(shape)}")
    self.used.add(key)
    return np.asarray(x, dtype=np.float32)


def _spell(key: str) -> str:
  for prefix, canon in _PREFIXES[1:]:
    if key.startswith(canon) and not prefix.startswith("model."):
      return prefix + key[len(canon):]
  return key


def _stack_layers(trees: list[dict]) -> dict:
  """Per-layer trees -> one tree with a leading L axis (the scanned layout)."""
  return jax.tree.map(lambda *layers: np.stack(layers), *trees)


def hf_to_params(tensors: Mapping[str, np.ndarray],
                 config: PaliGemmaConfig) -> dict:
  """Builds the parameter tree (float32 numpy) from HF tensors."""
  get = _Source(tensors)
  vc, lc = config.vision, config.llm
  dv, nh = vc.width, vc.num_heads
  e = dv // nh
  p, n = vc.patch_size, vc.num_tokens

  def vblock(i):
    pre = f"vision.encoder.layers.{i}."
    def proj(name):
      w = get(pre + f"self_attn.{name}.weight", (dv, dv))
      b = get(pre + f"self_attn.{name}.bias", (dv,))
      return {"kernel": w.T.reshape(dv, nh, e), "bias": b.reshape(nh, e)}
    return {
        "LayerNorm_0": {"scale": get(pre + "layer_norm1.weight", (dv,)),
                        "bias": get(pre + "layer_norm1.bias", (dv,))},
        "LayerNorm_1": {"scale": get(pre + "layer_norm2.weight", (dv,)),
                        "bias": get(pre + "layer_norm2.bias", (dv,))},
        "MultiHeadDotProductAttention_0": {
            "query": proj("q_proj"), "key": proj("k_proj"),
            "value": proj("v_proj"),
            "out": {"kernel": get(pre + "self_attn.out_proj.weight",
                                  (dv, dv)).T.reshape(nh, e, dv),
                    "bias": get(pre + "self_attn.out_proj.bias", (dv,))}},
        "MlpBlock_0": {
            "Dense_0": {"kernel": get(pre + "mlp.fc1.weight",
                                      (vc.mlp_dim, dv)).T,
                        "bias": get(pre + "mlp.fc1.bias", (vc.mlp_dim,))},
            "Dense_1": {"kernel": get(pre + "mlp.fc2.weight",
                                      (dv, vc.mlp_dim)).T,
                        "bias": get(pre + "mlp.fc2.bias", (dv,))}},
    }

  vblocks = [vblock(i) for i in range(vc.depth)]
  img = {
      "embedding": {
          "kernel": get("vision.embeddings.patch_embedding.weight",
                        (dv, 3, p, p)).transpose(2, 3, 1, 0),
          "bias": get("vision.embeddings.patch_embedding.bias", (dv,))},
      "pos_embedding": get("vision.embeddings.position_embedding.weight",
                           (n, dv))[None],
      "Transformer": {
          "encoderblock": _stack_layers(vblocks),
          "encoder_norm": {"scale": get("vision.post_layernorm.weight", (dv,)),
                           "bias": get("vision.post_layernorm.bias", (dv,))}},
      "head": {"kernel": get("projector.linear.weight", (lc.width, dv)).T,
               "bias": get("projector.linear.bias", (lc.width,))},
  }

  d, h, kh, hd, f = lc.width, lc.num_heads, lc.num_kv_heads, lc.head_dim, lc.mlp_dim

  def lblock(i):
    pre = f"lm.layers.{i}."
    q = get(pre + "self_attn.q_proj.weight", (h * hd, d)).reshape(h, hd, d)
    k = get(pre + "self_attn.k_proj.weight", (kh * hd, d)).reshape(kh, hd, d)
    v = get(pre + "self_attn.v_proj.weight", (kh * hd, d)).reshape(kh, hd, d)
    o = get(pre + "self_attn.o_proj.weight", (d, h * hd)).reshape(d, h, hd)
    to_hde = lambda w: w.transpose(0, 2, 1)  # (H, E, D) -> (H, D, E)
    if h == kh:
      attn = {"qkv_einsum": {"w": np.stack([to_hde(q), to_hde(k), to_hde(v)])}}
    else:
      attn = {"q_einsum": {"w": to_hde(q)},
              "kv_einsum": {"w": np.stack([to_hde(k), to_hde(v)])}}
    attn["attn_vec_einsum"] = {"w": o.transpose(1, 2, 0)}
    return {
        "pre_attention_norm": {"scale": get(pre + "input_layernorm.weight",
                                            (d,))},
        "pre_ffw_norm": {"scale": get(pre + "post_attention_layernorm.weight",
                                      (d,))},
        "attn": attn,
        "mlp": {"gating_einsum": np.stack(
                    [get(pre + "mlp.gate_proj.weight", (f, d)).T,
                     get(pre + "mlp.up_proj.weight", (f, d)).T]),
                "linear": get(pre + "mlp.down_proj.weight", (d, f)).T},
    }

  embedding = get("lm.embed_tokens.weight", (lc.vocab_size, d))
  llm = {
      "embedder": {"input_embedding": embedding},
      "layers": _stack_layers([lblock(i) for i in range(lc.depth)]),
      "final_norm": {"scale": get("lm.norm.weight", (d,))},
  }
  if "lm_head.weight" in get.keys:
    head = get("lm_head.weight", (lc.vocab_size, d))
    if not np.array_equal(head, embedding):
      raise ConversionError(
          f"{get.keys['lm_head.weight']!r} differs from the token embedding; "
          "PaliGemma ties them and untied heads are not supported")
  unused = sorted(get.keys[k] for k in set(get.keys) - get.used)
  if unused:
    raise ConversionError(f"{len(unused)} tensors were not used, e.g. "
                          f"{unused[:5]}: the checkpoint does not match its "
                          "config.json")
  params = {"img": img, "llm": llm}
  check_tree(params, config)
  return params
