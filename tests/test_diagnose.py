"""The demo VLM diagnosis (demo/diagnose.py) on a tiny random demo VLM: word
types from the tokenizer, accuracies that agree with the demo's own exact
match, and attention shares that sum to one."""

import numpy as np
import pytest

from autoselect_jax.demo import data as demo_data
from autoselect_jax.demo import diagnose
from autoselect_jax.demo import evaluate as demo_eval
from autoselect_jax.demo import pretrain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  ckpt = pretrain.pretrain_vlm(str(tmp_path_factory.mktemp("d")), steps=2,
                               batch_size=8, num_train=16, log=lambda *_: None,
                               progress=open("/dev/null", "w"))
  vlm, params, processor = pretrain.load_frozen(ckpt)
  arrays = demo_data.encode_examples(demo_data.eval_examples(12, 0),
                                     processor)
  return vlm, params, processor, arrays


def test_word_types_and_accuracy(tiny):
  vlm, params, processor, arrays = tiny
  types = diagnose.word_types(arrays["tokens"], processor)
  real = arrays["loss_mask"].astype(bool)
  assert set(types[real]) == set(diagnose.WORD_TYPES)
  # Every caption ends with exactly one end token.
  assert ((types == "end") & real).sum(1).tolist() == [1] * 12
  n = vlm.num_visual_tokens
  acc = diagnose.token_accuracy(vlm, params, arrays, demo_eval.full_selection,
                                n, types)
  want = demo_eval.exact_match(vlm, params, arrays, demo_eval.full_selection,
                               batch_size=12).mean()
  assert acc["exact_match"] == pytest.approx(want)
  assert all(0.0 <= v <= 1.0 for v in acc.values())


def test_background_selection_keeps_no_object(tiny):
  import jax
  import jax.numpy as jnp
  _, _, _, arrays = tiny
  mask = jnp.asarray(arrays["object_mask"])
  idx = np.asarray(diagnose.background_selection(
      None, jax.random.key(0), 32, {"object_mask": mask}))
  assert not np.take_along_axis(np.asarray(mask), idx, 1).any()


def test_attention_shares_sum_to_one(tiny):
  vlm, params, processor, arrays = tiny
  few = {k: v[:4] for k, v in arrays.items()}
  types = diagnose.word_types(few["tokens"], processor)
  shares = diagnose.attention_shares(vlm, params, few, types)
  assert len(shares) == vlm.config.llm.depth
  for layer in shares:
    for obj, bg, txt in layer.values():
      assert obj + bg + txt == pytest.approx(1.0, abs=1e-5)
  assert "Decoder layer 0" in diagnose.format_report(
      {"accuracy": {"full": {"colour": 1.0, "exact_match": 1.0}},
       "attention": shares})
