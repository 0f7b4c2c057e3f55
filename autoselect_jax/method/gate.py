"""The training gates: how each token's selection weight reaches its features.

The paper's gate is variance preserving (the forward process of a diffusion
model):

  x~_i = sqrt(alpha_i) x_i + sqrt(1 - alpha_i) eps_i,  eps_i ~ N(0, I),

so a token with alpha = 1 passes unchanged, one with alpha = 0 becomes pure
noise, and for unit-variance x every alpha keeps unit variance. The other
gates are the paper's ablations (docs/method.md, "Ablation switches"):

  "vp", noise=False  x~_i = sqrt(alpha_i) x_i             (eps = 0)
  "scale"            x~_i = alpha_i x_i                   (never noise)
  "gumbel_ste"       x~_i = m_i x_i + (1 - m_i) eps_i, m a hard top-K mask of
                     Gumbel-perturbed scores with a straight-through gradient
                     (the LapSum soft top-K of the same perturbed scores)

`gate_tokens` is the one dispatch point the training forward calls.

Axes: B batch, N visual tokens, D width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from autoselect_jax.method.lapsum import soft_topk

__all__ = ["GATES", "vp_noise_gate", "scale_gate", "gumbel_topk_mask",
           "gumbel_ste_gate", "gate_tokens"]

NOISE_SCALES = (None, "std")
GATES = ("vp", "scale", "gumbel_ste")


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


def _check_features(x, weights, name):
  if x.ndim != 3:
    raise ValueError(f"x must be (B, N, D), got shape {x.shape}")
  if weights.ndim != 2 or weights.shape != x.shape[:2]:
    raise ValueError(f"{name} must be (B, N) = {x.shape[:2]} to match x "
                     f"{x.shape}, got shape {weights.shape}")


def _check_noise_scale(noise_scale):
  if noise_scale not in NOISE_SCALES:
    raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got "
                     f"{noise_scale!r}")


def _noise(rng, xf, noise_scale):
  """eps ~ N(0, I) of xf's shape (B, N, D), float32; "std" scales it by each
  example's feature std over (N, D), without a gradient through the std."""
  eps = jax.random.normal(rng, xf.shape, jnp.float32)    # (B, N, D)
  if noise_scale == "std":
    std = jnp.std(jax.lax.stop_gradient(xf), axis=(1, 2), keepdims=True)
    eps = eps * std                                      # (B, 1, 1) scale
  return eps


