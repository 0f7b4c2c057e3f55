"""The project's docs are self-contained: no citation of files outside the
repository, and every relative link in README.md and docs/*.md resolves."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Spelled in pieces, so that this file does not match itself.
OUTSIDE = ("METHOD" + ".md", "SYNTHETIC_TASK" + ".md", ".." + "/shared")
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".venv", "venv",
             "node_modules"}

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def repo_files(root: str) -> list[str]:
  """Paths (relative to root) of the files git would track: tracked plus
  untracked-not-ignored; without git, every file outside SKIP_DIRS."""
  try:
    out = subprocess.run(
        ["git", "-C", root, "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"], capture_output=True, check=True).stdout
    files = [f for f in out.decode().split("\0") if f]
    if files:
      return [f for f in files if os.path.isfile(os.path.join(root, f))]
  except (OSError, subprocess.CalledProcessError):
    pass
  files = []
  for d, dirs, names in os.walk(root):
    dirs[:] = [x for x in dirs if x not in SKIP_DIRS
               and not x.endswith(".egg-info")]
    files += [os.path.relpath(os.path.join(d, n), root) for n in names]
  return files


def outside_citations(root: str) -> list[str]:
  """'path: name' for every file under root that mentions an OUTSIDE name."""
  hits = []
  for rel in repo_files(root):
    with open(os.path.join(root, rel), "rb") as f:
      data = f.read()
    hits += [f"{rel}: {name}" for name in OUTSIDE if name.encode() in data]
  return hits


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped (but
  '-' and '_'), spaces to '-'."""
  text = _CODE.sub(lambda m: m.group(0)[1:-1], heading)
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)   # Links: their text.
  text = re.sub(r"[^\w\- ]", "", text.lower())
  return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
  with open(path, encoding="utf-8") as f:
    text = _FENCE.sub("", f.read())
  seen, out = {}, set()
  for h in _HEADING.findall(text):
    s = slug(h)
    n = seen.get(s, 0)
    seen[s] = n + 1
    out.add(s if n == 0 else f"{s}-{n}")
  return out


def broken_links(root: str, doc: str) -> list[str]:
  """'doc: target (why)' for each relative link in root/doc (markdown) whose
  file does not exist, or whose #anchor is no heading of its target."""
  path = os.path.join(root, doc)
  with open(path, encoding="utf-8") as f:
    text = _CODE.sub("", _FENCE.sub("", f.read()))
  bad = []
  for target in _LINK.findall(text):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    dest = (path if not file_part else
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)))
    if not os.path.exists(dest):
      bad.append(f"{doc}: {target} (no file {os.path.relpath(dest, root)})")
    elif not os.path.realpath(dest).startswith(os.path.realpath(root)):
      bad.append(f"{doc}: {target} (outside the repository)")
    elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
      bad.append(f"{doc}: {target} (no heading #{anchor} in "
                 f"{os.path.relpath(dest, root)})")
  return bad


def _docs(root: str) -> list[str]:
  docs = ["README.md"]
  docs_dir = os.path.join(root, "docs")
  if os.path.isdir(docs_dir):
    docs += sorted(os.path.join("docs", n) for n in os.listdir(docs_dir)
                   if n.endswith(".md"))
  return docs


def test_no_file_cites_files_outside_the_repository():
  assert outside_citations(ROOT) == []


def test_every_relative_link_in_the_docs_resolves():
  docs = _docs(ROOT)
  assert "docs/method.md" in docs and "docs/demo_task.md" in docs
  bad = [b for doc in docs for b in broken_links(ROOT, doc)]
  assert bad == []


def test_the_checks_catch_a_citation_and_broken_links(tmp_path):
  """The two checks above can fail: a tree with each kind of mistake."""
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "a.md").write_text(
      "# A title: `code` here\n\n## Same\n\n## Same\n\nsee [b](b.md), "
      "[ok](#a-title-code-here), [ok2](#same-1), [gone](#nope), "
      "[web](https://example.org/x.md)\n\n```\n[in code](missing.md)\n```\n")
  (tmp_path / "README.md").write_text(
      "[a](docs/a.md#same) [bad](docs/a.md#other) [up](../elsewhere.md)\n"
      "as " + OUTSIDE[0] + " says\n")
  (tmp_path / "x.py").write_text('"""From ' + OUTSIDE[2] + '/notes."""\n')
  assert sorted(outside_citations(str(tmp_path))) == [
      f"README.md: {OUTSIDE[0]}", f"x.py: {OUTSIDE[2]}"]
  assert broken_links(str(tmp_path), "docs/a.md") == [
      "docs/a.md: b.md (no file docs/b.md)",
      "docs/a.md: #nope (no heading #nope in docs/a.md)"]
  bad = broken_links(str(tmp_path), "README.md")
  assert bad[0] == "README.md: docs/a.md#other (no heading #other in docs/a.md)"
  assert bad[1].startswith("README.md: ../elsewhere.md (no file")
  assert len(bad) == 2


@pytest.mark.parametrize("heading, want", [
    ("Speed: the prefill benchmark", "speed-the-prefill-benchmark"),
    ("The deployed path: hard top-K", "the-deployed-path-hard-top-k"),
    ("Reported results: the numbers to beat",
     "reported-results-the-numbers-to-beat"),
    ("PaliGemma facts (HF vs big_vision)", "paligemma-facts-hf-vs-big_vision"),
])
def test_slug_follows_github(heading, want):
  assert slug(heading) == want
