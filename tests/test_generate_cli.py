"""`python -m autoselect_jax.generate` on a converted checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import hf_reference
from autoselect_jax import generate


def test_cli_json_matches_hf_generate(hf_mqa, tmp_path, capsys):
  _, model, processor, ckpt = hf_mqa
  images = hf_reference.random_images(2, 32, seed=3)
  paths = []
  for i, im in enumerate(images):
    paths.append(str(tmp_path / f"im{i}.png"))
    im.save(paths[-1])
  prompts = ["caption en", "what is in the image"]
  argv = ["--checkpoint", ckpt, "--max-new-tokens", "12", "--json"]
  for p, q in zip(paths, prompts):
    argv += ["--image", p, "--prompt", q]
  assert generate.main(argv) == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [l["prompt"] for l in lines] == prompts
  inputs = processor(images=images, text=prompts, return_tensors="pt",
                     padding="longest")
  with torch.no_grad():
    ref = model.generate(**inputs, max_new_tokens=12, do_sample=False)
  ref = ref[:, inputs["input_ids"].shape[1]:].numpy()
  for line, row in zip(lines, ref):
    row = row.tolist()
    if processor.tokenizer.eos_token_id in row:
      row = row[:row.index(processor.tokenizer.eos_token_id) + 1]
    assert line["ids"] == row
    assert line["text"] == processor.tokenizer.decode(
        [t for t in row if t != processor.tokenizer.eos_token_id],
        skip_special_tokens=True)


def test_cli_errors(hf_mqa, tmp_path):
  ckpt = hf_mqa[3]
  run = lambda *a: subprocess.run([sys.executable, "-m", "autoselect_jax.generate",
                                   *a], capture_output=True, text=True)
  r = run("--checkpoint", str(tmp_path / "none"), "--image", "x.png",
          "--prompt", "hi")
  assert r.returncode == 2 and "does not exist" in r.stderr
  r = run("--checkpoint", ckpt, "--image", str(tmp_path / "missing.png"),
          "--prompt", "hi")
  assert r.returncode == 2 and "missing.png" in r.stderr
  r = run("--checkpoint", ckpt, "--image", "a", "--image", "b", "--image", "c",
          "--prompt", "p", "--prompt", "q")
  assert r.returncode == 2 and "3 --image but 2 --prompt" in r.stderr
