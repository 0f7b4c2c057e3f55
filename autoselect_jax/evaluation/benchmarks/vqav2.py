"""VQAv2 val: open-ended questions on COCO val2014 images, VQA accuracy.

Local layout (the official release: v2_Questions_Val_mscoco.zip,
v2_Annotations_Val_mscoco.zip and COCO's val2014.zip, unzipped in one
folder):

  vqav2/
    v2_OpenEnded_mscoco_val2014_questions.json
        {"questions": [{"question_id", "image_id", "question"}, ...], ...}
    v2_mscoco_val2014_annotations.json
        {"annotations": [{"question_id", "image_id", "question_type",
          "answer_type", "multiple_choice_answer",
          "answers": [{"answer", "answer_confidence", "answer_id"} x 10]},
          ...], ...}
    val2014/COCO_val2014_{image_id:012d}.jpg

`--data` is that folder. `--images` is the COCO val2014 folder; by default
DATA/val2014, else DATA/../val2014 (the VQA files in their own folder next
to COCO's). Questions run in the questions file's order; `limit` keeps the
first N. Scoring needs no images.

Key: "question_id" (int), as in both files. Prompt: PROMPT, a str.format
template with field {question} (PaliGemma's VQAv2 transfer prompt). Metric:
the VQA team's vqaEval.py (`vqa_eval.vqa_accuracy`): overall accuracy and
the accuracy per answer type ("yes/no", "number", "other") and per question
type, in percent, unrounded (the script rounds to 2 decimals).

`read_predictions` also takes the official results file the evaluation
server and vqaEval.py read: a JSON list of {"question_id": int, "answer":
str}.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_answers, check_limit,
                                                 images_beside,
                                                 percent, read_json,
                                                 require_dir)
from autoselect_jax.evaluation.benchmarks import vqa_eval

PROMPT = "answer en {question}"
QUESTIONS_FILE = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS_FILE = "v2_mscoco_val2014_annotations.json"
IMAGES_DIR = "val2014"
IMAGE_NAME = "COCO_val2014_{image_id:012d}.jpg"


def _items(raw, path: str, field: str) -> list:
  if not isinstance(raw, dict) or not isinstance(raw.get(field), list):
    raise ValueError(f"{path}: expected a JSON object with a list "
                     f"'{field}'")
  return raw[field]


def _int_field(item, field: str, path: str, n: int) -> int:
  if not isinstance(item, dict):
    raise ValueError(f"{path}: item {n} is not an object")
  value = item.get(field)
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"{path}: item {n} lacks the integer field {field!r}")
  return value


def parse_questions(raw, path: str) -> list[dict]:
  """The questions in file order, fields checked, ids unique."""
  out = []
  for n, q in enumerate(_items(raw, path, "questions")):
    _int_field(q, "question_id", path, n)
    _int_field(q, "image_id", path, n)
    if not isinstance(q.get("question"), str):
      raise ValueError(f"{path}: item {n} lacks the string field 'question'")
    out.append(q)
  vqa_eval.unique_keys((q["question_id"] for q in out), path, "question_id")
  return out


def parse_annotations(raw, path: str) -> dict:
  """{question_id: (answers, answer_type, question_type)}."""
  out = {}
  for n, a in enumerate(_items(raw, path, "annotations")):
    qid = _int_field(a, "question_id", path, n)
    where = f"{path}: question_id {qid}"
    for field in ("answer_type", "question_type"):
      if not isinstance(a.get(field), str):
        raise ValueError(f"{where} lacks the string field {field!r}")
    if qid in out:
      raise ValueError(f"{where} is annotated twice")
    out[qid] = (vqa_eval.answer_strings(a.get("answers"), where),
                a["answer_type"], a["question_type"])
  return out


class VQAv2(Benchmark):
  name = "vqav2"
  key_field = "question_id"
  headline = "accuracy"
  max_new_tokens = 10  # Human answers are one to three words.

  prompt_template = PROMPT

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    if not data:
      raise ValueError(f"vqav2 needs --data: the folder holding "
                       f"{QUESTIONS_FILE} and {ANNOTATIONS_FILE}")
    require_dir(data, f"the folder holding {QUESTIONS_FILE} and "
                f"{ANNOTATIONS_FILE}")
    q_path = os.path.join(data, QUESTIONS_FILE)
    a_path = os.path.join(data, ANNOTATIONS_FILE)
    questions = parse_questions(read_json(q_path, "VQAv2 val questions"),
                                q_path)[:limit]
    annotations = parse_annotations(
        read_json(a_path, "VQAv2 val annotations"), a_path)
    folder = images_beside(images, data, IMAGES_DIR,
                           f"the COCO {IMAGES_DIR} images folder")
    examples = []
    for q in questions:
      qid = q["question_id"]
      if qid not in annotations:
        raise ValueError(f"{a_path}: no annotation for question_id {qid} "
                         f"of {q_path}")
      answers, answer_type, question_type = annotations[qid]
      examples.append(Example(
          key=qid,
          image=os.path.join(folder, IMAGE_NAME.format(
              image_id=q["image_id"])),
          prompt=self.prompt.format(question=q["question"]),
          target=answers,
          meta={"image_id": q["image_id"], "answer_type": answer_type,
                "question_type": question_type}))
    return examples

  def score(self, examples: Sequence[Example],
            answers: Mapping[int, str]) -> dict:
    check_answers(examples, answers, self.name)
    scores = [vqa_eval.vqa_accuracy(answers[e.key], e.target)
              for e in examples]
    metrics = {"accuracy": percent(sum(scores), len(scores)),
               "num_examples": len(examples),
               "question_type": vqa_eval.group_accuracy(
                   scores, [e.meta.get("question_type") for e in examples])}
    metrics.update(vqa_eval.group_accuracy(
        scores, [e.meta.get("answer_type") for e in examples]))
    return metrics

  def read_predictions(self, path: str) -> dict:
    """Our predictions JSONL, or the official results JSON list."""
    return vqa_eval.read_results(path, self.key_field, self.name)
