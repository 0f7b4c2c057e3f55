"""LapSum soft top-K (Struski et al., ICML 2025) and the temperature schedule.

  alpha_i = F((s_i - b) / tau),  F(x) = e^x / 2 (x < 0), 1 - e^-x / 2 (x >= 0),

F the Laplace CDF, with the threshold b chosen per example so that
sum_i alpha_i = K exactly. F is piecewise exponential, so after sorting the
scores b has a closed form on each interval between consecutive sorted
values; cumulative sums (run as stable linear recurrences) find the interval.

Numerics (float32, tau down to 1e-3, scores up to +-1e4, ties):
  * The threshold is never stored as an absolute number: it is an anchor
    score s_(m) plus an offset in units of tau, and alpha is evaluated from
    the exact difference s_i - s_(m). An absolute b near 1e4 has an ulp of
    ~1e-3, i.e. ~1 in units of tau = 1e-3, which would break sum = K.
  * The partial sums sum_{i<=j} exp(-(x_i - x_j)) are recurrences with factors
    exp(-gap) in [0, 1] (x = s / tau), so they never overflow or underflow to
    0 and stay in [1, N].
  * F uses exp(-|x|) in both branches, so no branch produces inf or NaN.
  * The backward pass weights f_j / sum_k f_k are a softmax of -|x|: at small
    tau f itself underflows to 0 and the ratio would be 0 / 0.

Gradients: implicit differentiation of the constraint sum_i alpha_i = K,
  d alpha_i / d s_j = (f_i / tau) (delta_ij - f_j / sum_k f_k),  f = F',
as an O(N) vector-Jacobian product per example (no N x N matrix). The sort
makes the forward O(N log N).

Axes: B batch, N visual tokens.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["soft_topk", "laplace_cdf", "tau_schedule"]


def laplace_cdf(x):
  """F(x): the Laplace(0, 1) CDF, elementwise, NaN-free for |x| up to inf."""
  half_tail = 0.5 * jnp.exp(-jnp.abs(x))
  return jnp.where(x < 0, half_tail, 1.0 - half_tail)


def _check_k(k, n, traced_ok: bool = False):
  """k as a Python int in [1, n]; with `traced_ok` an integer scalar array
  (e.g. traced) passes through unchecked."""
  if traced_ok and isinstance(k, jax.Array):
    if k.ndim != 0 or not jnp.issubdtype(k.dtype, jnp.integer):
      raise ValueError(f"a traced k must be an integer scalar, got "
                       f"{k.dtype} of shape {k.shape}")
    return k
  if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
    raise ValueError(f"k must be a Python int (the static number of kept "
                     f"tokens), got {k!r} of type {type(k).__name__}")
  if not 1 <= k <= n:
    raise ValueError(f"k must satisfy 1 <= k <= N = {n}, got k={k}")
  return int(k)


def _check_tau(tau):
  """Python / numpy numbers are checked here; arrays (e.g. traced) are not."""
  if isinstance(tau, (bool, np.bool_)):
    raise ValueError(f"tau must be a positive number, got {tau!r}")
  if isinstance(tau, numbers.Real):
    if not (math.isfinite(tau) and tau > 0):
      raise ValueError(f"tau must be a positive finite number, got {tau!r}")
  elif jnp.ndim(tau) != 0:
    raise ValueError(f"tau must be a scalar, got shape {jnp.shape(tau)}")


def _linear_recurrence(decay):
  """h_j = decay_j * h_{j-1} + 1 along the last axis, h_{-1} = 0.

  (..., N) -> (..., N). A Hillis-Steele scan: ceil(log2 N) shifted
  multiply-adds (O(N log N) work, few ops, so it compiles fast). Element j
  holds the affine map (a, h) of the segment ending at j; (1, 0) pads.
  """
  n = decay.shape[-1]
  a, h = decay, jnp.ones_like(decay)
  shift = 1
  while shift < n:
    pad = [(0, 0)] * (decay.ndim - 1) + [(shift, 0)]
    h = h + a * jnp.pad(h[..., :-shift], pad)
    a = a * jnp.pad(a[..., :-shift], pad, constant_values=1.0)
    shift *= 2
  return h


def _threshold(scores, k, tau):
  """Anchor index and offset of the LapSum threshold.

  Args:
    scores: (B, N) float.
    k: scalar in [1, N - 1], of the scores' dtype (may be traced).
    tau: scalar > 0.

  Returns:
    z: (B, N), (s_i - b) / tau, with b such that sum_i F(z_i) = k.
  """
  n = scores.shape[-1]
  srt = -jnp.sort(-scores, axis=-1)                 # (B, N), descending.
  gap = (srt[:, :-1] - srt[:, 1:]) / tau            # (B, N-1) >= 0: x_j - x_j+1
  decay = jnp.exp(-gap)
  zeros = jnp.zeros_like(srt[:, :1])
  # up[j] = sum_{i<=j} exp(-(x_i - x_j)) in [1, j+1] (0-based j);
  # down[j] = sum_{i>=j} exp(x_i - x_j) in [1, N-j]. One scan for both.
  up, down = _linear_recurrence(jnp.stack(
      [jnp.concatenate([zeros, decay], -1),
       jnp.concatenate([zeros, decay[:, ::-1]], -1)]))
  down = down[:, ::-1]
  # g[j] = sum_i F(x_i - x_j) for the threshold at sorted value j; increasing
  # in j. Here (j + 1) counts the tokens at or above x_j.
  j1 = jnp.arange(1, n + 1, dtype=srt.dtype)
  g = j1 - 0.5 * up + 0.5 * (down - 1.0)
  # m = number of sorted values at or above the threshold: b lies in
  # [x_(m+1), x_(m)] (1-based), m in [0, N].
  m = jnp.sum(g <= k, axis=-1, keepdims=True)       # (B, 1) int
  take = lambda a, i: jnp.take_along_axis(a, jnp.clip(i, 0, a.shape[-1] - 1),
                                          axis=-1)
  # Interior, b in [x_(m+1), x_(m)], c = b / tau, v = x_(m) - c >= 0,
  # u = c - x_(m+1) >= 0, u + v = gap_m:
  #   (A / 2) exp(-v) - (B / 2) exp(-u) = m - k =: delta,
  # A = up[m-1] (tokens above, anchored at x_(m)), B = down[m] (tokens below,
  # anchored at x_(m+1)). As a quadratic in exp(-v) with the positive root:
  #   delta > 0: exp(-v) = (delta + r) / A, r = sqrt(delta^2 + A B e^-gap);
  #              here exp(-v) >= 2 / A, so v <= log N: anchor at x_(m).
  #   delta < 0: exp(-u) = (r - delta) / B likewise: anchor at x_(m+1).
  #   delta = 0: v - u = log(A / B): the midpoint, anchor at x_(m).
  # Anchoring at the near end keeps the offset O(log N), so alpha of the
  # tokens next to the threshold never comes from a difference of two huge
  # numbers (the gap can be ~1e7 in units of tau).
  a = take(up, m - 1)
  bb = take(down, m)
  dg = take(gap, m - 1)
  delta = (m - k).astype(srt.dtype)
  r = jnp.sqrt(delta ** 2 + a * bb * jnp.exp(-dg))
  log_a, log_b = jnp.log(a), jnp.log(bb)
  tiny = jnp.finfo(srt.dtype).tiny
  # offset = c - anchor.
  off_pos = jnp.log(jnp.maximum(delta + r, tiny)) - log_a      # anchor x_(m)
  off_neg = log_b - jnp.log(jnp.maximum(r - delta, tiny))      # x_(m+1)
  off_zero = -0.5 * (dg + log_a - log_b)                       # anchor x_(m)
  offset = jnp.where(delta > 0, off_pos,
                     jnp.where(delta < 0, off_neg, off_zero))
  anchor_idx = jnp.where(delta < 0, m, m - 1)
  # m = 0: every token below, b above x_(1): sum_i exp(x_i - c) / 2 = k.
  offset = jnp.where(m == 0, jnp.log(down[:, :1]) - jnp.log(2 * k), offset)
  # m = N: every token above, b below x_(N): N - A exp(c - x_(N)) / 2 = k.
  offset = jnp.where(m == n, jnp.log(2 * (n - k)) - jnp.log(up[:, -1:]),
                     offset)
  anchor = take(srt, anchor_idx)                     # (B, 1), clipped index
  z = (scores - anchor) / tau - offset
  # One Newton step on the offset removes the rounding of the partial sums
  # (O(N eps) relative). The residual sum F(z) - k is split into an exact
  # (half-)integer and terms of magnitude <= 1/4: F(z) - 1/2 (via expm1) where
  # |z| < log 2, and F(z) - [z >= 0] (+-e^-|z| / 2) elsewhere.
  tail = 0.5 * jnp.exp(-jnp.abs(z))
  near = jnp.abs(z) < math.log(2.0)
  small = jnp.where(near, -0.5 * jnp.sign(z) * jnp.expm1(-jnp.abs(z)),
                    jnp.where(z >= 0, -tail, tail))
  base = jnp.sum(jnp.where(near, 0.5, (z >= 0).astype(z.dtype)), axis=-1,
                 keepdims=True)                     # exact: multiples of 1/2
  resid = (base - k) + jnp.sum(small, axis=-1, keepdims=True)
  slope = jnp.sum(tail, axis=-1, keepdims=True)     # sum_i f(z_i)
  step = jnp.where(slope > 1e-3, resid / jnp.maximum(slope, 1e-3), 0.0)
  return z - jnp.clip(step, -1.0, 1.0)


@jax.custom_vjp
def _soft_topk_core(scores, tau, k):
  """(B, N), scalar, scalar k in [1, N-1] (scores' dtype) -> alpha (B, N).

  k is an ordinary (traced) argument: one program serves every budget. It
  gets a zero cotangent (the budget is not learned)."""
  return laplace_cdf(_threshold(scores, k, tau))


def _soft_topk_fwd(scores, tau, k):
  z = _threshold(scores, k, tau)
  return laplace_cdf(z), (z, tau, k)


def _soft_topk_bwd(res, ct):
  z, tau, k = res
  f = 0.5 * jnp.exp(-jnp.abs(z))                   # (B, N) F'(z)
  w = jax.nn.softmax(-jnp.abs(z), axis=-1)         # f / sum f, never 0 / 0
  ctf = ct * f                                     # (B, N)
  total = jnp.sum(ctf, axis=-1, keepdims=True)     # (B, 1)
  d_scores = (ctf - w * total) / tau
  # d alpha_i / d tau = -(f_i / tau) (z_i - sum_j w_j z_j).
  zbar = jnp.sum(w * z, axis=-1, keepdims=True)
  d_tau = -jnp.sum(ctf * (z - zbar)) / tau
  return d_scores, d_tau.astype(tau.dtype), jnp.zeros_like(k)


_soft_topk_core.defvjp(_soft_topk_fwd, _soft_topk_bwd)


@jax.jit
def _soft_topk_any_k(scores, tau, k):
  """The core for any k in [1, N]: k = N keeps every token (alpha = 1).

  One compiled program per shape, for every k, also for eager callers
  (inlined under an outer jit).
  """
  n = scores.shape[-1]
  if n == 1:
    return jnp.ones_like(scores)
  # The core needs k < N; rows with k = N take the constant 1 instead (their
  # cotangent into the core is then 0, so its backward stays finite).
  alpha = _soft_topk_core(scores, tau, jnp.minimum(k, n - 1))
  return jnp.where(k >= n, jnp.ones_like(alpha), alpha)


def soft_topk(scores, k: int, tau=1.0):
  """Budgeted soft top-K: alpha in [0, 1] with sum(alpha) = k per example.

  Args:
    scores: (B, N) or (N,) float logits.
    k: the budget in [1, N]: a Python int (checked), or an integer scalar
      array that may be traced (unchecked; e.g. drawn per training step, one
      compiled program for every K). k = N gives all ones.
    tau: temperature > 0, a Python number or a scalar array (may be traced,
      e.g. from `tau_schedule`). As tau -> 0 alpha tends to the hard top-k
      indicator (for distinct scores).

  Returns:
    alpha with the shape of `scores`, float32 (float64 for float64 scores).
    Differentiable in `scores` and `tau` (implicit-function gradients).
  """
  scores = jnp.asarray(scores)
  if scores.ndim not in (1, 2):
    raise ValueError(f"scores must be (N,) or (B, N), got shape {scores.shape}")
  n = scores.shape[-1]
  if n == 0:
    raise ValueError("scores must hold at least one token (N >= 1)")
  k = _check_k(k, n, traced_ok=True)
  _check_tau(tau)
  dtype = jnp.promote_types(scores.dtype, jnp.float32)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    raise ValueError(f"scores must be floating point, got {scores.dtype}")
  squeeze = scores.ndim == 1
  s = scores.astype(dtype)[None] if squeeze else scores.astype(dtype)
  tau = jnp.asarray(tau, dtype)
  alpha = _soft_topk_any_k(s, tau, jnp.asarray(k, dtype))
  return alpha[0] if squeeze else alpha


def tau_schedule(step, tau_start: float = 2.0, tau_end: float = 0.1,
                 steps: int = 2000):
  """Cosine from tau_start (step 0) to tau_end (step `steps`), then flat.

  Jittable: `step` may be a Python int or an integer / float array.
  """
  for name, v in (("tau_start", tau_start), ("tau_end", tau_end)):
    if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
      raise ValueError(f"{name} must be a positive finite number, got {v!r}")
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or (
      steps <= 0):
    raise ValueError(f"steps must be a positive int, got {steps!r}")
  t = jnp.clip(jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)
  return tau_end + 0.5 * (tau_start - tau_end) * (1.0 + jnp.cos(jnp.pi * t))
