"""Multiple-choice benchmarks: the letter rule, MMBench(-CN) circular
evaluation, ScienceQA-IMG and SEED-Bench, on tiny fixtures written here in
each benchmark's release format."""

from __future__ import annotations

import base64
import csv
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from autoselect_jax.evaluation import runner
from autoselect_jax.evaluation.benchmark import load_image
from autoselect_jax.evaluation.benchmarks import choice, mmbench
from autoselect_jax.evaluation.benchmarks.mmbench import MMBench, MMBenchCN
from autoselect_jax.evaluation.benchmarks.scienceqa import ScienceQA
from autoselect_jax.evaluation.benchmarks.seed import SEEDBench
from autoselect_jax.evaluation.registry import get_benchmark

OPTS = {"A": "cat", "B": "dog", "C": "red", "D": "dark red"}


@pytest.mark.parametrize("pred,letter", [
    ("B", "B"), (" B.\n", "B"), ("(B)", "B"), ("[C]", "C"), ("D:", "D"),
    ("b", "B"), ("(c)", "C"),                          # Rule 3.
    ("B: dog", "B"), ("B. a dog", "B"), ("(B) dog", "B"), ("B) x", "B"),
    ("The answer is B", "B"), ("The answer is (C).", "C"),
    ("answer: D", "D"), ("Option A", "A"), ("答案是B", "B"), ("选C", "C"),
    ("dog", "B"), ("Dog.", "B"), ("DARK  red", "D"),   # Rule 2.
    ("a dog", "B"), ("it is dark red", "D"),          # Rule 6.
    ("A dog sits", "B"),           # "A" + lower-case word: the article.
    ("I think C", "C"), ("B, because", "B"),          # Rule 7.
    ("E", None), ("e", None), ("The answer is E", None),  # Names no option.
    ("", None), ("  ", None), ("category", None), ("hello", None),
    ("cat and dog", None), ("red or dark red", None), ("C D", None),
])
def test_extract_choice(pred, letter):
  assert choice.extract_choice(pred, OPTS) == letter


def test_extract_choice_boundaries():
  nums = {"A": "1", "B": "10"}
  assert choice.extract_choice("there are 10", nums) == "B"  # Not "1".
  assert choice.extract_choice("1 or 10", nums) is None
  assert choice.extract_choice("这是猫", {"A": "狗", "B": "猫"}) == "B"
  assert choice.extract_choice("same", {"A": "same", "B": "same"}) is None


def test_prompt_fields_and_templates():
  f = choice.prompt_fields("Q?", {"A": "x", "B": "y"}, "nan")
  assert f == {"question": "Q?", "hint": "", "context": "", "options":
               "A: x B: y", "choices": "x \t y"}
  f = choice.prompt_fields("Q\n1?", {"A": "x\ty", "B": "z"}, "h\n\nk")
  assert (f["question"], f["options"], f["choices"], f["context"]) == (
      "Q 1?", "A: x y B: z", "x y \t z", "h k ")
  assert choice.prompt_fields("Q?", {"A": "x"}, " H ")["context"] == "H "
  assert ScienceQA(prompt="{question} choose from: {choices}").prompt
  with pytest.raises(ValueError, match="answer"):
    SEEDBench(prompt="{question} {answer}")


# MMBench ---------------------------------------------------------------------

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer",
           "category", "image", "source", "L2-category", "comment", "split"]


def png_b64(value: int) -> str:
  buf = io.BytesIO()
  Image.new("RGB", (8, 6), (value, 0, 0)).save(buf, "PNG")
  return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, rows):
  """rows: dicts over COLUMNS (missing -> empty), written as pandas does."""
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, delimiter="\t", lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
      w.writerow([r.get(c, "") for c in COLUMNS])
  return str(path)


def mm_row(index, answer, opts, category="ocr", hint="", image=None):
  row = {"index": index, "question": f"q{index % mmbench.PASS}?", "hint":
         hint, "answer": answer, "category": category, "image": image or
         png_b64(index % 200), "L2-category": "perception", "split": "dev"}
  row.update(zip("ABCD", opts))
  return row


