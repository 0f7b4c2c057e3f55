"""SEED-Bench (v1), image part: evaluation dimensions 1-9 on CC3M images.

Local layout (the official release, huggingface AILab-CVC/SEED-Bench):

  seed_bench/
    SEED-Bench.json     {"questions": [{"question_id", "question",
                        "choice_a", "choice_b", "choice_c", "choice_d",
                        "answer" ("A".."D"), "data_id" (the image file
                        name), "data_type" ("image" or "video"),
                        "question_type_id" (int)}, ...],
                        "question_type": {name: id}}
    SEED-Bench-image/{data_id}      (SEED-Bench-image.zip unzipped)

`--data` is SEED-Bench.json or the folder holding it. `--images` is the
image folder; by default DATA_DIR/SEED-Bench-image. Only questions with
"data_type" "image" are kept (the video dimensions 10-12 need video
frames), in file order. Scoring needs no images.

Key: "question_id", as the file spells it. Prompt: PROMPT, a str.format
template over the fields of `choice.PROMPT_FIELDS` (SEED has no hint).
Metric: option-letter accuracy in percent over the image questions
(`choice.extract_choice`; unparseable is wrong), as the official eval.py
and LLaVA's convert_seed_for_submission.py report it ("image" accuracy:
correct / total, not the mean over dimensions), plus the accuracy per
question type (named by "question_type") and "unparseable".
`read_predictions` also takes the official eval.py's results.json (JSON
lines {"q_id", "prediction", "gt", "q_type_id"}).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example, file_in,
                                                 check_limit, images_dir,
                                                 percent, read_json,
                                                 read_jsonl_predictions,
                                                 read_keyed_lines,
                                                 require_file)
from autoselect_jax.evaluation.benchmarks import choice

PROMPT = "answer en {question} {options}"
QUESTIONS_FILE = "SEED-Bench.json"
IMAGE_DIR = "SEED-Bench-image"
CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")
REQUIRED = ("question_id", "question", "answer", "data_id", "data_type",
            "question_type_id") + CHOICE_FIELDS


def questions_path(data: Optional[str]) -> str:
  return file_in(data, QUESTIONS_FILE, "seed", f"SEED-Bench's "
                 f"{QUESTIONS_FILE} ({{'questions': [...], 'question_type': "
                 "{...}})")


def parse(raw, path: str) -> tuple[list[dict], dict]:
  """(image questions in file order, {type id: type name}), checked."""
  if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list) \
      or not isinstance(raw.get("question_type"), dict):
    raise ValueError(f"{path}: expected an object with a list 'questions' "
                     "and an object 'question_type' {name: id}")
  names = {v: k for k, v in raw["question_type"].items()}
  out, seen = [], set()
  for n, q in enumerate(raw["questions"]):
    if not isinstance(q, dict):
      raise ValueError(f"{path}: questions[{n}] is not an object")
    missing = [f for f in REQUIRED if f not in q]
    if missing:
      raise ValueError(f"{path}: questions[{n}] lacks {missing}")
    if q["data_type"] != "image":
      continue
    where = f"{path}: question_id {q['question_id']!r}"
    choice.check_key(q["question_id"], where)
    if q["question_id"] in seen:
      raise ValueError(f"{where} appears twice")
    seen.add(q["question_id"])
    if q["answer"] not in choice.LETTERS[:len(CHOICE_FIELDS)]:
      raise ValueError(f"{where}: answer {q['answer']!r} is not A-D")
    if q["question_type_id"] not in names:
      raise ValueError(f"{where}: question_type_id {q['question_type_id']!r}"
                       " is not in 'question_type'")
    if not isinstance(q["data_id"], str):
      raise ValueError(f"{where}: data_id {q['data_id']!r} is not a file "
                       "name")
    out.append(q)
  return out, names


def read_official_predictions(path: str) -> dict:
  """{q_id: prediction} from eval.py's results.json lines."""
  return read_keyed_lines(path, "q_id", "prediction")


class SEEDBench(Benchmark):
  name = "seed"
  key_field = "question_id"
  headline = "accuracy"
  max_new_tokens = 32  # A letter needs 1-2 tokens; choice texts run longer.

  def __init__(self, prompt: str = PROMPT):
    self.prompt = choice.check_choice_prompt(prompt)

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    path = questions_path(data)
    here = os.path.dirname(os.path.abspath(path))
    folder = images_dir(images, [os.path.join(here, IMAGE_DIR)],
                        f"the SEED-Bench image folder ({IMAGE_DIR}/)")
    questions, names = parse(read_json(path, "SEED-Bench questions"), path)
    examples = []
    for q in questions[:limit]:
      options = choice.lettered([str(q[f]) for f in CHOICE_FIELDS])
      fields = choice.prompt_fields(q["question"], options)
      examples.append(Example(
          key=q["question_id"], image=os.path.join(folder, q["data_id"]),
          prompt=self.prompt.format(**fields), target=q["answer"],
          meta={"options": options,
                "question_type": names[q["question_type_id"]]}))
    return examples

  def score(self, examples: Sequence[Example],
            answers: Mapping[str, str]) -> dict:
    judged = choice.judge(examples, answers, self.name)
    hits = [hit for _, hit in judged]
    return {"accuracy": percent(sum(hits), len(hits)),
            "num_examples": len(examples),
            "unparseable": sum(letter is None for letter, _ in judged),
            "question_type": choice.group_accuracy(
                hits, [e.meta["question_type"] for e in examples])}

  def read_predictions(self, path: str) -> dict:
    """Our predictions JSONL, or the official eval.py's results.json."""
    require_file(path, "SEED-Bench predictions (JSONL with 'question_id' "
                 "and 'answer', or eval.py's results.json)")
    with open(path, encoding="utf-8") as f:
      first = next((line for line in f if line.strip()), "")
    try:
      head = json.loads(first)
    except json.JSONDecodeError:
      head = None
    if isinstance(head, dict) and "q_id" in head and "prediction" in head:
      return read_official_predictions(path)
    return read_jsonl_predictions(path, self.key_field)
