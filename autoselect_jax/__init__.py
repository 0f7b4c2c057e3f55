"""autoselect_jax: AutoSelect visual-token pruning for VLMs, in JAX / Flax.

The method's pieces are exported here (no transformers / torch import).
"""

from autoselect_jax.method import (AutoSelect, Denoiser, POSITION_POLICIES,
                                   Scorer, build_pruned_sequence, count_params,
                                   gather_tokens, inference_logits,
                                   kept_positions, laplace_cdf, select_topk,
                                   selected_sequence, soft_topk, tau_schedule,
                                   train_loss, vp_noise_gate)
from autoselect_jax.models.sequence import Sequence

__all__ = ["AutoSelect", "Denoiser", "POSITION_POLICIES", "Scorer", "Sequence",
           "build_pruned_sequence", "count_params", "gather_tokens",
           "inference_logits", "kept_positions", "laplace_cdf", "select_topk",
           "selected_sequence", "soft_topk", "tau_schedule", "train_loss",
           "vp_noise_gate"]