def rotated_tsv(tmp_path):
  """Question 7 (4 options, answer B, a hint with a tab and newline) as
  four official passes, the last one sharing pass 0's image by index as in
  VLMEvalKit's copies; question 3 (2 options, "nan" C/D) as two passes."""
  img = png_b64(7)
  rows = [
      mm_row(7, "B", ["w", "x", "y", "z"], hint="see\tthe\nplot", image=img),
      mm_row(3, "A", ["p", "q", "nan", ""], category="math"),
      mm_row(1_000_007, "A", ["x", "y", "z", "w"], hint="see", image=img),
      mm_row(2_000_007, "D", ["y", "z", "w", "x"], hint="see", image=img),
      mm_row(3_000_007, "C", ["z", "w", "x", "y"], hint="see", image="7"),
      mm_row(1_000_003, "B", ["q", "p"], category="math"),
  ]
  return write_tsv(tmp_path / "mmbench_dev_20230712.tsv", rows)


def test_mmbench_loads_official_passes(tmp_path):
  ex = MMBench().load(rotated_tsv(tmp_path))
  assert [e.key for e in ex] == [7, 3, 1_000_007, 2_000_007, 3_000_007,
                                 1_000_003]
  # Tabs and newlines of the hint are spaces: the prompt is one line.
  assert ex[0].prompt == "answer en see the plot q7? A: w B: x C: y D: z"
  assert ex[1].prompt == "answer en q3? A: p B: q"  # "nan" and "" dropped.
  assert [e.target for e in ex] == ["B", "A", "A", "D", "C", "B"]
  assert ex[1].meta["options"] == {"A": "p", "B": "q"}
  assert isinstance(ex[0].image, bytes)
  assert np.asarray(load_image(ex[4].image))[0, 0].tolist() == [7, 0, 0]
  assert ex[4].image is ex[0].image  # One decoded copy per distinct image.
  json.dumps([e.key for e in ex])
  # limit keeps whole questions: the first question has all 4 passes.
  assert [e.key for e in MMBench().load(rotated_tsv(tmp_path), limit=1)] \
      == [7, 1_000_007, 2_000_007, 3_000_007]
  cn = MMBenchCN().load(rotated_tsv(tmp_path), limit=1)
  assert cn[0].prompt.startswith("answer zh see")


def test_mmbench_makes_passes(tmp_path):
  path = write_tsv(tmp_path / "plain.tsv", [
      mm_row(5, "C", ["a", "b", "c", "nan"]), mm_row(2, "A", ["u", "v"])])
  ex = MMBench().load(path)
  assert [e.key for e in ex] == [5, 1_000_005, 2_000_005, 2, 1_000_002]
  # Pass r lists the options shifted r places; the answer follows "c".
  assert [e.meta["options"] for e in ex[:3]] == [
      {"A": "a", "B": "b", "C": "c"}, {"A": "b", "B": "c", "C": "a"},
      {"A": "c", "B": "a", "C": "b"}]
  assert [e.target for e in ex] == ["C", "B", "A", "A", "B"]
  assert ex[1].prompt == "answer en q5? A: b B: c C: a"
  assert [e.key for e in MMBench().load(path, limit=1)] == [5, 1_000_005,
                                                           2_000_005]


def test_mmbench_circular_score(tmp_path):
  bench = MMBench()
  ex = bench.load(rotated_tsv(tmp_path))
  # Question 7: passes 0-3 all right (B, "x" = A, D, (C)) -> circular hit.
  # Question 3: pass 0 right, pass 1 says "q" = A but the answer is B.
  answers = {7: "B", 1_000_007: "x", 2_000_007: "The answer is D",
             3_000_007: "(C)", 3: "A", 1_000_003: "q"}
  m = bench.score(ex, answers)
  assert m["accuracy"] == 50.0          # 1 of 2 questions.
  assert m["vanilla_accuracy"] == 100.0  # Passes 0: 7 and 3 both right.
  assert m["category"] == {"math": 0.0, "ocr": 100.0}
  assert m["l2_category"] == {"perception": 50.0}
  assert (m["num_questions"], m["num_rows"], m["unparseable"]) == (2, 6, 0)
  # An unparseable answer is wrong and counted: question 7 fails.
  answers[2_000_007] = "no idea"
  m = bench.score(ex, answers)
  assert (m["accuracy"], m["vanilla_accuracy"], m["unparseable"]) == (
      0.0, 100.0, 1)
  with pytest.raises(ValueError, match="1 of 6 examples have no"):
    bench.score(ex, {k: v for k, v in answers.items() if k != 3})


