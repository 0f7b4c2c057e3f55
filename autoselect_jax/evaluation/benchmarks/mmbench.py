"""MMBench and MMBench-CN dev: single-choice questions, scored circularly.

Local layout (the official TSV releases; images are inside the file):

  mmbench/
    mmbench_dev_20230712.tsv       MMBench (English) dev
    mmbench_dev_cn_20231003.tsv    MMBench-CN dev

Tab-separated, one header line, fields quoted as pandas writes them (a
field holding a tab, newline or quote is in double quotes). Columns read:
"index" (int), "question", "hint", "A" .. "D" (more letters if the header
has them; an absent option is empty or "nan"), "answer" (the letter),
"image" (base64 of the encoded image, or -- in VLMEvalKit's copies -- the
index of the row whose image it shares), "category" and "l2-category"
(optional). Names other than the option letters are read in any case
("L2-category", as VLMEvalKit lower-cases them). Other columns (source, split, comment, ...) are ignored. The
test TSVs have no answers and are refused. `--data` is the TSV file;
`--images` does not apply.

Circular evaluation: a question counts only if every pass over its rotated
options is answered right. The official dev TSVs already hold the passes:
row k * 1_000_000 + i is pass k of question i, with its options shifted and
its own answer letter (the MMBench maintainers: each question has as many
rows as options, ~4x the question count; VLMEvalKit's MMBench_DEV_EN/CN.tsv
and lmms-lab/MMBench hold them too). A file without any index >= 1_000_000
(a subset made by hand, an export of the originals) gets the passes made
here: question i with n options gets rows r * 1_000_000 + i for r < n, where
pass r lists the options shifted r places (the option that was at letter
r + j is now at letter j, as LLaVA's --all-rounds does) and the answer
letter moves with its option. Keys: those indexes (int). `limit` keeps the
first N questions (in order of first appearance) with all their passes.

Prompt: PROMPT (MMBench) / PROMPT_CN (MMBench-CN), str.format templates over
the fields of `choice.PROMPT_FIELDS`; the hint is the context. Metric: the
letter of each prediction by `choice.extract_choice` (no GPT matcher; an
unparseable prediction is wrong); "accuracy" is the circular accuracy in
percent over questions (headline), "vanilla_accuracy" the accuracy of pass
0 alone, "category" / "l2_category" the circular accuracy per (l2-)category
of pass 0, "unparseable" the number of rows with no option read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import sys
from typing import Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Benchmark, Example,
                                                 check_limit, percent,
                                                 require_file)
from autoselect_jax.evaluation.benchmarks import choice

PROMPT = "answer en {context}{question} {options}"
PROMPT_CN = "answer zh {context}{question} {options}"
PASS = 1_000_000
REQUIRED = ("index", "question", "answer", "image", "A", "B")
IMAGE_REF_MAX = 64  # VLMEvalKit: an image field this short names a row.


@contextlib.contextmanager
def _big_fields():
  """Base64 images exceed csv's default 128 KiB field limit."""
  old = csv.field_size_limit()
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  try:
    yield
  finally:
    csv.field_size_limit(old)


