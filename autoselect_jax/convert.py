"""Converts a local PaliGemma checkpoint into this project's checkpoint folder.

  python -m autoselect_jax.convert --hf HF_FOLDER --out DIR
  python -m autoselect_jax.convert --big-vision FILE.npz --tokenizer TOK --out DIR

HF folders: config.json (and generation_config.json, if there, for the
special-token ids) plus model.safetensors or sharded safetensors with
model.safetensors.index.json, and the tokenizer files. big_vision: the .npz and
`--tokenizer`, either the SentencePiece `.model` file or an HF tokenizer folder.
Pickle files are never loaded. On any error nothing is left at --out.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile

import numpy as np

from autoselect_jax.checkpoints import big_vision, hf, store
from autoselect_jax.checkpoints.safetensors_io import SafetensorsFolder
from autoselect_jax.checkpoints.tokenizer_files import copy_tokenizer_files, write_tokenizer
from autoselect_jax.checkpoints.tree import ConversionError


def convert_hf(folder: str, out: str, dtype: str = "float32") -> None:
  config = hf.read_hf_config(folder)
  tensors = SafetensorsFolder(folder)
  params = hf.hf_to_params(tensors, config)
  store.save_checkpoint(out, params, config, source=f"hf:{os.path.abspath(folder)}",
                        write_tokenizer=functools.partial(copy_tokenizer_files,
                                                          folder),
                        dtype=_np_dtype(dtype))


def convert_big_vision(npz: str, tokenizer: str, out: str,
                       dtype: str = "float32") -> None:
  if not os.path.exists(tokenizer):
    raise FileNotFoundError(f"--tokenizer {tokenizer} does not exist")
  flat = big_vision.read_npz(npz)
  ids = _special_ids(tokenizer)
  config = big_vision.config_from_big_vision(flat, **ids)
  params = big_vision.big_vision_to_params(flat, config)
  store.save_checkpoint(out, params, config,
                        source=f"big_vision:{os.path.abspath(npz)}",
                        write_tokenizer=functools.partial(write_tokenizer,
                                                          tokenizer),
                        dtype=_np_dtype(dtype))


def _special_ids(tokenizer_source: str) -> dict[str, int]:
  """bos/eos/pad/<image> ids of the tokenizer the checkpoint will carry."""
  from autoselect_jax.data.processor import IMAGE_TOKEN, load_tokenizer
  with tempfile.TemporaryDirectory() as tmp:
    write_tokenizer(tokenizer_source, tmp)
    tok = load_tokenizer(tmp)
  return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
          "pad_token_id": tok.pad_token_id,
          "image_token_id": tok.convert_tokens_to_ids(IMAGE_TOKEN)}


def _np_dtype(name: str):
  if name == "float32":
    return np.float32
  if name == "bfloat16":
    import ml_dtypes
    return ml_dtypes.bfloat16
  raise ValueError(f"--param-dtype must be float32 or bfloat16, got {name!r}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m autoselect_jax.convert", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  src = parser.add_mutually_exclusive_group(required=True)
  src.add_argument("--hf", metavar="FOLDER", help="HF PaliGemma folder")
  src.add_argument("--big-vision", metavar="FILE.npz",
                   help="big_vision PaliGemma checkpoint")
  parser.add_argument("--tokenizer", help="with --big-vision: SentencePiece "
                      ".model file or HF tokenizer folder")
  parser.add_argument("--out", required=True, help="new checkpoint folder")
  parser.add_argument("--param-dtype", default="float32",
                      choices=("float32", "bfloat16"),
                      help="dtype the parameters are stored in")
  args = parser.parse_args(argv)
  try:
    if args.hf:
      if args.tokenizer:
        parser.error("--tokenizer goes with --big-vision; an HF folder "
                     "carries its own")
      convert_hf(args.hf, args.out, args.param_dtype)
    else:
      if not args.tokenizer:
        parser.error("--big-vision needs --tokenizer (the PaliGemma "
                     "SentencePiece .model file or an HF tokenizer folder)")
      convert_big_vision(args.big_vision, args.tokenizer, args.out,
                         args.param_dtype)
  except (ConversionError, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"convert: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
