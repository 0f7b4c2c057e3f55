"""VQA accuracy (VQAv2's, TextVQA's and VizWiz's official rules) and the three
benchmarks' loaders on tiny fixtures in the official release layouts.

Expected scores are worked out by hand in the comments: with n human answers
of which m equal the (processed) prediction, the leave-one-out accuracy is
(m * min(1, (m-1)/3) + (n-m) * min(1, m/3)) / n; for n = 10 that is 0, 0.3,
0.6, 0.9 and 1 for m = 0, 1, 2, 3, >= 4.
"""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from autoselect_jax.evaluation import runner
from autoselect_jax.evaluation.benchmarks import (textvqa, vizwiz, vqa_eval,
                                                  vqav2)
from autoselect_jax.evaluation.benchmarks.vqa_eval import (
    leave_one_out, textvqa_accuracy, vizwiz_accuracy, vqa_accuracy)
from autoselect_jax.evaluation.registry import get_benchmark


def _image(path, color=(200, 30, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", (8, 6), color).save(path)


def _json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


# ------------------------------------------------------------- processing

def test_leave_one_out_closed_form():
  other = ["x"] * 10
  for m, want in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                  (10, 1.0)]:
    assert leave_one_out("a", ["a"] * m + other[m:]) == pytest.approx(want)
  # Fewer than 10: n=3, m=2 -> (2 * 1/3 + 1 * 2/3) / 3 = 4/9.
  assert leave_one_out("red", ["red", "blue", "red"]) == pytest.approx(4 / 9)
  # n=1: leaving the only answer out leaves nothing to match -> 0.
  assert leave_one_out("red", ["red"]) == 0.0
  # n=5, m=5: each subset holds 4 matches -> 1.
  assert leave_one_out("2", ["2"] * 5) == 1.0
  with pytest.raises(ValueError, match="at least one"):
    leave_one_out("a", [])


def test_process_punctuation_rules():
  p = vqa_eval.process_punctuation
  assert p("1,000") == "1000"            # comma between digits: delete all
  assert p("x, 1,000-y") == "x 1000y"    # ... every mark, "-" included
  assert p("red,blue") == "red blue"     # no space, no number: space
  assert p("red, blue") == "red blue"    # touches a space: deleted
  assert p("a-b c") == "a b c"
  assert p("yes.") == "yes"              # trailing period
  assert p("3.5") == "3.5"               # decimal kept
  assert p("5.") == "5"                  # a digit before does not matter
  assert p("e.g.") == "eg"
  assert p("'s") == "'s"                 # the apostrophe is not punctuation
  # At most 32 periods go (re.UNICODE = 32 passed as sub's count).
  assert p("a" + "." * 40) == "a" + "." * 8


def test_process_digit_article_rules():
  d = vqa_eval.process_digit_article
  assert d("Two") == "2"
  assert d("None of the above") == "0 of above"
  assert d("a  dog\nand AN apple") == "dog and apple"
  assert d("dont") == "don't"
  assert d("Im") == "im"  # capitalised keys never match after lower()
  assert d("somebody'd") == "somebodyd"  # the table's own entry
  assert len(vqa_eval.CONTRACTIONS) == 120


# ------------------------------------------------------------ VQAv2 rules

def test_vqa_accuracy_number_words_articles_contractions():
  # The prediction is always processed: "two" -> "2", m = 3 -> 0.9.
  assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
  assert vqa_accuracy("the dog", ["dog"] * 5 + ["cat"] * 5) == 1.0
  # Human answers get punctuation only, so "the dog" stays "the dog": "dog"
  # matches the 6 x "dog" (>= 5 in every subset -> 1.0), and a predicted
  # "the dog" (processed to "dog") matches none of 4 x "the dog".
  assert vqa_accuracy("dog", ["the dog"] * 4 + ["dog"] * 6) == 1.0
  assert vqa_accuracy("the dog", ["the dog"] * 4 + ["cat"] * 6) == 0.0
  # Contraction restored on the prediction: m = 3 -> 0.9.
  assert vqa_accuracy("dont", ["don't"] * 3 + ["no"] * 7) == pytest.approx(
      0.9)
  # "1,000" -> "1000" on both sides: m = 2 -> 0.6 (with spaces it would be
  # "1 000" and m = 1 -> 0.3).
  assert vqa_accuracy("1,000", ["1000", "1,000"] + ["lots"] * 8) == \
      pytest.approx(0.6)
  # Trailing period goes, the decimal point stays: m = 2 -> 0.6.
  assert vqa_accuracy("3.5.", ["3.5"] * 2 + ["4"] * 8) == pytest.approx(0.6)
  assert vqa_accuracy("yes.", ["yes"] * 9 + ["no"]) == 1.0
  # Human "Two" is not turned into "2" (punctuation only): m = 1 -> 0.3.
  assert vqa_accuracy("2", ["Two"] * 2 + ["2"] + ["3"] * 7) == \
      pytest.approx(0.3)


def test_vqa_accuracy_when_the_answers_agree():
  # All ten stripped answers equal: the answers are compared as they are,
  # the prediction still processed.
  assert vqa_accuracy("2", ["2"] * 10) == 1.0
  assert vqa_accuracy(" 2\n", ["2"] * 9 + ["2\t"]) == 1.0  # cleaning always
  assert vqa_accuracy("two", ["2"] * 10) == 1.0
  assert vqa_accuracy("yes.", ["yes"] * 10) == 1.0
  assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0
  assert vqa_accuracy("two", ["Two"] * 10) == 0.0  # "2" vs unprocessed "Two"
  # Fewer than 10, disagreeing: "Red" keeps its capital (punctuation only),
  # n = 3: leaving out "Red" -> m = 1 (1/3), "red" -> m = 0, "blue" -> m = 1
  # (1/3): 2/9.
  assert vqa_accuracy("red", ["Red", "red", "blue"]) == pytest.approx(2 / 9)


# ------------------------------------------------- TextVQA, VizWiz rules

def test_textvqa_accuracy_processes_everything():
  # "coca-cola" -> "coca cola" on both sides, always: m = 10.
  assert textvqa_accuracy("coca cola", ["Coca-Cola"] * 10) == 1.0
  assert vqa_accuracy("coca cola", ["Coca-Cola"] * 10) == 0.0  # contrast
  # "'s" -> " 's" on both sides, so "joe 's" matches "joe's": m = 3 -> 0.9.
  assert vqa_eval.evalai_normalize("Joe's") == "joe 's"
  assert textvqa_accuracy("joe 's", ["joe's"] * 3 + ["joe"] * 7) == \
      pytest.approx(0.9)
  # Lower-cased, "?" deleted: m = 1 -> 0.3.
  assert textvqa_accuracy("STOP?", ["stop"] + ["go"] * 9) == \
      pytest.approx(0.3)
  assert vqa_eval.evalai_normalize("The 1,000 Cats?") == "1000 cats"


def test_vizwiz_accuracy_raw_answers_and_curly_contractions():
  assert vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 4 +
                         ["blurry"] * 6) == 1.0
  # Human answers are never processed: a capitalised one cannot match.
  assert vizwiz_accuracy("Yes", ["Yes"] * 10) == 0.0
  assert vizwiz_accuracy("Yes", ["yes"] * 10) == 1.0
  c = vqa_eval.VIZWIZ_CONTRACTIONS
  assert c["dont"] == "don\u2019t" and c["cant"] == "can't"
  assert c["weve"] == "we've" and c["hed\u2019ve"] == "he\u2019d\u2019ve"
  assert c["couldn'tve"] == "couldn\u2019t\u2019ve"
  assert len(c) == 120
  # "dont know" -> "don’t know" does not equal the file's "don't know".
  answers = ["don't know"] * 3 + ["no"] * 7
  assert vizwiz_accuracy("dont know", answers) == 0.0
  assert vqa_accuracy("dont know", answers) == pytest.approx(0.9)


