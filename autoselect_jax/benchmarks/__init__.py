"""Pieces of `python -m autoselect_jax.bench`: device peaks and timing
(`timing`), random or checkpoint weights (`weights`), the jitted stages and
their warm-up (`stages`), each pruning method's own stages for `--method`
(`methods`), the plain-JAX reference decoder (`reference`), the
FLOP / byte model of each record (`records`), and the JSON, its targets and
table (`results`)."""
