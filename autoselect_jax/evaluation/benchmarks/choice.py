"""What the multiple-choice benchmarks share: the option listing in prompts
and the rule that reads an option letter out of a free-form prediction.

Prompt fields (every multiple-choice template may use any of them; each is
one line: runs of whitespace, newlines included, become one space, since
PaliGemma's prompt is one line that "\n" separates from the answer):

  {question}  the question text
  {hint}      the hint / context text, or "" when the question has none
  {context}   the hint followed by one space, or "" (so "{context}{question}"
              reads well with and without a hint)
  {options}   the lettered listing, "A: red B: blue C: green"
  {choices}   the option texts alone, joined by " \\t " (PaliGemma's AI2D and
              A-OKVQA transfers list options this way after "choose from:")

Letter extraction (`extract_choice`), the first rule that decides wins:

  1. the whole prediction is one capital letter, optionally in brackets and
     followed by ".", ":", "," or ";": "B", "B.", "(B)", "[B]";
  2. the prediction equals one option's text (case, surrounding spaces and
     punctuation and repeated spaces ignored);
  3. the whole prediction is one lower-case letter ("b", "(b)");
  4. the prediction starts with a capital letter and a delimiter, then a
     space or the end: "B. cat", "B: cat", "(B) cat", "B) cat";
  5. phrases naming the letter, "answer is B", "answer: (B)", "option B",
     "choice B", "答案是B", "选项B", "选B" -- used when they all name the
     same letter;
  6. option texts found inside the prediction (normalised as in 2; an edge
     that is an ASCII letter or digit must be a word boundary, so "cat" is
     not found in "category" nor "1" in "10", but "猫" is found in
     "这是猫"), not counting an occurrence inside a longer option's
     occurrence ("red" in "dark red"): when exactly one option is found;
  7. capital letters standing alone (no letter or digit on either side):
     the one letter that appears, ignoring an "A" followed by a lower-case
     word (the article: "A dog is ...").

A letter that names no option (rules 1, 3, 4 and 5: "E" with four options)
decides "unparseable" at once. A prediction no rule decides is unparseable:
`extract_choice` returns None, which the metrics count as wrong and report
as "unparseable". This follows the rule-based part of VLMEvalKit's and
lmms-eval's MMBench matching (letter forms first, then option text), written
afresh, without their GPT fallback. LLaVA's ScienceQA rule ("X", "X. ...",
"The answer is X") reads a subset of what this reads; lmms-eval's SEED-Bench
rule (the first character of any answer) differs: "Dog" is "D" there and the
option "dog" here.
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
from typing import Any, Iterable, Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (Example, check_answers,
                                                 check_prompt, percent)

LETTERS = string.ascii_uppercase
CHOICES_SEP = " \t "
PROMPT_FIELDS = ("question", "hint", "context", "options", "choices")

_LETTER_ALONE = re.compile(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:,;]?")
_LEADING = re.compile(r"[(\[]?([A-Z])(?:[)\]]|[.:])(?:\s|$)")
_PHRASE = re.compile(
    r"(?:(?i:answer|option|choice)\s*(?:(?i:is)|[:=])?\s*|"
    r"(?:答案|选项|选择|选)\s*(?:是|为|[:：])?\s*)"
    r"[(\[（]?([A-Z])(?![A-Za-z0-9])")
_ALONE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
_ARTICLE = re.compile(r"\s+[a-z]")
_EDGE_PUNCT = string.punctuation + "。，、；：？！“”‘’（）《》 \t\n"


def is_missing(value: Any) -> bool:
  """An absent option or hint: None, NaN, "" or "nan" (any case) after
  stripping (how pandas-written TSVs and HF conversions spell "none")."""
  if value is None:
    return True
  if isinstance(value, float) and math.isnan(value):
    return True
  return isinstance(value, str) and value.strip().lower() in ("", "nan")


def one_line(text: str) -> str:
  """Runs of whitespace (newlines, tabs) -> one space: a PaliGemma prompt is
  one line, and "\n" is what separates it from the answer."""
  return " ".join(str(text).split())


def format_options(options: Mapping[str, str]) -> str:
  """{"A": "red", "B": "blue"} -> "A: red B: blue"."""
  return " ".join(f"{letter}: {one_line(text)}"
                  for letter, text in options.items())


def prompt_fields(question: str, options: Mapping[str, str],
                  hint: Optional[str] = None) -> dict:
  """The template fields of the module docstring, each on one line."""
  hint = "" if is_missing(hint) else one_line(hint)
  return {"question": one_line(question), "hint": hint,
          "context": f"{hint} " if hint else "",
          "options": format_options(options),
          "choices": CHOICES_SEP.join(one_line(t) for t in options.values())}


def check_choice_prompt(prompt: str) -> str:
  """`prompt` if it formats with (a subset of) PROMPT_FIELDS."""
  return check_prompt(prompt, **{f: "" for f in PROMPT_FIELDS})


def lettered(texts: Sequence[str]) -> dict:
  """["red", "blue"] -> {"A": "red", "B": "blue"}."""
  if len(texts) > len(LETTERS):
    raise ValueError(f"{len(texts)} options: at most {len(LETTERS)}")
  return dict(zip(LETTERS, texts))


def _norm(text: str) -> str:
  return " ".join(str(text).casefold().split()).strip(_EDGE_PUNCT)


def _spans(option: str, text: str) -> list[tuple[int, int]]:
  """Where `option` occurs in `text`; an ASCII letter or digit at an edge
  of `option` must sit on a word boundary."""
  alnum = string.ascii_lowercase + string.digits
  start = r"(?<![a-z0-9])" if option[0] in alnum else ""
  end = r"(?![a-z0-9])" if option[-1] in alnum else ""
  return [m.span() for m in re.finditer(start + re.escape(option) + end,
                                        text)]


def _by_text(text: str, options: Mapping[str, str]) -> Optional[str]:
  """Rule 6: the one option found in `text` outside the occurrences of
  longer options ("red" inside "dark red" does not count)."""
  spans = {k: _spans(v, text) for k, v in options.items() if v}
  found = []
  for k, own in spans.items():
    longer = [s for j, ss in spans.items()
              if len(options[j]) > len(options[k]) for s in ss]
    if any(not any(a <= b and e <= f for a, f in longer) for b, e in own):
      found.append(k)
  return found[0] if len(found) == 1 else None


def extract_choice(prediction: str,
                   options: Mapping[str, str]) -> Optional[str]:
  """The option letter a free-form prediction names, or None (unparseable).

  options: {letter: option text} of the question as the prompt listed them.
  The rules are in the module docstring.
  """
  text = str(prediction).strip()
  if not text:
    return None
  valid = set(options)

  def pick(letter: str) -> Optional[str]:
    return letter if letter in valid else None

  alone = _LETTER_ALONE.fullmatch(text)
  if alone and alone.group(1).isupper():                        # Rule 1.
    return pick(alone.group(1))
  norm = _norm(text)
  texts = {k: _norm(v) for k, v in options.items()}
  exact = [k for k, v in texts.items() if v and v == norm]
  if len(exact) == 1:                                           # Rule 2.
    return exact[0]
  if alone:                                                     # Rule 3.
    return pick(alone.group(1).upper())
  leading = _LEADING.match(text)
  if leading:                                                   # Rule 4.
    return pick(leading.group(1))
  named = {m.group(1) for m in _PHRASE.finditer(text)}
  if len(named) == 1:                                           # Rule 5.
    return pick(named.pop())
  inside = _by_text(norm, texts)
  if inside is not None:                                        # Rule 6.
    return inside
  letters = {m.group(1) for m in _ALONE.finditer(text)
             if not (m.group(1) == "A" and _ARTICLE.match(text, m.end()))}
  letters &= valid
  return letters.pop() if len(letters) == 1 else None           # Rule 7.


def judge(examples: Sequence[Example], answers: Mapping[Any, str],
          benchmark: str) -> list[tuple[Optional[str], bool]]:
  """(extracted letter, hit) per example; each example's target is its
  answer letter and meta["options"] its {letter: text}."""
  check_answers(examples, answers, benchmark)
  out = []
  for e in examples:
    letter = extract_choice(answers[e.key], e.meta["options"])
    out.append((letter, letter is not None and letter == e.target))
  return out


def group_accuracy(hits: Iterable[bool], groups: Iterable[Any]) -> dict:
  """{group: percent of hits}, groups sorted by name."""
  by = collections.defaultdict(list)
  for hit, group in zip(hits, groups):
    by[group].append(hit)
  return {str(g): percent(sum(v), len(v))
          for g, v in sorted(by.items(), key=lambda kv: str(kv[0]))}


def check_key(key: Any, where: str) -> Any:
  """`key` if it is an int or str (JSON-serialisable), else ValueError."""
  if isinstance(key, bool) or not isinstance(key, (int, str)):
    raise ValueError(f"{where}: the question id {key!r} is not an int or "
                     "string")
  json.dumps(key)
  return key
