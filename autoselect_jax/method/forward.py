"""The training and inference forward passes of AutoSelect around a frozen VLM.

They talk to the VLM only through the backbone-agnostic `VLM` object
(autoselect_jax/models/paligemma.py): encode_image, project, embed_text,
run_llm, logits. Trainable AutoSelect parameters and frozen VLM parameters
are separate pytrees:

  params = {"scorer": ..., "denoiser": ...}      # trainable ("scorer" only
                                                 #  with denoiser=None)
  frozen_params = vlm.init_params(...) / loaded  # never updated

The LLM input is always a `models.Sequence` built by `vlm.sequence` (all N
gated tokens in training, the K selected ones at inference), so every path
shares one layout, one mask and one next-token loss. The text batch is any object or mapping with `tokens`,
`input_mask`, `mask_ar` (0 prefix, 1 suffix) and, for the loss, `loss_mask`
(1 on suffix targets), all (B, T); see autoselect_jax.data.processor.TextBatch.

Axes: B batch, N visual tokens, K kept, T text, Dv vision width, D LLM width,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from autoselect_jax.method.gate import GATES, NOISE_SCALES, gate_tokens
from autoselect_jax.method.lapsum import _check_k, _check_tau
from autoselect_jax.method.modules import Denoiser, Scorer
from autoselect_jax.method.selection import (POSITION_POLICIES, select_topk,
                                             selected_sequence)
from autoselect_jax.models.sequence import Sequence, grid_index, next_token_nll

__all__ = ["AutoSelect", "encode", "scores", "train_loss", "loss_from_scores",
           "build_pruned_sequence", "inference_logits", "count_params"]

Params = Any


@dataclasses.dataclass(frozen=True)
class AutoSelect:
  """The method's modules and hyper-parameters around one frozen VLM.

  The defaults are the paper's method; `gate`, `noise` and `denoiser` also
  select its training ablations (docs/method.md, "Ablation switches"). The
  deployed path (Scorer + hard top-K) is the same for all of them.

  Attributes:
    vlm: the frozen backbone (`autoselect_jax.models.VLM`).
    scorer: the trainable Scorer (linen module).
    denoiser: the trainable Denoiser (diagonal or global attention), or None
      for no Denoiser (the gated tokens go to the projector as they are, and
      the params hold no "denoiser" entry).
    noise_scale: the gate's eps scale, None (unit Gaussian) or "std".
    min_alpha: the gate's gradient clip.
    position_policy: default position ids at inference, "original" or
      "packed" (see `kept_positions`).
    gate: the training gate, one of `gate.GATES`: "vp" (the paper),
      "scale" or "gumbel_ste" (see `gate.gate_tokens`).
    noise: False sets eps = 0 in the "vp" and "gumbel_ste" gates.
  """
  vlm: Any
  scorer: Scorer = Scorer()
  denoiser: Optional[Denoiser] = Denoiser()
  noise_scale: Optional[str] = None
  min_alpha: float = 1e-6
  position_policy: str = "original"
  gate: str = "vp"
  noise: bool = True

  def __post_init__(self):
    if self.gate not in GATES:
      raise ValueError(f"gate must be one of {GATES}, got {self.gate!r}")
    if not isinstance(self.noise, bool):
      raise ValueError(f"noise must be a bool, got {self.noise!r}")
    if self.noise_scale not in NOISE_SCALES:
      raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got "
                       f"{self.noise_scale!r}")
    if self.position_policy not in POSITION_POLICIES:
      raise ValueError(f"position_policy must be one of {POSITION_POLICIES}, "
                       f"got {self.position_policy!r}")

  def _dummy_features(self):
    return jnp.zeros((1, self.vlm.num_visual_tokens, self.vlm.visual_width),
                     jnp.float32)

  def init(self, rng) -> Params:
    """Fresh trainable parameters {"scorer": ..., "denoiser": ...} (no
    "denoiser" entry when `denoiser` is None)."""
    r_s, r_d = jax.random.split(rng)
    x = self._dummy_features()
    params = {"scorer": self.scorer.init(r_s, x)["params"]}
    if self.denoiser is not None:
      params["denoiser"] = self.denoiser.init(r_d, x)["params"]
    return params

  def abstract_params(self) -> Params:
    """Shapes and dtypes of `init`'s tree, without allocating it."""
    return jax.eval_shape(self.init, jax.random.key(0))


def _text_field(text, name):
  if isinstance(text, Mapping):
    if name not in text:
      raise ValueError(f"text batch has no {name!r}; keys: {sorted(text)}")
    return jnp.asarray(text[name])
  if not hasattr(text, name):
    raise ValueError(f"text batch has no field {name!r}")
  return jnp.asarray(getattr(text, name))


def _text_arrays(text, names):
  out = [_text_field(text, n) for n in names]
  shape = out[0].shape
  if len(shape) != 2:
    raise ValueError(f"text {names[0]} must be (B, T), got shape {shape}")
  for n, a in zip(names, out):
    if a.shape != shape:
      raise ValueError(f"text {n} has shape {a.shape}, expected {shape}")
  return out


