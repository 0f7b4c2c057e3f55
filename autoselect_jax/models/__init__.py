"""Frozen VLM backbones. Only `VLM`, `Sequence` and the configs are meant for other packages."""

from autoselect_jax.models.config import GemmaConfig, PaliGemmaConfig, SiglipConfig, VARIANTS, get_variant
from autoselect_jax.models.gemma import KVCache
from autoselect_jax.models.paligemma import VLM, PaliGemma, unstack_layers
from autoselect_jax.models.sequence import (Sequence, grid_index, make_attention_mask,
                                           next_token_nll, positions_from_mask)
