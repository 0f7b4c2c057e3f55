"""ScienceQA-IMG: the test questions of ScienceQA that have an image.

Local layout (the official release, lupantech/ScienceQA data/scienceqa/):

  scienceqa/
    problems.json      {pid: {"question", "choices": [str, ...], "answer":
                       int (index into choices), "hint": str ("" if none),
                       "image": "image.png" or null, "split": "test", ...,
                       "subject", "grade", ...}}
    pid_splits.json    {"train": [pid, ...], "val": [...], "test": [...]}
    images/test/{pid}/image.png     (tools/download.sh unzips test.zip into
                                     images/)

`--data` is the folder holding problems.json and pid_splits.json.
`--images` is the folder holding {pid}/ (LLaVA's --image-folder); by
default DATA_DIR/images/test, else DATA_DIR/test. Scoring needs no images.

IMG: the pids of pid_splits.json's "test" list (in that order) whose
problem has an image (2,017 of 4,241 in the release). Key: the pid (str).

Prompt: PROMPT, a str.format template over the fields of
`choice.PROMPT_FIELDS`; the hint is the context, the choices are lettered
A, B, ... in the file's order. Metric: option-letter accuracy in percent
(`choice.extract_choice`; an unparseable prediction is wrong), as LLaVA's
eval_science_qa.py scores (its "IMG-Accuracy"), plus the official
evaluate_acc.py's breakdowns within IMG: per subject ("natural science",
"social science", "language science") and per grade band ("grade 1-6",
"grade 7-12"), and "unparseable". `read_predictions` also takes the official
results JSON ({"results": {pid: predicted choice index}, ...}, as
run_gpt3.py and LLaVA write it); index -1 (LLaVA's "FAILED") is unparseable.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_limit, images_dir,
                                                 percent, read_json,
                                                 read_jsonl_predictions,
                                                 require_file)
from autoselect_jax.evaluation.benchmarks import choice

PROMPT = "answer en {context}{question} {options}"
PROBLEMS, SPLITS = "problems.json", "pid_splits.json"
GRADES = {f"grade{g}": "grade 1-6" if g <= 6 else "grade 7-12"
          for g in range(1, 13)}


def check_problem(pid: str, p, path: str) -> dict:
  """The problem `pid`, its fields checked."""
  where = f"{path}: problem {pid!r}"
  if not isinstance(p, dict):
    raise ValueError(f"{where} is not an object")
  if not isinstance(p.get("question"), str):
    raise ValueError(f"{where} lacks the string field 'question'")
  texts = p.get("choices")
  if not isinstance(texts, list) or len(texts) < 2 or not all(
      isinstance(t, str) for t in texts) or len(texts) > len(choice.LETTERS):
    raise ValueError(f"{where}: 'choices' is not a list of 2 to 26 strings")
  answer = p.get("answer")
  if isinstance(answer, bool) or not isinstance(answer, int) or not (
      0 <= answer < len(texts)):
    raise ValueError(f"{where}: 'answer' {answer!r} is not an index into its "
                     f"{len(texts)} choices")
  if p.get("image") is not None and not isinstance(p["image"], str):
    raise ValueError(f"{where}: 'image' is neither a file name nor null")
  return p


def image_pids(data: str, split: str) -> tuple[list[str], dict]:
  """(pids of `split` with an image, in pid_splits order; problems)."""
  problems = read_json(os.path.join(data, PROBLEMS),
                       "ScienceQA's problems.json ({pid: problem})")
  splits_path = os.path.join(data, SPLITS)
  splits = read_json(splits_path, "ScienceQA's pid_splits.json ({split: "
                     "[pid, ...]})")
  if not isinstance(problems, dict):
    raise ValueError(f"{os.path.join(data, PROBLEMS)}: expected an object "
                     "{pid: problem}")
  if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
    raise ValueError(f"{splits_path}: expected an object with a list "
                     f"{split!r} of pids")
  out = []
  for pid in splits[split]:
    pid = choice.check_key(pid, splits_path)
    if str(pid) not in problems:
      raise ValueError(f"{splits_path}: {split} pid {pid!r} is not in "
                       f"{PROBLEMS}")
    p = check_problem(str(pid), problems[str(pid)],
                      os.path.join(data, PROBLEMS))
    if p.get("image"):
      out.append(str(pid))
  return out, problems


def letter_of(index) -> str:
  """A results-file choice index -> its letter ("" when it names none)."""
  if isinstance(index, bool) or not isinstance(index, int) or not (
      0 <= index < len(choice.LETTERS)):
    return ""
  return choice.LETTERS[index]


class ScienceQA(Benchmark):
  name = "scienceqa"
  key_field = "pid"
  headline = "accuracy"
  max_new_tokens = 32  # A letter needs 1-2 tokens; choice texts run longer.

  def __init__(self, prompt: str = PROMPT, split: str = "test"):
    self.prompt = choice.check_choice_prompt(prompt)
    self.split = split

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    if not data or not os.path.isdir(data):
      raise FileNotFoundError(f"scienceqa --data {data!r} is not a folder: "
                              f"expected the folder with {PROBLEMS} and "
                              f"{SPLITS}")
    pids, problems = image_pids(data, self.split)
    folder = images_dir(images, [os.path.join(data, "images", self.split),
                                 os.path.join(data, self.split)],
                        "the ScienceQA images folder ({pid}/image.png)")
    examples = []
    for pid in pids[:limit]:
      p = problems[pid]
      options = choice.lettered(p["choices"])
      fields = choice.prompt_fields(p["question"], options, p.get("hint"))
      examples.append(Example(
          key=pid, image=os.path.join(folder, pid, p["image"]),
          prompt=self.prompt.format(**fields),
          target=choice.LETTERS[p["answer"]],
          meta={"options": options, "subject": p.get("subject"),
                "grade": GRADES.get(p.get("grade"))}))
    return examples

  def score(self, examples: Sequence[Example],
            answers: Mapping[str, str]) -> dict:
    judged = choice.judge(examples, answers, self.name)
    hits = [hit for _, hit in judged]
    metrics = {"accuracy": percent(sum(hits), len(hits)),
               "num_examples": len(examples),
               "unparseable": sum(letter is None for letter, _ in judged)}
    for field in ("subject", "grade"):
      pairs = [(h, e.meta[field]) for h, e in zip(hits, examples)
               if e.meta.get(field) is not None]
      metrics[field] = choice.group_accuracy(*zip(*pairs)) if pairs else {}
    return metrics

  def read_predictions(self, path: str) -> dict:
    """Our predictions JSONL, or the official results JSON."""
    require_file(path, "ScienceQA predictions (JSONL with 'pid' and "
                 "'answer', or a results JSON with 'results')")
    try:
      with open(path, encoding="utf-8") as f:
        whole = json.load(f)
    except json.JSONDecodeError:
      whole = None  # Several lines: JSONL.
    if isinstance(whole, dict) and isinstance(whole.get("results"), dict):
      return {str(pid): letter_of(i) for pid, i in whole["results"].items()}
    return {str(k): v for k, v in
            read_jsonl_predictions(path, self.key_field).items()}