def test_average_precision_and_f1():
  # scikit-learn's docstring example: 0.5 * 1 + 0.5 * 2/3 = 0.8333...
  assert vqa_eval.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) \
      == pytest.approx(5 / 6)
  # One tied threshold: precision 1/2 at recall 1.
  assert vqa_eval.average_precision([1, 0], [1, 1]) == 0.5
  assert vqa_eval.average_precision([0, 0], [1, 0]) is None
  assert vqa_eval.f1([1, 1, 0, 0], [1, 0, 1, 0]) == 0.5  # 2/(2+1+1)
  assert vqa_eval.f1([0, 0], [0, 0]) == 0.0


# ------------------------------------------------------------------ VQAv2

VQA_ROWS = [  # (qid, image_id, question, type, question_type, answers, pred)
    (11, 42, "Is it red?", "yes/no", "is the", ["yes"] * 10, "yes"),
    (12, 42, "How many?", "number", "how many", ["2"] * 3 + ["3"] * 7,
     "two"),
    (13, 7, "What color?", "other", "what color", ["red"] + ["blue"] * 9,
     "red"),
]


def write_vqav2(root, images=True):
  _json(os.path.join(root, vqav2.QUESTIONS_FILE), {
      "data_subtype": "val2014", "questions": [
          {"question_id": q, "image_id": i, "question": t}
          for q, i, t, *_ in VQA_ROWS]})
  _json(os.path.join(root, vqav2.ANNOTATIONS_FILE), {"annotations": [
      {"question_id": q, "image_id": i, "answer_type": at,
       "question_type": qt, "multiple_choice_answer": ans[0],
       "answers": [{"answer": a, "answer_confidence": "yes",
                    "answer_id": n + 1} for n, a in enumerate(ans)]}
      for q, i, _, at, qt, ans, _ in reversed(VQA_ROWS)]})
  if images:
    for i in (42, 7):
      _image(os.path.join(root, "val2014", f"COCO_val2014_{i:012d}.jpg"))


