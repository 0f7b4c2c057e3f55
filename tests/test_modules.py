"""Scorer and Denoiser: shapes, equivariance, per-token independence, init;
the global-attention Denoiser ablation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import Denoiser, Scorer
from autoselect_jax.models.attention import SelfAttention

X = jax.random.normal(jax.random.key(0), (2, 12, 32))


def _perturb(params, seed=1, scale=0.3):
  """Random non-zero values everywhere (the Denoiser starts at zero)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [
      x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def test_scorer_shape_and_permutation_equivariance():
  scorer = Scorer(num_heads=4)
  params = scorer.init(jax.random.key(1), X)
  f = jax.jit(scorer.apply)
  s = f(params, X)
  assert s.shape == (2, 12) and s.dtype == jnp.float32
  perm = np.random.default_rng(0).permutation(12)
  np.testing.assert_allclose(f(params, X[:, perm]), s[:, perm], atol=1e-5)
  # Global attention: token 0 changes the other tokens' scores.
  s2 = f(params, X.at[:, 0].set(jax.random.normal(jax.random.key(9), (2, 32))))
  assert float(jnp.abs(s2[:, 1:] - s[:, 1:]).max()) > 1e-4


def test_scorer_defaults_and_width():
  assert (Scorer().num_layers, Scorer().num_heads, Scorer().mlp_ratio) == (
      2, 16, 4.0)
  p = Scorer(num_heads=4).init(jax.random.key(1), X)["params"]
  assert "input_proj" not in p and set(p) >= {"block_0", "block_1", "head"}
  assert p["block_0"]["mlp_in"]["kernel"].shape == (32, 128)
  p = Scorer(num_layers=1, width=16, num_heads=4, mlp_ratio=2).init(
      jax.random.key(1), X)["params"]
  assert p["input_proj"]["kernel"].shape == (32, 16)
  assert p["block_0"]["mlp_in"]["kernel"].shape == (16, 32)
  assert "block_1" not in p


def test_scorer_bfloat16_compute():
  scorer = Scorer(num_heads=4, dtype=jnp.bfloat16)
  params = scorer.init(jax.random.key(1), X)
  s = scorer.apply(params, X)
  assert s.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(s)))


def test_denoiser_starts_as_identity():
  den = Denoiser(num_heads=4)
  params = den.init(jax.random.key(2), X)
  np.testing.assert_array_equal(den.apply(params, X), X)
  assert "query" not in params["params"]["block"]["attn"]


def test_denoiser_output_at_token_i_depends_on_token_i_only():
  den = Denoiser(num_heads=4)
  params = _perturb(den.init(jax.random.key(2), X))
  f = jax.jit(den.apply)
  y = f(params, X)
  assert y.shape == X.shape
  assert float(jnp.abs(y - X).max()) > 1e-2   # no longer the identity
  j = 5
  y2 = f(params, X.at[:, j].set(jax.random.normal(jax.random.key(3), (2, 32))))
  others = np.arange(12) != j
  np.testing.assert_array_equal(y2[:, others], y[:, others])
  assert float(jnp.abs(y2[:, j] - y[:, j]).max()) > 1e-2


def test_global_denoiser_starts_as_identity_and_leaks_across_tokens():
  """The ablation: the same block under global attention. It starts as the
  identity too, but once trained token i's output reads every token, where
  the diagonal Denoiser's reads token i alone."""
  glob = Denoiser(num_heads=4, attention="global")
  params = glob.init(jax.random.key(2), X)
  np.testing.assert_array_equal(glob.apply(params, X), X)
  attn = params["params"]["block"]["attn"]
  assert {"query", "key", "value", "out"} <= set(attn)
  assert not np.any(np.asarray(attn["out"]["kernel"]))
  diag = Denoiser(num_heads=4)
  diag_params = diag.init(jax.random.key(2), X)
  # The diagonal Denoiser's parameters are the global one's minus query/key.
  shapes = lambda t: jax.tree_util.tree_map(jnp.shape, t)
  glob_no_qk = {**params["params"]["block"],
                "attn": {k: attn[k] for k in ("value", "out")}}
  assert shapes(glob_no_qk) == shapes(diag_params["params"]["block"])
  j, others = 5, np.arange(12) != 5
  x2 = X.at[:, j].set(jax.random.normal(jax.random.key(3), (2, 32)))
  for module, p, leaks in ((glob, params, True), (diag, diag_params, False)):
    p = _perturb(p)
    f = jax.jit(module.apply)
    change = np.abs(np.asarray(f(p, x2) - f(p, X)))[:, others]
    if leaks:
      assert change.max() > 1e-3, change.max()
    else:
      assert change.max() == 0.0, change.max()


def test_self_only_attention_equals_identity_masked_attention():
  full = SelfAttention(num_heads=4)
  params = full.init(jax.random.key(4), X)["params"]
  eye = jnp.broadcast_to(jnp.eye(12, dtype=bool), (2, 12, 12))
  masked = full.apply({"params": params}, X, eye)
  own = {k: params[k] for k in ("value", "out")}
  self_only = SelfAttention(num_heads=4, self_only=True).apply({"params": own}, X)
  np.testing.assert_allclose(self_only, masked, atol=1e-6)


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"Scorer input must be \(B, N, Dv\)"):
    Scorer(num_heads=4).init(jax.random.key(0), X[0])
  with pytest.raises(ValueError, match=r"Denoiser input must be"):
    Denoiser(num_heads=4).init(jax.random.key(0), X[0])
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    Scorer(num_heads=5).init(jax.random.key(0), X)
  with pytest.raises(ValueError, match="Denoiser attention must be one of"):
    Denoiser(num_heads=4, attention="local").init(jax.random.key(0), X)