def test_mmbench_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="mmbench_dev"):
    MMBench().load(str(tmp_path / "missing.tsv"))
  with pytest.raises(ValueError, match="does not apply"):
    MMBench().load(rotated_tsv(tmp_path), images=str(tmp_path))
  test_split = tmp_path / "test.tsv"
  with open(test_split, "w") as f:
    f.write("index\tquestion\tA\tB\timage\n0\tq\ta\tb\tAAAA\n")
  with pytest.raises(ValueError, match=r"\['answer'\].*test split"):
    MMBench().load(str(test_split))
  bad = write_tsv(tmp_path / "bad.tsv", [mm_row(4, "C", ["a", "b", "", ""])])
  with pytest.raises(ValueError, match="index 4: answer 'C' is not one"):
    MMBench().load(bad)
  orphan = write_tsv(tmp_path / "orphan.tsv", [
      mm_row(1, "A", ["a", "b"]), mm_row(1_000_009, "A", ["a", "b"])])
  with pytest.raises(ValueError, match=r"question\(s\) \[9\]"):
    MMBench().load(orphan)
  twice = write_tsv(tmp_path / "twice.tsv", [mm_row(1, "A", ["a", "b"])] * 2)
  with pytest.raises(ValueError, match="index 1 appears twice"):
    MMBench().load(twice)
  garbled = write_tsv(tmp_path / "garbled.tsv", [
      mm_row(2, "A", ["a", "b"], image="!" * 100)])
  with pytest.raises(ValueError, match="index 2: the image field is not"):
    MMBench().load(garbled)


def test_mmbench_through_the_runner(tmp_path):
  """Bytes images reach the model resized; predictions JSONL re-scores."""
  bench = MMBench()
  data = rotated_tsv(tmp_path)
  seen = []

  def factory():
    def fn(images, prompts, max_new_tokens):
      assert all(im.shape == (16, 16, 3) for im in images)
      seen.extend(prompts)
      return [{"text": "B", "kept": [0]} for _ in prompts]
    return fn, 16
  spec = runner.RunSpec(checkpoint="none", benchmark="mmbench", data=data,
                        batch_size=3)
  m = runner.run(spec, str(tmp_path / "run"), generate=factory,
                 benchmark=bench)
  # "B" is right for rows 7 and 1_000_003 only: no question passes all.
  assert m["score"] == 0.0 and m["metrics"]["vanilla_accuracy"] == 50.0
  assert len(seen) == 6
  again = bench.read_predictions(str(tmp_path / "run" /
                                     runner.PREDICTIONS_FILE))
  assert again == {k: "B" for k in (7, 3, 1_000_007, 2_000_007, 3_000_007,
                                    1_000_003)}


# ScienceQA -------------------------------------------------------------------

def write_scienceqa(root):
  problems = {
      "11": {"question": "Which is a mammal?", "choices": ["trout", "bat"],
             "answer": 1, "hint": "", "image": "image.png", "split": "test",
             "subject": "natural science", "grade": "grade3"},
      "12": {"question": "No image here?", "choices": ["a", "b"],
             "answer": 0, "hint": "", "image": None, "split": "test",
             "subject": "language science", "grade": "grade5"},
      "13": {"question": "Which state is farthest north?",
             "choices": ["Ohio", "Maine", "Texas"], "answer": 1,
             "hint": "Look at the map.", "image": "image.png",
             "split": "test", "subject": "social science",
             "grade": "grade8"},
      "14": {"question": "Val question", "choices": ["x", "y"], "answer": 0,
             "hint": "", "image": "image.png", "split": "val",
             "subject": "natural science", "grade": "grade2"},
      "15": {"question": "Which is hot?", "choices": ["ice", "fire"],
             "answer": 1, "hint": "", "image": "image.png", "split": "test",
             "subject": "natural science", "grade": "grade10"},
  }
  os.makedirs(root)
  with open(os.path.join(root, "problems.json"), "w") as f:
    json.dump(problems, f)
  with open(os.path.join(root, "pid_splits.json"), "w") as f:
    json.dump({"train": [], "val": ["14"], "test": ["13", "11", "12", "15"]},
              f)
  for pid in ("11", "13", "15"):
    os.makedirs(os.path.join(root, "images", "test", pid))
    Image.new("RGB", (4, 4)).save(os.path.join(root, "images", "test", pid,
                                               "image.png"))
  return str(root)