def _check_inputs(method: AutoSelect, inputs, batch: int, k,
                  traced_ok: bool = False):
  """Validates shapes and k before any compute; returns k."""
  vlm = method.vlm
  if inputs.ndim == 3:
    want = (vlm.num_visual_tokens, vlm.visual_width)
    if inputs.shape[1:] != want:
      raise ValueError(f"features must be (B, N, Dv) = (B, {want[0]}, "
                       f"{want[1]}), got shape {inputs.shape}")
  elif inputs.ndim != 4:
    raise ValueError("inputs must be images (B, H, W, 3) or features "
                     f"(B, N, Dv), got shape {inputs.shape}")
  if inputs.shape[0] != batch:
    raise ValueError(f"text batch size {batch} != visual batch size "
                     f"{inputs.shape[0]}")
  return _check_k(k, vlm.num_visual_tokens, traced_ok)


def encode(method: AutoSelect, frozen_params, inputs):
  """Frozen encoder features, gradient-free: (B, N, Dv).

  `inputs` is either images (B, H, W, 3) in [-1, 1] (run through the frozen
  encoder) or precomputed features (B, N, Dv) (used as they are).
  """
  vlm = method.vlm
  if inputs.ndim == 4:
    x = vlm.encode_image(frozen_params, inputs)
  elif inputs.ndim == 3:
    want = (vlm.num_visual_tokens, vlm.visual_width)
    if inputs.shape[1:] != want:
      raise ValueError(f"features must be (B, N, Dv) = (B, {want[0]}, "
                       f"{want[1]}), got shape {inputs.shape}")
    x = inputs
  else:
    raise ValueError("inputs must be images (B, H, W, 3) or features "
                     f"(B, N, Dv), got shape {inputs.shape}")
  return jax.lax.stop_gradient(x)


def scores(method: AutoSelect, params, features):
  """Scorer logits, (B, N, Dv) -> float32 (B, N)."""
  return method.scorer.apply({"params": params["scorer"]}, features)


def train_loss(method: AutoSelect, params, frozen_params, inputs, text, rng,
               k: int, tau):
  """Next-token loss of the frozen VLM on noise-gated, denoised tokens.

  X = stop_gradient(encoder features); s = Scorer(X); alpha = soft_topk(s, k,
  tau); X~ = Denoiser(vp_noise_gate(X, alpha, rng)); logits of the frozen
  LLM on [project(X~) ; embed(text)]; cross-entropy of the suffix targets
  (loss_mask), the logits at sequence position p predicting token p + 1,
  averaged over the number of target tokens. No token is dropped.
  (`method.gate`, `method.noise` and `method.denoiser` swap the gate and the
  Denoiser for the ablations: `gate.gate_tokens`.)

  Differentiate w.r.t. `params` only; `frozen_params` sit behind
  stop_gradient.

  Args:
    method: the `AutoSelect` configuration.
    params: trainable {"scorer", "denoiser"} parameters ("scorer" only
      without a Denoiser).
    frozen_params: the VLM's parameters.
    inputs: images (B, H, W, 3) or encoder features (B, N, Dv).
    text: tokens, input_mask, mask_ar, loss_mask, each (B, T).
    rng: PRNG key for the gate's noise (and the Gumbel perturbation).
    k: the budget, a Python int in [1, N], or a traced int32 scalar (e.g.
      drawn per step: one compiled program serves every K).
    tau: LapSum temperature, > 0 (may be traced, e.g. `tau_schedule(step)`).

  Returns:
    (loss scalar float32, aux dict of scalars: "num_targets", "alpha_kept"
    (mean alpha of each example's k largest), "alpha_dropped" (mean of the
    rest; 0 when k = N)). For the "gumbel_ste" gate alpha is the soft
    relaxation of the perturbed scores (the forward mask itself is 0 / 1).
  """
  tokens = _text_arrays(text, ("tokens", "input_mask", "mask_ar",
                               "loss_mask"))[0]
  k = _check_inputs(method, inputs, tokens.shape[0], k, traced_ok=True)
  _check_tau(tau)
  frozen_params = jax.lax.stop_gradient(frozen_params)
  x = encode(method, frozen_params, inputs)                    # (B, N, Dv)
  return loss_from_scores(method, params, frozen_params, x,
                          scores(method, params, x), text, rng, k, tau)


