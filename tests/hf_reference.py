"""Builds the HF reference for parity tests: a tiny random PaliGemma saved as
safetensors with a SentencePiece tokenizer trained in-process.

Imports torch/transformers; only tests use it.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np

WORDS = ("a an the cat dog red blue green yellow circle square triangle top "
         "bottom left right caption en what is in image picture of and two "
         "three answer question describe color shape where").split()


def train_tokenizer(folder: str, vocab_size: int = 200) -> None:
  """Writes `folder/tokenizer.model`, Gemma's special ids: pad 0 eos 1 bos 2."""
  import sentencepiece as spm
  rng = random.Random(0)
  sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
           for _ in range(3000)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sents), model_writer=model, vocab_size=vocab_size,
      model_type="bpe", hard_vocab_limit=False, pad_id=0, eos_id=1, bos_id=2,
      unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
      unk_piece="<unk>", add_dummy_prefix=False, byte_fallback=False,
      split_digits=True, remove_extra_whitespaces=False,
      normalization_rule_name="identity", user_defined_symbols=["\n"],
      minloglevel=2)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
    f.write(model.getvalue())


def build_hf_paligemma(folder: str, *, image_size=32, patch_size=8,
                       vision_width=32, vision_depth=2, vision_heads=4,
                       vision_mlp=48, width=32, depth=2, heads=4, kv_heads=1,
                       head_dim=8, mlp=64, embed_std=0.1, branch_scale=3.0,
                       seed=0):
  """Saves a random HF PaliGemma + processor to `folder`; returns (model, processor).

  Every parameter is re-drawn (HF initialises RMSNorm weights to zero, which
  would hide a wrong (1 + w)), so a parity test sees every tensor. Small token
  embeddings and amplified residual branches (o_proj, down_proj) keep greedy
  decoding from repeating its last token, so generation tests see real paths.
  """
  import torch
  from transformers import (GemmaTokenizer, PaliGemmaConfig,
                            PaliGemmaForConditionalGeneration,
                            PaliGemmaProcessor)
  from transformers.models.siglip.image_processing_pil_siglip import (
      SiglipImageProcessorPil)

  tok_dir = os.path.join(folder, "_spm")
  train_tokenizer(tok_dir)
  tokenizer = GemmaTokenizer.from_pretrained(tok_dir)
  image_processor = SiglipImageProcessorPil(
      size={"height": image_size, "width": image_size})
  image_processor.image_seq_length = (image_size // patch_size) ** 2
  processor = PaliGemmaProcessor(image_processor=image_processor,
                                 tokenizer=tokenizer)
  image_token_id = processor.image_token_id
  vocab = image_token_id + 1
  config = PaliGemmaConfig(
      vision_config=dict(
          model_type="siglip_vision_model", image_size=image_size,
          patch_size=patch_size, hidden_size=vision_width,
          num_hidden_layers=vision_depth, num_attention_heads=vision_heads,
          intermediate_size=vision_mlp, vision_use_head=False,
          hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
      text_config=dict(
          model_type="gemma", vocab_size=vocab, hidden_size=width,
          num_hidden_layers=depth, num_attention_heads=heads,
          num_key_value_heads=kv_heads, head_dim=head_dim,
          intermediate_size=mlp, hidden_activation="gelu_pytorch_tanh",
          rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2, eos_token_id=1),
      image_token_index=image_token_id, projection_dim=width,
      vocab_size=vocab, pad_token_id=0, bos_token_id=2, eos_token_id=1)
  torch.manual_seed(seed)
  model = PaliGemmaForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and ("norm" in name or "layernorm" in name):
        base = 0.0 if "language_model" in name else 1.0
        p.copy_(base + 0.3 * torch.randn_like(p))
      elif p.ndim == 1:
        p.copy_(0.1 * torch.randn_like(p))
      elif "embed_tokens" in name:
        p.copy_(embed_std * torch.randn_like(p))
      else:
        fan_in = int(np.prod(p.shape[1:]))
        scale = branch_scale if ("o_proj" in name or "down_proj" in name) else 1
        p.copy_(torch.randn_like(p) * scale * fan_in ** -0.5)
  model.save_pretrained(folder)
  processor.save_pretrained(folder)
  return model, processor


def random_images(n: int, size: int, seed: int = 0) -> list:
  """Smooth random RGB PIL images of size x size."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    low = rng.uniform(0, 255, (4, 4, 3))
    big = np.kron(low, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
    noise = rng.normal(0, 20, (size, size, 3))
    out.append(Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)))
  return out