def test_vqav2_load_and_score(tmp_path):
  root = str(tmp_path / "vqav2")
  write_vqav2(root)
  bench = vqav2.VQAv2()
  examples = bench.load(root)
  assert [e.key for e in examples] == [11, 12, 13]  # questions file order
  assert examples[0].prompt == "answer en Is it red?"
  assert examples[2].image == os.path.join(
      root, "val2014", "COCO_val2014_000000000007.jpg")
  assert all(os.path.isfile(e.image) for e in examples)
  assert examples[1].target == ("2",) * 3 + ("3",) * 7
  answers = {q: pred for q, *_, pred in VQA_ROWS}
  m = bench.score(examples, answers)
  # 1 (all agree) + 0.9 ("two" -> "2", m = 3) + 0.3 (m = 1), over 3.
  assert m["accuracy"] == pytest.approx(220 / 3)
  assert m["num_examples"] == 3
  assert (m["yes/no"], m["number"], m["other"]) == pytest.approx(
      (100, 90, 30))
  assert m["question_type"] == pytest.approx(
      {"how many": 90, "is the": 100, "what color": 30})
  assert [e.key for e in bench.load(root, limit=2)] == [11, 12]
  with pytest.raises(ValueError, match="no prediction"):
    bench.score(examples, {11: "yes"})