def loss_from_scores(method: AutoSelect, params, frozen_params, features, s,
                     text, rng, k: int, tau):
  """`train_loss` from given features (B, N, Dv) and scores s (B, N) on.

  The part of the training forward after the Scorer: soft top-k, gate,
  Denoiser, frozen VLM, loss. Returns (loss, aux) as `train_loss`.
  """
  vlm = method.vlm
  frozen_params = jax.lax.stop_gradient(frozen_params)
  x = jax.lax.stop_gradient(features)
  tokens, input_mask, mask_ar, loss_mask = _text_arrays(
      text, ("tokens", "input_mask", "mask_ar", "loss_mask"))
  if x.ndim != 3 or s.shape != x.shape[:2]:
    raise ValueError(f"scores {s.shape} must be (B, N) for features "
                     f"{x.shape}")
  b, n, _ = x.shape
  k = _check_k(k, n, traced_ok=True)
  if tokens.shape[0] != b:
    raise ValueError(f"text batch size {tokens.shape[0]} != visual batch "
                     f"size {b}")
  t = tokens.shape[1]
  noised, alpha = gate_tokens(method.gate, x, s, k, tau, rng,
                              noise=method.noise,
                              noise_scale=method.noise_scale,
                              min_alpha=method.min_alpha)   # (B,N,Dv), (B,N)
  if method.denoiser is None:
    denoised = noised
  else:
    denoised = method.denoiser.apply({"params": params["denoiser"]}, noised)
  seq = vlm.sequence(frozen_params, vlm.project(frozen_params, denoised),
                     grid_index(b, n), n, tokens, input_mask, mask_ar)
  hidden, _ = vlm.run_llm(frozen_params, seq.embeddings, seq.positions,
                          seq.attention_mask())
  # Only the T rows that predict text go through the (large) vocabulary.
  logits = vlm.logits(frozen_params, seq.text_predictors(hidden, t))
  total, num_targets = next_token_nll(
      logits, tokens, loss_mask.astype(bool) & input_mask.astype(bool))
  loss = total / jnp.maximum(num_targets, 1.0)
  # alpha of each example's k largest vs the rest (k may be traced).
  ranked = -jnp.sort(-alpha, axis=-1)                          # (B, N)
  kept_sum = jnp.sum(jnp.where(jnp.arange(n) < k, ranked, 0.0), -1)
  aux = {
      "num_targets": num_targets,
      "alpha_kept": jnp.mean(kept_sum) / k,
      "alpha_dropped": jnp.mean(jnp.sum(alpha, -1) - kept_sum)
                       / jnp.maximum(n - k, 1),
  }
  return loss, aux


def build_pruned_sequence(method: AutoSelect, params, frozen_params, inputs,
                          tokens, input_mask, mask_ar, k: int,
                          policy: Optional[str] = None
                          ) -> tuple[Sequence, jax.Array]:
  """Scorer -> hard top-k -> `selection.selected_sequence`.

  No gate, no Denoiser. tokens, input_mask, mask_ar: (B, T); policy defaults
  to `method.position_policy`. Returns (the LLM's Sequence of K + T rows,
  the kept indices (B, K) int32, ascending).
  """
  policy = method.position_policy if policy is None else policy
  if policy not in POSITION_POLICIES:
    raise ValueError(f"position policy must be one of {POSITION_POLICIES}, "
                     f"got {policy!r}")
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be (B, T), got shape {tokens.shape}")
  if input_mask.shape != tokens.shape or mask_ar.shape != tokens.shape:
    raise ValueError(f"input_mask {input_mask.shape} and mask_ar "
                     f"{mask_ar.shape} must match tokens {tokens.shape}")
  k = _check_inputs(method, inputs, tokens.shape[0], k)
  x = encode(method, frozen_params, inputs)                     # (B, N, Dv)
  idx = select_topk(scores(method, params, x), k)               # (B, K)
  seq = selected_sequence(method.vlm, frozen_params, x, idx, tokens,
                          input_mask, mask_ar, policy)
  return seq, idx


def inference_logits(method: AutoSelect, params, frozen_params, inputs, text,
                     k: int, policy: Optional[str] = None):
  """Logits of the pruned model over [K kept visual ; text]: (B, K + T, V).

  With k = N (and policy "original") this is the full model's forward,
  `vlm.forward(frozen_params, images, ...)`, op for op.
  """
  tokens, input_mask, mask_ar = _text_arrays(
      text, ("tokens", "input_mask", "mask_ar"))
  seq, _ = build_pruned_sequence(method, params, frozen_params, inputs, tokens,
                                 input_mask, mask_ar, k, policy)
  hidden, _ = method.vlm.run_llm(frozen_params, seq.embeddings, seq.positions,
                                 seq.attention_mask())
  return method.vlm.logits(frozen_params, hidden)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def count_params(config, scorer: Scorer = Scorer(),
                 denoiser: Optional[Denoiser] = Denoiser()) -> dict[str, int]:
  """{"scorer", "denoiser", "total", "vlm"} parameter counts for a VLM config
  (denoiser None: 0 Denoiser parameters).

  Shapes only (jax.eval_shape): nothing is allocated, a 3B VLM included.
  """
  from autoselect_jax.models import VLM
  vlm = VLM(config)
  tree = AutoSelect(vlm, scorer, denoiser).abstract_params()
  out = {"scorer": _count(tree["scorer"]),
         "denoiser": _count(tree.get("denoiser", {}))}
  out["total"] = out["scorer"] + out["denoiser"]
  out["vlm"] = _count(vlm.abstract_params())
  return out
