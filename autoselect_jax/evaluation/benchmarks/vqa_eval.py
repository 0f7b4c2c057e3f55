"""VQA accuracy, as the official evaluation scripts of VQAv2, TextVQA and VizWiz
compute it, plus what the three benchmarks share (results files, grouping).

All three score a prediction against human answers (ten per question) with
the leave-one-out soft accuracy: over the n subsets that leave one human
answer out, the mean of min(1, #matches in the subset / 3). Matching is exact
string equality after normalisation; where the three differ is what gets
normalised:

  VQAv2    (`vqa_accuracy`) the VQA team's vqaEval.py as the challenge
           published it: newlines/tabs -> spaces and strip on every string;
           the prediction always gets punctuation and digit/article
           processing; the human answers get punctuation processing only
           when they are not all the same ("Two" stays "Two" there, so it
           does not match "2"). A 2021 revision of the script processes the
           prediction only in that case too; lmms-eval and LLaVA-style
           pipelines normalise predictions always, as here.
  TextVQA  (`textvqa_accuracy`) the TextVQA authors' evaluator (M4C's
           TextVQAAccuracyEvaluator in pythia/mmf): the EvalAI answer
           processor (`evalai_normalize`) on the prediction and on every
           human answer, always.
  VizWiz   (`vizwiz_accuracy`) VizWiz's vqaEval.py: the prediction is always
           processed, the human answers never; its contraction table writes
           most apostrophes as U+2019 (`VIZWIZ_CONTRACTIONS`).

The processing steps mirror vqaEval.py exactly, quirks included:
`process_punctuation` deletes a punctuation mark (instead of replacing it
with a space) when the mark touches a space anywhere in the text, or when the
text holds a comma between two digits ("1,000" -> "1000"); it then deletes
periods not followed by a digit ("yes." -> "yes", "3.5" kept), at most 32 of
them (the script passes re.UNICODE, 32, where `sub` takes its count; its
"(?!<=\\d)" is a lookahead that never fires, so a digit before the period
does not matter). `process_digit_article` lower-cases, splits on whitespace,
maps number words to digits ("two" -> "2", "none" -> "0"), drops articles
and restores contractions ("dont" -> "don't").
"""

from __future__ import annotations

import collections
import re
from typing import Hashable, Iterable, Mapping, Optional, Sequence

from autoselect_jax.evaluation.benchmark import (percent, read_json,
                                                 read_jsonl_predictions,
                                                 require_file)


def _table(spec: str) -> dict:
  return dict(pair.split(":") for pair in spec.split())


# vqaEval.py's contractions, "without:with" pairs (keys with capitals never
# match: lookup happens after lower-casing, as in the script).
CONTRACTIONS = _table("""
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't
couldn'tve:couldn't've couldnt've:couldn't've didnt:didn't doesnt:doesn't
dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't
havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd
howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've
isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll let's:let's
maam:ma'am mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've
mightve:might've mustnt:mustn't mustve:must've neednt:needn't notve:not've
oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've
she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've
shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've
somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
someonell:someone'll someones:someone's somethingd:something'd
somethingd've:something'd've something'dve:something'd've
somethingll:something'll thats:that's thered:there'd thered've:there'd've
there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're
theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've
weve:we've werent:weren't whatll:what'll whatre:what're whats:what's
whatve:what've whens:when's whered:where'd wheres:where's whereve:where've
whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't
wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've
wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
""")

_CURLY = "\u2019"
# VizWiz's copy of the table: every apostrophe is U+2019 except in these
# values and keys, which kept the ASCII one.
_VIZWIZ_ASCII_VALUES = ("aint", "arent", "cant", "couldve", "couldnt", "weve",
                        "wheres", "whove")
_VIZWIZ_ASCII_KEYS = ("couldn'tve", "hadn'tve")
VIZWIZ_CONTRACTIONS = {
    (k if k in _VIZWIZ_ASCII_KEYS else k.replace("'", _CURLY)):
    (v if k in _VIZWIZ_ASCII_VALUES else v.replace("'", _CURLY))
    for k, v in CONTRACTIONS.items()}

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2",
                "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# In the script's order (the order matters only for readability: each mark
# is handled on its own).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
               "_", "-", ">", "<", "@", "`", ",", "?", "!")
COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
MAX_PERIODS = 32  # re.UNICODE's value, passed where `sub` takes its count.


def clean(text: str) -> str:
  """Newlines and tabs -> spaces, then strip (every string, every script)."""
  return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
  """vqaEval.py's processPunctuation (see the module docstring)."""
  delete_all = COMMA_IN_NUMBER.search(text) is not None
  out = text
  for mark in PUNCTUATION:
    if delete_all or mark + " " in text or " " + mark in text:
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=MAX_PERIODS)


