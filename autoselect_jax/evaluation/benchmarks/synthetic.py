"""The embedded demo's shapes-captioning task as a benchmark (generated, no files).

`--data` selects the examples; by default the demo's held-out set:

  held_out                  500 images of data seed 0 from the demo's
                            held-out range (what the demo's table uses)
  seed=S,count=N[,start=I]  N images of data seed S from index I (default:
                            the held-out range's start)

Key: the example's index in the stream (int). Prompt "caption en" (the
demo's). Metric: exact match of the generated caption with the target after
stripping whitespace: with greedy decoding this is the demo's teacher-forced
exact match (every argmax equals the target, then <eos>).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from autoselect_jax.demo import data as demo_data
from autoselect_jax.demo import synthetic
from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_answers, check_limit,
                                                 percent)

PROMPT = synthetic.PROMPT
HELD_OUT = "held_out"
HELD_OUT_COUNT = 500


def parse_data(data: Optional[str]) -> tuple[int, int, int]:
  """`--data` -> (seed, start, count)."""
  if data in (None, "", HELD_OUT):
    return 0, demo_data.EVAL_START, HELD_OUT_COUNT
  fields = {}
  for part in data.split(","):
    name, sep, value = part.partition("=")
    if not sep or name not in ("seed", "count", "start") or name in fields:
      raise ValueError(f"synthetic --data {data!r}: expected '{HELD_OUT}' or "
                       "'seed=S,count=N[,start=I]'")
    try:
      fields[name] = int(value)
    except ValueError:
      raise ValueError(f"synthetic --data {data!r}: {name}={value!r} is not "
                       "an integer") from None
  if "seed" not in fields or "count" not in fields:
    raise ValueError(f"synthetic --data {data!r}: seed= and count= are "
                     "required")
  seed, count = fields["seed"], fields["count"]
  start = fields.get("start", demo_data.EVAL_START)
  if seed < 0 or start < 0 or count < 1:
    raise ValueError(f"synthetic --data {data!r}: need seed >= 0, start >= 0 "
                     "and count >= 1")
  return seed, start, count


class Synthetic(Benchmark):
  name = "synthetic"
  key_field = "index"
  max_new_tokens = 24  # The longest caption is 4 objects joined by "and".

  def __init__(self, prompt: str = PROMPT):
    self.prompt = prompt

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    if images is not None:
      raise ValueError("the synthetic benchmark renders its images; "
                       "--images does not apply")
    seed, start, count = parse_data(data)
    if check_limit(limit) is not None:
      count = min(count, limit)
    return [Example(key=i, image=ex.image, prompt=self.prompt,
                    target=ex.caption, meta={"seed": seed})
            for i, ex in zip(range(start, start + count),
                             synthetic.make_examples(
                                 seed, range(start, start + count)))]

  def score(self, examples: Sequence[Example],
            answers: Mapping[int, str]) -> dict:
    check_answers(examples, answers, self.name)
    hits = sum(answers[e.key].strip() == e.target for e in examples)
    return {"accuracy": percent(hits, len(examples)),
            "num_examples": len(examples)}
