"""Pieces of `python -m autoselect_jax.bench`: device peaks and timing,
random weights, and the plain-JAX reference decoder."""
