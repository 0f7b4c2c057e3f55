"""Shared fixtures: tiny random HF PaliGemmas and their converted checkpoints."""

from __future__ import annotations

import getpass
import os
import sys
import tempfile

# A persistent XLA compilation cache for test runs only: its own folder under
# the system temp dir (never the user's own JAX cache), shared by this
# process and the training subprocesses the tests start (they inherit the
# environment). Set AUTOSELECT_TEST_XLA_CACHE to another folder, or to "" to
# turn it off.
_CACHE = os.environ.setdefault(
    "AUTOSELECT_TEST_XLA_CACHE",
    os.path.join(tempfile.gettempdir(),
                 f"autoselect_jax-test-xla-cache-{getpass.getuser()}"))
if _CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  # Small programs too: most of the suite's compiles take well under a second.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402  (after the cache environment is set)
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

# Float32 tolerances (1e-4 .. 1e-6) assume float32 matmuls. On GPUs JAX's
# default precision runs them in TF32 (measured on an H200: 4.8e-3 logit
# difference against HF); CPUs are unaffected.
jax.config.update("jax_default_matmul_precision", "highest")

# The parity references: MQA (Gemma-2B's layout), GQA and MHA (qkv_einsum).
HF_VARIANTS = {"mqa": dict(kv_heads=1), "gqa": dict(kv_heads=2),
               "mha": dict(kv_heads=4)}


@pytest.fixture(scope="session")
def hf_factory(tmp_path_factory):
  """name -> (folder, HF model, HF processor, converted checkpoint folder)."""
  cache = {}

  def make(name="mqa"):
    if name not in cache:
      import hf_reference
      from autoselect_jax import convert
      root = tmp_path_factory.mktemp(f"hf_{name}")
      folder = str(root / "hf")
      model, processor = hf_reference.build_hf_paligemma(
          folder, **HF_VARIANTS[name])
      ckpt = str(root / "ckpt")
      convert.convert_hf(folder, ckpt)
      cache[name] = (folder, model, processor, ckpt)
    return cache[name]

  return make


@pytest.fixture(scope="session")
def hf_mqa(hf_factory):
  return hf_factory("mqa")


@pytest.fixture(scope="session")
def mqa_scorer(hf_mqa, tmp_path_factory):
  """An exported random Scorer (1 block, 2 heads) for `hf_mqa`'s encoder."""
  import jax.numpy as jnp
  from autoselect_jax.checkpoints import store
  from autoselect_jax.checkpoints.scorer import export_scorer
  from autoselect_jax.method.modules import Scorer
  from autoselect_jax.models import VLM
  vlm = VLM(store.load_config(hf_mqa[3]))
  dummy = jnp.zeros((1, vlm.num_visual_tokens, vlm.visual_width))
  scorer = Scorer(num_layers=1, num_heads=2, mlp_ratio=2.0)
  params = scorer.init(jax.random.key(7), dummy)["params"]
  out = str(tmp_path_factory.mktemp("scorer") / "scorer")
  export_scorer(out, params, {
      "format": "autoselect_jax.scorer", "version": 1,
      "scorer": {"num_layers": 1, "width": None, "num_heads": 2,
                 "mlp_ratio": 2.0, "eps": 1e-6},
      "position_policy": "original", "vlm": vlm.config.to_dict()})
  return out


def tiny_autoselect(variant: str = "tiny"):
  """(AutoSelect, its params, frozen VLM params, 2 random images) on a tiny
  random VLM (32 px images, N = 16): the method tests' common setup."""
  from autoselect_jax import AutoSelect, Denoiser, Scorer
  from autoselect_jax.models import VLM, get_variant
  vlm = VLM(get_variant(variant))
  frozen = jax.jit(vlm.init_params)(jax.random.key(0))
  method = AutoSelect(vlm, Scorer(num_heads=4), Denoiser(num_heads=4))
  params = jax.jit(method.init)(jax.random.key(1))
  s = vlm.image_size
  images = jax.random.uniform(jax.random.key(2), (2, s, s, 3), minval=-1.0,
                              maxval=1.0)
  return method, params, frozen, images
