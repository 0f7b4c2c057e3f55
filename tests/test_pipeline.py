"""The deployed path (`inference.pipeline`, `inference.prune`): static-K pruned
generation against the full model and HF, positions, batching, compile counts,
sampling and errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_reference
from decode_reference import assert_cached_decode_matches_recompute
from autoselect_jax import generate
from autoselect_jax.checkpoints.scorer import export_scorer
from autoselect_jax.checkpoints.tree import ConversionError
from autoselect_jax.inference import decode
from autoselect_jax.inference.pipeline import Pipeline, load_learned_scores
from autoselect_jax.inference.prune import (jit_prefill_images,
                                           jit_pruned_prefix)
from autoselect_jax.method.modules import Scorer

PROMPTS = ["caption en", "what is in the image and where is the red cat"]
# One K and one decode length across tests, so they share compiled functions.
K, NEW = 6, 8


@pytest.fixture(scope="module")
def scored(hf_mqa, mqa_scorer):
  """(checkpoint dir, exported random Scorer dir, HF model, HF processor)."""
  _, model, processor, ckpt = hf_mqa
  return ckpt, mqa_scorer, model, processor


@pytest.fixture(scope="module")
def pipe(scored):
  return Pipeline.from_checkpoint(scored[0], scorer_dir=scored[1])


def _images(n, seed=1):
  return [np.asarray(im) for im in hf_reference.random_images(n, 32, seed=seed)]


class CompileCounter:
  """Counts XLA backend compilations while active."""
  try:
    from jax._src.dispatch import BACKEND_COMPILE_EVENT as EVENT
  except ImportError:  # The name is private; its value as of jax 0.10.
    EVENT = "/jax/core/compile/backend_compile_duration"

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    if event == self.EVENT:
      self.count += 1


_COUNTER = CompileCounter()


def _hf_greedy(model, processor, images, prompts, steps):
  inputs = processor(images=images, text=prompts, return_tensors="pt",
                     padding="longest")
  with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=steps, do_sample=False)
  return out[:, inputs["input_ids"].shape[1]:].numpy()


def _trim(row, eos):
  row = list(row)
  return row[:row.index(eos) + 1] if eos in row else row


def test_pruned_path_at_k_equals_n_is_the_full_model_and_hf(scored, pipe):
  _, _, model, processor = scored
  images = _images(2)
  n = pipe.vlm.num_visual_tokens
  full = pipe.generate(images, PROMPTS, max_new_tokens=NEW)
  ref = _hf_greedy(model, processor, images, PROMPTS, NEW)
  eos = pipe.processor.eos_id
  assert [r["ids"] for r in full] == [_trim(r, eos) for r in ref.tolist()]
  assert all(r["kept"] == list(range(n)) for r in full)
  # The pruned code path itself (Scorer, top-K, gather, project) at K = N.
  proc = pipe.processor
  text = proc.batch([proc.encode(p) for p in PROMPTS], 16)
  pixels = np.stack([proc.image(im) for im in images])
  prefix, kept = jit_pruned_prefix(
      pipe.vlm, pipe.params, pixels, text.tokens, text.input_mask,
      text.mask_ar, k=n, pruner=pipe.pruner,
      pruner_params=pipe.pruner_params, policy="original")
  np.testing.assert_array_equal(kept, np.tile(np.arange(n), (2, 1)))
  ids = np.asarray(decode.greedy_decode(pipe.vlm, pipe.params, prefix,
                                        max_new_tokens=NEW, eos_id=eos,
                                        pad_id=proc.pad_id))
  assert [_trim(r, eos) for r in ids.tolist()] == [r["ids"] for r in full]


@pytest.mark.parametrize("policy", ["original", "packed"])
def test_kept_positions_follow_the_policy(pipe, policy):
  proc, vlm, k = pipe.processor, pipe.vlm, K
  n = vlm.num_visual_tokens
  text = proc.batch([proc.encode(p) for p in PROMPTS], 16)
  pixels = np.stack([proc.image(im) for im in _images(2)])
  prefix, kept = jit_pruned_prefix(
      vlm, pipe.params, pixels, text.tokens, text.input_mask, text.mask_ar,
      k=k, pruner=pipe.pruner, pruner_params=pipe.pruner_params,
      policy=policy)
  kept = np.asarray(kept)
  scores = np.asarray(pipe.pruner.select.score_fn(
      pipe.pruner_params, vlm.encode_image(pipe.params, pixels)))
  for b in range(2):
    np.testing.assert_array_equal(kept[b],
                                  np.sort(np.argsort(-scores[b])[:k]))
  pos = np.asarray(prefix.positions)
  start = n if policy == "original" else k
  np.testing.assert_array_equal(pos[:, :k],
                                kept if policy == "original"
                                else np.tile(np.arange(k), (2, 1)))
  real = np.asarray(text.input_mask).sum(1)
  for b in range(2):
    np.testing.assert_array_equal(pos[b, k:k + real[b]],
                                  start + np.arange(real[b]))


def test_batch_of_different_lengths_equals_each_alone(pipe):
  images = _images(3, seed=4)
  prompts = ["caption en", "what is in the image and where is the red cat",
             "describe"]
  batched = pipe.generate(images, prompts, k=K, max_new_tokens=NEW)
  for i in range(3):
    alone = pipe.generate(images[i:i + 1], prompts[i:i + 1], k=K,
                          max_new_tokens=NEW)
    assert alone[0]["ids"] == batched[i]["ids"]
    assert alone[0]["kept"] == batched[i]["kept"]
    assert len(batched[i]["kept"]) == K


def test_same_length_bucket_does_not_recompile(pipe):
  images = _images(2, seed=5)
  pipe.generate(images, ["caption en", "describe the image"], k=K,
                max_new_tokens=NEW)
  before = _COUNTER.count
  pipe.generate(images, ["caption fr", "what is this one"], k=K,
                max_new_tokens=NEW, temperature=0.7, top_p=0.9, seed=3)
  assert _COUNTER.count == before, "a prompt in the same bucket recompiled"
  pipe.generate(images, ["word " * 20, "describe"], k=K, max_new_tokens=NEW)
  assert _COUNTER.count > before, "the compile counter saw nothing"


def test_generate_is_prefill_images_then_decode_prefilled(pipe):
  """The one-call prefill (what bench times as TTFT) + the decode loop from
  its cache == the two-step path (prefix, then `decode.decode`), pruned and
  sampled; and TTFT's first token is its logits' argmax."""
  proc, vlm, params = pipe.processor, pipe.vlm, pipe.params
  images = _images(2, seed=9)
  text = proc.batch([proc.encode(p) for p in PROMPTS], 16)
  pixels = np.stack([proc.image(im) for im in images])
  inputs = (pixels, text.tokens, text.input_mask, text.mask_ar)
  kw = dict(pruner=pipe.pruner, pruner_params=pipe.pruner_params,
            policy=pipe.policy)
  prefilled, kept = jit_prefill_images(vlm, params, *inputs, k=K,
                                       new_tokens=NEW, **kw)
  prefix, kept2 = jit_pruned_prefix(vlm, params, *inputs, k=K, **kw)
  np.testing.assert_array_equal(kept, kept2)
  sampling = dict(max_new_tokens=NEW, eos_id=proc.eos_id, pad_id=proc.pad_id,
                  temperature=0.9, rng=jax.random.key(5))
  two_step = np.asarray(decode.decode(vlm, params, prefix, **sampling))
  greedy = np.asarray(decode.greedy_decode(
      vlm, params, prefix, max_new_tokens=NEW, eos_id=proc.eos_id,
      pad_id=proc.pad_id))
  np.testing.assert_array_equal(np.argmax(prefilled[0], -1), greedy[:, 0])
  one_call = np.asarray(decode.decode_prefilled(vlm, params, prefilled,
                                                **sampling))
  np.testing.assert_array_equal(one_call, two_step)
  out = pipe.generate(images, PROMPTS, k=K, max_new_tokens=NEW,
                      temperature=0.9, seed=5)
  eos = proc.eos_id
  assert [r["ids"] for r in out] == [_trim(r, eos) for r in two_step.tolist()]


def test_pruned_cache_decode_equals_recompute(pipe):
  """Prefill over the kept tokens + cached steps == one pass without a cache."""
  proc, vlm, params, k = pipe.processor, pipe.vlm, pipe.params, K
  text = proc.batch([proc.encode(p) for p in PROMPTS], 16)
  pixels = np.stack([proc.image(im) for im in _images(2, seed=6)])
  prefix, _ = jit_pruned_prefix(
      vlm, params, pixels, text.tokens, text.input_mask, text.mask_ar, k=k,
      pruner=pipe.pruner, pruner_params=pipe.pruner_params)
  new = np.array([[5, 9, 11], [6, 8, 10]], np.int32)
  assert_cached_decode_matches_recompute(vlm, params, prefix, new)


def test_sampling_is_seeded_and_per_example(pipe):
  images = _images(2, seed=8)
  kw = dict(k=K, max_new_tokens=NEW, temperature=1.5)
  a = pipe.generate(images, PROMPTS, seed=1, **kw)
  assert a == pipe.generate(images, PROMPTS, seed=1, **kw)
  others = [pipe.generate(images, PROMPTS, seed=s, **kw) for s in (2, 3, 4)]
  assert any(o != a for o in others)
  alone = pipe.generate(images[:1], PROMPTS[:1], seed=1, **kw)
  assert alone[0]["ids"] == a[0]["ids"]
  # A vanishing nucleus keeps only the top token: greedy.
  greedy = pipe.generate(images, PROMPTS, k=K, max_new_tokens=NEW)
  assert pipe.generate(images, PROMPTS, k=K, max_new_tokens=NEW,
                       temperature=1.0, top_p=1e-6) == greedy


def test_sample_logits_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
  keys = jax.random.split(jax.random.key(0), 2000)
  tokens = np.asarray(decode.sample_logits(logits, keys, 1.0, 0.8))
  assert set(tokens.tolist()) == {0, 1}              # 0.5 + 0.3 >= 0.8
  assert abs((tokens == 0).mean() - 0.5 / 0.8) < 0.05
  greedy = decode.sample_logits(logits[:2], keys[:2], 0.0, 0.8)
  np.testing.assert_array_equal(greedy, [0, 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k must be an int in"),
    (dict(k=17), "k must be an int in"),
    (dict(k=2.5), "k must be an int in"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_arguments_fail_before_compiling(pipe, kwargs, match):
  before = _COUNTER.count
  with pytest.raises(ValueError, match=match):
    pipe.generate(_images(1), ["caption en"], **kwargs)
  assert _COUNTER.count == before


def test_bad_image_prompt_and_cache_fail_before_compiling(scored, pipe):
  before = _COUNTER.count
  with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
    pipe.generate([np.zeros((32, 32, 4), np.uint8)], ["caption en"], k=4)
  small = Pipeline(pipe.vlm, pipe.params, pipe.processor, pipe.pruner,
                   pipe.pruner_params, max_positions=40)
  with pytest.raises(ValueError, match="max_positions=40"):
    small.generate(_images(1), ["word " * 30], k=4, max_new_tokens=4)
  full_only = Pipeline.from_checkpoint(scored[0])
  with pytest.raises(ValueError, match="needs a Scorer"):
    full_only.generate(_images(1), ["caption en"], k=4)
  assert _COUNTER.count == before


def test_scorer_folder_errors(scored, tmp_path):
  ckpt, scorer_dir = scored[:2]
  with pytest.raises(FileNotFoundError, match="does not exist"):
    Pipeline.from_checkpoint(ckpt, scorer_dir=str(tmp_path / "none"))
  pipe = Pipeline.from_checkpoint(ckpt)
  vlm = pipe.vlm
  dummy = jnp.zeros((1, vlm.num_visual_tokens, vlm.visual_width))
  wrong = Scorer(num_layers=2, num_heads=2).init(jax.random.key(0),
                                                 dummy)["params"]
  bad = str(tmp_path / "bad")
  export_scorer(bad, wrong, json.load(open(f"{scorer_dir}/scorer_config.json")))
  with pytest.raises(ConversionError, match="unexpected"):
    load_learned_scores(bad, vlm)
  cfg = json.load(open(f"{scorer_dir}/scorer_config.json"))
  cfg["vlm"]["vision"]["width"] += 8
  other = str(tmp_path / "other")
  export_scorer(other, wrong, cfg)
  with pytest.raises(ValueError, match="trained for a vision encoder"):
    load_learned_scores(other, vlm)


def test_cli_pruned_json(scored, tmp_path, capsys):
  ckpt, scorer_dir = scored[:2]
  paths = []
  for i, im in enumerate(hf_reference.random_images(2, 32, seed=9)):
    paths.append(str(tmp_path / f"im{i}.png"))
    im.save(paths[-1])
  argv = ["--checkpoint", ckpt, "--scorer", scorer_dir, "--k", str(K),
          "--max-new-tokens", str(NEW), "--json", "--prompt", "caption en"]
  for p in paths:
    argv += ["--image", p]
  assert generate.main(argv) == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert len(lines) == 2
  for line in lines:
    assert set(line) == {"image", "prompt", "ids", "text", "kept"}
    assert len(line["kept"]) == K and line["kept"] == sorted(line["kept"])
  assert generate.main(["--checkpoint", ckpt, "--k", "5", "--image",
                        paths[0], "--prompt", "hi"]) == 2
  assert "needs a Scorer" in capsys.readouterr().err
