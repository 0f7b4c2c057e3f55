"""Mesh construction and FSDP rules (8 CPU devices in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from autoselect_jax.training.sharding import make_mesh, param_spec


def test_fsdp_rule_shards_largest_divisible_dim():
  assert param_spec((1152, 4304), 4) == P(None, "fsdp")
  assert param_spec((257216, 2048), 8) == P("fsdp", None)
  assert param_spec((27, 1152, 16, 72), 8) == P(None, "fsdp", None, None)
  assert param_spec((1152,), 8) == P()             # Small: replicated.
  assert param_spec((4097, 4099), 2) == P()        # Nothing divides.
  assert param_spec((1152, 4304), 1) == P()


def test_mesh_errors():
  with pytest.raises(ValueError, match="does not cover the 1 devices"):
    make_mesh(2, 1)
  with pytest.raises(ValueError, match="at most one of data, fsdp"):
    make_mesh(-1, -1)


def test_mesh_and_fsdp_placement_on_8_devices():
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from autoselect_jax.models import VLM, get_variant
      from autoselect_jax.training import sharding as shd
      mesh = shd.make_mesh(data=2, fsdp=4)
      assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
      big = shd.param_shardings(
          VLM(get_variant("paligemma-3b-224")).abstract_params(), mesh, "fsdp")
      P = jax.sharding.PartitionSpec
      assert big["llm"]["embedder"]["input_embedding"].spec == P("fsdp", None)
      assert big["llm"]["layers"]["mlp"]["linear"].spec == P(None, "fsdp", None)
      assert big["img"]["Transformer"]["encoder_norm"]["scale"].spec == P()
      vlm = VLM(get_variant("tiny"))
      s = shd.param_shardings(vlm.abstract_params(), mesh, "fsdp",
                              min_fsdp_size=0)
      params = jax.jit(vlm.init_params, out_shardings=s)(jax.random.key(0))
      shard = params["llm"]["embedder"]["input_embedding"].addressable_shards[0]
      assert shard.data.shape == (80, 32), shard.data.shape
      host = shd.to_host(params)
      emb = host["llm"]["embedder"]["input_embedding"]
      assert isinstance(emb, np.ndarray) and emb.shape == (320, 32)
      np.testing.assert_array_equal(
          emb, np.asarray(params["llm"]["embedder"]["input_embedding"]))
      batch = shd.global_batch({"x": np.arange(16).reshape(8, 2)}, mesh)
      assert batch["x"].addressable_shards[0].data.shape == (1, 2)
      print("ok")
      """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", code], env=env,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.strip().endswith("ok")