def read_tsv(path: str) -> tuple[list[str], list[dict]]:
  """(option letters, rows as {column: text}) of an MMBench TSV."""
  require_file(path, "an MMBench TSV (mmbench_dev_20230712.tsv or "
               "mmbench_dev_cn_20231003.tsv)")
  with _big_fields(), open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter="\t")
    header = next(reader, None)
    if header is None:
      raise ValueError(f"{path}: empty file, expected an MMBench TSV")
    # Column names other than option letters in any case ("L2-category").
    header = [h if h in choice.LETTERS else h.lower() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
      hint = " (a test split has no answers)" if missing == ["answer"] else ""
      raise ValueError(f"{path}: missing columns {missing}{hint}; expected "
                       f"an MMBench dev TSV with {list(REQUIRED)}, header "
                       f"is {header[:12]}")
    rows = []
    for n, fields in enumerate(reader, 2):
      if not fields:
        continue
      if len(fields) != len(header):
        raise ValueError(f"{path}:{n}: {len(fields)} fields, the header has "
                         f"{len(header)}")
      rows.append(dict(zip(header, fields)))
  letters = [c for c in choice.LETTERS if c in header]
  if letters != list(choice.LETTERS[:len(letters)]):
    raise ValueError(f"{path}: option columns {letters} are not A, B, ... "
                     "in order")
  return letters, rows


def parse_row(row: dict, letters: Sequence[str], path: str) -> dict:
  """Index, options, answer and metadata of one row, checked."""
  try:
    index = int(row["index"])
  except ValueError:
    raise ValueError(f"{path}: index {row['index']!r} is not an integer"
                     ) from None
  where = f"{path}: index {index}"
  if index < 0:
    raise ValueError(f"{where}: negative index")
  options = {c: row[c].strip() for c in letters if not choice.is_missing(
      row[c])}
  if len(options) < 2:
    raise ValueError(f"{where}: fewer than two options in {list(letters)}")
  answer = row["answer"].strip()
  if answer not in options:
    raise ValueError(f"{where}: answer {answer!r} is not one of its options "
                     f"{list(options)}")
  if choice.is_missing(row["question"]):
    raise ValueError(f"{where}: empty question")
  return {"index": index, "question": row["question"].strip(),
          "hint": row.get("hint"), "options": options, "answer": answer,
          "image": row["image"].strip(),
          "category": row.get("category", "").strip() or "uncategorized",
          "l2_category": row.get("l2-category", "").strip() or None}


def make_passes(rows: Sequence[dict], path: str) -> list[dict]:
  """Each row followed by its rotations (see the module docstring)."""
  out = []
  for row in rows:
    if row["index"] >= PASS:
      raise ValueError(f"{path}: index {row['index']} >= {PASS} in a file "
                       "without rotations")
    letters, texts = list(row["options"]), list(row["options"].values())
    n, answer = len(texts), letters.index(row["answer"])
    for r in range(n):
      out.append({**row, "index": r * PASS + row["index"],
                  "options": dict(zip(letters, texts[r:] + texts[:r])),
                  "answer": letters[(answer - r) % n]})
  return out


def group_rows(rows: Sequence[dict], path: str,
               limit: Optional[int]) -> list[dict]:
  """Rows of the first `limit` questions, in file order; every rotation
  must have its pass-0 row and every index must be unique."""
  seen, order = set(), {}
  for row in rows:
    if row["index"] in seen:
      raise ValueError(f"{path}: index {row['index']} appears twice")
    seen.add(row["index"])
    order.setdefault(row["index"] % PASS, None)
  orphans = sorted(g for g in order if g not in seen)
  if orphans:
    raise ValueError(f"{path}: rotations of question(s) {orphans[:5]} but no "
                     "pass-0 row (index < 1000000) for them")
  keep = set(list(order)[:limit])
  return [r for r in rows if r["index"] % PASS in keep]


def decode_images(rows: Sequence[dict], by_index: Mapping[int, str],
                  path: str) -> list[bytes]:
  """The image bytes of each row; a short image field names the row whose
  image it shares (VLMEvalKit's copies; `by_index`: every row's image
  field). Equal base64 decodes once, to one bytes object."""
  cache, out = {}, []
  for r in rows:
    b64 = r["image"]
    if len(b64) <= IMAGE_REF_MAX:
      try:
        b64 = by_index[int(b64)]
      except (ValueError, KeyError):
        raise ValueError(f"{path}: index {r['index']}: image field {b64!r} "
                         "is neither base64 image data nor another row's "
                         "index") from None
    if b64 not in cache:
      try:
        cache[b64] = base64.b64decode(b64, validate=True)
      except (binascii.Error, ValueError):
        raise ValueError(f"{path}: index {r['index']}: the image field is "
                         "not base64") from None
    out.append(cache[b64])
  return out


class MMBench(Benchmark):
  name = "mmbench"
  key_field = "index"
  headline = "accuracy"
  max_new_tokens = 32  # A letter needs 1-2 tokens; option texts run longer.
  default_prompt = PROMPT

  def __init__(self, prompt: Optional[str] = None):
    self.prompt = choice.check_choice_prompt(prompt or self.default_prompt)

  def load(self, data: Optional[str] = None, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    check_limit(limit)
    if images is not None:
      raise ValueError(f"{self.name}: the images are inside the TSV; "
                       "--images does not apply")
    if not data:
      raise ValueError(f"{self.name} needs --data: the dev TSV file")
    letters, raw = read_tsv(data)
    rows = [parse_row(r, letters, data) for r in raw]
    if not any(r["index"] >= PASS for r in rows):
      rows = make_passes(rows, data)
    by_index = {r["index"]: r["image"] for r in rows}
    rows = group_rows(rows, data, limit)
    examples = []
    for r, image in zip(rows, decode_images(rows, by_index, data)):
      fields = choice.prompt_fields(r["question"], r["options"], r["hint"])
      examples.append(Example(
          key=r["index"], image=image, prompt=self.prompt.format(**fields),
          target=r["answer"],
          meta={"options": r["options"], "question": r["index"] % PASS,
                "pass": r["index"] // PASS, "category": r["category"],
                "l2_category": r["l2_category"]}))
    return examples

  def score(self, examples: Sequence[Example],
            answers: Mapping[int, str]) -> dict:
    judged = choice.judge(examples, answers, self.name)
    circular, first = {}, {}
    for e, (_, hit) in zip(examples, judged):
      q = e.meta["question"]
      circular[q] = circular.get(q, True) and hit
      if e.meta["pass"] == 0:
        first[q] = (e, hit)
    questions = sorted(first)
    hits = [circular[q] for q in questions]
    metrics = {
        "accuracy": percent(sum(hits), len(hits)),
        "vanilla_accuracy": percent(sum(first[q][1] for q in questions),
                                    len(questions)),
        "num_questions": len(questions), "num_rows": len(examples),
        "unparseable": sum(letter is None for letter, _ in judged),
        "category": choice.group_accuracy(
            hits, [first[q][0].meta["category"] for q in questions])}
    l2 = [first[q][0].meta["l2_category"] for q in questions]
    if any(c is not None for c in l2):
      metrics["l2_category"] = choice.group_accuracy(
          hits, [c or "uncategorized" for c in l2])
    return metrics


class MMBenchCN(MMBench):
  name = "mmbench_cn"
  default_prompt = PROMPT_CN
