"""notebooks/colab_demo.ipynb: committed without outputs, and it runs.

The run executes every cell headless with nbclient (kernel python3, this
test's own interpreter) under AUTOSELECT_NOTEBOOK_CI=1, the notebook's tiny
settings, and checks what the cells showed: the accuracy table, the demo's
pictures, and the bring-your-own-PaliGemma section on its stand-in checkpoint
(the demo's VLM saved as a big_vision .npz, converted, captioned, drawn).

After running the notebook yourself, strip it before committing:
  python tests/test_notebook.py      # strips notebooks/colab_demo.ipynb in place
"""

from __future__ import annotations

import base64
import json
import os
import re
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "colab_demo.ipynb")
METHODS = ["full", "AutoSelect", "oracle", "random", "grid", "norm",
           "attention", "divprune"]
PNG = b"\x89PNG\r\n\x1a\n"


def strip(path: str = NOTEBOOK) -> None:
  """Removes outputs, execution counts and run metadata, in place."""
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    cell.metadata.pop("execution", None)
    if cell.cell_type == "code":
      cell.outputs, cell.execution_count = [], None
  nb.metadata.pop("widgets", None)
  nbformat.write(nb, path)


def _read():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  return nb


def _tagged(nb, tag):
  cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"{len(cells)} cells tagged {tag!r}"
  return cells[0]


def _text(cell) -> str:
  """Everything a code cell showed: streams, and the text/markdown or
  text/plain of its displays."""
  parts = []
  for out in cell.outputs:
    if out.output_type == "stream":
      parts.append(out.text)
    elif out.output_type in ("display_data", "execute_result"):
      data = out.get("data", {})
      parts.append(data.get("text/markdown", data.get("text/plain", "")))
  return "\n".join(parts)


def _pngs(cell) -> list[bytes]:
  return [base64.b64decode(out.data["image/png"]) for out in cell.outputs
          if out.output_type == "display_data" and "image/png" in out.data]


def test_committed_notebook_is_stripped_and_has_parameters():
  nb = _read()
  fix = " (python tests/test_notebook.py strips it)"
  for i, cell in enumerate(nb.cells):
    assert "execution" not in cell.metadata, f"cell {i} has run times{fix}"
    if cell.cell_type == "code":
      assert cell.outputs == [], f"cell {i} ({cell.id}) has outputs{fix}"
      assert cell.execution_count is None, (
          f"cell {i} ({cell.id}) has an execution count{fix}")
  assert "widgets" not in nb.metadata
  assert nb.metadata["kernelspec"]["name"] == "python3"
  params = _tagged(nb, "parameters")  # Papermill's contract.
  assert "AUTOSELECT_NOTEBOOK_CI" in params.source
  # The defaults are configs/demo.py's: the real demo.
  sys.path.insert(0, ROOT)
  try:
    from configs import demo
  finally:
    sys.path.remove(ROOT)
  c = demo.get_config()
  defaults = params.source.split("if CI:")[0]
  for name, want in [("PRETRAIN_STEPS", c.demo.pretrain_steps),
                     ("SCORER_STEPS", c.num_steps),
                     ("NUM_TRAIN", c.demo.num_train),
                     ("NUM_EVAL", c.demo.num_eval), ("SEED", c.seed)]:
    m = re.search(rf"^{name} = ([\d_]+)", defaults, re.M)
    assert m and int(m.group(1)) == want, (name, m and m.group(1), want)
  assert re.search(rf'^BUDGETS = "{c.demo.budgets}"', defaults, re.M)


def _python3_kernelspec(folder) -> str:
  """A `python3` kernelspec running this interpreter (so the kernel sees the
  packages this test sees), in a folder to put first on JUPYTER_PATH."""
  spec = folder / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "Python 3", "language": "python"}))
  return str(folder)


@pytest.mark.slow
def test_notebook_runs_headless_in_ci_mode(tmp_path, monkeypatch):
  from nbclient import NotebookClient
  workdir = tmp_path / "work"
  nb = _read()
  # A temporary copy with a papermill-style cell after `parameters`: the
  # run's WORKDIR under tmp_path.
  index = nb.cells.index(_tagged(nb, "parameters"))
  injected = nbformat.v4.new_code_cell(f"WORKDIR = {str(workdir)!r}")
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, injected)
  copy = tmp_path / "colab_demo.ipynb"
  nbformat.write(nb, str(copy))
  nb = nbformat.read(str(copy), as_version=4)

  monkeypatch.setenv("AUTOSELECT_NOTEBOOK_CI", "1")
  monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
      [_python3_kernelspec(tmp_path / "jupyter"),
       os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep))
  client = NotebookClient(nb, timeout=1200, startup_timeout=120,
                          kernel_name="python3",
                          resources={"metadata": {"path": ROOT}})
  try:
    client.execute()  # Raises CellExecutionError on any failing cell.
  finally:
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # For a post-mortem.

  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not [o for o in cell.outputs if o.output_type == "error"]

  install = _text(_tagged(nb, "install"))
  assert "every requirement is already met" in install  # No pip run here.
  assert "backend 'cpu'" in install or "backend 'gpu'" in install \
      or "backend 'tpu'" in install, install

  # The table: every method, with numbers in [0, 1], from demo_table.json.
  saved = json.loads((workdir / "demo_table.json").read_text())
  assert set(METHODS) <= set(saved["table"]), list(saved["table"])
  shown = _text(_tagged(nb, "demo-table"))
  for method, want in saved["table"].items():
    row = re.search(rf"^\| (?:\*\*)?{method}\b.*$", shown, re.M)
    assert row, (method, shown)
    values = [float(v) for v in re.findall(r"\| (\d+\.\d+)(?= )",
                                           row.group(0))]
    assert values == pytest.approx([want[k] for k in ("4", "8", "16")],
                                   abs=5e-4), (row.group(0), want)
    assert all(0.0 <= v <= 1.0 for v in values), row.group(0)

  # The demo's pictures, displayed inline as PNGs (the files' bytes).
  pictures = _pngs(_tagged(nb, "demo-pictures"))
  assert pictures == [(workdir / name).read_bytes()
                      for name in ("selection.png", "accuracy_vs_k.png")]

  # Bring your own PaliGemma, on the stand-in: the demo's VLM as a
  # big_vision .npz, converted, captioned at each K, drawn.
  checkpoint = _text(_tagged(nb, "byo-checkpoint"))
  assert "stand-in PaliGemma" in checkpoint and "skipped" not in checkpoint
  assert (workdir / "stand_in" / "demo_vlm.npz").exists()
  convert = _text(_tagged(nb, "byo-convert"))
  assert "converted big_vision" in convert and "64 visual tokens" in convert
  assert (workdir / "stand_in" / "converted" / "model_config.json").exists()
  captions = _text(_tagged(nb, "byo-caption"))
  assert "method autoselect" in captions
  for k in (4, 8, 16, 64):
    assert re.search(rf"^\| {k} \| \d+% \(", captions, re.M), (k, captions)
  drawn = _pngs(_tagged(nb, "byo-draw"))
  assert len(drawn) == 1 and drawn[0].startswith(PNG)
  assert drawn[0] == (workdir / "stand_in" /
                      "paligemma_kept_tokens.png").read_bytes()


if __name__ == "__main__":
  strip()
  print(f"stripped {NOTEBOOK}")
