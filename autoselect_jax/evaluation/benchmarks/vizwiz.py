"""VizWiz-VQA val: questions from blind people, many unanswerable.

Local layout (the official release: Annotations.zip and val.zip):

  vizwiz/
    Annotations/val.json
        [{"image": "VizWiz_val_00000000.jpg", "question",
          "answers": [{"answer", "answer_confidence"} x 10],
          "answer_type": "yes/no" | "number" | "other" | "unanswerable",
          "answerable": 0 | 1}, ...]
    val/VizWiz_val_00000000.jpg ...

`--data` is val.json, or a folder holding val.json or Annotations/val.json.
`--images` is the images folder; by default val/ next to val.json, else
val/ next to its folder (the layout above). Questions run in file order;
`limit` keeps the first N. Scoring needs no images.

Key: "image", the image file name (VizWiz has one question per image and no
question id; its official results format keys answers by "image" too).
Prompt: PROMPT, a str.format template with field {question}: PaliGemma's
VizWiz transfer prompt, which says nothing about unanswerable questions (the
transfer learns the human answer "unanswerable"; lmms-eval instead appends
"When the provided information is insufficient, respond with
'Unanswerable'."). Metric: VizWiz's vqaEval.py (`vqa_eval.vizwiz_accuracy`:
the prediction processed, the human answers as they are), overall and per
answer type, in percent; also the accuracy on the answerable and the
unanswerable questions (the "answerable" flag), and the script's
unanswerability metrics with the prediction "unanswerable" (after
processing) as the model's unanswerable call, so its score is 0 or 1:
average precision and F1 of detecting answerable == 0, in percent.

`read_predictions` also takes the official results file: a JSON list of
{"image": str, "answer": str}.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_answers, check_limit,
                                                 images_beside,
                                                 percent, read_json)
from autoselect_jax.evaluation.benchmarks import vqa_eval

PROMPT = "answer en {question}"
VAL_FILE = "val.json"
ANNOTATIONS_DIR = "Annotations"
IMAGES_DIR = "val"
UNANSWERABLE = "unanswerable"


def val_path(data: Optional[str]) -> str:
  if not data:
    raise ValueError(f"vizwiz needs --data: {VAL_FILE} or the folder "
                     f"holding it or {ANNOTATIONS_DIR}/{VAL_FILE}")
  if os.path.isdir(data):
    for candidate in (os.path.join(data, VAL_FILE),
                      os.path.join(data, ANNOTATIONS_DIR, VAL_FILE)):
      if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(f"{data} holds neither {VAL_FILE} nor "
                            f"{ANNOTATIONS_DIR}/{VAL_FILE}: expected "
                            "VizWiz's val annotations")
  if not os.path.isfile(data):
    raise FileNotFoundError(f"{data} does not exist: expected VizWiz's "
                            f"{VAL_FILE} or its folder")
  return data


def parse_val(raw, path: str) -> list[dict]:
  """The questions in file order, fields checked, image names unique."""
  if not isinstance(raw, list):
    raise ValueError(f"{path}: expected a JSON list of questions, got "
                     f"{type(raw).__name__}")
  out = []
  for n, q in enumerate(raw):
    if not isinstance(q, dict) or not isinstance(q.get("image"), str):
      raise ValueError(f"{path}: item {n} is not an object with a string "
                       "'image'")
    where = f"{path}: image {q['image']}"
    for field in ("question", "answer_type"):
      if not isinstance(q.get(field), str):
        raise ValueError(f"{where} lacks the string field {field!r}")
    flag = q.get("answerable")
    if not isinstance(flag, int) or flag not in (0, 1):
      raise ValueError(f"{where}: 'answerable' must be 0 or 1, got "
                       f"{q.get('answerable')!r}")
    vqa_eval.answer_strings(q.get("answers"), where)
    out.append(q)
  vqa_eval.unique_keys((q["image"] for q in out), path, "image")
  return out


def unanswerability(examples: Sequence[Example], predicted: Sequence[str]
                    ) -> dict:
  """Average precision and F1 (percent) of calling a question unanswerable,
  against the "answerable" flag; `predicted` are processed predictions."""
  labels = [1 - e.meta["answerable"] for e in examples]
  calls = [int(p == UNANSWERABLE) for p in predicted]
  ap = vqa_eval.average_precision(labels, calls)
  return {"average_precision": None if ap is None else 100.0 * ap,
          "f1_score": 100.0 * vqa_eval.f1(labels, calls),
          "predicted_unanswerable": sum(calls)}


class VizWiz(Benchmark):
  name = "vizwiz"
  key_field = "image"
  headline = "accuracy"
  max_new_tokens = 16  # Mostly short; some answers are read-out text.

  prompt_template = PROMPT

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    path = val_path(data)
    folder = images_beside(images, os.path.dirname(path), IMAGES_DIR,
                           f"the VizWiz {IMAGES_DIR} images folder")
    questions = parse_val(read_json(path, "VizWiz val annotations"), path)
    return [Example(key=q["image"], image=os.path.join(folder, q["image"]),
                    prompt=self.prompt.format(question=q["question"]),
                    target=vqa_eval.answer_strings(q["answers"], path),
                    meta={"answer_type": q["answer_type"],
                          "answerable": int(q["answerable"])})
            for q in questions[:limit]]

  def score(self, examples: Sequence[Example],
            answers: Mapping[str, str]) -> dict:
    check_answers(examples, answers, self.name)
    scores = [vqa_eval.vizwiz_accuracy(answers[e.key], e.target)
              for e in examples]
    by_flag = vqa_eval.group_accuracy(scores, [
        "answerable" if e.meta["answerable"] else UNANSWERABLE
        for e in examples])
    metrics = {"accuracy": percent(sum(scores), len(scores)),
               "num_examples": len(examples),
               "by_answerable": by_flag,
               "unanswerability": unanswerability(examples, [
                   vqa_eval.vizwiz_prediction(answers[e.key])
                   for e in examples])}
    metrics.update(vqa_eval.group_accuracy(
        scores, [e.meta["answer_type"] for e in examples]))
    return metrics

  def read_predictions(self, path: str) -> dict:
    """Our predictions JSONL, or the official results JSON list."""
    return vqa_eval.read_results(path, self.key_field, self.name)
