"""POPE: object-hallucination yes/no questions on COCO val2014 images.

Local layout (the official release, RUCAIBox/POPE output/coco/):

  pope/
    coco_pope_random.json        JSON lines: {"question_id": 1, "image":
    coco_pope_popular.json       "COCO_val2014_000000310196.jpg", "text":
    coco_pope_adversarial.json   "Is there a snowboard in the image?",
                                 "label": "yes"}
    val2014/COCO_val2014_*.jpg   (or next to pope/, as LLaVA keeps it)

`--data` is the folder (all three splits, in the order random, popular,
adversarial) or one split's file (that split only). `--images` is the COCO
val2014 folder; by default DATA_DIR/val2014, else DATA_DIR/../val2014.
Scoring needs no images.

Key: "{split}/{question_id}" (e.g. "random/1"): question ids restart in
each split. Prompt: PROMPT, a str.format template with field {question}
(the file's "text").

Metric: POPE's evaluate.py per split. The prediction (surrounding whitespace
stripped, as LLaVA stores its generations) is cut at its first "." , commas
are dropped, it is split on spaces, and it reads "no" when a word is "No",
"no" or "not", else "yes" (`parse_yes_no`). With "yes" the positive class:
accuracy, precision, recall, F1 and yes-ratio (share of "yes" predictions),
in percent, per split under "splits"; the top-level values are their means
over the splits loaded (precision or recall with an empty denominator is 0).
Headline: "f1", the mean F1 over the splits, the number LLaVA-1.5 reports
for POPE (85.9) and the token-pruning papers compare against.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_answers, check_limit,
                                                 images_beside,
                                                 json_lines, percent,
                                                 require_file)

PROMPT = "answer en {question}"
SPLITS = ("random", "popular", "adversarial")
FILE = "coco_pope_{split}.json"
REQUIRED = ("question_id", "image", "text", "label")
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def parse_yes_no(answer: str) -> str:
  """POPE's evaluate.py rule: "no" if the first sentence has the word
  "No", "no" or "not" (commas dropped, split on spaces), else "yes"."""
  text = answer.strip().split(".")[0].replace(",", "")
  return "no" if {"No", "no", "not"} & set(text.split(" ")) else "yes"


def split_files(data: Optional[str]) -> list[tuple[str, str]]:
  """[(split, path)]: every split of a folder, or the one file given."""
  if not data:
    raise ValueError("pope needs --data: the folder with coco_pope_{random,"
                     "popular,adversarial}.json, or one of those files")
  if os.path.isdir(data):
    return [(s, require_file(os.path.join(data, FILE.format(split=s)),
                             f"POPE's {s} split (JSON lines)"))
            for s in SPLITS]
  m = re.fullmatch(r"coco_pope_(\w+)\.json", os.path.basename(data))
  if not m or m.group(1) not in SPLITS:
    raise ValueError(f"{data}: expected a folder or a file named "
                     f"{FILE.format(split='{' + ','.join(SPLITS) + '}')}")
  return [(m.group(1), require_file(data, f"POPE's {m.group(1)} split"))]


def read_split(path: str) -> list[dict]:
  """The question objects of one split file, fields checked."""
  rows = []
  for n, row in json_lines(path, "POPE files hold one question object per "
                           "line"):
    missing = [k for k in REQUIRED
               if not isinstance(row, dict) or k not in row]
    if missing:
      raise ValueError(f"{path}:{n}: missing field(s) {missing}")
    if row["label"] not in ("yes", "no"):
      raise ValueError(f"{path}:{n}: label {row['label']!r} is not "
                       "'yes' or 'no'")
    rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no questions")
  return rows


def binary_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict:
  """evaluate.py's numbers ("yes" positive), in percent, and the counts."""
  pairs = list(zip(preds, labels))
  tp = pairs.count(("yes", "yes"))
  fp = pairs.count(("yes", "no"))
  tn = pairs.count(("no", "no"))
  fn = pairs.count(("no", "yes"))
  precision = tp / (tp + fp) if tp + fp else 0.0
  recall = tp / (tp + fn) if tp + fn else 0.0
  f1 = (2 * precision * recall / (precision + recall)
        if precision + recall else 0.0)
  return {"accuracy": percent(tp + tn, len(pairs)),
          "precision": 100 * precision, "recall": 100 * recall,
          "f1": 100 * f1, "yes_ratio": percent(tp + fp, len(pairs)),
          "tp": tp, "fp": fp, "tn": tn, "fn": fn,
          "num_examples": len(pairs)}


class POPE(Benchmark):
  name = "pope"
  key_field = "question_id"
  headline = "f1"
  max_new_tokens = 8  # "yes" / "no"; room for a short sentence.

  prompt_template = PROMPT

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    files = split_files(data)
    folder = images_beside(images, os.path.dirname(files[0][1]), "val2014",
                           "the COCO val2014 images folder")
    examples, seen = [], set()
    for split, path in files:
      for row in read_split(path):
        key = f"{split}/{row['question_id']}"
        if key in seen:
          raise ValueError(f"{path}: question_id {row['question_id']!r} "
                           "appears twice")
        seen.add(key)
        examples.append(Example(
            key=key, image=os.path.join(folder, row["image"]),
            prompt=self.prompt.format(question=row["text"]),
            target=row["label"], meta={"split": split}))
    return examples[:limit]

  def score(self, examples: Sequence[Example],
            answers: Mapping[str, str]) -> dict:
    check_answers(examples, answers, self.name)
    by_split = {}
    for e in examples:
      preds, labels = by_split.setdefault(e.meta["split"], ([], []))
      preds.append(parse_yes_no(answers[e.key]))
      labels.append(e.target)
    splits = {s: binary_metrics(*by_split[s]) for s in SPLITS
              if s in by_split}
    metrics = {m: sum(v[m] for v in splits.values()) / len(splits)
               for m in METRICS} if splits else dict.fromkeys(METRICS, 0.0)
    metrics.update(splits=splits, num_examples=len(examples))
    return metrics