def test_scienceqa_load(tmp_path):
  root = write_scienceqa(tmp_path / "scienceqa")
  ex = ScienceQA().load(root)
  assert [e.key for e in ex] == ["13", "11", "15"]  # Test, with images.
  assert ex[0].prompt == ("answer en Look at the map. Which state is "
                          "farthest north? A: Ohio B: Maine C: Texas")
  assert ex[1].prompt == "answer en Which is a mammal? A: trout B: bat"
  assert [e.target for e in ex] == ["B", "B", "B"]
  assert ex[0].image == os.path.join(root, "images", "test", "13",
                                     "image.png")
  assert os.path.isfile(ex[0].image)
  assert [e.key for e in ScienceQA().load(root, limit=2)] == ["13", "11"]
  other = tmp_path / "imgs"
  other.mkdir()
  assert ScienceQA().load(root, images=str(other))[0].image.startswith(
      str(other))


def test_scienceqa_score_and_results_file(tmp_path):
  bench = ScienceQA()
  ex = bench.load(write_scienceqa(tmp_path / "scienceqa"))
  # 13 (social, 7-12): "Maine" -> B right; 11 (natural, 1-6): "A" wrong;
  # 15 (natural, 7-12): "??" unparseable, wrong.
  m = bench.score(ex, {"13": "Maine", "11": "A", "15": "??"})
  assert m["accuracy"] == pytest.approx(100 / 3)
  assert m["subject"] == {"natural science": 0.0, "social science": 100.0}
  assert m["grade"] == {"grade 1-6": 0.0, "grade 7-12": 50.0}
  assert (m["num_examples"], m["unparseable"]) == (3, 1)
  # The official results JSON: predicted indices; -1 is LLaVA's FAILED.
  path = tmp_path / "results.json"
  path.write_text(json.dumps({"acc": 0, "results": {"13": 1, "11": 1,
                                                     "15": -1}}))
  preds = bench.read_predictions(str(path))
  assert preds == {"13": "B", "11": "B", "15": ""}
  m = bench.score(ex, preds)
  assert (m["accuracy"], m["unparseable"]) == (pytest.approx(200 / 3), 1)
  jsonl = tmp_path / "p.jsonl"
  jsonl.write_text('{"pid": "13", "answer": "B"}\n')
  assert bench.read_predictions(str(jsonl)) == {"13": "B"}


def test_scienceqa_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a folder"):
    ScienceQA().load(str(tmp_path / "nope"))
  root = tmp_path / "sqa"
  root.mkdir()
  (root / "pid_splits.json").write_text('{"test": ["1"]}')
  with pytest.raises(FileNotFoundError, match="problems.json"):
    ScienceQA().load(str(root))
  (root / "problems.json").write_text('{"2": {}}')
  with pytest.raises(ValueError, match="test pid '1' is not in"):
    ScienceQA().load(str(root))
  (root / "problems.json").write_text(json.dumps({"1": {
      "question": "q", "choices": ["a", "b"], "answer": 2, "image": None}}))
  with pytest.raises(ValueError, match="'answer' 2 is not an index"):
    ScienceQA().load(str(root))
  (root / "pid_splits.json").write_text('{"val": []}')
  with pytest.raises(ValueError, match="list 'test'"):
    ScienceQA().load(str(root))


# SEED-Bench ------------------------------------------------------------------

