"""The converted-checkpoint folder that every command takes as `--checkpoint DIR`.

  DIR/model_config.json   {"format": "autoselect_jax.paligemma", "version": 1,
                            "model": PaliGemmaConfig, "source": ...}
  DIR/params/             Orbax checkpoint of the parameter tree
  DIR/tokenizer*.json ... HF tokenizer / processor files (AutoTokenizer loads them)

Folders are written to a temporary sibling and renamed into place at the end,
so a failed or interrupted conversion leaves nothing at the destination.

Also the helpers that tell a URL (gs://bucket/run, written through
etils.epath) from a local path, shared by everything a training run writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


# URL schemes a run may write to -> (fsspec's name for its filesystem, the
# pip package that provides it). etils.epath knows s3://, az://, hf:// too,
# but Orbax's array data (TensorStore) reaches only GCS and local disk.
REMOTE_SCHEMES = {"gs": ("gcs", "gcsfs")}


def is_remote(path) -> bool:
  """True for a URL (gs://bucket/run): written through etils.epath, since
  os.path would take it for a relative local path ('gs:/bucket/run')."""
  return "://" in os.fspath(path)


def remote_problem(url: str) -> str | None:
  """Why `url` cannot be read and written here, naming the package to
  install; None if it can. Asked up front, so that a missing package fails
  before a run's work, not at its first save.

  epath reaches gs:// through gcsfs (fsspec), or tf.io.gfile when
  TensorFlow is installed; Orbax also needs google-cloud-storage for GCS
  (gcsfs depends on it).
  """
  scheme = url.split("://", 1)[0]
  if scheme not in REMOTE_SCHEMES:
    return (f"{url}: unsupported URL scheme {scheme}:// (supported: "
            + ", ".join(f"{k}://" for k in REMOTE_SCHEMES)
            + " or a local folder: Orbax checkpoints reach no other store)")
  fs_name, package = REMOTE_SCHEMES[scheme]
  if _fsspec_has(fs_name) or _tf_gcs_usable():
    return None
  return (f"{url}: writing to {scheme}:// needs the {package} package, "
          f"which is not installed here (pip install {package})")


def _fsspec_has(name: str) -> bool:
  import fsspec
  try:
    fsspec.get_filesystem_class(name)
  except (ImportError, ValueError):
    return False
  return True


def _tf_gcs_usable() -> bool:
  """epath's TensorFlow backend is on (as epath decides) and Orbax's GCS
  client library is there."""
  if os.environ.get("EPATH_USE_TF", "").lower() in ("false", "no", "f", "0"):
    return False
  return _importable("tensorflow") and _importable("google.cloud.storage")


def _importable(module: str) -> bool:
  import importlib.util
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


@contextlib.contextmanager
def atomic_directory(out_dir: str, *, replace: bool = False):
  """Yields a temporary folder that becomes `out_dir` only on success.

  Everything in it gets the user's normal permissions (folders 0777, files
  0666, less the umask, as `os.makedirs` and `open` give; some writers use
  0700 / 0600), so others on a shared machine can read the result.
  replace=False: an existing non-empty `out_dir` is an error. replace=True:
  an existing `out_dir` is swapped for the new folder once that is complete
  (the old one is renamed aside, then deleted).
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or (
      not replace and os.listdir(out_dir))):
    raise FileExistsError(f"output {out_dir} already exists and is not an "
                          "empty folder; choose a new --out")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = _sibling(out_dir, "tmp")
  os.mkdir(tmp)  # Mode 0777 less the umask (mkdtemp would give 0700).
  try:
    yield tmp
    _normal_permissions(tmp)
    old = None
    if os.path.isdir(out_dir):
      if os.listdir(out_dir):  # Only with replace=True (checked above).
        old = _sibling(out_dir, "old")
        os.rename(out_dir, old)
      else:
        os.rmdir(out_dir)
    try:
      os.rename(tmp, out_dir)
    except BaseException:
      if old is not None:
        os.rename(old, out_dir)
      raise
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _umask() -> int:
  try:  # Linux: read it without changing it.
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _normal_permissions(root: str) -> None:
  """Folders 0777 and files 0666 (keeping execute bits), less the umask."""
  mask = _umask()
  os.chmod(root, 0o777 & ~mask)
  for folder, dirs, files in os.walk(root):
    for d in dirs:
      os.chmod(os.path.join(folder, d), 0o777 & ~mask)
    for name in files:
      path = os.path.join(folder, name)
      if not os.path.islink(path):
        mode = os.stat(path).st_mode & 0o777
        os.chmod(path, (mode | 0o666) & ~mask)


def _sibling(path: str, tag: str) -> str:
  """A fresh hidden name next to `path` (not created)."""
  return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}."
                      f"{tag}-{os.getpid()}-{os.urandom(4).hex()}")


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