def test_vqav2_images_default_and_prompt(tmp_path):
  write_vqav2(str(tmp_path / "vqa"), images=False)
  _image(str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"))
  bench = vqav2.VQAv2(prompt="question: {question}")
  e = bench.load(str(tmp_path / "vqa"), limit=1)[0]
  assert e.image == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
  assert e.prompt == "question: Is it red?"
  with pytest.raises(ValueError, match="does not format"):
    vqav2.VQAv2(prompt="answer en {q}")
  assert isinstance(get_benchmark("vqav2"), vqav2.VQAv2)


def test_vqav2_errors(tmp_path):
  root = str(tmp_path / "v")
  with pytest.raises(FileNotFoundError, match="not a folder"):
    vqav2.VQAv2().load(root)
  os.makedirs(root)
  with pytest.raises(FileNotFoundError, match=vqav2.QUESTIONS_FILE):
    vqav2.VQAv2().load(root)
  write_vqav2(root)
  os.remove(os.path.join(root, vqav2.ANNOTATIONS_FILE))
  with pytest.raises(FileNotFoundError, match=vqav2.ANNOTATIONS_FILE):
    vqav2.VQAv2().load(root)
  _json(os.path.join(root, vqav2.ANNOTATIONS_FILE), {"annotations": [
      {"question_id": 11, "answer_type": "yes/no", "question_type": "is",
       "answers": [{"answer": "yes"}]}]})
  with pytest.raises(ValueError, match="no annotation for question_id 12"):
    vqav2.VQAv2().load(root)
  _json(os.path.join(root, vqav2.ANNOTATIONS_FILE), {"annotations": [
      {"question_id": 11, "answers": [{"answer": "yes"}]}]})
  with pytest.raises(ValueError, match="question_id 11 lacks the string "
                     "field 'answer_type'"):
    vqav2.VQAv2().load(root)
  _json(os.path.join(root, vqav2.QUESTIONS_FILE), [{"question_id": 1}])
  with pytest.raises(ValueError, match="list 'questions'"):
    vqav2.VQAv2().load(root)


def test_vqav2_read_predictions(tmp_path):
  bench = vqav2.VQAv2()
  official = tmp_path / "results.json"
  official.write_text(json.dumps([{"question_id": 11, "answer": "yes"},
                                  {"question_id": 12, "answer": "2"}]))
  assert bench.read_predictions(str(official)) == {11: "yes", 12: "2"}
  jsonl = tmp_path / "predictions.jsonl"
  jsonl.write_text('{"question_id": 11, "prompt": "p", "answer": "no", '
                   '"kept": [0]}\n')
  assert bench.read_predictions(str(jsonl)) == {11: "no"}
  official.write_text(json.dumps([{"question_id": 11, "answer": "yes"},
                                  {"question_id": 11, "answer": "no"}]))
  with pytest.raises(ValueError, match="question_id=11 appears twice"):
    bench.read_predictions(str(official))
  official.write_text(json.dumps([{"question_id": 11}]))
  with pytest.raises(ValueError, match="item 0"):
    bench.read_predictions(str(official))


def test_vqav2_score_file_official_results(tmp_path):
  root = str(tmp_path / "vqav2")
  write_vqav2(root, images=False)
  results = tmp_path / "results.json"
  results.write_text(json.dumps([{"question_id": q, "answer": p}
                                 for q, *_, p in VQA_ROWS]))
  out = runner.score_file("vqav2", str(results), data=root)
  assert out["score"] == pytest.approx(220 / 3)


# ---------------------------------------------------------------- TextVQA

def write_textvqa(root):
  _json(os.path.join(root, textvqa.VAL_FILE), {
      "dataset_name": "textvqa", "dataset_type": "val", "data": [
          {"question_id": 34602, "image_id": "0054c91397f2fe05",
           "question": "what brand is this?", "image_classes": ["Bottle"],
           "answers": ["Coca-Cola"] * 10},
          {"question_id": 34603, "image_id": "005635e119b9f32f",
           "question": "who is it by?",
           "answers": ["joe's"] * 3 + ["joe"] * 7}]})
  for name in ("0054c91397f2fe05", "005635e119b9f32f"):
    _image(os.path.join(root, "train_images", f"{name}.jpg"))


def test_textvqa_load_and_score(tmp_path):
  root = str(tmp_path / "textvqa")
  write_textvqa(root)
  bench = textvqa.TextVQA()
  for data in (root, os.path.join(root, textvqa.VAL_FILE)):
    examples = bench.load(data)
    assert [e.key for e in examples] == [34602, 34603]
    assert examples[1].image == os.path.join(root, "train_images",
                                             "005635e119b9f32f.jpg")
    assert examples[0].prompt == "answer en what brand is this?"
  # 1 ("Coca-Cola" x10 -> "coca cola", m = 10) + 0.9 ("Joe's" -> "joe 's",
  # which three answers become: m = 3), over 2 = 95%.
  m = bench.score(examples, {34602: "coca cola", 34603: "Joe's"})
  assert m == {"accuracy": pytest.approx(95.0), "num_examples": 2}
  assert len(bench.load(root, limit=1)) == 1


def test_textvqa_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=textvqa.VAL_FILE):
    textvqa.TextVQA().load(str(tmp_path))
  path = str(tmp_path / textvqa.VAL_FILE)
  _json(path, [{"question_id": 1}])
  with pytest.raises(ValueError, match="list 'data'"):
    textvqa.TextVQA().load(path)
  _json(path, {"data": [{"question_id": 1, "question": "q", "image_id": "i",
                         "answers": "yes"}]})
  with pytest.raises(ValueError, match="question_id 1 'answers'"):
    textvqa.TextVQA().load(path)
  q = {"question_id": 1, "question": "q", "image_id": "i", "answers": ["a"]}
  _json(path, {"data": [q, q]})
  with pytest.raises(ValueError, match="question_id 1 appears twice"):
    textvqa.TextVQA().load(path)


# ----------------------------------------------------------------- VizWiz

VIZWIZ_ROWS = [  # (answerable, answer_type, answers, prediction)
    (1, "yes/no", ["yes"] * 10, "Yes"),                          # 1.0
    (0, "unanswerable", ["unanswerable"] * 10, "unanswerable"),  # 1.0
    (0, "unanswerable", ["unanswerable"] * 8 + ["blurry"] * 2,
     "blurry"),                                                  # m=2: 0.6
    (1, "other", ["red"] * 3 + ["dark red"] * 7, "unanswerable"),  # 0.0
    (1, "number", ["2"] * 10, "two"),                            # 1.0
]