def seed_q(qid, answer, type_id, data_type="image", data_id=None):
  return {"question_id": qid, "question": f"What is {qid}?", "choice_a":
          "one", "choice_b": "two", "choice_c": "three", "choice_d": "four",
          "answer": answer, "data_id": data_id or f"{qid}.jpg",
          "data_type": data_type, "question_type_id": type_id}


def write_seed(root):
  os.makedirs(os.path.join(root, "SEED-Bench-image"))
  questions = [seed_q("101", "A", 1), seed_q("v1", "B", 10, "video",
                                              "x.webm"),
               seed_q("102", "C", 5), seed_q("103", "D", 5)]
  for q in questions:
    if q["data_type"] == "image":
      Image.new("RGB", (4, 4)).save(os.path.join(root, "SEED-Bench-image",
                                                 q["data_id"]))
  with open(os.path.join(root, "SEED-Bench.json"), "w") as f:
    json.dump({"questions": questions, "question_type": {
        "Scene Understanding": 1, "Instances Counting": 5,
        "Action Recognition": 10}}, f)
  return str(root)


def test_seed_load_and_score(tmp_path):
  root = write_seed(tmp_path / "seed")
  bench = SEEDBench()
  ex = bench.load(os.path.join(root, "SEED-Bench.json"))
  assert [e.key for e in ex] == ["101", "102", "103"]  # No video.
  assert ex[0].prompt == "answer en What is 101? A: one B: two C: three " \
                         "D: four"
  assert ex[1].image == os.path.join(root, "SEED-Bench-image", "102.jpg")
  assert os.path.isfile(ex[1].image)
  assert [e.key for e in bench.load(root, limit=2)] == ["101", "102"]
  # 101 right (A), 102 right ("three" = C), 103 wrong (A, answer D).
  m = bench.score(ex, {"101": "A", "102": "three", "103": "A"})
  assert m["accuracy"] == pytest.approx(200 / 3)
  assert m["question_type"] == {"Instances Counting": 50.0,
                                "Scene Understanding": 100.0}
  assert (m["num_examples"], m["unparseable"]) == (3, 0)
  official = tmp_path / "results.json"
  official.write_text("".join(json.dumps(
      {"q_id": q, "prediction": p, "gt": "A", "q_type_id": 1}) + "\n"
      for q, p in (("101", "A"), ("102", "B"), ("103", "D"))))
  preds = bench.read_predictions(str(official))
  assert preds == {"101": "A", "102": "B", "103": "D"}
  assert bench.score(ex, preds)["accuracy"] == pytest.approx(200 / 3)
  ours = tmp_path / "p.jsonl"
  ours.write_text('{"question_id": "101", "answer": "A"}\n')
  assert bench.read_predictions(str(ours)) == {"101": "A"}


def test_seed_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="SEED-Bench.json"):
    SEEDBench().load(str(tmp_path))
  path = tmp_path / "SEED-Bench.json"
  path.write_text(json.dumps({"questions": [seed_q("1", "A", 1)]}))
  with pytest.raises(ValueError, match="'question_type'"):
    SEEDBench().load(str(path))
  q = seed_q("1", "A", 1)
  del q["choice_c"]
  path.write_text(json.dumps({"questions": [q], "question_type": {"S": 1}}))
  with pytest.raises(ValueError, match=r"questions\[0\] lacks \['choice_c'"):
    SEEDBench().load(str(path))
  path.write_text(json.dumps({"questions": [seed_q("1", "E", 1)],
                              "question_type": {"S": 1}}))
  with pytest.raises(ValueError, match="answer 'E' is not A-D"):
    SEEDBench().load(str(path))
  path.write_text(json.dumps({"questions": [seed_q("1", "A", 3)],
                              "question_type": {"S": 1}}))
  with pytest.raises(ValueError, match="question_type_id 3"):
    SEEDBench().load(str(path))


def test_registry_names():
  assert isinstance(get_benchmark("mmbench"), MMBench)
  assert type(get_benchmark("mmbench_cn")) is MMBenchCN
  assert isinstance(get_benchmark("scienceqa"), ScienceQA)
  assert isinstance(get_benchmark("seed", prompt="{question}"), SEEDBench)
