"""The README's Python code blocks run, top to bottom, in one namespace (as a reader would
paste them)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
  return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_code_blocks_run(capsys):
  blocks = python_blocks()
  assert len(blocks) >= 5
  namespace: dict = {"__name__": "readme"}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f"README.md block {i + 1}", "exec"), namespace)
    except Exception as e:  # name the block that failed
      raise AssertionError(f"README code block {i + 1} failed: {e!r}\n{block}") from e
    if "compare_on(" in block:
      own = namespace["result"]
  losses = namespace["losses"]
  assert len(losses) == 5 and losses[-1] < losses[0]
  assert "exact" in capsys.readouterr().out  # avggrad.coverage's report was printed

  # "Compare on your own model": the rates and iterations the run printed are those pasted
  pasted = re.search(r"## Compare on your own model.*?```text\n(.*?)```", README.read_text(),
                     flags=re.S).group(1)
  for summary in own.comparison.summaries:
    line = next(l for l in pasted.splitlines() if l.startswith(summary.optimizer + " "))
    _, lr, iters = line.split()[:3]
    assert float(lr.rstrip("*")) == summary.best_lr, (line, summary)
    assert iters == f"{summary.median_iterations:.0f}", (line, summary)
