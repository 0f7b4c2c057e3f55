"""The training and inference forward passes of AutoSelect around a frozen VLM.

They talk to the VLM only through the backbone-agnostic `VLM` object
(autoselect_jax/models/paligemma.py): encode_image, project, embed_text,
run_llm, logits. Trainable AutoSelect parameters and frozen VLM parameters
are separate pytrees:

  params = {"scorer": ..., "denoiser": ...}      # trainable
  frozen_params = vlm.init_params(...) / loaded  # never updated

Sequence layout (as the VLM's own forward): [visual tokens][text], text
right-padded. Visual tokens are always real and belong to the bidirectional
prefix block. The text batch is any object or mapping with `tokens`,
`input_mask`, `mask_ar` (0 prefix, 1 suffix) and, for the loss, `loss_mask`
(1 on suffix targets), all (B, T); see autoselect_jax.data.processor.TextBatch.

Axes: B batch, N visual tokens, K kept, T text, Dv vision width, D LLM width,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

from autoselect_jax.method.gate import NOISE_SCALES, vp_noise_gate
from autoselect_jax.method.lapsum import _check_k, _check_tau, soft_topk
from autoselect_jax.method.modules import Denoiser, Scorer
from autoselect_jax.method.selection import (POSITION_POLICIES, gather_tokens,
                                             kept_positions, select_topk)
from autoselect_jax.models.paligemma import (make_attention_mask,
                                             positions_from_mask)

__all__ = ["AutoSelect", "PrunedSequence", "encode", "scores",
           "train_loss", "loss_from_scores", "build_pruned_sequence",
           "inference_logits",
           "count_params"]

Params = Any


@dataclasses.dataclass(frozen=True)
class AutoSelect:
  """The method's modules and hyper-parameters around one frozen VLM.

  Attributes:
    vlm: the frozen backbone (`autoselect_jax.models.VLM`).
    scorer, denoiser: the trainable linen modules.
    noise_scale: the gate's eps scale, None (unit Gaussian) or "std".
    min_alpha: the gate's gradient clip.
    position_policy: default position ids at inference, "original" or
      "packed" (see `kept_positions`).
  """
  vlm: Any
  scorer: Scorer = Scorer()
  denoiser: Denoiser = Denoiser()
  noise_scale: Optional[str] = None
  min_alpha: float = 1e-6
  position_policy: str = "original"

  def __post_init__(self):
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
    """Fresh trainable parameters {"scorer": ..., "denoiser": ...}."""
    r_s, r_d = jax.random.split(rng)
    x = self._dummy_features()
    return {"scorer": self.scorer.init(r_s, x)["params"],
            "denoiser": self.denoiser.init(r_d, x)["params"]}

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


def _check_inputs(method: AutoSelect, inputs, batch: int, k) -> int:
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
  return _check_k(k, vlm.num_visual_tokens)


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


def _full_masks(input_mask, mask_ar, n):
  """Masks of [n visual ; text]: input_mask (B, n+T) bool, mask_ar int32."""
  b = input_mask.shape[0]
  full_input = jnp.concatenate(
      [jnp.ones((b, n), bool), input_mask.astype(bool)], 1)
  full_ar = jnp.concatenate(
      [jnp.zeros((b, n), jnp.int32), mask_ar.astype(jnp.int32)], 1)
  return full_input, full_ar


def train_loss(method: AutoSelect, params, frozen_params, inputs, text, rng,
               k: int, tau):
  """Next-token loss of the frozen VLM on noise-gated, denoised tokens.

  X = stop_gradient(encoder features); s = Scorer(X); alpha = soft_topk(s, k,
  tau); X~ = Denoiser(vp_noise_gate(X, alpha, rng)); logits of the frozen
  LLM on [project(X~) ; embed(text)]; cross-entropy of the suffix targets
  (loss_mask), the logits at sequence position p predicting token p + 1,
  averaged over the number of target tokens. No token is dropped.

  Differentiate w.r.t. `params` only; `frozen_params` sit behind
  stop_gradient.

  Args:
    method: the `AutoSelect` configuration.
    params: trainable {"scorer", "denoiser"} parameters.
    frozen_params: the VLM's parameters.
    inputs: images (B, H, W, 3) or encoder features (B, N, Dv).
    text: tokens, input_mask, mask_ar, loss_mask, each (B, T).
    rng: PRNG key for the gate's noise.
    k: the budget, a Python int in [1, N].
    tau: LapSum temperature, > 0 (may be traced, e.g. `tau_schedule(step)`).

  Returns:
    (loss scalar float32, aux dict of scalars: "num_targets", "alpha_kept"
    (mean alpha of each example's k largest), "alpha_dropped" (mean of the
    rest; 0 when k = N)).
  """
  tokens = _text_arrays(text, ("tokens", "input_mask", "mask_ar",
                               "loss_mask"))[0]
  k = _check_inputs(method, inputs, tokens.shape[0], k)
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
  k = _check_k(k, n)
  if tokens.shape[0] != b:
    raise ValueError(f"text batch size {tokens.shape[0]} != visual batch "
                     f"size {b}")
  t = tokens.shape[1]
  alpha = soft_topk(s, k, tau)                                 # (B, N)
  noised = vp_noise_gate(x, alpha, rng, method.noise_scale, method.min_alpha)
  denoised = method.denoiser.apply({"params": params["denoiser"]}, noised)
  img = vlm.project(frozen_params, denoised)                   # (B, N, D)
  seq = jnp.concatenate(
      [img, vlm.embed_text(frozen_params, tokens).astype(img.dtype)], 1)
  full_input, full_ar = _full_masks(input_mask, mask_ar, n)
  hidden, _ = vlm.run_llm(frozen_params, seq, positions_from_mask(full_input),
                          make_attention_mask(full_input, full_ar))
  # Text token j sits at position n + j and is predicted at n + j - 1; only
  # those T rows go through the (large) vocabulary projection.
  logits = vlm.logits(frozen_params, hidden[:, n - 1:n + t - 1])  # (B,T,V)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32),
                             axis=-1)[..., 0]                  # (B, T)
  w = (loss_mask.astype(bool) & input_mask.astype(bool)).astype(jnp.float32)
  num_targets = jnp.sum(w)
  loss = jnp.sum(w * nll) / jnp.maximum(num_targets, 1.0)
  top = jax.lax.top_k(alpha, k)[0]                             # (B, K)
  kept_sum = jnp.sum(top, -1)
  aux = {
      "num_targets": num_targets,
      "alpha_kept": jnp.mean(kept_sum / k),
      "alpha_dropped": jnp.mean((jnp.sum(alpha, -1) - kept_sum)
                                / max(n - k, 1)),
  }
  return loss, aux


class PrunedSequence(NamedTuple):
  """The LLM input of the pruned model: [K kept visual ; T text]."""
  embeddings: jax.Array  # (B, K + T, D)
  positions: jax.Array   # (B, K + T) int32
  input_mask: jax.Array  # (B, K + T) bool
  mask_ar: jax.Array     # (B, K + T) int32
  kept: jax.Array        # (B, K) int32 kept visual indices, ascending


def build_pruned_sequence(method: AutoSelect, params, frozen_params, inputs,
                          tokens, input_mask, mask_ar, k: int,
                          policy: Optional[str] = None) -> PrunedSequence:
  """Scorer -> hard top-k -> ORIGINAL features of the kept tokens -> projector.

  No gate, no Denoiser. The prefill input for generation code, and the body of
  `inference_logits`. tokens, input_mask, mask_ar: (B, T); policy defaults to
  `method.position_policy`.
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
  vlm = method.vlm
  x = encode(method, frozen_params, inputs)                     # (B, N, Dv)
  n = x.shape[1]
  idx = select_topk(scores(method, params, x), k)               # (B, K)
  img = vlm.project(frozen_params, gather_tokens(x, idx))       # (B, K, D)
  seq = jnp.concatenate(
      [img, vlm.embed_text(frozen_params, tokens).astype(img.dtype)], 1)
  full_input, full_ar = _full_masks(input_mask, mask_ar, k)
  positions = kept_positions(idx, n, tokens.shape[1], policy,
                             text_mask=input_mask)
  return PrunedSequence(seq, positions, full_input, full_ar, idx)


