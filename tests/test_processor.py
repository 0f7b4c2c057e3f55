"""The processor against HF's PaliGemmaProcessor on the same tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import hf_reference
from autoselect_jax.checkpoints import store
from autoselect_jax.data.processor import Processor, preprocess_image


@pytest.fixture(scope="module")
def ours(hf_mqa):
  ckpt = hf_mqa[3]
  config = store.load_config(ckpt)
  return Processor.from_checkpoint(ckpt, config)


PROMPTS = ["caption en", "what is in the image", "where is the blue square",
           "describe"]
SUFFIXES = ["red cat", "two dogs and a triangle", "top left", "a green circle"]


@pytest.mark.parametrize("with_suffix", [True, False])
def test_tokens_and_masks_match_hf(hf_mqa, ours, with_suffix):
  hf = hf_mqa[2]
  images = hf_reference.random_images(len(PROMPTS), 32)
  kwargs = {"suffix": SUFFIXES} if with_suffix else {}
  ref = hf(images=images, text=PROMPTS, return_tensors="np", padding="longest",
           **kwargs)
  n = ours.config.num_image_tokens
  for i, prompt in enumerate(PROMPTS):
    enc = ours.encode(prompt, SUFFIXES[i] if with_suffix else None)
    real = ref["attention_mask"][i].astype(bool)
    ids = ref["input_ids"][i][real]
    assert (ids[:n] == ours.image_token_id).all()
    assert enc.tokens == ids[n:].tolist()
    assert enc.mask_ar == ref["token_type_ids"][i][real][n:].tolist()
    if with_suffix:
      targets = ref["labels"][i][real][n:] != -100
      assert enc.loss_mask == targets.astype(int).tolist()
      assert sum(enc.loss_mask) > 0


def test_pixels_match_hf_pil_processor(hf_mqa, ours):
  hf = hf_mqa[2]
  rng = np.random.default_rng(0)
  same = hf_reference.random_images(1, 32)[0]
  other = Image.fromarray(rng.integers(0, 256, (45, 70, 3), np.uint8))
  gray = Image.fromarray(rng.integers(0, 256, (20, 20), np.uint8), mode="L")
  for image in (same, other, gray):
    ref = hf(images=[image], text=["x"], return_tensors="np")["pixel_values"]
    got = ours.image(image)
    assert got.shape == (32, 32, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref[0].transpose(1, 2, 0), atol=1e-6)
  assert ours.image(same).min() >= -1 and ours.image(same).max() <= 1


def test_batch_pads_right_and_counts_truncation(ours, caplog):
  encs = [ours.encode("caption en", "red cat"), ours.encode("describe")]
  b = ours.batch(encs)
  lengths = [len(e.tokens) for e in encs]
  assert b.tokens.shape == (2, max(lengths))
  assert b.input_mask.sum(1).tolist() == lengths
  assert (b.tokens[1, lengths[1]:] == ours.pad_id).all()
  short = ours.batch(encs, length=2)
  assert short.num_truncated == 2 and short.tokens.shape == (2, 2)
  assert "truncated 2 of 2" in caplog.text


def test_special_ids_come_from_tokenizer_and_must_match_config(hf_mqa, ours):
  tok = ours.tokenizer
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
      tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
  with pytest.raises(ValueError, match="eos id 1 differs.*eos_token_id=5"):
    Processor(tok, ours.config.replace(eos_token_id=5))
  with pytest.raises(ValueError, match="image_token_id"):
    Processor(tok, ours.config.replace(image_token_id=7))


def test_decode_stops_at_eos(ours):
  ids = ours.encode("", "red cat").tokens
  suffix = ids[ids.index(ours.bos_id) + 2:]  # After "<bos>\n".
  assert ours.decode(suffix + [ours.pad_id, 17]) == "red cat"


def test_bad_images(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.png"):
    preprocess_image(str(tmp_path / "missing.png"), 32)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image")
  with pytest.raises(ValueError, match="bad.png"):
    preprocess_image(str(bad), 32)
  with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
    preprocess_image(np.zeros((4, 4), np.uint8), 32)
