"""GQA, POPE and MME: loaders on tiny copies of the official release files
(written here into tmp_path), layout errors, and every metric on
hand-computed cases."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from autoselect_jax.evaluation.benchmark import load_image
from autoselect_jax.evaluation.benchmarks import gqa, mme, pope
from autoselect_jax.evaluation.registry import get_benchmark


def write_image(path, color=(200, 30, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", (8, 6), color).save(path)


def write_jsonl(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


# GQA ------------------------------------------------------------------------

# (question id, imageId, answer, structural, semantic); ids are strings as in
# testdev_balanced_questions.json.
GQA_ROWS = [("201307251", "n161313", "yes", "verify", "attr"),
            ("201640614", "n235859", "left", "query", "rel"),
            ("202225914", "n235859", "table", "query", "obj"),
            ("20968379", "n161313", "no", "logical", "obj"),
            ("201436", "n15740", "red", "choose", "attr")]


def write_gqa(root, images=True, unbalanced=True):
  questions = {}
  for qid, image, answer, structural, semantic in GQA_ROWS:
    questions[qid] = {
        "imageId": image, "question": f"Question {qid}?", "answer": answer,
        "fullAnswer": f"The answer is {answer}.", "isBalanced": True,
        "types": {"structural": structural, "semantic": semantic,
                  "detailed": "x"}, "groups": {"global": None}}
    if images:
      write_image(os.path.join(root, "images", f"{image}.jpg"))
  if unbalanced:  # eval.py skips it; so does the loader.
    questions["999"] = {**questions["201307251"], "isBalanced": False}
  os.makedirs(root, exist_ok=True)
  path = os.path.join(root, gqa.QUESTIONS_FILE)
  with open(path, "w") as f:
    json.dump(questions, f)
  return path


def test_gqa_load(tmp_path):
  path = write_gqa(str(tmp_path))
  for data in (path, str(tmp_path)):  # The file or its folder.
    ex = get_benchmark("gqa").load(data)
    assert [e.key for e in ex] == [r[0] for r in GQA_ROWS]  # 999 skipped.
    assert ex[1].prompt == "answer en Question 201640614?"
    assert ex[1].target == "left"
    assert ex[1].image == os.path.join(str(tmp_path), "images", "n235859.jpg")
    assert ex[1].meta["structural"] == "query"
    assert load_image(ex[1].image) == ex[1].image  # The file exists.
  assert [e.key for e in get_benchmark("gqa").load(path, limit=2)] == \
      ["201307251", "201640614"]
  custom = gqa.GQA(prompt="{question} Answer:").load(path, limit=1)
  assert custom[0].prompt == "Question 201307251? Answer:"


def test_gqa_image_folders(tmp_path):
  # Questions unzipped into questions/, images/ beside it.
  path = write_gqa(str(tmp_path / "questions"), images=False)
  write_image(str(tmp_path / "images" / "n161313.jpg"))
  ex = get_benchmark("gqa").load(path, limit=1)
  assert ex[0].image == str(tmp_path / "images" / "n161313.jpg")
  other = tmp_path / "elsewhere"
  other.mkdir()
  ex = get_benchmark("gqa").load(path, images=str(other), limit=1)
  assert ex[0].image == str(other / "n161313.jpg")
  with pytest.raises(FileNotFoundError, match="nowhere.*GQA images"):
    get_benchmark("gqa").load(path, images=str(tmp_path / "nowhere"))


def test_gqa_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="testdev_balanced_questions"):
    get_benchmark("gqa").load(str(tmp_path))
  with pytest.raises(ValueError, match="needs --data"):
    get_benchmark("gqa").load(None)
  path = tmp_path / gqa.QUESTIONS_FILE
  path.write_text(json.dumps([{"imageId": "a"}]))
  with pytest.raises(ValueError, match="expected a JSON object"):
    get_benchmark("gqa").load(str(path))
  path.write_text(json.dumps({"7": {"imageId": "a", "question": "q?"}}))
  with pytest.raises(ValueError, match=r"'7' lacks .*'answer'"):
    get_benchmark("gqa").load(str(path))
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    get_benchmark("gqa").load(str(path))
  with pytest.raises(ValueError, match="does not format"):
    gqa.GQA(prompt="answer en {query}")


def test_gqa_score(tmp_path):
  bench = get_benchmark("gqa")
  ex = bench.load(write_gqa(str(tmp_path)))
  answers = {"201307251": "Yes.",         # "yes": right
             "201640614": " Left\n",      # "left": right
             "202225914": "the table",    # articles are kept: wrong
             "20968379": "no",            # right
             "201436": "red or blue"}     # wrong
  m = bench.score(ex, answers)
  assert m["accuracy"] == pytest.approx(60.0)  # 3 of 5
  assert m["open"] == pytest.approx(50.0)  # query: 201640614 yes, 202225914 no
  assert m["binary"] == pytest.approx(200 / 3)  # verify, logical yes; choose no
  assert m["structural"] == pytest.approx(
      {"choose": 0.0, "logical": 100.0, "query": 50.0, "verify": 100.0})
  assert m["semantic"] == pytest.approx(
      {"attr": 50.0, "obj": 50.0, "rel": 100.0})
  assert m["num_examples"] == 5
  with pytest.raises(ValueError, match="1 of 5 examples have no prediction"):
    bench.score(ex, {k: v for k, v in answers.items() if k != "201436"})


def test_gqa_normalize():
  assert gqa.normalize("  Yes..\n") == "yes"
  assert gqa.normalize("3.5") == "3.5"  # Only trailing periods go.
  assert gqa.normalize("the Cat") == "the cat"


def test_gqa_read_predictions(tmp_path):
  bench = get_benchmark("gqa")
  official = tmp_path / "testdev_balanced_predictions.json"
  official.write_text(json.dumps([{"questionId": "201307251",
                                   "prediction": "yes"},
                                  {"questionId": "201436",
                                   "prediction": "red"}]))
  assert bench.read_predictions(str(official)) == {"201307251": "yes",
                                                   "201436": "red"}
  ours = tmp_path / "predictions.jsonl"
  write_jsonl(str(ours), [{"question_id": "201436", "prompt": "p",
                           "answer": "red", "kept": [0]}])
  assert bench.read_predictions(str(ours)) == {"201436": "red"}
  official.write_text(json.dumps([{"questionId": "1"}]))
  with pytest.raises(ValueError, match="item 0.*'prediction'"):
    bench.read_predictions(str(official))


# POPE -----------------------------------------------------------------------

POPE_LABELS = {"random": ["yes", "yes", "yes", "no", "no", "no"],
               "popular": ["yes", "no", "yes", "no"],
               "adversarial": ["yes", "no"]}


def write_pope(root, images=True):
  os.makedirs(root, exist_ok=True)
  for split, labels in POPE_LABELS.items():
    rows = [{"question_id": i + 1,
             "image": f"COCO_val2014_{i + 100:012d}.jpg",
             "text": f"Is there a thing {i} in the image?", "label": label}
            for i, label in enumerate(labels)]
    write_jsonl(os.path.join(root, f"coco_pope_{split}.json"), rows)
    if images:
      for r in rows:
        write_image(os.path.join(root, "val2014", r["image"]))
  return root


def test_pope_load(tmp_path):
  root = write_pope(str(tmp_path))
  ex = get_benchmark("pope").load(root)
  assert [e.key for e in ex[:7]] == [f"random/{i}" for i in range(1, 7)] + [
      "popular/1"]
  assert len(ex) == 12 and ex[-1].key == "adversarial/2"
  assert ex[0].prompt == "answer en Is there a thing 0 in the image?"
  assert ex[0].target == "yes" and ex[0].meta == {"split": "random"}
  assert ex[0].image == os.path.join(root, "val2014",
                                     "COCO_val2014_000000000100.jpg")
  assert load_image(ex[0].image) == ex[0].image
  one = get_benchmark("pope").load(os.path.join(root,
                                                "coco_pope_popular.json"))
  assert [e.key for e in one] == [f"popular/{i}" for i in range(1, 5)]
  assert [e.key for e in get_benchmark("pope").load(root, limit=2)] == [
      "random/1", "random/2"]


def test_pope_image_folders(tmp_path):
  # LLaVA's layout: pope/coco/coco_pope_*.json, pope/val2014/.
  root = write_pope(str(tmp_path / "coco"), images=False)
  (tmp_path / "val2014").mkdir()
  ex = get_benchmark("pope").load(root, limit=1)
  assert ex[0].image == str(tmp_path / "val2014" /
                            "COCO_val2014_000000000100.jpg")
  with pytest.raises(FileNotFoundError, match="COCO val2014"):
    get_benchmark("pope").load(root, images=str(tmp_path / "missing"))


def test_pope_errors(tmp_path):
  root = write_pope(str(tmp_path), images=False)
  with pytest.raises(ValueError, match="expected a folder or a file named"):
    get_benchmark("pope").load(str(tmp_path / "coco_pope_val.json"))
  os.remove(os.path.join(root, "coco_pope_adversarial.json"))
  with pytest.raises(FileNotFoundError, match="coco_pope_adversarial.json"):
    get_benchmark("pope").load(root)
  bad = tmp_path / "coco_pope_random.json"
  write_jsonl(str(bad), [{"question_id": 1, "image": "a.jpg", "text": "?"}])
  with pytest.raises(ValueError, match=r"random.json:1: missing.*'label'"):
    get_benchmark("pope").load(str(bad))
  write_jsonl(str(bad), [{"question_id": 1, "image": "a.jpg", "text": "?",
                          "label": "Yes"}])
  with pytest.raises(ValueError, match="label 'Yes'"):
    get_benchmark("pope").load(str(bad))
  bad.write_text('[{"question_id": 1}]\n')  # A JSON list, not JSON lines.
  with pytest.raises(ValueError, match="random.json:1: missing"):
    get_benchmark("pope").load(str(bad))
  bad.write_text('{"question_id": 1,\n')
  with pytest.raises(ValueError, match="not a JSON line"):
    get_benchmark("pope").load(str(bad))


def test_pope_parse_yes_no():
  assert pope.parse_yes_no("Yes, there is a dog.") == "yes"
  assert pope.parse_yes_no("There is not a cat.") == "no"
  assert pope.parse_yes_no("Yes. But no cat") == "yes"  # First sentence only.
  assert pope.parse_yes_no("No, there is no cat") == "no"  # Comma dropped.
  assert pope.parse_yes_no("Nope") == "yes"  # Only "No", "no", "not".
  assert pope.parse_yes_no("NO") == "yes"
  assert pope.parse_yes_no("no\n") == "no"  # Stripped first.
  assert pope.parse_yes_no("") == "yes"


def test_pope_score(tmp_path):
  bench = get_benchmark("pope")
  ex = bench.load(write_pope(str(tmp_path), images=False))
  preds = {
      # labels yes yes yes no no no -> TP FN TP TN FP TN
      "random": ["Yes, there is a dog.", "No.", "yes", "There is not a cat.",
                 "Yes. But no cat", "no"],
      # labels yes no yes no -> FN FP TP TN
      "popular": ["I think not", "Nope", "yes", "No, there is no"],
      # labels yes no -> FN TN
      "adversarial": ["No", "no"]}
  answers = {f"{s}/{i + 1}": a for s, v in preds.items()
             for i, a in enumerate(v)}
  m = bench.score(ex, answers)
  r, p, a = (m["splits"][s] for s in ("random", "popular", "adversarial"))
  # random: TP 2 FP 1 TN 2 FN 1: acc 4/6, precision 2/3, recall 2/3,
  # F1 2/3, yes-ratio 3/6.
  assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 2, 1)
  assert r["accuracy"] == pytest.approx(400 / 6)
  assert r["precision"] == r["recall"] == r["f1"] == pytest.approx(200 / 3)
  assert r["yes_ratio"] == pytest.approx(50.0)
  # popular: TP 1 FP 1 TN 1 FN 1: everything 50.
  assert [p[k] for k in pope.METRICS] == pytest.approx([50.0] * 5)
  # adversarial: TP 0 FP 0 TN 1 FN 1: acc 50, precision 0 (no "yes"),
  # recall 0, F1 0, yes-ratio 0.
  assert [a[k] for k in pope.METRICS] == pytest.approx([50, 0, 0, 0, 0])
  # Means over the three splits.
  assert m["accuracy"] == pytest.approx((400 / 6 + 50 + 50) / 3)  # 55.56
  assert m["f1"] == pytest.approx((200 / 3 + 50 + 0) / 3)  # 38.89
  assert m["precision"] == m["recall"] == pytest.approx(m["f1"])
  assert m["yes_ratio"] == pytest.approx(100 / 3)
  assert m[bench.headline] == m["f1"] and m["num_examples"] == 12
  # One split loaded: its own numbers.
  one = bench.load(os.path.join(str(tmp_path), "coco_pope_popular.json"))
  m1 = bench.score(one, {e.key: answers[e.key] for e in one})
  assert list(m1["splits"]) == ["popular"]
  assert m1["f1"] == pytest.approx(50.0)


def test_pope_read_predictions(tmp_path):
  path = tmp_path / "predictions.jsonl"
  write_jsonl(str(path), [{"question_id": "random/1", "prompt": "p",
                           "answer": "yes", "kept": []}])
  assert get_benchmark("pope").read_predictions(str(path)) == {
      "random/1": "yes"}


# MME ------------------------------------------------------------------------

# Subtasks that keep images/ and questions_answers_YN/ in the release.
MME_SPLIT_LAYOUT = ("posters", "celebrity", "scene", "landmark", "artwork")


def write_mme(root, images_per_subtask=None):
  """Every subtask with one image (existence: two), two questions each:
  "... Please answer yes or no.<TAB>Yes" then "...<TAB>No"."""
  for subtask in mme.SUBTASKS:
    count = (images_per_subtask or {}).get(subtask, 1)
    ext = ".png" if subtask in mme.COGNITION else ".jpg"
    split = subtask in MME_SPLIT_LAYOUT
    image_dir = os.path.join(root, subtask, "images" if split else "")
    text_dir = os.path.join(root, subtask,
                            "questions_answers_YN" if split else "")
    os.makedirs(text_dir, exist_ok=True)
    for i in range(count):
      name = f"{subtask}_{i:02d}"
      write_image(os.path.join(image_dir, name + ext))
      with open(os.path.join(text_dir, name + ".txt"), "w") as f:
        f.write(f"Is this {name} a yes? Please answer yes or no.\tYes\r\n"
                f"Is this {name} a no? Please answer yes or no.\tNo \n")
  os.makedirs(os.path.join(root, "eval_tool"), exist_ok=True)  # Ignored.
  return root


def test_mme_load(tmp_path):
  root = write_mme(str(tmp_path), {"existence": 2})
  ex = get_benchmark("mme").load(root)
  assert len(ex) == 2 * 15
  assert [e.key for e in ex[:5]] == [
      "existence/existence_00.jpg/0", "existence/existence_00.jpg/1",
      "existence/existence_01.jpg/0", "existence/existence_01.jpg/1",
      "count/count_00.jpg/0"]
  assert ex[0].prompt == "answer en Is this existence_00 a yes?"
  assert [ex[0].target, ex[1].target] == ["yes", "no"]
  assert ex[0].meta == {"subtask": "existence", "image": "existence_00.jpg"}
  assert ex[-1].key == "code_reasoning/code_reasoning_00.png/1"
  poster = next(e for e in ex if e.meta["subtask"] == "posters")
  assert poster.image == os.path.join(root, "posters", "images",
                                      "posters_00.jpg")
  assert load_image(poster.image) == poster.image
  full = mme.MME(prompt="{full_question}").load(root, limit=1)
  assert full[0].prompt == ("Is this existence_00 a yes? Please answer yes "
                            "or no.")
  # limit keeps whole images: 3 questions -> 2 images, 4 questions.
  assert len(get_benchmark("mme").load(root, limit=3)) == 4
  assert len(get_benchmark("mme").load(root, limit=4)) == 4


def test_mme_errors(tmp_path):
  root = write_mme(str(tmp_path))
  with pytest.raises(ValueError, match="--images does not apply"):
    get_benchmark("mme").load(root, images=root)
  with pytest.raises(FileNotFoundError, match="MME release folder"):
    get_benchmark("mme").load(str(tmp_path / "nope"))
  txt = os.path.join(root, "count", "count_00.txt")
  with open(txt, "a") as f:
    f.write("A third question?\tYes\n")
  with pytest.raises(ValueError, match="count_00.txt: 3 questions"):
    get_benchmark("mme").load(root)
  with open(txt, "w") as f:
    f.write("Is it?\tYes\nIs it not?\tMaybe\n")
  with pytest.raises(ValueError, match=r"count_00.txt: line 2 .*Maybe"):
    get_benchmark("mme").load(root)
  os.remove(txt)
  with pytest.raises(FileNotFoundError, match="count_00.txt does not exist"):
    get_benchmark("mme").load(root)
  os.rename(os.path.join(root, "OCR"), os.path.join(root, "ocr_renamed"))
  with pytest.raises(FileNotFoundError, match=r"missing subtask.*'OCR'"):
    get_benchmark("mme").load(root)
  with pytest.raises(ValueError, match="does not format"):
    mme.MME(prompt="{image}")


def test_mme_parse_yes_no():
  assert mme.parse_yes_no("Yes") == "yes"
  assert mme.parse_yes_no(" no\n") == "no"
  assert mme.parse_yes_no("Yes, it is.") == "yes"  # "yes," in the prefix.
  assert mme.parse_yes_no("Not really") == "no"  # "no" in "not ".
  assert mme.parse_yes_no("The answer is yes") == "other"  # "the " only.
  assert mme.parse_yes_no("y") == "other"
  assert mme.parse_yes_no("A yes") == "other"  # Only 4 characters looked at.
  assert mme.parse_yes_no("no, yes") == "no"


def test_mme_score(tmp_path):
  bench = get_benchmark("mme")
  ex = bench.load(write_mme(str(tmp_path), {"existence": 2}))
  answers = {e.key: "Yes" if e.target == "yes" else "No" for e in ex}
  answers["existence/existence_01.jpg/1"] = "Yes"        # wrong
  answers["count/count_00.jpg/0"] = "maybe"              # other: wrong
  answers["count/count_00.jpg/1"] = "yes"                # wrong
  answers["commonsense_reasoning/commonsense_reasoning_00.png/0"] = \
      "Yes, it is."                                      # right
  answers["commonsense_reasoning/commonsense_reasoning_00.png/1"] = \
      "The answer is no"                                 # other: wrong
  m = bench.score(ex, answers)
  s = m["subtasks"]
  # existence: 3 of 4 questions, 1 of 2 images: 75 + 50.
  assert (s["existence"]["acc"], s["existence"]["acc_plus"]) == (75.0, 50.0)
  assert s["existence"]["score"] == 125.0
  assert s["count"]["score"] == 0.0 and s["count"]["other"] == 1
  assert s["color"]["score"] == 200.0
  # commonsense: 1 of 2 questions, 0 of 1 image: 50 + 0.
  assert s["commonsense_reasoning"]["score"] == 50.0
  # Perception: 125 + 0 + 8 * 200; cognition: 50 + 3 * 200.
  assert m["perception"] == pytest.approx(1725.0)
  assert m["cognition"] == pytest.approx(650.0)
  assert m["total"] == pytest.approx(2375.0) and bench.headline == "total"
  # 30 questions, 4 wrong.
  assert m["accuracy"] == pytest.approx(100 * 26 / 30)
  assert m["num_examples"] == 30 and list(s) == list(mme.SUBTASKS)
  # A limited run sums what it has: existence image 0 only.
  part = bench.load(str(tmp_path), limit=2)
  mp = bench.score(part, {e.key: answers[e.key] for e in part})
  assert list(mp["subtasks"]) == ["existence"]
  assert mp["total"] == mp["perception"] == 200.0 and mp["cognition"] == 0


def test_mme_read_predictions(tmp_path):
  path = tmp_path / "predictions.jsonl"
  key = "OCR/OCR_00.jpg/1"
  write_jsonl(str(path), [{"question_id": key, "prompt": "p", "answer": "No",
                           "kept": [3]}])
  assert get_benchmark("mme").read_predictions(str(path)) == {key: "No"}