def write_vizwiz(root):
  _json(os.path.join(root, "Annotations", "val.json"), [
      {"image": f"VizWiz_val_{n:08d}.jpg", "question": f"What is {n}?",
       "answers": [{"answer": a, "answer_confidence": "yes"} for a in ans],
       "answer_type": t, "answerable": flag}
      for n, (flag, t, ans, _) in enumerate(VIZWIZ_ROWS)])
  for n in range(len(VIZWIZ_ROWS)):
    _image(os.path.join(root, "val", f"VizWiz_val_{n:08d}.jpg"))


def test_vizwiz_load_and_score(tmp_path):
  root = str(tmp_path / "vizwiz")
  write_vizwiz(root)
  bench = vizwiz.VizWiz()
  examples = bench.load(root)
  assert examples[0].key == "VizWiz_val_00000000.jpg"
  assert examples[0].image == os.path.join(root, "val",
                                           "VizWiz_val_00000000.jpg")
  assert os.path.isfile(examples[4].image)
  assert examples[2].prompt == "answer en What is 2?"
  assert bench.load(os.path.join(root, "Annotations")) == examples
  answers = {e.key: row[3] for e, row in zip(examples, VIZWIZ_ROWS)}
  m = bench.score(examples, answers)
  # (1 + 1 + 0.6 + 0 + 1) / 5 = 72%.
  assert m["accuracy"] == pytest.approx(72.0)
  assert (m["yes/no"], m["unanswerable"], m["other"], m["number"]) == \
      pytest.approx((100, 80, 0, 100))
  # answerable: rows 0, 3, 4 -> 2/3; unanswerable: rows 1, 2 -> 0.8.
  assert m["by_answerable"] == pytest.approx(
      {"answerable": 200 / 3, "unanswerable": 80})
  # Labels (answerable == 0) 0 1 1 0 0, calls 0 1 0 1 0: TP 1, FP 1, FN 1
  # -> F1 2/4. AP: at call 1 precision 1/2, recall 1/2; at 0 precision 2/5,
  # recall 1 -> 0.5 * 0.5 + 0.5 * 0.4 = 0.45.
  assert m["unanswerability"] == pytest.approx(
      {"average_precision": 45.0, "f1_score": 50.0,
       "predicted_unanswerable": 2})


def test_vizwiz_errors_and_results(tmp_path):
  with pytest.raises(FileNotFoundError, match="Annotations/val.json"):
    vizwiz.VizWiz().load(str(tmp_path))
  path = str(tmp_path / "val.json")
  _json(path, {"image": "x"})
  with pytest.raises(ValueError, match="JSON list"):
    vizwiz.VizWiz().load(path)
  row = {"image": "a.jpg", "question": "q", "answer_type": "other",
         "answers": [{"answer": "x", "answer_confidence": "yes"}],
         "answerable": 2}
  _json(path, [row])
  with pytest.raises(ValueError, match="'answerable' must be 0 or 1"):
    vizwiz.VizWiz().load(path)
  _json(path, [dict(row, answerable=1, answers=[{"answer_confidence": "y"}])])
  with pytest.raises(ValueError, match="image a.jpg: an answer"):
    vizwiz.VizWiz().load(path)
  results = tmp_path / "results.json"
  results.write_text(json.dumps([{"image": "a.jpg", "answer": "x"}]))
  assert vizwiz.VizWiz().read_predictions(str(results)) == {"a.jpg": "x"}


def test_vizwiz_runs_through_the_runner(tmp_path):
  root = str(tmp_path / "vizwiz")
  write_vizwiz(root)
  preds = {f"What is {n}?": row[3] for n, row in enumerate(VIZWIZ_ROWS)}

  def factory():
    def fn(images, prompts, max_new_tokens):
      assert max_new_tokens == vizwiz.VizWiz.max_new_tokens
      return [{"text": preds[p[len("answer en "):]], "kept": [0]}
              for p in prompts]
    return fn, 16
  spec = runner.RunSpec(checkpoint="none", benchmark="vizwiz", data=root,
                        batch_size=2)
  out = runner.run(spec, str(tmp_path / "run"), generate=factory,
                   progress_stream=open(os.devnull, "w"))
  assert out["score"] == pytest.approx(72.0)
  again = runner.score_file("vizwiz", str(tmp_path / "run" /
                                          runner.PREDICTIONS_FILE), data=root)
  assert again["score"] == pytest.approx(72.0)
