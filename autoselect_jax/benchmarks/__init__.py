"""Pieces of `python -m autoselect_jax.bench`: device peaks and timing
(`timing`), random or checkpoint weights (`weights`), the jitted stages and
their warm-up (`stages`), each pruning method's own stages for `--method`
(`methods`), the plain-JAX reference decoder (`reference`), the
FLOP / byte model of each record (`records`), the JSON, its targets and
table (`results`), serving throughput and its memory fit (`throughput`,
`memory_fit`) and shared argument types (`args`). Two more command lines:
dense against blocked attention (`attention_blocks`) and the Scorer's FLOP
share at full depth (`shares`)."""
