"""The converted-checkpoint folder that every command takes as `--checkpoint DIR`.

  DIR/model_config.json   {"format": "autoselect_jax.paligemma", "version": 1,
                            "model": PaliGemmaConfig, "source": ...}
  DIR/params/             Orbax checkpoint of the parameter tree
  DIR/tokenizer*.json ... HF tokenizer / processor files (AutoTokenizer loads them)

Folders are written to a temporary sibling and renamed into place at the end,
so a failed or interrupted conversion leaves nothing at the destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from autoselect_jax.models.config import PaliGemmaConfig

FORMAT = "autoselect_jax.paligemma"
VERSION = 1
CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"


@contextlib.contextmanager
def atomic_directory(out_dir: str):
  """Yields a temporary folder that becomes `out_dir` only on success."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir)
                                  or os.listdir(out_dir)):
    raise FileExistsError(f"output {out_dir} already exists and is not an "
                          "empty folder; choose a new --out")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-",
                         dir=parent)
  try:
    yield tmp
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # Empty (checked above).
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def save_checkpoint(out_dir: str, params, config: PaliGemmaConfig, *,
                    source: str, write_tokenizer: Callable[[str], None],
                    dtype=np.float32) -> None:
  """Writes params (cast to `dtype`), config and tokenizer files atomically."""
  config.validate()
  params = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), params)
  with atomic_directory(out_dir) as tmp:
    write_tokenizer(tmp)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, PARAMS_DIR), params)
      ckptr.wait_until_finished()
    meta = {"format": FORMAT, "version": VERSION, "model": config.to_dict(),
            "param_dtype": np.dtype(dtype).name, "source": source}
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(meta, f, indent=2)


def load_config(ckpt_dir: str) -> PaliGemmaConfig:
  path = os.path.join(ckpt_dir, CONFIG_FILE)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"checkpoint folder {ckpt_dir} does not exist")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: {ckpt_dir} is not a converted checkpoint (make one "
        "with `python -m autoselect_jax.convert --hf DIR --out DIR`)")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or meta.get("version") != VERSION:
    raise ValueError(f"{path}: unsupported format {meta.get('format')!r} "
                     f"version {meta.get('version')!r}")
  return PaliGemmaConfig.from_dict(meta["model"])


def load_params(ckpt_dir: str, config: PaliGemmaConfig | None = None,
                dtype=jnp.float32, sharding=None):
  """Restores the parameter tree as jax arrays of `dtype`.

  `sharding`: optional pytree (or single) jax.sharding.Sharding to restore into.
  """
  from autoselect_jax.models.paligemma import VLM
  config = config or load_config(ckpt_dir)
  abstract = VLM(config).abstract_params()
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if isinstance(sharding, jax.sharding.Sharding):
    sharding = jax.tree_util.tree_map(lambda _: sharding, abstract)
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, dtype, sharding=s),
      abstract, sharding)
  path = os.path.abspath(os.path.join(ckpt_dir, PARAMS_DIR))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is missing: incomplete checkpoint")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, target)
