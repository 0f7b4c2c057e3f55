"""MME: 14 yes/no subtasks, two questions per image, scored as MME's tool.

Local layout (the official MME_Benchmark_release_version folder):

  MME_Benchmark_release_version/
    existence/  count/  position/  color/  OCR/       image files next to
    commonsense_reasoning/  numerical_calculation/    same-named .txt files
    text_translation/  code_reasoning/                (000000006040.jpg +
                                                       000000006040.txt)
    posters/  celebrity/  scene/  landmark/  artwork/ images/NAME.jpg and
                                                       questions_answers_YN/
                                                       NAME.txt
    eval_tool/ ...                                    (not read)

Either layout is accepted in any subtask folder. Each .txt holds two lines
"question<TAB>answer" with the answer Yes or No. `--data` is the release
folder; the images live in it, so `--images` does not apply. Subtasks are
loaded in the order of SUBTASKS, images sorted by file name, questions in
file order; `limit` keeps whole images (the first images whose questions
add up to at least `limit`).

Key: "{subtask}/{image file}/{question index}" (e.g.
"existence/000000006040.jpg/0"). Prompt: PROMPT, a str.format template with
fields {question} (the file's question without its trailing "Please answer
yes or no.") and {full_question} (the line as in the file).

Metric: MME's eval_tool/calculation.py. A prediction (surrounding
whitespace stripped, as LLaVA stores its generations, then lower-cased) is
"yes" or "no" if it is exactly that, else "yes" if its first 4 characters
contain "yes", else "no" if they contain "no", else "other" (wrong either
way) (`parse_yes_no`). Per subtask: acc (percent of questions right), acc+
(percent of images with both questions right), score = acc + acc+.
"perception" sums the scores of the 10 perception subtasks, "cognition" of
the 4 cognition subtasks, "total" both (the headline; LLaVA-1.5's MME
number is the perception sum); "accuracy" is the plain percent of questions
right. Sums run over the subtasks loaded (all 14 without `limit`).
"""

from __future__ import annotations

import collections
import os
import re
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_answers, check_limit,
                                                 check_prompt, percent,
                                                 require_dir)

PROMPT = "answer en {question}"
PERCEPTION = ("existence", "count", "position", "color", "posters",
              "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation",
             "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
QUESTIONS_PER_IMAGE = 2
_INSTRUCTION = re.compile(r"\s*Please answer yes or no\.?\s*$", re.IGNORECASE)


def parse_yes_no(prediction: str) -> str:
  """calculation.py's rule: "yes", "no" or "other"."""
  text = prediction.strip().lower()
  if text in ("yes", "no"):
    return text
  if "yes" in text[:4]:
    return "yes"
  return "no" if "no" in text[:4] else "other"


def strip_instruction(question: str) -> str:
  """The question without MME's trailing "Please answer yes or no."."""
  return _INSTRUCTION.sub("", question)


def subtask_pairs(folder: str) -> list[tuple[str, str]]:
  """[(image path, questions .txt path)] of one subtask, by image name."""
  split = (os.path.isdir(os.path.join(folder, "images"))
           and os.path.isdir(os.path.join(folder, "questions_answers_YN")))
  image_dir = os.path.join(folder, "images") if split else folder
  text_dir = (os.path.join(folder, "questions_answers_YN") if split
              else folder)
  names = sorted(n for n in os.listdir(image_dir)
                 if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise ValueError(f"{folder}: no images (expected NAME.jpg/.png with "
                     "NAME.txt beside them, or images/ and "
                     "questions_answers_YN/)")
  pairs = []
  for name in names:
    txt = os.path.join(text_dir, os.path.splitext(name)[0] + ".txt")
    if not os.path.isfile(txt):
      raise FileNotFoundError(f"{txt} does not exist: expected the questions"
                              f" of {os.path.join(image_dir, name)}")
    pairs.append((os.path.join(image_dir, name), txt))
  return pairs


def read_questions(path: str) -> list[tuple[str, str]]:
  """[(question, "yes" | "no")] of one image's .txt, checked."""
  with open(path, encoding="utf-8-sig") as f:
    lines = [line.rstrip("\r\n") for line in f if line.strip()]
  if len(lines) != QUESTIONS_PER_IMAGE:
    raise ValueError(f"{path}: {len(lines)} questions, expected "
                     f"{QUESTIONS_PER_IMAGE} lines 'question<TAB>answer'")
  out = []
  for n, line in enumerate(lines, 1):
    question, sep, answer = line.rpartition("\t")
    answer = answer.strip().lower()
    if not sep or not question.strip() or answer not in ("yes", "no"):
      raise ValueError(f"{path}: line {n} is not 'question<TAB>Yes|No': "
                       f"{line!r}")
    out.append((question.strip(), answer))
  return out


def subtask_metrics(images: Mapping[str, list]) -> dict:
  """calculation.py's numbers of one subtask from {image: [hit, ...]}."""
  hits = [h for v in images.values() for h in v]
  acc = percent(sum(hits), len(hits))
  acc_plus = percent(sum(all(v) for v in images.values()), len(images))
  return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
          "num_images": len(images), "num_questions": len(hits)}


class MME(Benchmark):
  name = "mme"
  key_field = "question_id"
  headline = "total"
  max_new_tokens = 8  # "Yes" / "No"; room for a short sentence.

  def __init__(self, prompt: str = PROMPT):
    self.prompt = check_prompt(prompt, question="", full_question="")

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    if images is not None:
      raise ValueError("mme: the images are inside the release folder "
                       "(--data); --images does not apply")
    if not data:
      raise ValueError("mme needs --data: the MME_Benchmark_release_version "
                       "folder")
    require_dir(data, "the MME release folder (MME_Benchmark_release_version)")
    missing = [s for s in SUBTASKS if not os.path.isdir(os.path.join(data, s))]
    if missing:
      raise FileNotFoundError(f"{data}: missing subtask folder(s) {missing}; "
                              f"expected all of {list(SUBTASKS)}")
    examples = []
    for subtask in SUBTASKS:
      for image, txt in subtask_pairs(os.path.join(data, subtask)):
        if limit is not None and len(examples) >= limit:
          return examples
        name = os.path.basename(image)
        for i, (question, answer) in enumerate(read_questions(txt)):
          examples.append(Example(
              key=f"{subtask}/{name}/{i}", image=image,
              prompt=self.prompt.format(
                  question=strip_instruction(question),
                  full_question=question),
              target=answer, meta={"subtask": subtask, "image": name}))
    return examples

  def score(self, examples: Sequence[Example],
            answers: Mapping[str, str]) -> dict:
    check_answers(examples, answers, self.name)
    per_image = collections.defaultdict(lambda: collections.defaultdict(list))
    other = collections.Counter()
    for e in examples:
      pred = parse_yes_no(answers[e.key])
      other[e.meta["subtask"]] += pred == "other"
      per_image[e.meta["subtask"]][e.meta["image"]].append(pred == e.target)
    subtasks = {}
    for s in SUBTASKS:
      if s in per_image:
        subtasks[s] = {**subtask_metrics(per_image[s]), "other": other[s]}
    perception = sum(v["score"] for s, v in subtasks.items()
                     if s in PERCEPTION)
    cognition = sum(v["score"] for s, v in subtasks.items() if s in COGNITION)
    hits = sum(h for images in per_image.values() for v in images.values()
               for h in v)
    return {"total": perception + cognition, "perception": perception,
            "cognition": cognition, "accuracy": percent(hits, len(examples)),
            "num_examples": len(examples), "subtasks": subtasks}
