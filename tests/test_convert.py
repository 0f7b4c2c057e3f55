"""Weight conversion: HF safetensors (every key spelling, sharded, bf16) and
big_vision npz (scanned and unscanned layers, bf16) give identical parameters;
special-token ids follow HF's precedence; bad input fails with an error naming
the problem and leaves nothing at --out."""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from autoselect_jax import convert
from autoselect_jax.checkpoints import big_vision, hf, store
from autoselect_jax.checkpoints.hf import canonical_keys
from autoselect_jax.checkpoints.safetensors_io import SafetensorsFolder
from autoselect_jax.checkpoints.tree import ConversionError, flatten


def _state(folder):
  return {k: np.array(v) for k, v in SafetensorsFolder(folder).items()}


def _assert_same_params(ckpt_a, ckpt_b):
  a = flatten(jax.tree_util.tree_map(np.asarray, store.load_params(ckpt_a)))
  b = flatten(jax.tree_util.tree_map(np.asarray, store.load_params(ckpt_b)))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _hf_copy(src, dst, state=None, config_edit=None):
  """Copies an HF folder, optionally with another state dict / config."""
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors*"))
  save_file(state if state is not None else _state(src),
            os.path.join(dst, "model.safetensors"))
  if config_edit:
    with open(os.path.join(dst, "config.json")) as f:
      cfg = json.load(f)
    config_edit(cfg)
    with open(os.path.join(dst, "config.json"), "w") as f:
      json.dump(cfg, f)
  return dst


