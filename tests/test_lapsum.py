"""LapSum soft top-K: budget, range, limits, gradients, errors; tau schedule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from autoselect_jax import soft_topk, tau_schedule


@functools.lru_cache(maxsize=None)
def _jitted(k):
  return jax.jit(lambda s, tau: soft_topk(s, k, tau))


def _scores(rng, kind, b, n):
  """Random (B, N) float32 scores of a few hard kinds."""
  if kind == "normal":
    s = rng.normal(size=(b, n)) * 10.0 ** rng.uniform(-3, 3)
  elif kind == "ties":
    s = np.round(rng.normal(size=(b, n)) * 2.0)
  elif kind == "extreme":
    s = rng.choice([-1e4, -1.0, 0.0, 3.0, 1e4], size=(b, n))
  elif kind == "huge_spread":
    s = rng.uniform(-1e4, 1e4, size=(b, n))
  elif kind == "constant":
    s = np.full((b, n), rng.normal())
  else:
    raise ValueError(kind)
  return s.astype(np.float32)


KINDS = ("normal", "ties", "extreme", "huge_spread", "constant")


@pytest.mark.parametrize("n,ks", [(1, (1,)), (7, (1, 3, 7)),
                                  (128, (37, 127))])
def test_budget_and_range_float32(n, ks):
  """sum(alpha) = K within 1e-5 and alpha in [0, 1], over scales, ties,
  +-1e4 logits and tau from 1e-3 to 10."""
  rng = np.random.default_rng(n)
  for k in ks:
    f = _jitted(k)
    for kind in KINDS:
      for _ in range(6):
        b = 3
        s = _scores(rng, kind, b, n)
        tau = np.float32(10.0 ** rng.uniform(-3, 1))
        a = np.asarray(f(s, tau), np.float64)
        assert a.shape == (b, n)
        assert np.all(np.isfinite(a)), (kind, k, tau)
        assert a.min() >= 0.0 and a.max() <= 1.0
        np.testing.assert_allclose(a.sum(-1), k, rtol=0, atol=1e-5,
                                   err_msg=f"{kind} k={k} tau={tau}")


def test_budget_float64_large_n():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    for kind in KINDS:
      s = jnp.asarray(_scores(rng, kind, 2, 576), jnp.float64)
      for k, tau in ((64, 1e-3), (575, 2.0)):
        a = np.asarray(soft_topk(s, k, tau))
        assert a.dtype == np.float64
        np.testing.assert_allclose(a.sum(-1), k, rtol=0, atol=1e-9)


def test_matches_bisection_solution():
  """alpha = F((s - b) / tau) with b from a float64 bisection on numpy."""
  rng = np.random.default_rng(1)
  s = rng.normal(size=(4, 50)) * 3
  k, tau = 12, 0.7
  z = lambda b: (s - b[:, None]) / tau
  cdf = lambda x: np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0)),
                           1 - 0.5 * np.exp(-np.maximum(x, 0)))
  lo, hi = s.min(-1) - 50 * tau, s.max(-1) + 50 * tau
  for _ in range(200):  # sum F(z(b)) decreases in b.
    mid = (lo + hi) / 2
    big = cdf(z(mid)).sum(-1) > k
    lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
  want = cdf(z((lo + hi) / 2))
  got = np.asarray(soft_topk(jnp.asarray(s, jnp.float32), k, tau))
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_small_tau_is_hard_topk():
  rng = np.random.default_rng(2)
  s = rng.permutation(64).reshape(1, 64).astype(np.float32) * 0.1
  for k in (10,):
    a = np.asarray(soft_topk(s, k, 1e-3))[0]
    hard = np.zeros(64)
    hard[np.argsort(-s[0])[:k]] = 1.0
    np.testing.assert_allclose(a, hard, atol=1e-6)


def test_k_equals_n_and_1d_input():
  s = jnp.array([0.3, -2.0, 5.0])
  np.testing.assert_array_equal(soft_topk(s, 3, 0.5), np.ones(3))
  g = jax.grad(lambda s: soft_topk(s, 3, 0.5).sum())(s)
  np.testing.assert_array_equal(g, np.zeros(3))
  a1 = soft_topk(s, 2, 0.5)
  assert a1.shape == (3,)
  np.testing.assert_allclose(a1, soft_topk(s[None], 2, 0.5)[0], rtol=0,
                             atol=0)


def test_gradients_check_grads_float64():
  with jax.enable_x64(True):
    rng = np.random.default_rng(3)
    s = jnp.asarray(rng.normal(size=(2, 9)), jnp.float64)
    w = jnp.asarray(rng.normal(size=(2, 9)), jnp.float64)
    for k in (4,):
      check_grads(lambda s, tau: soft_topk(s, k, tau) * w, (s, 0.4), order=1,
                  modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def _reference_alpha(s, k, tau):
  """Independent reference: bisection for b, then one Newton step on the
  constraint from the (stopped) bisection root, differentiated by autodiff.
  At the root, the derivative of the Newton map equals the implicit-function
  gradient of b; no hand-written derivative is used. float64, (N,)."""
  def total(b):
    z = (s - b) / tau
    return jnp.sum(jnp.where(z < 0, 0.5 * jnp.exp(jnp.minimum(z, 0.0)),
                             1.0 - 0.5 * jnp.exp(-jnp.maximum(z, 0.0)))) - k

  def bisect(_, lohi):
    lo, hi = lohi
    mid = (lo + hi) / 2
    big = total(mid) > 0
    return jnp.where(big, mid, lo), jnp.where(big, hi, mid)

  sg = jax.lax.stop_gradient
  lo, hi = jax.lax.fori_loop(0, 200, bisect,
                             (sg(s.min() - 60 * tau), sg(s.max() + 60 * tau)))
  b0 = sg((lo + hi) / 2)
  b = b0 - total(b0) / jax.grad(total)(b0)
  z = (s - b) / tau
  return jnp.where(z < 0, 0.5 * jnp.exp(jnp.minimum(z, 0.0)),
                   1.0 - 0.5 * jnp.exp(-jnp.maximum(z, 0.0)))


def test_jacobian_matches_bruteforce_reference():
  with jax.enable_x64(True):
    rng = np.random.default_rng(4)
    for n, k, tau in ((6, 2, 0.5), (20, 19, 0.05)):
      s = jnp.asarray(rng.normal(size=n), jnp.float64)
      got = jax.jit(lambda s, t: (soft_topk(s, k, t), jax.jacrev(
          lambda s, t: soft_topk(s, k, t), argnums=(0, 1))(s, t)))
      want = jax.jit(lambda s, t: (_reference_alpha(s, k, t), jax.jacfwd(
          lambda s, t: _reference_alpha(s, k, t), argnums=(0, 1))(s, t)))
      alpha, (got_s, got_t) = got(s, tau)
      ref, (want_s, want_t) = want(s, tau)
      np.testing.assert_allclose(alpha, ref, atol=1e-12)
      np.testing.assert_allclose(got_s, want_s, atol=1e-9)
      np.testing.assert_allclose(got_t, want_t, atol=1e-9)


def test_gradients_finite_in_extremes():
  s = jnp.array([[1e4, 1e4, -1e4, 0.0, 0.0, 0.0, 3.0, -1e4],
                 [0.0] * 8], jnp.float32)
  w = jnp.arange(16.0).reshape(2, 8)
  for k in (1, 5):
    grad = jax.jit(jax.grad(lambda s, tau: jnp.sum(w * soft_topk(s, k, tau))))
    for tau in (1e-3, 1e-1, 5.0):
      g = grad(s, tau)
      assert np.all(np.isfinite(np.asarray(g))), (tau, k)
  # Every score gets a gradient at a moderate temperature: no dead tokens.
  s = jnp.asarray(np.random.default_rng(5).normal(size=(2, 32)) * 3,
                  jnp.float32)
  w = jnp.asarray(np.random.default_rng(6).normal(size=(2, 32)), jnp.float32)
  g = np.asarray(jax.jit(jax.grad(
      lambda s: jnp.sum(w * soft_topk(s, 8, 2.0))))(s))
  assert np.all(np.abs(g) > 0)
  # Adding a constant to the scores changes nothing: the gradient sums to 0.
  np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-5)


@pytest.mark.parametrize("k,match", [(0, "1 <= k <= N"), (-1, "1 <= k <= N"),
                                     (9, "1 <= k <= N"), (2.0, "Python int"),
                                     (True, "Python int"),
                                     (np.float32(3), "Python int")])
def test_bad_k(k, match):
  with pytest.raises(ValueError, match=match):
    soft_topk(jnp.zeros((2, 8)), k, 1.0)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
  with pytest.raises(ValueError, match="tau must be a positive"):
    soft_topk(jnp.zeros((2, 8)), 3, tau)


def test_bad_scores_shape():
  with pytest.raises(ValueError, match=r"scores must be \(N,\) or \(B, N\)"):
    soft_topk(jnp.zeros((2, 3, 8)), 3, 1.0)
  with pytest.raises(ValueError, match=r"scores must be \(N,\) or \(B, N\)"):
    soft_topk(jnp.float32(1.0), 1, 1.0)
  with pytest.raises(ValueError, match="tau must be a scalar"):
    soft_topk(jnp.zeros((2, 8)), 3, jnp.ones(2))


def test_traced_tau_under_jit():
  f = jax.jit(lambda s, step: soft_topk(s, 3, tau_schedule(step)))
  a = f(jnp.arange(8.0)[None], 100)
  np.testing.assert_allclose(a.sum(), 3.0, atol=1e-5)


def test_tau_schedule():
  np.testing.assert_allclose(tau_schedule(0), 2.0, rtol=1e-6)
  np.testing.assert_allclose(tau_schedule(1000), 1.05, rtol=1e-6)
  np.testing.assert_allclose(tau_schedule(2000), 0.1, rtol=1e-6)
  np.testing.assert_allclose(tau_schedule(10**6), 0.1, rtol=1e-6)
  taus = np.asarray(jax.jit(tau_schedule)(jnp.arange(0, 2101, 50)))
  assert np.all(np.diff(taus) <= 0)
  np.testing.assert_allclose(
      tau_schedule(5, tau_start=1.0, tau_end=0.5, steps=10), 0.75, rtol=1e-6)
  with pytest.raises(ValueError, match="steps must be a positive int"):
    tau_schedule(0, steps=0)
  with pytest.raises(ValueError, match="tau_end must be a positive"):
    tau_schedule(0, tau_end=0.0)
