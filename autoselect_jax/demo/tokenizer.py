"""A tiny SentencePiece tokenizer for the shapes task, trained in-process.

Deterministic: the corpus is every task word repeated in a fixed order, and
SentencePiece runs single-threaded. Special ids match PaliGemmaConfig's
defaults (pad 0, eos 1, bos 2; unk 3); "\\n" is a user symbol (the processor
ends every prefix with it) and `<image>` is added last, so its id is the
vocabulary size minus one (`demo` variant: image_token_id).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

from autoselect_jax.demo import synthetic

IMAGE_TOKEN = "<image>"
# Enough merges that every task word is one piece: captions of four objects
# then take 20 tokens (19 words + <eos>).
_SPM_VOCAB = 100


def _corpus() -> list[str]:
  words = list(synthetic.WORDS)
  # Each word alone, then in caption-like order; no randomness.
  sents = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
  return sents * 20


def train_spm(vocab_size: int = _SPM_VOCAB) -> bytes:
  """Serialized SentencePiece BPE model over the task's words."""
  import sentencepiece as spm
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(_corpus()), model_writer=model,
      vocab_size=vocab_size, model_type="bpe", hard_vocab_limit=False,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
      eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
      add_dummy_prefix=False, byte_fallback=False, split_digits=True,
      remove_extra_whitespaces=False, normalization_rule_name="identity",
      user_defined_symbols=["\n"], character_coverage=1.0, num_threads=1,
      minloglevel=2)
  return model.getvalue()


def write_tokenizer(folder: str) -> None:
  """Writes HF tokenizer files (GemmaTokenizer + `<image>`) into `folder`.

  Usable as `write_tokenizer` of `checkpoints.store.save_checkpoint`.
  """
  from transformers import AddedToken, GemmaTokenizer
  os.makedirs(folder, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, "tokenizer.model"), "wb") as f:
      f.write(train_spm())
    # GemmaTokenizer(vocab_file=...) builds a wrong vocabulary; a folder works.
    tok = GemmaTokenizer.from_pretrained(tmp)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(IMAGE_TOKEN, normalized=False, special=True)]})
    tok.save_pretrained(folder)
    shutil.copy2(os.path.join(tmp, "tokenizer.model"),
                 os.path.join(folder, "tokenizer.model"))


def load_tokenizer(folder: str | None = None):
  """HF tokenizer from `folder`, or a fresh one (written to a temp folder)."""
  from autoselect_jax.data.processor import load_tokenizer as load
  if folder is not None:
    return load(folder)
  with tempfile.TemporaryDirectory() as tmp:
    write_tokenizer(tmp)
    return load(tmp)
