"""TextVQA val: questions that need reading text in the image, VQA accuracy.

Local layout (the official release: TextVQA_0.5.1_val.json and
train_val_images.zip, whose train_images/ also holds the val images):

  textvqa/
    TextVQA_0.5.1_val.json
        {"dataset_name": "textvqa", "dataset_type": "val",
         "data": [{"question_id", "question", "image_id",
                   "answers": [10 strings], ...}, ...]}
    train_images/{image_id}.jpg

`--data` is the JSON file or the folder holding it. `--images` is the images
folder; by default DATA_DIR/train_images, else DATA_DIR/../train_images.
Questions run in file order; `limit` keeps the first N. Scoring needs no
images.

Key: "question_id" (int), as in the file. Prompt: PROMPT, a str.format
template with field {question} (PaliGemma's TextVQA transfer prompt; no OCR
tokens). Metric: the TextVQA authors' evaluator (M4C's
TextVQAAccuracyEvaluator, which LLaVA's eval_textvqa.py runs): the EvalAI
answer processor on the prediction and on all ten answers, then the
leave-one-out soft accuracy (`vqa_eval.textvqa_accuracy`), in percent.

`read_predictions` also takes the official results format of the TextVQA
challenge: a JSON list of {"question_id": int, "answer": str}.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example, file_in,
                                                 check_answers, check_limit,
                                                 images_beside,
                                                 percent, read_json)
from autoselect_jax.evaluation.benchmarks import vqa_eval

PROMPT = "answer en {question}"
VAL_FILE = "TextVQA_0.5.1_val.json"
IMAGES_DIR = "train_images"


def val_path(data: Optional[str]) -> str:
  return file_in(data, VAL_FILE, "textvqa", f"TextVQA's {VAL_FILE} (a JSON "
                 "object with a 'data' list)")


def parse_val(raw, path: str) -> list[dict]:
  """The questions in file order, fields checked, ids unique."""
  if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
    raise ValueError(f"{path}: expected a JSON object with a list 'data'")
  out = []
  for n, q in enumerate(raw["data"]):
    if not isinstance(q, dict):
      raise ValueError(f"{path}: data item {n} is not an object")
    qid = q.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, int):
      raise ValueError(f"{path}: data item {n} lacks the integer field "
                       "'question_id'")
    for field in ("question", "image_id"):
      if not isinstance(q.get(field), str):
        raise ValueError(f"{path}: question_id {qid} lacks the string "
                         f"field {field!r}")
    vqa_eval.string_list(q.get("answers"),
                         f"{path}: question_id {qid} 'answers'")
    out.append(q)
  vqa_eval.unique_keys((q["question_id"] for q in out), path, "question_id")
  return out


class TextVQA(Benchmark):
  name = "textvqa"
  key_field = "question_id"
  headline = "accuracy"
  max_new_tokens = 16  # Answers copy scene text: names, numbers, phrases.

  prompt_template = PROMPT

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    path = val_path(data)
    folder = images_beside(
        images, os.path.dirname(path), IMAGES_DIR,
        f"the TextVQA {IMAGES_DIR} folder ({{image_id}}.jpg)")
    questions = parse_val(read_json(path, "TextVQA val questions"), path)
    return [Example(key=q["question_id"],
                    image=os.path.join(folder, f"{q['image_id']}.jpg"),
                    prompt=self.prompt.format(question=q["question"]),
                    target=tuple(q["answers"]),
                    meta={"image_id": q["image_id"]})
            for q in questions[:limit]]

  def score(self, examples: Sequence[Example],
            answers: Mapping[int, str]) -> dict:
    check_answers(examples, answers, self.name)
    scores = [vqa_eval.textvqa_accuracy(answers[e.key], e.target)
              for e in examples]
    return {"accuracy": percent(sum(scores), len(scores)),
            "num_examples": len(examples)}

  def read_predictions(self, path: str) -> dict:
    """Our predictions JSONL, or the official results JSON list."""
    return vqa_eval.read_results(path, self.key_field, self.name)
