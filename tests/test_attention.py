"""models.attention: blocked (query-chunked) attention equals dense attention,
outputs, the attention received, masks and gradients alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoselect_jax.models.attention import SelfAttention, attend

B, N, H, E = 2, 13, 4, 8


def _qkv(seed=0):
  q, k, v = jax.random.normal(jax.random.key(seed), (3, B, N, H, E))
  return q * E ** -0.5, k, v


def _dense(q, k, v, mask=None):
  """The textbook formula, written out on its own."""
  logits = jnp.einsum("bqhe,bkhe->bhqk", q, k)
  if mask is not None:
    logits = jnp.where(mask[:, None], logits, -1e30)
  probs = jax.nn.softmax(logits, axis=-1)
  return (jnp.einsum("bhqk,bkhe->bqhe", probs, v),
          jnp.mean(probs, axis=(1, 2)))


@pytest.mark.parametrize("chunk", [0, 1, 4, 5, 13, 64])  # 0, >= N: dense.
@pytest.mark.parametrize("masked", [False, True])
def test_blocked_equals_dense(chunk, masked):
  q, k, v = _qkv()
  mask = None
  if masked:  # A prefix-LM-like mask with a fully padded key column.
    mask = jnp.tril(jnp.ones((N, N), bool)) | (jnp.arange(N) < 5)[None]
    mask = jnp.broadcast_to(mask & (jnp.arange(N) != 7)[None], (B, N, N))
  out, received = jax.jit(lambda *a: attend(*a, query_chunk=chunk))(
      q, k, v, mask)
  want_out, want_received = _dense(q, k, v, mask)
  assert out.shape == (B, N, H, E) and received.shape == (B, N)
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(received, want_received, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(jnp.sum(received, -1), 1.0, rtol=1e-5)
  if masked:
    assert float(jnp.max(received[:, 7])) == 0.0


def test_blocked_gradients_equal_dense():
  q, k, v = _qkv(1)
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)[0]))
  blocked = jax.grad(loss(lambda *a: attend(*a, query_chunk=4)), (0, 1, 2))
  dense = jax.grad(loss(_dense), (0, 1, 2))
  for g, want in zip(blocked(q, k, v), dense(q, k, v)):
    np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_self_attention_output_does_not_depend_on_the_chunk():
  """Blocks of 3 rows against query_chunk=0, dense attention (one block)."""
  x = jax.random.normal(jax.random.key(2), (B, N, 32))
  params = SelfAttention(4).init(jax.random.key(3), x)["params"]
  outs = [SelfAttention(4, query_chunk=c).apply(
      {"params": params}, x, return_attention=True) for c in (3, 0)]
  (a, sa), (b, sb) = outs
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sa.received, sb.received, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(sa.keys, sb.keys)


def test_blocked_attention_keeps_only_a_block_of_scores_live():
  """XLA's buffer plan: at N = 1024 the blocked call's temporaries are a
  fraction of the (B, H, N, N) float32 scores, whatever the backend does
  with a dense call (XLA CPU fuses the dense one too; a GPU need not)."""
  n, h = 1024, 4
  q = k = v = jax.ShapeDtypeStruct((1, n, h, 16), jnp.float32)
  temp = lambda chunk: jax.jit(lambda q, k, v: attend(
      q, k, v, query_chunk=chunk)[0]).lower(q, k, v).compile(
      ).memory_analysis().temp_size_in_bytes
  scores = h * n * n * 4
  assert temp(128) < scores / 2
