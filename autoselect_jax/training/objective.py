"""What the training loop optimises: AutoSelect's losses, built from a config
(the paper's method, or one of its training ablations: autoselect.gate,
autoselect.noise, autoselect.denoiser)."""

from __future__ import annotations

import dataclasses

import ml_collections

from autoselect_jax.method import AutoSelect, Denoiser, Scorer
from autoselect_jax.method import forward
from autoselect_jax.models import VLM, next_token_nll


@dataclasses.dataclass(frozen=True)
class Objective:
  method: AutoSelect

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict, vlm: VLM) -> "Objective":
    a = c.autoselect
    scorer = Scorer(num_layers=a.scorer_layers, width=a.scorer_width or None,
                    num_heads=a.scorer_heads, mlp_ratio=a.scorer_mlp_ratio)
    denoiser = (None if a.denoiser == "none" else
                Denoiser(num_heads=a.denoiser_heads, attention=a.denoiser))
    noise = None if a.noise_scale == "unit" else a.noise_scale
    return cls(AutoSelect(vlm, scorer, denoiser, noise_scale=noise,
                          position_policy=a.position_policy, gate=a.gate,
                          noise=a.noise))

  def init(self, rng):
    return self.method.init(rng)

  def scores(self, params, features):
    return forward.scores(self.method, params, features)

  def train_loss(self, params, frozen, batch, rng, tau, k: int):
    """Noise-gated next-token loss on a pipeline batch -> (loss, aux)."""
    return forward.train_loss(self.method, params, frozen, batch["image"],
                              batch, rng, k, tau)

  def eval_loss(self, params, frozen, batch, k: int):
    """(sum of target NLL, number of targets) with HARD top-k: the deployed
    path (`forward.build_pruned_sequence`, as generation builds it)."""
    tokens = batch["tokens"]
    seq, _ = forward.build_pruned_sequence(
        self.method, params, frozen, batch["image"], tokens,
        batch["input_mask"], batch["mask_ar"], k)
    vlm = self.method.vlm
    hidden, _ = vlm.run_llm(frozen, seq.embeddings, seq.positions,
                            seq.attention_mask())
    logits = vlm.logits(frozen, seq.text_predictors(hidden, tokens.shape[1]))
    return next_token_nll(logits, tokens, batch["loss_mask"].astype(bool)
                          & batch["input_mask"].astype(bool))

  def scorer_export_config(self, vlm_checkpoint: str) -> dict:
    s = self.method.scorer
    return {"format": "autoselect_jax.scorer", "version": 1,
            "scorer": {"num_layers": s.num_layers, "width": s.width,
                       "num_heads": s.num_heads, "mlp_ratio": s.mlp_ratio,
                       "eps": s.eps},
            "position_policy": self.method.position_policy,
            "vlm_checkpoint": vlm_checkpoint,
            "vlm": self.method.vlm.config.to_dict()}
