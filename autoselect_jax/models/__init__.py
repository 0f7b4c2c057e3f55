"""Frozen VLM backbones. Only `VLM` and the configs are meant for other packages."""

from autoselect_jax.models.config import GemmaConfig, PaliGemmaConfig, SiglipConfig, VARIANTS, get_variant
from autoselect_jax.models.gemma import KVCache
from autoselect_jax.models.paligemma import (VLM, PaliGemma, init_cache,
                                            make_attention_mask,
                                            positions_from_mask, unstack_layers)
