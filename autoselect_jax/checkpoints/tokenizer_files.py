"""Copies or builds the HF tokenizer files that a checkpoint folder carries."""

from __future__ import annotations

import os
import shutil
import tempfile

TOKENIZER_FILES = (
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "processor_config.json",
    "preprocessor_config.json", "chat_template.json", "chat_template.jinja",
)
IMAGE_TOKEN = "<image>"


def copy_tokenizer_files(src: str, dst: str) -> None:
  """Copies the tokenizer/processor files of an HF folder into `dst`."""
  found = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(src, n))]
  if not {"tokenizer.model", "tokenizer.json"} & set(found):
    raise FileNotFoundError(
        f"{src} holds no tokenizer (tokenizer.json or tokenizer.model)")
  for name in found:
    shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def write_tokenizer(source: str, dst: str) -> None:
  """`source`: an HF tokenizer folder, or a SentencePiece `.model` file (as
  shipped with big_vision), which becomes a GemmaTokenizer with `<image>`."""
  if os.path.isdir(source):
    copy_tokenizer_files(source, dst)
    return
  if not os.path.isfile(source):
    raise FileNotFoundError(f"tokenizer {source} does not exist")
  from transformers import AddedToken, GemmaTokenizer
  with tempfile.TemporaryDirectory() as tmp:
    # GemmaTokenizer(vocab_file=...) builds a wrong vocabulary; a folder works.
    shutil.copy2(source, os.path.join(tmp, "tokenizer.model"))
    tok = GemmaTokenizer.from_pretrained(tmp)
  tok.add_special_tokens({"additional_special_tokens": [
      AddedToken(IMAGE_TOKEN, normalized=False, special=True)]})
  tok.save_pretrained(dst)
  shutil.copy2(source, os.path.join(dst, "tokenizer.model"))