def process_digit_article(text: str,
                          contractions: Mapping[str, str] = CONTRACTIONS
                          ) -> str:
  """Lower-case, number words -> digits, no articles, contractions fixed;
  words joined by single spaces."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(contractions.get(w, w) for w in words
                  if w not in ARTICLES)


def normalize(text: str, contractions: Mapping[str, str] = CONTRACTIONS
              ) -> str:
  """Punctuation then digit/article processing (no whitespace cleaning)."""
  return process_digit_article(process_punctuation(text), contractions)


def evalai_normalize(text: str) -> str:
  """The EvalAI answer processor (pythia/mmf, used by M4C's TextVQA
  evaluator and lmms-eval): lower-case, delete "," and "?", "'s" -> " 's",
  strip, then `clean` and `normalize`. With the commas gone the comma rule of
  `process_punctuation` never fires."""
  text = text.lower().replace(",", "").replace("?", "")
  text = text.replace("'s", " 's").strip()
  return normalize(clean(text))


def leave_one_out(prediction: str, answers: Sequence[str]) -> float:
  """Mean over i of min(1, #{j != i : answers[j] == prediction} / 3)."""
  if not answers:
    raise ValueError("VQA accuracy needs at least one human answer")
  matches = sum(a == prediction for a in answers)
  total = 0.0
  for a in answers:
    total += min(1.0, (matches - (a == prediction)) / 3)
  return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """VQAv2's vqaEval.py score of one prediction, in [0, 1].

  The rule of the script as the VQA challenge published it (and as
  lmms-eval and LLaVA-style pipelines score predictions): the prediction
  always gets punctuation, then number-word / article / contraction
  processing; the human answers get punctuation processing only when they
  are not all the same. (A 2021 revision of the script processes the
  prediction only in that case too, so "yes." scored 0 against ten "yes";
  a generative model's answers are scored here as the challenge scored
  submissions.) The script leaves out one answer *object* at a time;
  VQAv2's answer objects differ by their answer_id, so that is one answer
  per subset, as here."""
  answers = [clean(a) for a in answers]
  prediction = normalize(clean(prediction))
  if len(set(answers)) > 1:
    answers = [process_punctuation(a) for a in answers]
  return leave_one_out(prediction, answers)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """M4C's TextVQA score of one prediction, in [0, 1]."""
  return leave_one_out(evalai_normalize(prediction),
                       [evalai_normalize(a) for a in answers])


def vizwiz_prediction(prediction: str) -> str:
  """A prediction as VizWiz's vqaEval.py compares it."""
  return normalize(clean(prediction), VIZWIZ_CONTRACTIONS)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """VizWiz's vqaEval.py score of one prediction, in [0, 1]: the human
  answers are compared as they are in the file."""
  return leave_one_out(vizwiz_prediction(prediction), list(answers))


def group_accuracy(scores: Sequence[float],
                   groups: Sequence[Optional[Hashable]]) -> dict:
  """{group: percent mean score}, sorted by group; None groups skipped."""
  by = collections.defaultdict(list)
  for s, g in zip(scores, groups):
    if g is not None:
      by[g].append(s)
  return {g: percent(sum(v), len(v)) for g, v in sorted(by.items())}


def average_precision(labels: Sequence[int], scores: Sequence[float]
                      ) -> Optional[float]:
  """scikit-learn's average_precision_score (sum over score thresholds of
  recall gain x precision), as a fraction; None without positive labels."""
  positives = sum(labels)
  if not positives:
    return None
  pairs = sorted(zip(scores, labels), key=lambda p: -p[0])
  ap, tp, seen, last_recall, i = 0.0, 0, 0, 0.0, 0
  while i < len(pairs):
    threshold = pairs[i][0]
    while i < len(pairs) and pairs[i][0] == threshold:
      tp += pairs[i][1]
      seen += 1
      i += 1
    recall = tp / positives
    ap += (recall - last_recall) * (tp / seen)
    last_recall = recall
  return ap


def f1(labels: Sequence[int], predicted: Sequence[int]) -> float:
  """F1 of the positive class, 0 when it is undefined (scikit-learn's)."""
  tp = sum(1 for y, p in zip(labels, predicted) if y and p)
  fp = sum(1 for y, p in zip(labels, predicted) if not y and p)
  fn = sum(1 for y, p in zip(labels, predicted) if y and not p)
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def read_results(path: str, key_field: str, benchmark: str) -> dict:
  """{key: answer} from our predictions JSONL, or from the benchmark's
  official results JSON: a list of {key_field: ..., "answer": str}."""
  require_file(path, f"{benchmark} predictions (JSONL, or a JSON list of "
               f"{{'{key_field}', 'answer'}})")
  with open(path, encoding="utf-8") as f:
    head = f.read(1 << 12).lstrip()
  if not head.startswith("["):
    return read_jsonl_predictions(path, key_field)
  out = {}
  for n, row in enumerate(read_json(path, f"{benchmark} results")):
    if not isinstance(row, dict) or key_field not in row \
        or not isinstance(row.get("answer"), str):
      raise ValueError(f"{path}: item {n} is not an object with "
                       f"'{key_field}' and a string 'answer'")
    key = row[key_field]
    if key in out:
      raise ValueError(f"{path}: {key_field}={key!r} appears twice")
    out[key] = row["answer"]
  return out


def string_list(value, where: str) -> tuple:
  """`value` as a tuple if it is a non-empty list of strings, else a
  ValueError naming `where`."""
  if not isinstance(value, list) or not value or not all(
      isinstance(v, str) for v in value):
    raise ValueError(f"{where}: expected a non-empty list of answer strings")
  return tuple(value)


def answer_strings(answers, where: str) -> tuple:
  """The "answer" strings of a list of answer objects (VQAv2, VizWiz)."""
  if not isinstance(answers, list) or not answers:
    raise ValueError(f"{where}: expected a non-empty list of answer objects")
  out = []
  for a in answers:
    if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
      raise ValueError(f"{where}: an answer is not an object with a string "
                       "'answer'")
    out.append(a["answer"])
  return tuple(out)


def unique_keys(keys: Iterable[Hashable], path: str, field: str) -> None:
  seen = set()
  for k in keys:
    if k in seen:
      raise ValueError(f"{path}: {field} {k!r} appears twice")
    seen.add(k)