def vp_noise_gate(x, alpha, rng, noise_scale: str | None = None,
                  min_alpha: float = 1e-6, noise: bool = True):
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
    noise: False is the "no noise" ablation, eps = 0: x~ = sqrt(alpha) x
      (rng is then unused).

  Returns:
    (B, N, D) noised features.
  """
  _check_features(x, alpha, "alpha")
  _check_noise_scale(noise_scale)
  if not 0.0 < min_alpha < 0.5:
    raise ValueError(f"min_alpha must be in (0, 0.5), got {min_alpha!r}")
  xf = x.astype(jnp.float32)
  a = alpha.astype(jnp.float32)[..., None]               # (B, N, 1)
  if not noise:
    return (_sqrt_unit(a, min_alpha) * xf).astype(x.dtype)
  eps = _noise(rng, xf, noise_scale)                     # (B, N, D)
  out = _sqrt_unit(a, min_alpha) * xf + _sqrt_unit(1.0 - a, min_alpha) * eps
  return out.astype(x.dtype)


def scale_gate(x, alpha):
  """The plain scale gate of the paper's ablation: x~_i = alpha_i x_i.

  No noise: a dropped token (alpha = 0) becomes the zero vector.

  Args:
    x: (B, N, D) features (the result has x's dtype).
    alpha: (B, N) weights, used as they are (float32 product).

  Returns:
    (B, N, D) scaled features.
  """
  _check_features(x, alpha, "alpha")
  a = alpha.astype(jnp.float32)[..., None]               # (B, N, 1)
  return (a * x.astype(jnp.float32)).astype(x.dtype)


def gumbel_topk_mask(scores, k, tau, rng):
  """A hard top-k mask of Gumbel-perturbed scores, straight-through.

  g ~ Gumbel(0, 1) iid per token, s' = scores + g (B, N). Forward: m_i = 1
  for the k largest s' of each row (ties broken by the lower index), else 0,
  so every row holds exactly k ones. Backward: the gradient of
  alpha_soft = soft_topk(s', k, tau) (LapSum), since
  m = m_hard + (alpha_soft - stop_gradient(alpha_soft)); the bracket is
  exactly 0 in the forward pass, so m is exactly {0, 1}.

  Args:
    scores: (B, N) logits.
    k: the budget, a Python int in [1, N] or a traced int32 scalar.
    tau: the soft relaxation's temperature, > 0 (may be traced).
    rng: a PRNG key for g.

  Returns:
    (m (B, N) float32 in {0, 1}, alpha_soft (B, N) float32, the relaxation).
  """
  if scores.ndim != 2:
    raise ValueError(f"scores must be (B, N), got shape {scores.shape}")
  s = scores.astype(jnp.float32)
  perturbed = s + jax.random.gumbel(rng, s.shape, jnp.float32)     # (B, N)
  soft = soft_topk(perturbed, k, tau)                              # (B, N)
  # rank_i = position of token i in the descending order (stable: ties keep
  # index order), so rank < k marks exactly k tokens, k static or traced.
  order = jnp.argsort(-jax.lax.stop_gradient(perturbed), axis=-1,
                      stable=True)
  rank = jnp.argsort(order, axis=-1)
  hard = (rank < k).astype(jnp.float32)
  return hard + (soft - jax.lax.stop_gradient(soft)), soft


def gumbel_ste_gate(x, scores, k, tau, rng, noise_scale: str | None = None,
                    noise: bool = True):
  """The Gumbel-softmax straight-through gate of the paper's ablation.

  m = `gumbel_topk_mask(scores, k, tau)`; x~_i = m_i x_i + (1 - m_i) eps_i:
  the k kept tokens pass unchanged and the dropped ones are pure noise, the
  VP gate's alpha = 0 limit (with noise=False, zeros). The gradient reaches
  the scores through m's straight-through soft relaxation.

  Args:
    x: (B, N, D) features (the result has x's dtype).
    scores: (B, N) Scorer logits.
    k, tau: as `gumbel_topk_mask`.
    rng: a PRNG key, split for the Gumbel perturbation and eps.
    noise_scale, noise: as `vp_noise_gate`.

  Returns:
    (x~ (B, N, D), alpha_soft (B, N), the relaxation, for metrics).
  """
  _check_features(x, scores, "scores")
  _check_noise_scale(noise_scale)
  r_gumbel, r_eps = jax.random.split(rng)
  m, soft = gumbel_topk_mask(scores, k, tau, r_gumbel)
  xf = x.astype(jnp.float32)
  m = m[..., None]                                                 # (B, N, 1)
  out = m * xf
  if noise:
    out = out + (1.0 - m) * _noise(r_eps, xf, noise_scale)
  return out.astype(x.dtype), soft


def gate_tokens(gate: str, x, scores, k, tau, rng, *,
                noise: bool = True, noise_scale: str | None = None,
                min_alpha: float = 1e-6):
  """The training gate by name: (B, N, D) features, (B, N) scores -> x~.

  "vp" and "scale" gate with alpha = soft_topk(scores, k, tau); "gumbel_ste"
  as `gumbel_ste_gate`. `noise` = False removes eps from "vp" and
  "gumbel_ste"; "scale" never adds noise.

  Returns:
    (x~ (B, N, D) in x's dtype, alpha (B, N): the soft weights the gate
    used, or for "gumbel_ste" the relaxation of the perturbed scores).
  """
  if gate not in GATES:
    raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
  if gate == "gumbel_ste":
    return gumbel_ste_gate(x, scores, k, tau, rng, noise_scale, noise)
  alpha = soft_topk(scores, k, tau)                                # (B, N)
  if gate == "scale":
    return scale_gate(x, alpha), alpha
  return vp_noise_gate(x, alpha, rng, noise_scale, min_alpha, noise), alpha
