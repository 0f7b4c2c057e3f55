"""The training gates: the variance-preserving noise gate and its ablations
(no-noise VP, plain scale, Gumbel straight-through top-K)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import soft_topk, vp_noise_gate
from autoselect_jax.method import (gate_tokens, gumbel_ste_gate,
                                   gumbel_topk_mask, scale_gate)

RNG = jax.random.key(0)


def _x(shape=(2, 16, 64), seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


def test_alpha_one_is_identity_and_zero_is_pure_noise():
  x = _x()
  ones, zeros = jnp.ones(x.shape[:2]), jnp.zeros(x.shape[:2])
  np.testing.assert_array_equal(vp_noise_gate(x, ones, RNG), x)
  eps = jax.random.normal(RNG, x.shape)
  np.testing.assert_array_equal(vp_noise_gate(x, zeros, RNG), eps)
  # Mixed: each token on its own.
  alpha = jnp.zeros(x.shape[:2]).at[:, ::2].set(1.0)
  out = vp_noise_gate(x, alpha, RNG)
  np.testing.assert_array_equal(out[:, ::2], x[:, ::2])
  np.testing.assert_array_equal(out[:, 1::2], eps[:, 1::2])


def test_noise_is_fresh_per_key():
  x, alpha = _x(), jnp.full((2, 16), 0.5)
  a = vp_noise_gate(x, alpha, jax.random.key(1))
  b = vp_noise_gate(x, alpha, jax.random.key(2))
  assert float(jnp.abs(a - b).mean()) > 0.3


@pytest.mark.parametrize("a", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_variance_preserved_for_unit_variance_inputs(a):
  x = _x((4, 64, 256), seed=3)            # 65k samples per alpha
  out = vp_noise_gate(x, jnp.full((4, 64), a), jax.random.key(4))
  var = float(jnp.var(out))
  assert abs(var - 1.0) < 0.03, var
  # The signal fraction: corr(out, x) = sqrt(alpha).
  corr = float(jnp.mean(out * x) / jnp.sqrt(jnp.mean(x * x) * var))
  assert abs(corr - np.sqrt(a)) < 0.02, corr


def test_std_noise_scale():
  x = 5.0 * _x((2, 32, 128), seed=5) + 3.0
  out = vp_noise_gate(x, jnp.zeros((2, 32)), RNG, noise_scale="std")
  np.testing.assert_allclose(jnp.std(out, axis=(1, 2)), 5.0, rtol=0.05)
  plain = vp_noise_gate(x, jnp.zeros((2, 32)), RNG)
  np.testing.assert_allclose(jnp.std(plain), 1.0, rtol=0.05)


def test_gradients_finite_at_the_ends():
  x, w = _x(), _x(seed=7)
  eps = jax.random.normal(RNG, x.shape)
  f = jax.jit(jax.grad(lambda al: jnp.sum(w * vp_noise_gate(x, al, RNG))))
  for value in (0.0, 1e-12, 0.5, 1.0 - 1e-9, 1.0):
    g = np.asarray(f(jnp.full(x.shape[:2], value)))
    assert np.all(np.isfinite(g)) and np.all(np.abs(g) > 0), value
  # The derivative sees alpha clipped to [1e-6, 1 - 1e-6] (default).
  for value, a in ((1.0, 1.0 - 1e-6), (0.5, 0.5), (0.0, 1e-6)):
    want = jnp.sum(w * (0.5 / np.sqrt(a) * x - 0.5 / np.sqrt(1 - a) * eps),
                   -1)
    np.testing.assert_allclose(f(jnp.full(x.shape[:2], value)), want,
                               rtol=2e-3, atol=1e-3)


def test_keeps_dtype():
  x = _x().astype(jnp.bfloat16)
  assert vp_noise_gate(x, jnp.full((2, 16), 0.3), RNG).dtype == jnp.bfloat16


def test_bad_inputs():
  x = _x()
  with pytest.raises(ValueError, match=r"x must be \(B, N, D\)"):
    vp_noise_gate(x[0], jnp.ones((16,)), RNG)
  with pytest.raises(ValueError, match=r"alpha must be \(B, N\)"):
    vp_noise_gate(x, jnp.ones((2, 15)), RNG)
  with pytest.raises(ValueError, match=r"alpha must be \(B, N\)"):
    vp_noise_gate(x, jnp.ones((2, 16, 1)), RNG)
  with pytest.raises(ValueError, match="noise_scale must be one of"):
    vp_noise_gate(x, jnp.ones((2, 16)), RNG, noise_scale="max")
  with pytest.raises(ValueError, match="min_alpha must be in"):
    vp_noise_gate(x, jnp.ones((2, 16)), RNG, min_alpha=0.0)


# Hand-checked: alpha in {1, 0.25, 0} has exact square roots {1, 0.5, 0}.
X_SMALL = jnp.array([[[1.0, 2.0], [3.0, 4.0], [-2.0, 0.5]]])     # (1, 3, 2)
A_SMALL = jnp.array([[1.0, 0.25, 0.0]])


def test_scale_gate_is_alpha_times_x():
  np.testing.assert_array_equal(
      scale_gate(X_SMALL, A_SMALL),
      [[[1.0, 2.0], [0.75, 1.0], [0.0, 0.0]]])
  x, alpha = _x(), jax.random.uniform(jax.random.key(8), (2, 16))
  np.testing.assert_array_equal(scale_gate(x, alpha), alpha[..., None] * x)
  g = jax.grad(lambda a: jnp.sum(scale_gate(x, a)))(alpha)
  np.testing.assert_allclose(g, jnp.sum(x, -1), rtol=1e-6)
  with pytest.raises(ValueError, match=r"alpha must be \(B, N\)"):
    scale_gate(x, alpha[:, :3])


def test_no_noise_vp_gate_is_sqrt_alpha_times_x():
  want = [[[1.0, 2.0], [1.5, 2.0], [0.0, 0.0]]]
  for key in (1, 2):  # No noise: the key does not matter.
    np.testing.assert_array_equal(
        vp_noise_gate(X_SMALL, A_SMALL, jax.random.key(key), noise=False),
        want)
  g = jax.jit(jax.grad(lambda a: jnp.sum(
      vp_noise_gate(X_SMALL, a, RNG, noise=False))))(A_SMALL)
  # d/da sqrt(a) x = x / (2 sqrt(a)), at a clipped to [1e-6, 1].
  np.testing.assert_allclose(
      g, [[3.0 / 2, 7.0 / (2 * 0.5), -1.5 / (2 * 1e-3)]], rtol=1e-4)


def test_gumbel_mask_is_hard_top_k_of_the_perturbed_scores():
  """Scores 100 apart: Gumbel noise (scale ~1) cannot reorder them, so the
  mask is the plain top-k, by hand."""
  s = jnp.array([[0.0, 300.0, 100.0, 500.0, 200.0, 400.0],
                 [500.0, 400.0, 300.0, 200.0, 100.0, 0.0]])
  m, soft = gumbel_topk_mask(s, 3, 0.5, RNG)
  np.testing.assert_array_equal(m, [[0, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0]])
  np.testing.assert_allclose(jnp.sum(soft, -1), 3.0, rtol=1e-6)
  # Random scores, static and traced k: exactly k ones per row, at the top-k
  # of scores + g (g from the same key).
  s = jax.random.normal(jax.random.key(11), (4, 20))
  g = jax.random.gumbel(RNG, s.shape)
  traced = jax.jit(lambda s, k: gumbel_topk_mask(s, k, 0.5, RNG)[0])
  for k in (1, 5, 20):
    for got in (gumbel_topk_mask(s, k, 0.5, RNG)[0],
                traced(s, jnp.int32(k))):
      got = np.asarray(got)
      assert set(np.unique(got)) <= {0.0, 1.0}
      np.testing.assert_array_equal(got.sum(-1), k)
      top = np.argsort(-np.asarray(s + g), -1)[:, :k]
      np.testing.assert_array_equal(np.take_along_axis(got, top, -1), 1.0)
  # Fresh noise per key: another key keeps another set.
  a = gumbel_topk_mask(s, 5, 0.5, jax.random.key(1))[0]
  b = gumbel_topk_mask(s, 5, 0.5, jax.random.key(2))[0]
  assert not np.array_equal(a, b)


def test_gumbel_mask_gradient_is_the_soft_relaxations():
  s = jax.random.normal(jax.random.key(12), (3, 10))
  w = jax.random.normal(jax.random.key(13), (3, 10))
  g = jax.random.gumbel(RNG, s.shape)
  ste = jax.grad(lambda s: jnp.sum(w * gumbel_topk_mask(s, 4, 0.7, RNG)[0]))(s)
  soft = jax.grad(lambda s: jnp.sum(w * soft_topk(s + g, 4, 0.7)))(s)
  np.testing.assert_allclose(ste, soft, rtol=1e-5, atol=1e-7)
  assert np.all(np.abs(np.asarray(ste)) > 0)


def test_gumbel_ste_gate_keeps_k_tokens_and_noises_the_rest():
  x, s = _x(), jax.random.normal(jax.random.key(14), (2, 16))
  out, soft = gumbel_ste_gate(x, s, 5, 0.5, RNG)
  r_gumbel, r_eps = jax.random.split(RNG)
  m = np.asarray(gumbel_topk_mask(s, 5, 0.5, r_gumbel)[0], bool)
  eps = jax.random.normal(r_eps, x.shape)
  np.testing.assert_array_equal(np.asarray(out)[m], np.asarray(x)[m])
  np.testing.assert_array_equal(np.asarray(out)[~m], np.asarray(eps)[~m])
  np.testing.assert_array_equal(m.sum(-1), 5)
  quiet, _ = gumbel_ste_gate(x, s, 5, 0.5, RNG, noise=False)
  np.testing.assert_array_equal(np.asarray(quiet)[~m], 0.0)
  np.testing.assert_array_equal(np.asarray(quiet)[m], np.asarray(x)[m])
  # The gradient reaches every score through the relaxation.
  w = _x(seed=15)
  gs = jax.jit(jax.grad(lambda s: jnp.sum(
      w * gumbel_ste_gate(x, s, 5, 0.5, RNG)[0])))(s)
  assert np.all(np.isfinite(np.asarray(gs))) and np.all(np.abs(gs) > 0)


def test_gate_dispatch():
  x, s = _x(), jax.random.normal(jax.random.key(16), (2, 16))
  alpha = soft_topk(s, 4, 0.5)
  out, a = gate_tokens("vp", x, s, 4, 0.5, RNG)
  np.testing.assert_array_equal(a, alpha)
  np.testing.assert_array_equal(out, vp_noise_gate(x, alpha, RNG))
  out, _ = gate_tokens("vp", x, s, 4, 0.5, RNG, noise=False)
  np.testing.assert_array_equal(out, vp_noise_gate(x, alpha, RNG,
                                                   noise=False))
  for noise in (True, False):  # The scale gate never adds noise.
    out, _ = gate_tokens("scale", x, s, 4, 0.5, RNG, noise=noise)
    np.testing.assert_array_equal(out, scale_gate(x, alpha))
  out, a = gate_tokens("gumbel_ste", x, s, 4, 0.5, RNG, noise_scale="std")
  want, soft = gumbel_ste_gate(x, s, 4, 0.5, RNG, "std")
  np.testing.assert_array_equal(out, want)
  np.testing.assert_array_equal(a, soft)
  with pytest.raises(ValueError, match="gate must be one of"):
    gate_tokens("gumbel", x, s, 4, 0.5, RNG)
  with pytest.raises(ValueError, match=r"scores must be \(B, N\)"):
    gate_tokens("gumbel_ste", x, s[:, :3], 4, 0.5, RNG)
