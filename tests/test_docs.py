"""The documentation: the Sphinx site builds without warnings, the guide's code runs."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_sphinx_builds_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_parser")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
       str(tmp_path / "html")],
      capture_output=True, text=True, timeout=600,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "html" / "api.html").exists()


def test_guide_code_runs_and_prints_what_the_guide_shows():
  text = (DOCS / "guide.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
  assert len(blocks) >= 3
  namespace: dict = {}
  printed = io.StringIO()
  for block in blocks:
    with contextlib.redirect_stdout(printed):
      exec(compile(block, "guide.md", "exec"), namespace)  # noqa: S102
  shown = re.findall(r"```text\n(.*?)```", text, flags=re.S)
  assert shown and all(out.strip() in printed.getvalue() for out in shown)
