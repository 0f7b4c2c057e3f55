"""GQA testdev-balanced: compositional questions on Visual Genome images.

Local layout (the official release: questions1.2.zip and images.zip):

  gqa/
    testdev_balanced_questions.json   {question_id: {"imageId", "question",
                                       "answer", "fullAnswer", "types":
                                       {"structural", "semantic", ...},
                                       "isBalanced", ...}}
    images/{imageId}.jpg

`--data` is the questions JSON or the folder holding it. `--images` is the
images folder; by default DATA_DIR/images, else DATA_DIR/../images (the
questions unzipped into their own folder next to images/). Only questions
with "isBalanced" true (or absent) are kept: the official eval.py scores
only those (every testdev-balanced question is). Scoring needs no images.

Key: the question id, a string as in the file. Prompt: PROMPT, a str.format
template with field {question}. Metric: the official eval.py's accuracy,
exact string equality with the gold "answer", after the prediction is
normalised as LLaVA's convert_gqa_for_eval.py does before running eval.py
(`normalize`: surrounding whitespace stripped, trailing periods removed,
lower-cased). Also eval.py's "binary" / "open" accuracies (open: structural
type "query") and the accuracy per structural and per semantic type.

`read_predictions` also takes the official predictions file eval.py reads
(testdev_balanced_predictions.json: a JSON list of {"questionId",
"prediction"}).
"""

from __future__ import annotations

import collections
import os
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example, file_in,
                                                 check_answers, check_limit,
                                                 images_beside,
                                                 percent, read_json,
                                                 read_jsonl_predictions,
                                                 require_file)

PROMPT = "answer en {question}"
QUESTIONS_FILE = "testdev_balanced_questions.json"
REQUIRED = ("imageId", "question", "answer")


def normalize(prediction: str) -> str:
  """What is compared with the gold answer: LLaVA's GQA conversion
  (rstrip('.') then lower()), after stripping surrounding whitespace."""
  return prediction.strip().rstrip(".").lower()


def questions_path(data: Optional[str]) -> str:
  return file_in(data, QUESTIONS_FILE, "gqa", f"GQA's {QUESTIONS_FILE} (a "
                 "JSON object of questions by id)")


def parse_questions(raw, path: str) -> list[tuple[str, dict]]:
  """(question id, question) pairs in file order; checks the fields."""
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a JSON object {{question_id: "
                     f"question}}, got {type(raw).__name__}")
  out = []
  for qid, q in raw.items():
    if not isinstance(q, dict):
      raise ValueError(f"{path}: question {qid!r} is not an object")
    for field in REQUIRED:
      if not isinstance(q.get(field), str):
        raise ValueError(f"{path}: question {qid!r} lacks the string "
                         f"field {field!r}")
    types = q.get("types", {})
    if not isinstance(types, dict):
      raise ValueError(f"{path}: question {qid!r}: 'types' is not an object")
    if q.get("isBalanced", True) is False:
      continue
    out.append((qid, q))
  return out


def read_official_predictions(path: str, rows) -> dict:
  """{questionId: prediction} from eval.py's list of objects."""
  out = {}
  for n, row in enumerate(rows):
    if not isinstance(row, dict) or "questionId" not in row \
        or "prediction" not in row:
      raise ValueError(f"{path}: item {n} is not an object with "
                       "'questionId' and 'prediction'")
    qid = str(row["questionId"])
    if qid in out:
      raise ValueError(f"{path}: questionId {qid!r} appears twice")
    out[qid] = str(row["prediction"])
  return out


def _group_accuracy(hits: Mapping[str, list]) -> dict:
  return {name: percent(sum(v), len(v)) for name, v in sorted(hits.items())}


class GQA(Benchmark):
  name = "gqa"
  key_field = "question_id"
  headline = "accuracy"
  max_new_tokens = 10  # Gold answers are one to three words.

  prompt_template = PROMPT

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    path = questions_path(data)
    folder = images_beside(images, os.path.dirname(path), "images",
                           "the GQA images folder ({imageId}.jpg)")
    questions = parse_questions(read_json(path, "GQA questions"), path)
    examples = []
    for qid, q in questions[:limit]:
      types = q.get("types", {})
      examples.append(Example(
          key=qid, image=os.path.join(folder, f"{q['imageId']}.jpg"),
          prompt=self.prompt.format(question=q["question"]),
          target=q["answer"],
          meta={"image_id": q["imageId"],
                "structural": types.get("structural"),
                "semantic": types.get("semantic")}))
    return examples

  def score(self, examples: Sequence[Example],
            answers: Mapping[str, str]) -> dict:
    check_answers(examples, answers, self.name)
    hits, by_answer = [], collections.defaultdict(list)
    by_structural = collections.defaultdict(list)
    by_semantic = collections.defaultdict(list)
    for e in examples:
      hit = normalize(answers[e.key]) == e.target
      hits.append(hit)
      structural = e.meta.get("structural")
      if structural is not None:
        by_structural[structural].append(hit)
        by_answer["open" if structural == "query" else "binary"].append(hit)
      if e.meta.get("semantic") is not None:
        by_semantic[e.meta["semantic"]].append(hit)
    metrics = {"accuracy": percent(sum(hits), len(hits)),
               "num_examples": len(examples),
               "structural": _group_accuracy(by_structural),
               "semantic": _group_accuracy(by_semantic)}
    metrics.update(_group_accuracy(by_answer))
    return metrics

  def read_predictions(self, path: str) -> dict:
    """Our predictions JSONL, or eval.py's predictions JSON (a list)."""
    require_file(path, "GQA predictions (JSONL, or a JSON list of "
                 "{'questionId', 'prediction'})")
    with open(path, encoding="utf-8") as f:
      head = f.read(1 << 12).lstrip()
    if head.startswith("["):
      return read_official_predictions(path, read_json(path, "GQA "
                                                       "predictions"))
    return {str(k): v for k, v in
            read_jsonl_predictions(path, self.key_field).items()}