def inference_logits(method: AutoSelect, params, frozen_params, inputs, text,
                     k: int, policy: Optional[str] = None):
  """Logits of the pruned model over [K kept visual ; text]: (B, K + T, V).

  With k = N (and policy "original") this is the full model's forward,
  `vlm.forward(frozen_params, images, ...)`, op for op.
  """
  tokens, input_mask, mask_ar = _text_arrays(
      text, ("tokens", "input_mask", "mask_ar"))
  seq = build_pruned_sequence(method, params, frozen_params, inputs, tokens,
                              input_mask, mask_ar, k, policy)
  hidden, _ = method.vlm.run_llm(
      frozen_params, seq.embeddings, seq.positions,
      make_attention_mask(seq.input_mask, seq.mask_ar))
  return method.vlm.logits(frozen_params, hidden)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def count_params(config, scorer: Scorer = Scorer(),
                 denoiser: Denoiser = Denoiser()) -> dict[str, int]:
  """{"scorer", "denoiser", "total", "vlm"} parameter counts for a VLM config.

  Shapes only (jax.eval_shape): nothing is allocated, a 3B VLM included.
  """
  from autoselect_jax.models import VLM
  vlm = VLM(config)
  tree = AutoSelect(vlm, scorer, denoiser).abstract_params()
  out = {"scorer": _count(tree["scorer"]),
         "denoiser": _count(tree["denoiser"])}
  out["total"] = out["scorer"] + out["denoiser"]
  out["vlm"] = _count(vlm.abstract_params())
  return out
