"""The README's results table: headline ratios of several grids, one row per task.

Each cell is the median iterations to the task's target relative to a baseline, with the
wall-clock ratio in brackets (iterations x time per step, from ``overheads.json`` when the
grid has one, else from the runs' own step times); *n.r.* = not reached by the median seed.
The figures are those of ``benchmarks.report`` (same selection of each optimizer's learning
rate); this only lays them out compactly. Each table is printed under both rate rules,
AlgoPerf's ``fastest`` first, each under a line naming its rule (``--rule`` prints one).
``--columns`` picks the layout: ``main`` (the first grids), ``fine`` (issues 10 and 11:
avggrad.adam's far-end variants against Adam, the RMSProp forms against RMSProp and against the
better of RMSProp and Adam), ``peers`` (every optimizer of the grid against tuned Adam),
``momentum`` (issue 20: AvgGrad-RMSProp with momentum against RMSProp, RMSProp with momentum
and Adam). Usage::

  python -m benchmarks.headline benchmarks/grids/main.json benchmarks/grids/deep.json
  python -m benchmarks.headline --columns fine benchmarks/grids/fine.json
  python -m benchmarks.headline --columns peers benchmarks/grids/peers.json
  python -m benchmarks.headline --columns momentum benchmarks/grids/fine.json
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Optional, Sequence

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


def summaries(grid_path: str, results_dir: Optional[str] = None, tasks: str = "*",
              rule: str = "fastest", extra: Sequence[str] = ()
              ) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
  """(grid, task, summary) for every task of a grid with results (whose name matches one of
  the comma-separated globs ``tasks``), each optimizer at the rate ``rule`` picks; the
  optimizers of the grids ``extra`` join a task of the same name and target
  (:func:`merge`)."""
  grid, _, records, overheads = report.load(grid_path, results_dir)
  found = [(grid, task, summary)
           for task, summary in report.summarize_tasks(grid, records, overheads, rule)
           if run_lib.matches(task["name"], tasks)]
  for path in extra:
    other_grid, _, other_records, other_overheads = report.load(path)
    by_name = {task["name"]: summary for task, summary in
               report.summarize_tasks(other_grid, other_records, other_overheads, rule)}
    for _, task, summary in found:
      if task["name"] in by_name:
        merge(summary, by_name[task["name"]])
  return found


def merge(summary: dict[str, Any], other: dict[str, Any]) -> list[str]:
  """Adds to ``summary`` the optimizers of ``other`` (the same task in another grid) that it
  lacks, when both grids share the task's target; returns the labels added.

  The other grid's step times come from another process: they are scaled by the ratio of the
  step times of an optimizer both grids timed (the first in ``summary``'s order), and the
  wall-clock figures recomputed, so that they compare with ``summary``'s own.
  """
  same_target = (summary["target"] and other["target"]
                 and math.isclose(summary["target"], other["target"], rel_tol=1e-6))
  if not same_target:
    return []
  mine, theirs = summary["optimizers"], other["optimizers"]
  common = [k for k in mine if k in theirs
            and math.isfinite(mine[k].get("step_seconds", math.nan))
            and math.isfinite(theirs[k].get("step_seconds", math.nan))]
  scale = (mine[common[0]]["step_seconds"] / theirs[common[0]]["step_seconds"]
           if common else 1.0)
  added = [k for k in theirs if k not in mine]
  for k in added:
    o = dict(theirs[k])
    o["step_seconds"] = o.get("step_seconds", math.nan) * scale
    o["wall_seconds"] = protocol.seconds_to_target(o["median_iterations"], o["step_seconds"])
    for key, base in (("ratio_rmsprop", "rmsprop"), ("ratio_adam", "adam")):
      o[key] = protocol.ratio(o["median_iterations"],
                              mine.get(base, {}).get("median_iterations", math.nan))
    for key, base in (("wall_ratio_rmsprop", "rmsprop"), ("wall_ratio_adam", "adam")):
      o[key] = protocol.ratio(o["wall_seconds"], mine.get(base, {}).get("wall_seconds", math.nan))
    mine[k] = o
  return added


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


def peers_detail(grid_paths: list[str], results_dir: Optional[str] = None,
                 rule: str = "fastest") -> str:
  """Per task, every optimizer against tuned Adam: iterations (wall-clock) ratios, final
  training loss and test accuracy at the full budget (medians over seeds)."""
  lines = []
  for path in grid_paths:
    for grid, task, summary in summaries(path, results_dir, rule=rule):
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
                tasks: str = "*", rule: str = "fastest") -> str:
  """Every optimizer (rows) against tuned Adam on each task (columns): median iterations to
  the target relative to Adam's, wall-clock ratio in brackets."""
  found = [(grid, task, summary) for path in grid_paths
           for grid, task, summary in summaries(path, results_dir, tasks, rule)]
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
          columns: str = "main", tasks: str = "*", rule: str = "fastest") -> str:
  """One layout (``columns``) of the grids' figures under one rate ``rule``."""
  if columns == "peers":
    return peers_table(grid_paths, results_dir, tasks, rule)
  if columns == "peers-detail":
    return peers_detail(grid_paths, results_dir, rule)
  chosen = COLUMN_SETS[columns]
  lines = ["| task | seeds | " + " | ".join(c[0] for c in chosen) + " |",
           "|---|---|" + "---|" * len(chosen)]
  for path in grid_paths:
    for grid, task, summary in summaries(path, results_dir, tasks, rule):
      name = task["name"] + (" †" if summary["degenerate"] else "")
      cells = [cell(summary, label, base) for _, label, base in chosen]
      lines.append(f"| {name} | {len(grid['seeds'])} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grids", nargs="+")
  parser.add_argument("--columns", default="main", choices=[*COLUMN_SETS, "peers", "peers-detail"])
  parser.add_argument("--tasks", default="*", help="only tasks matching these comma-separated globs")
  parser.add_argument("--rule", choices=protocol.RULES, default=None,
                      help="one rate rule (default: both, fastest first)")
  args = parser.parse_args(argv)
  print(tables(args.grids, columns=args.columns, tasks=args.tasks,
               rules=[args.rule] if args.rule else protocol.RULES))


def tables(grid_paths: list[str], results_dir: Optional[str] = None, columns: str = "main",
           tasks: str = "*", rules: Sequence[str] = protocol.RULES) -> str:
  """:func:`table` under each rule of ``rules``, each under the line naming its rule."""
  return "\n\n".join(f"{protocol.RULE_TEXT[rule]}:\n\n"
                      + table(grid_paths, results_dir, columns, tasks, rule) for rule in rules)


if __name__ == "__main__":
  main()
