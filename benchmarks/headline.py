"""The README's results table: headline ratios of several grids, one row per task.

Each cell is the median iterations to the task's target relative to a baseline, with the
wall-clock ratio in brackets (iterations x time per step, from ``overheads.json`` when the
grid has one, else from the runs' own step times); *n.r.* = not reached by the median seed.
The figures are those of ``benchmarks.report`` (same selection of each optimizer's best
learning rate); this only lays them out compactly. Usage::

  python -m benchmarks.headline benchmarks/grids/main.json benchmarks/grids/deep.json
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

from benchmarks import report

# (column title, optimizer label, baseline key) in the order the README shows them.
COLUMNS: list[tuple[str, str, str]] = [
    ("Adam vs RMSProp", "adam", "rmsprop"),
    ("AvgGrad-RMSProp, paper form, vs RMSProp", "avg-rmsprop", "rmsprop"),
    ("AvgGrad-RMSProp, accelerate x8, vs RMSProp", "avg-rmsprop-acc8", "rmsprop"),
    ("AvgGrad-Adam (default: accelerate x8, trapezoid) vs Adam", "avg-adam-acc8-trap", "adam"),
    ("AvgGrad-Adam, accelerate x8, factorized, vs Adam", "avg-adam-acc8", "adam"),
]


def summaries(grid_path: str, results_dir: Optional[str] = None
              ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
  """(grid, task, summary) for every task of a grid with results."""
  grid, _, records, overheads = report.load(grid_path, results_dir)
  return [(grid, task, summary)
          for task, summary in report.summarize_tasks(grid, records, overheads)]


def cell(summary: dict[str, Any], label: str, baseline: str) -> str:
  s = summary["optimizers"].get(label)
  if s is None or baseline not in summary["optimizers"]:
    return ""
  mine = s["median_iterations"]
  theirs = summary["optimizers"][baseline]["median_iterations"]
  if math.isinf(theirs):
    return "n.r. (both)" if math.isinf(mine) else "reached; baseline n.r."
  iters = report.fmt_ratio(s[f"ratio_{baseline}"])
  wall = report.fmt_ratio(s[f"wall_ratio_{baseline}"])
  return iters if iters in ("n.r.", "-") else f"{iters} ({wall})"


def table(grid_paths: list[str], results_dir: Optional[str] = None) -> str:
  lines = ["| task | seeds | " + " | ".join(c[0] for c in COLUMNS) + " |",
           "|---|---|" + "---|" * len(COLUMNS)]
  for path in grid_paths:
    for grid, task, summary in summaries(path, results_dir):
      name = task["name"] + (" †" if summary["degenerate"] else "")
      cells = [cell(summary, label, base) for _, label, base in COLUMNS]
      lines.append(f"| {name} | {len(grid['seeds'])} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grids", nargs="+")
  args = parser.parse_args(argv)
  print(table(args.grids))


if __name__ == "__main__":
  main()
