"""The README's results table: headline ratios of several grids, one row per task.

Each cell is the median iterations to the task's target relative to a baseline, with the
wall-clock ratio in brackets (iterations x time per step, from ``overheads.json`` when the
grid has one, else from the runs' own step times); *n.r.* = not reached by the median seed.
The figures are those of ``benchmarks.report`` (same selection of each optimizer's best
learning rate); this only lays them out compactly. ``--columns`` picks the layout: ``main``
(the first grids), ``fine`` (issues 10 and 11: avggrad.adam's far-end variants against Adam,
the RMSProp forms against RMSProp and against the better of RMSProp and Adam), ``peers``
(every optimizer of the grid against tuned Adam), ``momentum`` (issue 20: AvgGrad-RMSProp with
momentum against RMSProp, RMSProp with momentum and Adam). Usage::

  python -m benchmarks.headline benchmarks/grids/main.json benchmarks/grids/deep.json
  python -m benchmarks.headline --columns fine benchmarks/grids/fine.json
  python -m benchmarks.headline --columns peers benchmarks/grids/peers.json
  python -m benchmarks.headline --columns momentum benchmarks/grids/fine.json
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional

import numpy as np

from avggrad import protocol
from benchmarks import report
from benchmarks import run as run_lib

# (column title, optimizer label, baseline key) in the order the README shows them; the
# baseline "best" is the better (fewer median iterations) of RMSProp and Adam.
COLUMN_SETS: dict[str, list[tuple[str, str, str]]] = {
    "main": [
        ("Adam vs RMSProp", "adam", "rmsprop"),
        ("AvgGrad-RMSProp, paper form, vs RMSProp", "avg-rmsprop", "rmsprop"),
        ("AvgGrad-RMSProp, accelerate x8, vs RMSProp", "avg-rmsprop-acc8", "rmsprop"),
        ("AvgGrad-Adam, accelerate x8, trapezoid, vs Adam", "avg-adam-acc8-trap", "adam"),
        ("AvgGrad-Adam, accelerate x8, factorized, vs Adam", "avg-adam-acc8", "adam"),
    ],
    "fine": [
        ("avggrad.adam (far end on 1/4 batch: the default) vs Adam", "avg-adam-q", "adam"),
        ("far end on the whole batch vs Adam", "avg-adam", "adam"),
        ("far end on 1/8 batch vs Adam", "avg-adam-e", "adam"),
        ("whole batch, accumulate=point, vs Adam", "avg-adam-point", "adam"),
        ("RMSProp form, factorized, accumulator fed the average (the former default) vs RMSProp",
         "avg-rmsprop",
         "rmsprop"),
        ("RMSProp form, accumulate=point, factorized, vs RMSProp", "avg-rmsprop-point",
         "rmsprop"),
        ("momentum-free avggrad.rmsprop (momentum=None, accumulate=point, trapezoid) vs RMSProp",
         "avg-rmsprop-point-trap",
         "rmsprop"),
        ("best RMSProp form vs the better of RMSProp and Adam", "best-rmsprop-form", "best"),
    ],
    "momentum": [
        ("RMSProp+momentum vs RMSProp", "rmsprop-momentum", "rmsprop"),
        ("avggrad.rmsprop, momentum 0.9, vs RMSProp+momentum", "avg-rmsprop-momentum",
         "rmsprop-momentum"),
        ("avggrad.rmsprop, momentum 0.9, vs the best of RMSProp, RMSProp+momentum and Adam",
         "avg-rmsprop-momentum", "best3"),
        ("momentum-free form vs the best of the three", "avg-rmsprop-point-trap", "best3"),
        ("far end on 1/4 batch, momentum 0.9, vs the best of the three",
         "avg-rmsprop-momentum-q", "best3"),
    ],
}
# The baselines a "best" (``best``: RMSProp, Adam; ``best3``: with RMSProp+momentum) names.
BEST_OF = {"best": ("rmsprop", "adam"), "best3": ("rmsprop", "rmsprop-momentum", "adam")}
RMSPROP_FORMS = ("avg-rmsprop", "avg-rmsprop-point", "avg-rmsprop-point-trap")


def summaries(grid_path: str, results_dir: Optional[str] = None, tasks: str = "*"
              ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
  """(grid, task, summary) for every task of a grid with results (whose name matches one of
  the comma-separated globs ``tasks``)."""
  grid, _, records, overheads = report.load(grid_path, results_dir)
  return [(grid, task, summary)
          for task, summary in report.summarize_tasks(grid, records, overheads)
          if run_lib.matches(task["name"], tasks)]


def _pick(summary: dict[str, Any], label: str) -> Optional[dict[str, Any]]:
  """An optimizer's figures; ``best-rmsprop-form`` is the RMSProp form with the fewest median
  iterations on this task (named in the cell)."""
  if label != "best-rmsprop-form":
    return summary["optimizers"].get(label)
  forms = [(summary["optimizers"][k]["median_iterations"], k) for k in RMSPROP_FORMS
           if k in summary["optimizers"]]
  if not forms:
    return None
  _, name = min(forms)
  return summary["optimizers"][name] | {"name": name}


def _baseline(summary: dict[str, Any], baseline: str) -> Optional[dict[str, Any]]:
  if baseline not in BEST_OF:
    return summary["optimizers"].get(baseline)
  if any(k not in summary["optimizers"] for k in BEST_OF[baseline]):
    return None
  return min((summary["optimizers"][k] for k in BEST_OF[baseline]),
             key=lambda o: o["median_iterations"])


def cell(summary: dict[str, Any], label: str, baseline: str) -> str:
  s = _pick(summary, label)
  base = _baseline(summary, baseline)
  if s is None or base is None:
    return ""
  mine, theirs = s["median_iterations"], base["median_iterations"]
  suffix = f" [{s['name']}]" if "name" in s else ""
  if math.isinf(theirs):
    return ("n.r. (both)" if math.isinf(mine) else "reached; baseline n.r.") + suffix
  iters = report.fmt_ratio(protocol.ratio(mine, theirs))
  wall = report.fmt_ratio(protocol.ratio(s.get("wall_seconds", math.nan),
                                        base.get("wall_seconds", math.nan)))
  return (iters if iters in ("n.r.", "-") else f"{iters} ({wall})") + suffix


def peers_detail(grid_paths: list[str], results_dir: Optional[str] = None) -> str:
  """Per task, every optimizer against tuned Adam: iterations (wall-clock) ratios, final
  training loss and test accuracy at the full budget (medians over seeds)."""
  lines = []
  for path in grid_paths:
    for grid, task, summary in summaries(path, results_dir):
      labels = [k for k in grid["optimizers"] if k in summary["optimizers"] and k != "adam"]
      adam = summary["optimizers"].get("adam", {})
      lines += [f"**{task['name']}** (Adam: "
                f"{report.fmt_iters(adam.get('median_iterations', math.nan))} iterations)", "",
                "| optimizer | iterations vs Adam (wall-clock) | final loss | test accuracy |",
                "|---|---|---|---|"]
      for label in ["adam", *labels]:
        o = summary["optimizers"][label]
        final = float(np.median(o["final_losses"]))
        ratio = "1" if label == "adam" else cell(summary, label, "adam")
        lines.append(f"| {label} | {ratio} | {final:.4f} | {o['test_accuracy']:.3f} |")
      lines.append("")
  return "\n".join(lines)


def peers_table(grid_paths: list[str], results_dir: Optional[str] = None,
                tasks: str = "*") -> str:
  """Every optimizer (rows) against tuned Adam on each task (columns): median iterations to
  the target relative to Adam's, wall-clock ratio in brackets."""
  found = [(grid, task, summary) for path in grid_paths
           for grid, task, summary in summaries(path, results_dir, tasks)]
  labels: list[str] = []
  for grid, _, summary in found:
    labels += [k for k in grid["optimizers"]
               if k in summary["optimizers"] and k != "adam" and k not in labels]
  lines = ["| optimizer | " + " | ".join(task["name"] for _, task, _ in found) + " |",
           "|---|" + "---|" * len(found),
           "| Adam: iterations | " + " | ".join(
               report.fmt_iters(s["optimizers"].get("adam", {}).get("median_iterations",
                                                                    math.nan))
               for _, _, s in found) + " |"]
  for label in labels:
    lines.append(f"| {label} | " + " | ".join(cell(s, label, "adam") or "not run"
                                              for _, _, s in found) + " |")
  return "\n".join(lines)


def table(grid_paths: list[str], results_dir: Optional[str] = None,
          columns: str = "main", tasks: str = "*") -> str:
  if columns == "peers":
    return peers_table(grid_paths, results_dir, tasks)
  if columns == "peers-detail":
    return peers_detail(grid_paths, results_dir)
  chosen = COLUMN_SETS[columns]
  lines = ["| task | seeds | " + " | ".join(c[0] for c in chosen) + " |",
           "|---|---|" + "---|" * len(chosen)]
  for path in grid_paths:
    for grid, task, summary in summaries(path, results_dir, tasks):
      name = task["name"] + (" †" if summary["degenerate"] else "")
      cells = [cell(summary, label, base) for _, label, base in chosen]
      lines.append(f"| {name} | {len(grid['seeds'])} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grids", nargs="+")
  parser.add_argument("--columns", default="main", choices=[*COLUMN_SETS, "peers", "peers-detail"])
  parser.add_argument("--tasks", default="*", help="only tasks matching these comma-separated globs")
  args = parser.parse_args(argv)
  print(table(args.grids, columns=args.columns, tasks=args.tasks))


if __name__ == "__main__":
  main()
