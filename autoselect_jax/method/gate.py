"""Variance-preserving noise gate (the forward process of a diffusion model).

  x~_i = sqrt(alpha_i) x_i + sqrt(1 - alpha_i) eps_i,  eps_i ~ N(0, I),

so a token with alpha = 1 passes unchanged, one with alpha = 0 becomes pure
noise, and for unit-variance x every alpha keeps unit variance.

Axes: B batch, N visual tokens, D width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["vp_noise_gate"]

NOISE_SCALES = (None, "std")


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _sqrt_unit(u, floor):
  """sqrt(clip(u, 0, 1)); its derivative uses clip(u, floor, 1) (finite)."""
  del floor
  return jnp.sqrt(jnp.clip(u, 0.0, 1.0))


@_sqrt_unit.defjvp
def _sqrt_unit_jvp(floor, primals, tangents):
  (u,), (du,) = primals, tangents
  return _sqrt_unit(u, floor), du * 0.5 * jax.lax.rsqrt(
      jnp.clip(u, floor, 1.0))


def vp_noise_gate(x, alpha, rng, noise_scale: str | None = None,
                  min_alpha: float = 1e-6):
  """Noises each token with a signal fraction alpha_i.

  The values use alpha clipped to [0, 1], exactly: alpha = 1 returns x and
  alpha = 0 pure noise. The derivatives of sqrt(alpha) and sqrt(1 - alpha)
  are taken with alpha clipped to [min_alpha, 1 - min_alpha], so gradients
  stay finite (|d/d alpha| <= 0.5 / sqrt(min_alpha) per square root).

  Args:
    x: (B, N, D) features (any float dtype; the result has the same dtype).
    alpha: (B, N) signal fractions in [0, 1].
    rng: a PRNG key; eps is drawn fresh from it, shape (B, N, D).
    noise_scale: None for unit Gaussian eps (the paper), or "std" to scale eps
      by each example's feature std over (N, D) (no gradient through it), so
      the noise matches features that are not unit-variance.
    min_alpha: the clip that bounds the gradients, in (0, 0.5).

  Returns:
    (B, N, D) noised features.
  """
  if x.ndim != 3:
    raise ValueError(f"x must be (B, N, D), got shape {x.shape}")
  if alpha.ndim != 2 or alpha.shape != x.shape[:2]:
    raise ValueError(f"alpha must be (B, N) = {x.shape[:2]} to match x "
                     f"{x.shape}, got shape {alpha.shape}")
  if noise_scale not in NOISE_SCALES:
    raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got "
                     f"{noise_scale!r}")
  if not 0.0 < min_alpha < 0.5:
    raise ValueError(f"min_alpha must be in (0, 0.5), got {min_alpha!r}")
  xf = x.astype(jnp.float32)
  a = alpha.astype(jnp.float32)[..., None]               # (B, N, 1)
  eps = jax.random.normal(rng, x.shape, jnp.float32)     # (B, N, D)
  if noise_scale == "std":
    std = jnp.std(jax.lax.stop_gradient(xf), axis=(1, 2), keepdims=True)
    eps = eps * std                                      # (B, 1, 1) scale
  out = _sqrt_unit(a, min_alpha) * xf + _sqrt_unit(1.0 - a, min_alpha) * eps
  return out.astype(x.dtype)
