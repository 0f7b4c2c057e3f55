"""The embedded demo: everything in-process, no download, minutes on a CPU.

  python -m autoselect_jax.train --config configs/demo.py --workdir /tmp/demo

1. renders a synthetic captioning task (1-4 coloured shapes on a textured
   background; each shape covers about one of the 64 visual tokens);
2. pre-trains a tiny PaliGemma-architecture VLM on it with all tokens (cached
   in WORKDIR/frozen_vlm, so a second run skips it), then freezes it;
3. trains AutoSelect (Scorer + noise gate + Denoiser) with next-token loss
   only, one Scorer for K = 4, 8 and 16 (K drawn per step);
4. prints caption exact match of the full model, AutoSelect top-K, the
   oracle (object tokens) and the training-free baselines at K = 4, 8, 16.
"""

import ml_collections

from configs import paligemma


def get_config():
  c = paligemma.get_config()
  # The demo is a client of the training system: it provides the frozen VLM
  # (pre-trained and cached), the data (the shapes task, rendered on access;
  # the data.source / train_path fields are unused) and the final table.
  c.client = "autoselect_jax.demo.run"
  c.model.dtype = "float32"
  c.model.scan_unroll = 0  # Fully unrolled: faster for 2 layers on a CPU.

  c.autoselect.k = 8             # The budget the figures show.
  # One Scorer for every budget of the table: on seed 0 it beat a Scorer
  # trained at K=8 alone at K=16 (docs/demo_task.md).
  c.autoselect.k_choices = "4,8,16"
  c.autoselect.scorer_heads = 4
  c.autoselect.denoiser_heads = 4

  c.tau.steps = 110

  c.data.max_text_len = 24

  c.optim.lr = 4e-3
  c.optim.warmup_steps = 20

  c.batch_size = 64
  c.num_steps = 150
  c.log_every = 15
  c.eval_every = 75
  c.eval_batches = 4
  c.early_stopping_patience = 0
  c.checkpoint.every = 75

  d = c.demo = ml_collections.ConfigDict()
  d.variant = "demo"      # The frozen VLM's architecture (models/config.py).
  d.data_seed = 0
  d.min_distractors = 0   # Unnamed achromatic shapes (the harder variant).
  d.max_distractors = 0
  d.frozen_workdir = ""   # "" = the run's workdir holds frozen_vlm/.
  d.num_train = 24_000
  d.num_eval = 500        # Held-out images for the final table.
  d.num_val = 256         # Validation loss during training.
  d.budgets = "4,8,16"
  d.pretrain_steps = 800
  d.pretrain_batch_size = 64
  d.pretrain_lr = 2e-3
  # Update multipliers by parameter path prefix ("PATH=SCALE,...", 0 keeps
  # the initial value), e.g. "img/pos_embedding=0".
  d.pretrain_lr_scale = ""
  d.pretrain_seed = 0
  return c
