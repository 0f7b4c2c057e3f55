"""Cached decoding checked against recomputing the whole sequence, no cache."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from autoselect_jax.inference import decode
from autoselect_jax.models import make_attention_mask


def assert_cached_decode_matches_recompute(vlm, params, prefix, new_tokens,
                                           atol=1e-4):
  """Prefill + one `extend` per column of new_tokens (B, S) gives, for each
  example, the logits of one pass over its real prefix followed by the new
  tokens (positions continuing from its last real one)."""
  steps = new_tokens.shape[1]
  b, l = prefix.input_mask.shape
  logits, cache, cache_mask, pos = decode.prefill(vlm, params, prefix,
                                                  l + steps)
  cached = []
  for t in range(steps):
    pos = pos + 1
    logits, cache, cache_mask = decode.extend(
        vlm, params, jnp.asarray(new_tokens[:, t]), pos, cache, cache_mask,
        l + t)
    cached.append(np.asarray(logits))
  for i in range(b):
    real = int(prefix.input_mask[i].sum())
    x = jnp.concatenate([prefix.embeddings[i:i + 1, :real],
                         vlm.embed_text(params, new_tokens[i:i + 1])], 1)
    last = prefix.positions[i, real - 1]
    positions = jnp.concatenate(
        [prefix.positions[i:i + 1, :real], last + 1 + jnp.arange(steps)[None]],
        1)
    mask_ar = jnp.concatenate([prefix.mask_ar[i:i + 1, :real],
                               jnp.ones((1, steps), jnp.int32)], 1)
    mask = make_attention_mask(jnp.ones((1, real + steps), bool), mask_ar)
    hidden, _ = vlm.run_llm(params, x, positions, mask)
    full = np.asarray(vlm.logits(params, hidden))[0, real:]
    np.testing.assert_allclose(np.stack([c[i] for c in cached]), full,
                               atol=atol, rtol=0)
