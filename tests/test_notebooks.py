"""The notebooks run top to bottom in fast mode, and are committed without outputs."""

from __future__ import annotations

import json
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHARED = ROOT.parent / "shared" / "data"


def test_there_are_three_notebooks():
  assert [p.name for p in NOTEBOOKS] == [
      "01_quickstart.ipynb", "02_average_gradient.ipynb", "03_reproduce.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_stripped(path):
  nbformat = pytest.importorskip("nbformat")
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  if path.name == "01_quickstart.ipynb" and not os.environ.get("AVGGRAD_DATA_DIR"):
    if not SHARED.is_dir():
      pytest.skip("MNIST needs AVGGRAD_DATA_DIR or ../shared/data offline (TFDS otherwise)")
    monkeypatch.setenv("AVGGRAD_DATA_DIR", str(SHARED))
  monkeypatch.setenv("AVGGRAD_FAST", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("AVGGRAD_RESULTS_TMP", str(tmp_path))
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(path.parent)}})
  client.execute()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_reads_the_repository_from_one_place(path):
  """The install cell's REPOSITORY is pyproject.toml's [project.urls] Repository (None while
  the project has no public home), and every notebook shows the devices JAX sees."""
  import tomllib

  project = tomllib.loads((path.parents[1] / "pyproject.toml").read_text())["project"]
  expected = project.get("urls", {}).get("Repository")
  nb = json.loads(path.read_text())
  sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
  install = next(s for s in sources if "REPOSITORY =" in s)
  assert f"REPOSITORY = {expected!r}" in install
  assert any("jax.devices()" in s for s in sources)
