"""AutoSelect on a frozen PaliGemma-3B-224 (the paper's recipe, docs/method.md).

  python -m autoselect_jax.train --config configs/paligemma.py --workdir DIR \\
      --config.model.checkpoint=CKPT --config.data.train_path=TRAIN.jsonl \\
      --config.data.val_path=VAL.jsonl

CKPT is a folder written by `python -m autoselect_jax.convert`. Data: a JSONL
manifest (`image` + `caption`) or Parquet files (`--config.data.source=parquet`,
a glob in train_path; e.g. ImageNet-1K-VL-Enriched with
`--config.data.caption_column=...`). Without weights or data, try
configs/demo.py first.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # A module that provides parts of the run (autoselect_jax.training.client):
  # e.g. configs/demo.py's "autoselect_jax.demo.run". Empty: none.
  c.client = ""

  c.model = ml_collections.ConfigDict()
  c.model.checkpoint = ""      # Required: converted PaliGemma folder.
  c.model.dtype = "bfloat16"   # Compute dtype of the frozen VLM.
  c.model.remat = False        # jax.checkpoint each decoder block.
  c.model.scan_unroll = 1      # Layer-scan unroll (speed only; 0 = fully).

  c.autoselect = ml_collections.ConfigDict()
  c.autoselect.k = 64                 # Training budget (of N = 256).
  c.autoselect.k_choices = ""         # e.g. "32,64,128": a K drawn per step.
  c.autoselect.scorer_layers = 2
  c.autoselect.scorer_width = 0       # 0 = the vision width Dv (1152).
  c.autoselect.scorer_heads = 16
  c.autoselect.scorer_mlp_ratio = 4
  c.autoselect.denoiser_heads = 16
  c.autoselect.noise_scale = "unit"   # "unit" (paper) or "std" (feature std).
  c.autoselect.position_policy = "original"  # or "packed" (eval/export).
  # Training ablations (docs/method.md, "Ablation switches"); the defaults
  # are the paper's method.
  c.autoselect.gate = "vp"            # or "scale" (alpha x), "gumbel_ste".
  c.autoselect.noise = True           # False: eps = 0 (vp: sqrt(alpha) x).
  c.autoselect.denoiser = "diagonal"  # or "global" attention, "none".

  c.tau = ml_collections.ConfigDict()
  c.tau.start, c.tau.end, c.tau.steps = 2.0, 0.1, 2000

  c.data = ml_collections.ConfigDict()
  c.data.source = "jsonl"        # "jsonl" | "parquet".
  c.data.train_path = ""         # Required.
  c.data.val_path = ""           # Optional; enables validation + early stop.
  c.data.prompt = "caption en"
  c.data.image_column = "image"
  c.data.caption_column = "caption"
  c.data.parquet_cache_mb = 256  # Decoded row groups cached per process.
  c.data.parquet_arrow_dir = ""  # Convert Parquet once to memory-mapped Arrow
                                 # files here (fast global shuffle at scale).
  c.data.max_text_len = 64
  c.data.worker_count = 0        # Grain worker processes per host.
  c.data.num_epochs = 1

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.grad_clip_norm = 1.0

  c.batch_size = 32              # Global batch.
  c.num_steps = 0                # 0: num_epochs over the training set.
  c.log_every = 10
  c.eval_every = 200
  c.eval_batches = 0             # 0: the whole validation set.
  c.early_stopping_patience = 3  # Evaluations without improvement; 0 = off.
  c.early_stopping_min_delta = 1e-4  # A smaller decrease is no improvement.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 500
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data, c.mesh.fsdp = -1, 1
  c.sharding = ml_collections.ConfigDict()
  c.sharding.frozen = "replicate"     # or "fsdp" (16 GB chips, larger VLMs).
  c.sharding.trainable = "replicate"
  c.sharding.min_fsdp_size = 2 ** 14  # Smaller arrays stay replicated.

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = "auto"   # "auto" | "yes" | "no"
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  c.debug_step_delay = 0.0   # Seconds to pause after each step (tests only).
  return c
