"""Variance-preserving noise gate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax import vp_noise_gate

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
