"""What every benchmark provides: examples from local files, prompts, and its
official metric over saved answers.

A benchmark is a small class with

  name, key_field            the registry name; the example key's field name
                             in prediction files (e.g. "question_id")
  headline                   the metric the retention report uses
  max_new_tokens             generation length for its answers
  load(data, images, limit)  -> list[Example], in file order, from a local
                             copy in the official release layout (see each
                             module's docstring); `limit` keeps the first N
                             questions (a benchmark whose metric needs whole
                             groups, such as MMBench's circular rotations,
                             keeps whole groups)
  score(examples, answers)   -> {"accuracy": percent, other metrics...}
  read_predictions(path)     -> {key: answer}; JSONL lines holding key_field
                             and "answer" (`read_jsonl_predictions`), or a
                             benchmark's own official results format too

Prompts follow PaliGemma's conventions ("answer en ..."); each benchmark keeps
its template in one module-level constant and takes `prompt=` to override it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Hashable, Mapping, Optional, Sequence, Union

import numpy as np

Key = Hashable  # int or str, as the benchmark's own files spell it.
ImageRef = Union[str, bytes, np.ndarray]  # A path, encoded bytes, or uint8 (H, W, 3).


@dataclasses.dataclass(frozen=True)
class Example:
  """One question of a benchmark.

  key: the benchmark's own example key (VQAv2: question_id), unique.
  image: a file path, the encoded image bytes (MMBench's base64 TSV), or a
    uint8 (H, W, 3) array (synthetic).
  prompt: the model's prompt text (the benchmark's template, filled in).
  target: what the metric needs (ground-truth answers, the label, ...).
  meta: anything else the metric or the report groups by (split, subtask).
  """
  key: Key
  image: ImageRef
  prompt: str
  target: Any = None
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def load_image(image: ImageRef):
  """A PIL RGB image or uint8 array for `Processor.image`; bytes are decoded,
  paths are checked (an error names the missing file)."""
  import io

  from PIL import Image
  if isinstance(image, bytes):
    try:
      with Image.open(io.BytesIO(image)) as f:
        return f.convert("RGB")
    except OSError as e:
      raise ValueError(f"cannot decode image bytes: {e}") from None
  if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
    raise FileNotFoundError(f"image {image} does not exist")
  return image


class Benchmark:
  """Base class; see the module docstring for the contract."""
  name: str = ""
  key_field: str = "question_id"
  headline: str = "accuracy"
  max_new_tokens: int = 10
  # The default prompt template and the fields it may use; a benchmark with
  # other constructor arguments defines its own __init__.
  prompt_template: str = ""
  prompt_fields: tuple = ("question",)

  def __init__(self, prompt: Optional[str] = None):
    self.prompt = check_prompt(prompt or self.prompt_template,
                               **{f: "" for f in self.prompt_fields})

  def load(self, data: str, images: Optional[str] = None,
           limit: Optional[int] = None) -> list[Example]:
    raise NotImplementedError

  def score(self, examples: Sequence[Example],
            answers: Mapping[Key, str]) -> dict:
    raise NotImplementedError

  def read_predictions(self, path: str) -> dict:
    return read_jsonl_predictions(path, self.key_field)


def check_limit(limit: Optional[int]) -> Optional[int]:
  if limit is not None and (isinstance(limit, bool) or not isinstance(
      limit, int) or limit < 1):
    raise ValueError(f"limit must be a positive int or None, got {limit!r}")
  return limit


def require_file(path: str, what: str) -> str:
  """`path` if it is a file, else FileNotFoundError naming it and `what`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: expected {what}")
  return path


def require_dir(path: str, what: str) -> str:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} is not a folder: expected {what}")
  return path


def read_json(path: str, what: str):
  """Parsed JSON of a required file; errors name the path and `what`."""
  require_file(path, what)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}): expected {what}"
                     ) from None


def json_lines(path: str, what: str = ""):
  """(line number, parsed object) of each non-empty line of a JSON-lines
  file; a line that is not JSON is a ValueError naming the file and line
  (and `what` the file should hold)."""
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield n, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not a JSON line ({e})"
                         + (f"; {what}" if what else "")) from None


def read_keyed_lines(path: str, key_field: str, value_field: str) -> dict:
  """{row[key_field]: str(row[value_field])} of a JSON-lines file; errors
  name the file and line (a line lacking a field, a repeated key)."""
  out = {}
  for n, row in json_lines(path):
    if not isinstance(row, dict) or key_field not in row \
        or value_field not in row:
      raise ValueError(f"{path}:{n}: expected an object with "
                       f"'{key_field}' and '{value_field}'")
    key = row[key_field]
    if key in out:
      raise ValueError(f"{path}:{n}: {key_field}={key!r} appears twice")
    out[key] = str(row[value_field])
  return out


def read_jsonl_predictions(path: str, key_field: str) -> dict:
  """{key: answer} from JSONL lines holding `key_field` and "answer".

  Errors name the file and line: a line that is not JSON, lacks either
  field, or repeats a key.
  """
  require_file(path, f"a predictions JSONL file with '{key_field}' and "
               "'answer' per line")
  return read_keyed_lines(path, key_field, "answer")


def check_answers(examples: Sequence[Example], answers: Mapping[Key, str],
                  benchmark: str) -> None:
  """Every example has an answer and every answer an example; otherwise a
  ValueError with the counts and the first few keys."""
  keys = [e.key for e in examples]
  missing = [k for k in keys if k not in answers]
  extra = set(answers) - set(keys)
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"{len(missing)} of {len(keys)} examples have no "
                   f"prediction (first: {missing[:3]})")
    if extra:
      parts.append(f"{len(extra)} predictions match no example (first: "
                   f"{sorted(map(str, extra))[:3]})")
    raise ValueError(f"{benchmark}: " + "; ".join(parts))


def percent(hits: float, total: int) -> float:
  """100 * hits / total (0 for no examples)."""
  return 100.0 * float(hits) / total if total else 0.0


def check_prompt(prompt: str, **fields) -> str:
  """`prompt` if it is a str.format template over `fields` (a subset of
  them), else a ValueError naming the template and the fields."""
  try:
    prompt.format(**fields)
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f"prompt template {prompt!r} does not format with the "
                     f"fields {sorted(fields)}: {e!r}") from None
  return prompt


def file_in(data: Optional[str], name: str, benchmark: str, what: str) -> str:
  """`data` if it is a file, or `data/name` if `data` is a folder; errors
  name the benchmark, the path and `what` was expected."""
  if not data:
    raise ValueError(f"{benchmark} needs --data: {name} or its folder")
  if os.path.isdir(data):
    data = os.path.join(data, name)
  return require_file(data, what)


def images_dir(images: Optional[str], candidates: Sequence[str],
               what: str) -> str:
  """The images folder: `images` if given (it must be a folder), else the
  first of `candidates` that is a folder, else the first candidate (so that
  scoring works without images; reading an image names the missing file)."""
  if images is not None:
    return require_dir(images, what)
  return next((c for c in candidates if os.path.isdir(c)), candidates[0])


def images_beside(images: Optional[str], near: str, name: str,
                  what: str) -> str:
  """`images_dir` with the usual release layouts as defaults: the folder
  `name` inside the folder `near` (a data file's folder), else one level up
  (images unpacked beside the annotations' folder)."""
  here = os.path.abspath(near)
  return images_dir(images, [os.path.join(here, name), os.path.join(
      os.path.dirname(here), name)], what)
