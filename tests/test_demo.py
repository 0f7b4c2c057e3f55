"""The demo's tokenizer, cached pre-training and subset evaluation.

A small config (32 px images, 16 visual tokens, width 32) keeps compilation
short; the code paths are the demo's.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax.checkpoints import store
from autoselect_jax.demo import synthetic
from autoselect_jax.data.processor import Encoded
from autoselect_jax.demo import data as demo_data
from autoselect_jax.demo import evaluate as ev
from autoselect_jax.demo import pretrain
from autoselect_jax.demo import tokenizer as demo_tokenizer
from autoselect_jax.inference import pruners
from autoselect_jax.inference.decode import greedy_decode
from autoselect_jax.method.selection import selected_sequence
from autoselect_jax.models import VLM, GemmaConfig, SiglipConfig, get_variant

SPEC = synthetic.TaskSpec(image_size=32, patch_size=8)
SMALL = get_variant("demo").replace(
    vision=SiglipConfig(image_size=32, patch_size=8, width=32, depth=1,
                        num_heads=2, mlp_dim=64),
    llm=GemmaConfig(vocab_size=102, width=32, depth=1, num_heads=2,
                    num_kv_heads=1, head_dim=16, mlp_dim=64))


@pytest.fixture(scope="module")
def processor():
  return pretrain.make_processor(SMALL)


@pytest.fixture(scope="module")
def model():
  vlm = VLM(SMALL)
  return vlm, pretrain.init_params(vlm, 0)


def test_tokenizer_is_deterministic_with_gemma_ids(processor):
  assert demo_tokenizer.train_spm() == demo_tokenizer.train_spm()
  tok = processor.tokenizer
  assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
  config = get_variant("demo")
  assert tok.convert_tokens_to_ids("<image>") == config.image_token_id
  assert len(tok) == config.llm.vocab_size
  for word in synthetic.WORDS:  # One token per word, alone or after a space.
    assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1
    assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1
  caption = synthetic.caption(synthetic.sample_scene(0, 4))
  enc = processor.encode(synthetic.PROMPT, caption)
  assert processor.decode(enc.tokens[enc.mask_ar.index(1):]) == caption


def test_sincos_position_table():
  pe = pretrain.posemb_sincos_2d(4, 16)
  assert pe.shape == (1, 16, 16)
  # Tokens of one row share the y half, tokens of one column the x half.
  np.testing.assert_allclose(pe[0, 1, 8:], pe[0, 2, 8:])
  np.testing.assert_allclose(pe[0, 4, :8], pe[0, 8, :8])
  assert len({tuple(np.round(r, 5)) for r in pe[0]}) == 16


def test_pretrain_writes_checkpoint_then_hits_cache(tmp_path):
  logs = []
  ckpt = pretrain.pretrain_vlm(str(tmp_path), steps=3, batch_size=4,
                               num_train=8, variant=SMALL, spec=SPEC,
                               log_every=1, log=logs.append)
  assert ckpt == os.path.join(str(tmp_path), "frozen_vlm")
  assert sum(" loss " in line for line in logs) == 3
  assert store.load_config(ckpt) == SMALL
  vlm, params, proc = pretrain.load_frozen(ckpt)
  fresh = pretrain.init_params(vlm, 0)
  assert jax.tree_util.tree_structure(params) == (
      jax.tree_util.tree_structure(fresh))
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                 params, fresh)
  assert min(jax.tree_util.tree_leaves(moved)) > 0  # Every tensor trained.
  caption = synthetic.make_example(0, 1, SPEC).caption
  assert proc.encode("caption en", caption) == pretrain.make_processor(
      SMALL).encode("caption en", caption)
  stamp = os.path.getmtime(os.path.join(ckpt, store.CONFIG_FILE))
  logs.clear()
  assert pretrain.pretrain_vlm(str(tmp_path), steps=3, batch_size=4,
                               num_train=8, variant=SMALL, spec=SPEC,
                               log=logs.append) == ckpt
  assert len(logs) == 1 and "cache hit" in logs[0]
  assert os.path.getmtime(os.path.join(ckpt, store.CONFIG_FILE)) == stamp


def test_pretrain_rejects_mismatched_task(tmp_path):
  with pytest.raises(ValueError, match="do not match"):
    pretrain.pretrain_vlm(str(tmp_path), steps=1, variant=SMALL)


def _own_greedy_examples(vlm, params, processor, examples, idx, steps=6):
  """Encoded texts whose suffix is the model's own greedy output when it sees
  the tokens `idx` (B, K): teacher-forced match on them must be 1."""
  arrays = demo_data.encode_examples(examples, processor)
  pre = arrays["mask_ar"].argmax(1)  # Prefix length (all equal here).
  assert (pre == pre[0]).all()
  p = int(pre[0])
  text = {k: jnp.asarray(arrays[k][:, :p]) for k in
          ("tokens", "input_mask", "mask_ar")}
  feats = vlm.encode_image(params, demo_data.scale_images(arrays["images"]))
  seq = selected_sequence(vlm, params, feats, jnp.asarray(idx),
                          text["tokens"], text["input_mask"], text["mask_ar"])
  out = np.asarray(greedy_decode(vlm, params, seq, max_new_tokens=steps,
                                 eos_id=-1, pad_id=0))
  encs = [Encoded(tokens=arrays["tokens"][i, :p].tolist() + out[i].tolist(),
                  mask_ar=[0] * p + [1] * steps,
                  loss_mask=[0] * p + [1] * steps)
          for i in range(len(examples))]
  batch = processor.batch(encs)
  return dict(images=arrays["images"], tokens=batch.tokens,
              input_mask=batch.input_mask, mask_ar=batch.mask_ar,
              loss_mask=batch.loss_mask.astype(bool),
              object_mask=arrays["object_mask"]), arrays


def _every_other(features, rng, k, ctx):
  del rng, ctx
  b = features.shape[0]
  return jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32) * 2, (b, k))


def test_teacher_forced_match_agrees_with_greedy_decoding(model, processor):
  vlm, params = model
  examples = synthetic.make_examples(0, range(6), SPEC)
  n = vlm.num_visual_tokens
  # All tokens: the model's own greedy captions match, the true ones do not.
  full_idx = np.broadcast_to(np.arange(n), (6, n))
  own, true = _own_greedy_examples(vlm, params, processor, examples, full_idx)
  assert ev.exact_match(vlm, params, own, ev.full_selection,
                        batch_size=4).all()
  for fn in (ev.random_selection, ev.oracle_selection):  # K = N: all, in order.
    assert ev.exact_match(vlm, params, own, fn, n, batch_size=4).all()
  assert not ev.exact_match(vlm, params, true, ev.full_selection,
                            batch_size=4).any()
  # A subset: positions are the original grid indices, text starts at N.
  k = n // 2
  sub_idx = np.broadcast_to(np.arange(k) * 2, (6, k))
  own_sub, _ = _own_greedy_examples(vlm, params, processor, examples, sub_idx)
  assert ev.exact_match(vlm, params, own_sub, _every_other, k,
                        batch_size=4).all()


def test_evaluate_baselines_on_untrained_model(model, processor):
  vlm, params = model
  examples = synthetic.make_examples(0, range(10), SPEC)
  n = vlm.num_visual_tokens
  arrays = demo_data.encode_examples(examples, processor)
  matches = ev.exact_match(vlm, params, arrays, ev.full_selection,
                           batch_size=4)
  full = ev.evaluate(vlm, params, processor, examples, ev.full_selection,
                     batch_size=4)
  # The full-model accuracy recomputed from the model's own whole-sequence
  # forward (no selection code): per example, every suffix target is argmax.
  logits = vlm.forward(params, demo_data.scale_images(arrays["images"]),
                       arrays["tokens"], arrays["input_mask"],
                       arrays["mask_ar"])
  t = arrays["tokens"].shape[1]
  pred = np.asarray(jnp.argmax(logits[:, n - 1:n + t - 1], -1))
  want = ((pred == arrays["tokens"]) | ~arrays["loss_mask"]).all(1)
  np.testing.assert_array_equal(matches, want)
  assert full == want.mean()
  for fn in ev.BASELINES.values():  # K = N: every method keeps all.
    assert ev.evaluate(vlm, params, processor, examples, fn, n,
                       batch_size=4) == full
  table = ev.selection_table(vlm, params, processor, examples, [2, 4],
                             batch_size=4)
  assert list(table) == ["full", "oracle", "random", "grid", "norm",
                         "attention", "divprune"]
  # The wrapped baselines keep what the deployed pruners keep.
  feats, att = vlm.encode_image(
      params, demo_data.scale_images(arrays["images"]), last_attention=True)
  for name in ("grid", "norm", "attention", "divprune"):
    pruner, _ = pruners.make_pruner(name)
    np.testing.assert_array_equal(
        ev.pruner_selection(name)(feats, None, 3, {"attention": att}),
        pruner(None, feats, 3, att).index)
  assert "| oracle |" in ev.format_table(table, n)
  with pytest.raises(ValueError, match="k="):
    ev.evaluate(vlm, params, processor, examples, ev.random_selection, n + 1)
  with pytest.raises(ValueError, match="all N"):
    ev.evaluate(vlm, params, processor, examples, ev.full_selection, 2)


def test_selections_are_sorted_distinct_and_oracle_finds_objects():
  rng = jax.random.key(0)
  feats = jnp.zeros((3, 16, 4))
  mask = np.zeros((3, 16), bool)
  mask[0, [1, 9]] = mask[1, [15]] = mask[2, [0, 5, 6, 7]] = True
  ctx = {"object_mask": jnp.asarray(mask)}
  for k in (1, 3, 8, 16):
    for fn in (ev.random_selection, ev.oracle_selection,
               ev.pruner_selection("grid"), ev.pruner_selection("divprune")):
      idx = np.asarray(fn(feats, rng, k, ctx))
      assert idx.shape == (3, k)
      assert (np.diff(idx, axis=1) > 0).all()
  idx = np.asarray(ev.oracle_selection(feats, rng, 4, ctx))
  for row, m in zip(idx, mask):
    assert set(np.flatnonzero(m)) <= set(row.tolist())
  bad = lambda f, r, k, c: jnp.zeros((f.shape[0], k), jnp.int32)
  arrays = {"images": np.zeros((2, 32, 32, 3), np.uint8),
            "tokens": np.ones((2, 3), np.int32),
            "input_mask": np.ones((2, 3), bool),
            "mask_ar": np.array([[0, 1, 1]] * 2, np.int32),
            "loss_mask": np.array([[0, 1, 1]] * 2, bool),
            "object_mask": np.zeros((2, 16), bool)}
  vlm = VLM(SMALL)
  params = vlm.init_params(jax.random.key(0))
  with pytest.raises(ValueError, match="distinct"):
    ev.exact_match(vlm, params, arrays, bad, 3, batch_size=2)


def test_cached_vlm_must_match_the_asked_settings(tmp_path):
  quiet = dict(log=lambda *_: None, progress=open(os.devnull, "w"))
  args = dict(steps=2, batch_size=8, num_train=16)
  ckpt = pretrain.pretrain_vlm(str(tmp_path), **args, **quiet)
  assert pretrain.pretrain_vlm(str(tmp_path), **args, **quiet) == ckpt
  with pytest.raises(ValueError, match=r"steps: 2 cached, 3 asked.*"
                     r"variant: 'demo' cached, 'demo-v1' asked"):
    pretrain.pretrain_vlm(str(tmp_path), **{**args, "steps": 3},
                          variant="demo-v1", **quiet)
  with pytest.raises(ValueError, match=r"task: .*'max_distractors': 0.* "
                     r"cached, .*'max_distractors': 3.* asked"):
    pretrain.pretrain_vlm(str(tmp_path), **args, **quiet,
                          spec=synthetic.TaskSpec(max_distractors=3))


def test_demo_variant_is_checked_up_front():
  import importlib.util
  from autoselect_jax.demo import run
  from autoselect_jax.training.config import ConfigError
  spec = importlib.util.spec_from_file_location(
      "demo_config", os.path.join(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))), "configs", "demo.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  run.validate(c)
  c.demo.variant = "demo-v1"
  run.validate(c)
  c.demo.max_distractors = 70
  with pytest.raises(ConfigError, match="demo.max_distractors=70"):
    run.validate(c)
  c.demo.max_distractors = 0
  c.demo.pretrain_lr_scale = "img/pos_embedding=0"
  run.validate(c)
  for bad, why in [("img/pos=0", "'img/pos' matches no parameter"),
                   ("img/pos_embedding", "expected PATH=SCALE"),
                   ("img/pos_embedding=-1", "SCALE >= 0")]:
    c.demo.pretrain_lr_scale = bad
    with pytest.raises(ConfigError, match=f"demo.pretrain_lr_scale=.*{why}"):
      run.validate(c)
  c.demo.pretrain_lr_scale = ""
  c.demo.variant = "nope"
  with pytest.raises(ConfigError, match="demo.variant='nope'"):
    run.validate(c)


def test_lr_scale_freezes_and_scales_by_path_prefix(tmp_path):
  attn = "img/Transformer/encoderblock/MultiHeadDotProductAttention_0"
  quiet = dict(log=lambda *_: None, progress=open(os.devnull, "w"))
  args = dict(steps=2, batch_size=4, num_train=8, variant=SMALL, spec=SPEC,
              data_seed=3)
  ckpt = pretrain.pretrain_vlm(str(tmp_path), **args, **quiet,
                               lr_scale={"img/pos_embedding": 0.0,
                                         attn: 0.0})
  assert pretrain.read_meta(ckpt)["lr_scale"] == {"img/pos_embedding": 0.0,
                                                  attn: 0.0}
  assert pretrain.data_seed_of(ckpt) == 3  # diagnose's default stream.
  assert pretrain.data_seed_of(str(tmp_path)) == 0  # No metadata there.
  vlm, params, _ = pretrain.load_frozen(ckpt)
  fresh = pretrain.init_params(vlm, 0)
  np.testing.assert_array_equal(params["img"]["pos_embedding"],
                                fresh["img"]["pos_embedding"])
  frozen = params["img"]["Transformer"]["encoderblock"][
      "MultiHeadDotProductAttention_0"]
  start = fresh["img"]["Transformer"]["encoderblock"][
      "MultiHeadDotProductAttention_0"]
  for a, b in zip(jax.tree_util.tree_leaves(frozen),
                  jax.tree_util.tree_leaves(start)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(params["img"]["embedding"]["kernel"],
                            fresh["img"]["embedding"]["kernel"])
  # The cache records the scales: asking for other ones is refused.
  with pytest.raises(ValueError, match="lr_scale"):
    pretrain.pretrain_vlm(str(tmp_path), **args, **quiet)
  scales = pretrain.lr_scale_tree(fresh, {"img/pos_embedding": 0.5})
  assert scales["img"]["pos_embedding"] == 0.5
  assert scales["img"]["embedding"]["kernel"] == 1.0
  with pytest.raises(ValueError, match="'img/pos_embeding' matches no"):
    pretrain.lr_scale_tree(fresh, {"img/pos_embeding": 0.0})


def test_demo_refuses_a_url_workdir_before_pretraining(tmp_path):
  from autoselect_jax.demo import run
  from autoselect_jax.training.config import ConfigError
  import ml_collections
  c = ml_collections.ConfigDict({"demo": {"frozen_workdir": ""}})
  with pytest.raises(ConfigError, match="workdir=gs://b/run: the demo writes"):
    run.frozen_vlm(c, "gs://b/run")
  c.demo.frozen_workdir = "gs://b/vlm"
  with pytest.raises(ConfigError, match="demo.frozen_workdir=gs://b/vlm"):
    run.frozen_vlm(c, str(tmp_path))
  assert not os.listdir(tmp_path)