def to_big_vision(state, cfg):
  """HF tensors -> big_vision npz layout, written from big_vision's documented
  layout (the inverse of transformers' convert_paligemma_weights_to_hf)."""
  canon = {c: state[k] for c, k in canonical_keys(state).items()}
  v, t = cfg["vision_config"], cfg["text_config"]
  dv, nh = v["hidden_size"], v["num_attention_heads"]
  d, h, kh, e = (t["hidden_size"], t["num_attention_heads"],
                 t["num_key_value_heads"], t["head_dim"])
  out = {
      "img/embedding/kernel":
          canon["vision.embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
      "img/embedding/bias": canon["vision.embeddings.patch_embedding.bias"],
      "img/pos_embedding":
          canon["vision.embeddings.position_embedding.weight"][None],
      "img/Transformer/encoder_norm/scale": canon["vision.post_layernorm.weight"],
      "img/Transformer/encoder_norm/bias": canon["vision.post_layernorm.bias"],
      "img/head/kernel": canon["projector.linear.weight"].T,
      "img/head/bias": canon["projector.linear.bias"],
      "llm/embedder/input_embedding": canon["lm.embed_tokens.weight"],
      "llm/final_norm/scale": canon["lm.norm.weight"],
  }
  def vl(i, name):
    return canon[f"vision.encoder.layers.{i}.{name}"]
  def ll(i, name):
    return canon[f"lm.layers.{i}.{name}"]
  blocks = {}
  for i in range(v["num_hidden_layers"]):
    blk = {
        "LayerNorm_0/scale": vl(i, "layer_norm1.weight"),
        "LayerNorm_0/bias": vl(i, "layer_norm1.bias"),
        "LayerNorm_1/scale": vl(i, "layer_norm2.weight"),
        "LayerNorm_1/bias": vl(i, "layer_norm2.bias"),
        "MlpBlock_0/Dense_0/kernel": vl(i, "mlp.fc1.weight").T,
        "MlpBlock_0/Dense_0/bias": vl(i, "mlp.fc1.bias"),
        "MlpBlock_0/Dense_1/kernel": vl(i, "mlp.fc2.weight").T,
        "MlpBlock_0/Dense_1/bias": vl(i, "mlp.fc2.bias"),
        "MultiHeadDotProductAttention_0/out/kernel":
            vl(i, "self_attn.out_proj.weight").T.reshape(nh, dv // nh, dv),
        "MultiHeadDotProductAttention_0/out/bias": vl(i, "self_attn.out_proj.bias"),
    }
    for bv, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      blk[f"MultiHeadDotProductAttention_0/{bv}/kernel"] = vl(
          i, f"self_attn.{ours}.weight").T.reshape(dv, nh, dv // nh)
      blk[f"MultiHeadDotProductAttention_0/{bv}/bias"] = vl(
          i, f"self_attn.{ours}.bias").reshape(nh, dv // nh)
    blocks[i] = blk
  layers = {}
  for i in range(t["num_hidden_layers"]):
    q = ll(i, "self_attn.q_proj.weight").reshape(h, e, d).transpose(0, 2, 1)
    k = ll(i, "self_attn.k_proj.weight").reshape(kh, e, d).transpose(0, 2, 1)
    vv = ll(i, "self_attn.v_proj.weight").reshape(kh, e, d).transpose(0, 2, 1)
    layers[i] = {
        "attn/q_einsum/w": q, "attn/kv_einsum/w": np.stack([k, vv]),
        "attn/attn_vec_einsum/w":
            ll(i, "self_attn.o_proj.weight").reshape(d, h, e).transpose(1, 2, 0),
        "mlp/gating_einsum": np.stack([ll(i, "mlp.gate_proj.weight").T,
                                       ll(i, "mlp.up_proj.weight").T]),
        "mlp/linear": ll(i, "mlp.down_proj.weight").T,
        "pre_attention_norm/scale": ll(i, "input_layernorm.weight"),
        "pre_ffw_norm/scale": ll(i, "post_attention_layernorm.weight"),
    }
  return out, blocks, layers


def _write_npz(path, out, blocks, layers, *, scanned=True, prefix="params/",
               extra=None):
  """Writes an npz with the names big_vision gives its parameters
  (google-research/big_vision, models/proj/paligemma/paligemma.py: towers
  `img` and `llm`; gemma_bv.py adds no level under `llm`).

  scanned (scan=True, the published configs): one subtree per layer stack,
    leading L axis: img/Transformer/encoderblock/..., llm/layers/...
  unscanned: models/vit.py Encoder(scan=False) names block i
    `encoderblock_{i}` (img/Transformer/encoderblock_0/...), and
    models/ppp/gemma.py Model(scan=False) binds block i to the scope
    `layers/{i}` (llm/layers/0/attn/...).
  `prefix`: published files hold the `params/` subtree. `extra`: more arrays,
  e.g. optimizer state.
  """
  flat = dict(out)
  if scanned:
    for name in blocks[0]:
      flat[f"img/Transformer/encoderblock/{name}"] = np.stack(
          [blocks[i][name] for i in sorted(blocks)])
    for name in layers[0]:
      flat[f"llm/layers/{name}"] = np.stack([layers[i][name]
                                             for i in sorted(layers)])
  else:
    for i, blk in blocks.items():
      flat.update({f"img/Transformer/encoderblock_{i}/{n}": a
                   for n, a in blk.items()})
    for i, lay in layers.items():
      flat.update({f"llm/layers/{i}/{n}": a for n, a in lay.items()})
  np.savez(path, **{f"{prefix}{k}": v for k, v in flat.items()}, **(extra or {}))


def _hf_config(folder):
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


def test_big_vision_npz_converts_to_identical_params(hf_mqa, tmp_path):
  folder, _, _, ckpt = hf_mqa
  npz = str(tmp_path / "pg.npz")
  _write_npz(npz, *to_big_vision(_state(folder), _hf_config(folder)))
  out = str(tmp_path / "bv")
  assert convert.main(["--big-vision", npz, "--tokenizer", folder,
                       "--out", out]) == 0
  assert store.load_config(out) == store.load_config(ckpt)
  _assert_same_params(out, ckpt)


def test_big_vision_unscanned_npz_equals_scanned(hf_mqa, tmp_path):
  folder = hf_mqa[0]
  pieces = to_big_vision(_state(folder), _hf_config(folder))
  outs = {}
  for scanned in (True, False):
    npz = str(tmp_path / f"scanned_{scanned}.npz")
    _write_npz(npz, *pieces, scanned=scanned)
    outs[scanned] = str(tmp_path / f"out_{scanned}")
    convert.convert_big_vision(npz, folder, outs[scanned])
  with np.load(str(tmp_path / "scanned_False.npz")) as z:
    assert "params/llm/layers/1/attn/q_einsum/w" in z.files
    assert "params/img/Transformer/encoderblock_1/LayerNorm_0/scale" in z.files
  assert store.load_config(outs[False]) == store.load_config(outs[True])
  _assert_same_params(outs[False], outs[True])


def test_big_vision_bfloat16_npz(hf_mqa, tmp_path):
  """np.savez keeps bfloat16 as 2-byte void, as in big_vision's *.bf16.npz."""
  folder = hf_mqa[0]
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in _state(folder).items()}
  ref = str(tmp_path / "ref")
  convert.convert_hf(_hf_copy(folder, str(tmp_path / "hf_bf16"), bf16), ref)
  npz = str(tmp_path / "pg.bf16.npz")
  _write_npz(npz, *to_big_vision(bf16, _hf_config(folder)))
  with np.load(npz) as z:
    assert z["params/llm/final_norm/scale"].dtype.kind == "V"
  out = str(tmp_path / "bv")
  convert.convert_big_vision(npz, folder, out)
  _assert_same_params(out, ref)


def test_npz_params_subtree_is_read_and_other_state_ignored(hf_mqa, tmp_path):
  folder = hf_mqa[0]
  pieces = to_big_vision(_state(folder), _hf_config(folder))
  bare, full = str(tmp_path / "bare.npz"), str(tmp_path / "full.npz")
  _write_npz(bare, *pieces, prefix="")
  opt = {"opt/1/mu/llm/final_norm/scale": np.zeros(4, np.float32)}
  _write_npz(full, *pieces, extra=opt)
  a, b = big_vision.read_npz(bare), big_vision.read_npz(full)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_big_vision_with_sentencepiece_tokenizer(hf_mqa, tmp_path):
  folder, _, hf_processor, ckpt = hf_mqa
  npz = str(tmp_path / "pg.npz")
  _write_npz(npz, *to_big_vision(_state(folder), _hf_config(folder)))
  out = str(tmp_path / "bv")
  convert.convert_big_vision(npz, os.path.join(folder, "_spm",
                                               "tokenizer.model"), out)
  from autoselect_jax.data.processor import Processor
  config = store.load_config(out)
  assert config.image_token_id == hf_processor.image_token_id
  proc = Processor.from_checkpoint(out, config)
  ref = hf_processor.tokenizer("caption en\n", add_special_tokens=False)
  assert proc.encode("caption en").tokens == [2] + ref["input_ids"]


def test_sharded_safetensors_and_in_memory_key_spelling(hf_mqa, tmp_path):
  folder, model, _, ckpt = hf_mqa
  state = _state(folder)
  # transformers 5.x in-memory names, with the tied lm_head spelled out.
  renamed = {}
  for k, v in state.items():
    k = k.replace("language_model.model.", "model.language_model.")
    k = k.replace("vision_tower.", "model.vision_tower.")
    k = k.replace("multi_modal_projector.", "model.multi_modal_projector.")
    renamed[k] = v
  renamed["lm_head.weight"] = renamed["model.language_model.embed_tokens.weight"]
  src = str(tmp_path / "sharded")
  shutil.copytree(folder, src, ignore=shutil.ignore_patterns("model.safetensors"))
  names = sorted(renamed)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for shard, keys in shards.items():
    save_file({k: renamed[k] for k in keys}, os.path.join(src, shard))
    weight_map.update({k: shard for k in keys})
  with open(os.path.join(src, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  out = str(tmp_path / "out")
  convert.convert_hf(src, out)
  _assert_same_params(out, ckpt)


def test_gemma2_npz_is_refused(hf_mqa, tmp_path):
  folder = hf_mqa[0]
  out, blocks, layers = to_big_vision(_state(folder), _hf_config(folder))
  for lay in layers.values():  # Gemma 2 blocks also norm after attention.
    lay["post_attention_norm/scale"] = lay["pre_ffw_norm/scale"]
  npz = str(tmp_path / "pg2.npz")
  _write_npz(npz, out, blocks, layers)
  with pytest.raises(ConversionError, match="Gemma 2"):
    convert.convert_big_vision(npz, folder, str(tmp_path / "o"))
  assert not (tmp_path / "o").exists()


def test_published_key_spelling(hf_mqa, tmp_path):
  """The hub's PaliGemma files: vision_tower.vision_model.*,
  language_model.model.* and a tied language_model.lm_head.weight."""
  folder, _, _, ckpt = hf_mqa
  state = {k.replace("vision_tower.", "vision_tower.vision_model."): v
           for k, v in _state(folder).items()}
  state["language_model.lm_head.weight"] = (
      state["language_model.model.embed_tokens.weight"])
  out = str(tmp_path / "out")
  convert.convert_hf(_hf_copy(folder, str(tmp_path / "pub"), state), out)
  _assert_same_params(out, ckpt)


def test_special_token_ids_follow_hf_precedence(tmp_path):
  """generation_config.json, then config.json's top level, then text_config;
  HF's own GenerationConfig is the reference."""
  from transformers import GenerationConfig
  cfg = {"model_type": "paligemma", "bos_token_id": 2, "eos_token_id": 1,
         "vision_config": {}, "text_config": {
             "model_type": "gemma", "bos_token_id": 5, "eos_token_id": 6,
             "pad_token_id": 7}}
  with open(tmp_path / "config.json", "w") as f:
    json.dump(cfg, f)
  names = ("bos_token_id", "eos_token_id", "pad_token_id")
  ours = hf.read_hf_config(str(tmp_path))
  ref = GenerationConfig.from_model_config(json.loads(json.dumps(cfg)))
  assert [getattr(ours, n) for n in names] == [2, 1, 7]
  assert [getattr(ref, n) for n in names] == [2, 1, 7]
  gen = {"bos_token_id": 3, "eos_token_id": [9, 1], "pad_token_id": 0}
  with open(tmp_path / "generation_config.json", "w") as f:
    json.dump(gen, f)
  ours = hf.read_hf_config(str(tmp_path))
  ref = GenerationConfig.from_pretrained(str(tmp_path))
  assert [ref.bos_token_id, ref.eos_token_id, ref.pad_token_id] == [3, [9, 1], 0]
  # HF stops on any eos id; the model config keeps the first.
  assert [ours.bos_token_id, ours.eos_token_id, ours.pad_token_id] == [3, 9, 0]


def test_bfloat16_safetensors(hf_mqa, tmp_path):
  folder, _, _, _ = hf_mqa
  state = _state(folder)
  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
  src = _hf_copy(folder, str(tmp_path / "bf16"), bf16)
  out = str(tmp_path / "out")
  convert.convert_hf(src, out)
  params = flatten(jax.tree_util.tree_map(np.asarray, store.load_params(out)))
  emb = params["llm/embedder/input_embedding"]
  np.testing.assert_array_equal(
      emb, bf16["language_model.model.embed_tokens.weight"].astype(np.float32))


def test_missing_tensor_names_key_and_leaves_nothing(hf_mqa, tmp_path, capsys):
  folder = hf_mqa[0]
  state = _state(folder)
  del state["language_model.model.layers.1.mlp.up_proj.weight"]
  src = _hf_copy(folder, str(tmp_path / "src"), state)
  out = tmp_path / "out"
  assert convert.main(["--hf", src, "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "lm.layers.1.mlp.up_proj.weight" in err
  assert "language_model.model.layers.1.mlp.up_proj.weight" in err
  assert not out.exists()
  assert os.listdir(tmp_path) == ["src"], "temporary folder left behind"


def test_misshaped_tensor_names_key_and_both_shapes(hf_mqa, tmp_path):
  folder = hf_mqa[0]
  state = _state(folder)
  key = "vision_tower.encoder.layers.0.mlp.fc1.weight"
  state[key] = state[key][:, :-1]
  src = _hf_copy(folder, str(tmp_path / "src"), state)
  with pytest.raises(ConversionError, match=r"fc1\.weight.*\(48, 31\).*\(48, 32\)"):
    convert.convert_hf(src, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_unexpected_tensor_and_untied_head_are_refused(hf_mqa, tmp_path):
  folder = hf_mqa[0]
  state = _state(folder)
  state["language_model.lm_head.weight"] = (
      state["language_model.model.embed_tokens.weight"] + 1)
  src = _hf_copy(folder, str(tmp_path / "untied"), state)
  with pytest.raises(ConversionError, match="lm_head.*differs"):
    convert.convert_hf(src, str(tmp_path / "o1"))
  state = _state(folder)
  state["vision_tower.head.probe"] = np.zeros(3, np.float32)
  src = _hf_copy(folder, str(tmp_path / "extra"), state)
  with pytest.raises(ConversionError, match="vision_tower.head.probe"):
    convert.convert_hf(src, str(tmp_path / "o2"))


def test_refuses_pickle_only_folder_and_existing_output(hf_mqa, tmp_path, capsys):
  folder, _, _, ckpt = hf_mqa
  src = tmp_path / "bin"
  shutil.copytree(folder, src, ignore=shutil.ignore_patterns("model.safetensors"))
  (src / "pytorch_model.bin").write_bytes(b"not loaded")
  assert convert.main(["--hf", str(src), "--out", str(tmp_path / "o")]) == 2
  assert "pickle" in capsys.readouterr().err
  assert convert.main(["--hf", folder, "--out", ckpt]) == 2
  assert "already exists" in capsys.readouterr().err


def test_corrupt_npz_and_missing_paths(tmp_path, hf_mqa):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"garbage")
  with pytest.raises(ConversionError, match="bad.npz"):
    convert.convert_big_vision(str(bad), hf_mqa[0], str(tmp_path / "o"))
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    convert.convert_big_vision(str(tmp_path / "nope.npz"), hf_mqa[0],
                               str(tmp_path / "o"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert.convert_hf(str(tmp_path), str(tmp_path / "o"))
