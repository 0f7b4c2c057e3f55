"""AutoSelect: learned visual-token selection (Scorer, LapSum, noise gate),
with the training ablations' gates and Denoisers.

Small pure pieces, exported flat as optax exports its transforms.
"""

from autoselect_jax.method.forward import (AutoSelect, build_pruned_sequence,
                                           count_params, encode,
                                           inference_logits, loss_from_scores,
                                           scores, train_loss)
from autoselect_jax.method.gate import (GATES, gate_tokens, gumbel_ste_gate,
                                        gumbel_topk_mask, scale_gate,
                                        vp_noise_gate)
from autoselect_jax.method.lapsum import laplace_cdf, soft_topk, tau_schedule
from autoselect_jax.method.modules import DENOISER_ATTENTIONS, Denoiser, Scorer
from autoselect_jax.method.selection import (POSITION_POLICIES, gather_tokens,
                                             kept_positions, select_topk,
                                             selected_sequence)
