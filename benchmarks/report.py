"""Report generator: turns a grid's results into a Markdown report with tables and plots.

For every task of the grid: each optimizer's learning rate under one rate rule (``--rule``:
``fastest``, AlgoPerf's, the default: the fewest median iterations to the target;
``final-loss``: the lowest median final loss; :mod:`avggrad.protocol`), with the other rule's
rate and iterations beside it; its iterations to the task's target (median, range, how many
seeds reached it), the ratios against the same-core RMSProp and Adam baselines, the loss at
the budget, wall-clock to target, the full learning-rate sweep (final loss and iterations to
target per rate), and a plot of the loss curves at the chosen learning rates with seed bands.
A summary table and a ratio plot cover all tasks.

Usage::

  python -m benchmarks.report benchmarks/grids/main.json [--overheads overheads.json]
      [--rule final-loss]

writes ``benchmarks/results/<grid name>/REPORT.md`` and its PNGs (``REPORT-final-loss.md``
and PNGs named ``*-final-loss.png`` under ``--rule final-loss``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any, Optional

import numpy as np

from avggrad import data, metrics, protocol
from benchmarks import figures
from benchmarks import run as run_lib

RMSPROP, ADAM = "rmsprop", "adam"


def fmt_iters(value: float) -> str:
  return "n.r." if math.isinf(value) else ("-" if math.isnan(value) else f"{value:.0f}")


def fmt_ratio(value: float) -> str:
  if math.isnan(value):
    return "-"
  return "n.r." if math.isinf(value) else f"{value:.2f}"


def summarize_task(grid: dict[str, Any], task: dict[str, Any],
                   records: list[dict[str, Any]], rule: str = "fastest") -> dict[str, Any]:
  """Per-optimizer figures of one task (only optimizers with every seed at some lr), each at
  the rate ``rule`` picks (:func:`avggrad.protocol.pick_lr`); ``rule_lrs`` holds both rules'
  rates, ``other`` the other rule's rate and median iterations, ``iteration_sweep`` the
  median iterations to target at every rate."""
  protocol.check_rule(rule)
  seeds = grid["seeds"]
  target = task.get("target")
  config = run_lib.task_config(grid, task)
  steps = config.steps
  window = metrics.default_window(steps)
  by_label: dict[str, dict[float, list[dict]]] = {}
  for r in records:
    if r["task"] == task["name"]:
      by_label.setdefault(r["optimizer"], {}).setdefault(r["lr"], []).append(r)
  out: dict[str, Any] = {"target": target, "steps": steps, "window": window, "rule": rule,
                         "optimizers": {}}
  for label in run_lib.task_optimizers(grid, task):
    sweep = by_label.get(label, {})
    complete = {lr: rs for lr, rs in sweep.items() if len(rs) >= len(seeds)}
    if not complete:
      continue
    complete = {lr: sorted(rs, key=lambda r: r["seed"]) for lr, rs in complete.items()}
    finals_by_lr = {lr: [run_lib.final_loss(r) for r in rs] for lr, rs in complete.items()}
    scores = {lr: float(np.median(v)) for lr, v in finals_by_lr.items()}
    iters_by_lr = {lr: [run_lib.record_iterations(r, target or None, steps) for r in rs]
                   for lr, rs in complete.items()}
    picks = {r: protocol.pick_lr(r, finals_by_lr, iters_by_lr, seeds=len(seeds))
             for r in protocol.RULES}
    best = picks[rule]
    other = next(r for r in protocol.RULES if r != rule)
    runs = complete[best]
    iters = iters_by_lr[best]
    finals = [run_lib.final_loss(r) for r in runs]
    sps = float(np.median([r["seconds_per_step"] for r in runs]))
    out["optimizers"][label] = {
        "spec": grid["optimizers"][label],
        "best_lr": best,
        "edge": best in (min(complete), max(complete)),
        "lrs": sorted(complete),
        "sweep": {lr: scores[lr] for lr in sorted(scores)},
        "iteration_sweep": {lr: metrics.median_iterations(iters_by_lr[lr])
                            for lr in sorted(iters_by_lr)},
        "rule_lrs": picks,
        "other": {"rule": other, "lr": picks[other],
                  "median_iterations": metrics.median_iterations(iters_by_lr[picks[other]])},
        "iterations": iters,
        "median_iterations": metrics.median_iterations(iters),
        "reached": sum(i is not None for i in iters),
        "final_losses": finals,
        "seconds_per_step": sps,
        "test_accuracy": float(np.median([r["test_accuracy"] for r in runs])),
        "runs": runs,
    }
  base_rms = out["optimizers"].get(RMSPROP, {}).get("median_iterations", math.nan)
  base_adam = out["optimizers"].get(ADAM, {}).get("median_iterations", math.nan)
  for s in out["optimizers"].values():
    s["ratio_rmsprop"] = protocol.ratio(s["median_iterations"], base_rms)
    s["ratio_adam"] = protocol.ratio(s["median_iterations"], base_adam)
  # A target the baselines set without beating the uniform predictor (a plateau they never
  # leave) makes "iterations to target" measure noise around that loss, not progress.
  # (A language model's classes are its vocabulary's words, not the dataset's labels.)
  classes = (config.vocab_size if config.model == "text-lm"
             else data.NUM_CLASSES[config.dataset])
  out["chance_loss"] = chance = math.log(classes)
  out["degenerate"] = bool(target) and target > DEGENERATE * chance
  for s in out["optimizers"].values():
    s["left_plateau"] = sum(final < LEFT_PLATEAU * chance for final in s["final_losses"])
  return out


# A target above this fraction of the uniform predictor's loss, log(classes), is degenerate.
DEGENERATE = 0.98
# A run left that plateau when its final loss is below this fraction of log(classes).
LEFT_PLATEAU = 0.9


SUMMARIES = [
    ("ratio_rmsprop", "median iterations to target, relative to same-core RMSProp"),
    ("ratio_adam", "median iterations to target, relative to Adam (same core)"),
    ("wall_ratio_rmsprop", "wall-clock to target, relative to same-core RMSProp"),
    ("wall_ratio_adam", "wall-clock to target, relative to Adam (same core)"),
]


def ratio_table(names: list[str], summaries: list[dict], labels: list[str],
                key: str) -> list[str]:
  """Markdown rows: one task per row, one optimizer per column, the ratio ``key``."""
  rows = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
  for name, s in zip(names, summaries):
    cells = [fmt_ratio(s["optimizers"][lab][key]) if lab in s["optimizers"] else ""
             for lab in labels]
    mark = " †" if s.get("degenerate") else ""
    rows.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
  return rows


def add_wall_clock(task: str, summary: dict, overheads: Optional[dict]) -> None:
  """Adds ``step_seconds``, ``wall_seconds`` and wall-clock ratios to each optimizer."""
  for label, s in summary["optimizers"].items():
    s["step_seconds"] = _step_seconds(task, label, s, overheads)
    s["wall_seconds"] = protocol.seconds_to_target(s["median_iterations"], s["step_seconds"])
  base_rms = summary["optimizers"].get(RMSPROP, {}).get("wall_seconds", math.nan)
  base_adam = summary["optimizers"].get(ADAM, {}).get("wall_seconds", math.nan)
  for s in summary["optimizers"].values():
    s["wall_ratio_rmsprop"] = protocol.ratio(s["wall_seconds"], base_rms)
    s["wall_ratio_adam"] = protocol.ratio(s["wall_seconds"], base_adam)


def _step_seconds(task: str, label: str, summary: dict, overheads: Optional[dict]) -> float:
  """Seconds per step for wall-clock figures: the interleaved overhead measurement when one
  exists for this task, else the runs' own median when they were trained one at a time
  (runs trained together in a sweep have no step time of their own: NaN)."""
  measured = (overheads or {}).get("tasks", {}).get(task, {}).get(label)
  if measured:
    return measured["seconds_per_step"]
  if any(r.get("batched_runs", 1) > 1 for r in summary.get("runs", [])):
    return math.nan
  return summary["seconds_per_step"]


def overhead_tables(names: list[str], labels: list[str], overheads: dict) -> list[str]:
  """Markdown tables of the time per step and the compiled memory of each optimizer, relative
  to same-core RMSProp and to Adam measured in the same process (``benchmarks.overheads``)."""
  out = []
  for base, title in ((RMSPROP, "same-core RMSProp"), (ADAM, "Adam (same core)")):
    out += [f"## Overheads: time per step (memory) relative to {title}", "",
            f"Measured by `python -m benchmarks.overheads` on {overheads['device']}: each "
            "optimizer's compiled training step, interleaved with the others in one process; "
            "memory is XLA's allocation for one step.", "",
            "| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in names:
      measured = overheads.get("tasks", {}).get(name, {})
      if base not in measured:
        continue
      ref = measured[base]
      cells = [f"{m['seconds_per_step'] / ref['seconds_per_step']:.2f} "
               f"({m['bytes'] / ref['bytes']:.2f})" if (m := measured.get(lab)) else ""
               for lab in labels]
      out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
  return out


def plot_task(task: dict[str, Any], summary: dict[str, Any], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  styles = ["-", "--", ":", "-."]
  for i, (label, s) in enumerate(summary["optimizers"].items()):
    curves = [metrics.smooth(r["losses"], summary["window"]) for r in s["runs"]]
    length = min(len(c) for c in curves)
    stack = np.stack([c[:length] for c in curves])
    x = np.arange(length)
    (line,) = ax.plot(x, np.median(stack, 0), styles[(i // 10) % 4],
                      label=f"{label} ({s['best_lr']:g})", linewidth=1.2)
    ax.fill_between(x, stack.min(0), stack.max(0), color=line.get_color(), alpha=0.15)
  if summary["target"]:
    ax.axhline(summary["target"], color="black", linestyle="--", linewidth=0.8, label="target")
  ax.set_yscale("log")
  ax.set_xlabel("iteration")
  ax.set_ylabel(f"training loss (minibatch, centered mean of {summary['window']})")
  ax.set_title(task["name"], fontsize=10)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  figures.save_png(fig, path)
  plt.close(fig)


def plot_ratios(names: list[str], summaries: list[dict], labels: list[str], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
  width = 0.8 / max(1, len(labels))
  for j, label in enumerate(labels):
    values = []
    for s in summaries:
      r = s["optimizers"].get(label, {}).get("ratio_rmsprop", math.nan)
      values.append(np.nan if math.isnan(r) else min(r, 4.0))
    ax.bar(np.arange(len(names)) + j * width, values, width, label=label)
  ax.axhline(1.0, color="black", linewidth=0.8)
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
  ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
  ax.set_ylabel("iterations to target / same-core RMSProp\n(median; 4 = not reached)")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  figures.save_png(fig, path)
  plt.close(fig)


def load(grid_path: str, results_dir: Optional[str] = None,
         overheads_path: Optional[str] = None
         ) -> tuple[dict[str, Any], str, list[dict[str, Any]], Optional[dict]]:
  """A grid, its results folder, its run records and its ``overheads.json`` (or ``None``)."""
  grid = run_lib.load_grid(grid_path)
  out_file = run_lib.results_path(grid, results_dir)
  folder = os.path.dirname(out_file)
  overheads = None
  overheads_path = overheads_path or os.path.join(folder, "overheads.json")
  if os.path.exists(overheads_path):
    with open(overheads_path) as f:
      overheads = json.load(f)
  return grid, folder, run_lib.read_results(out_file), overheads


def summarize_tasks(grid: dict[str, Any], records: list[dict[str, Any]],
                    overheads: Optional[dict], rule: str = "fastest"
                    ) -> list[tuple[dict[str, Any], dict[str, Any]]]:
  """(task, summary with wall-clock figures) for every task that has complete results, each
  optimizer at the rate ``rule`` picks."""
  out = []
  for task in grid["tasks"]:
    summary = summarize_task(grid, task, records, rule)
    if summary["optimizers"]:
      add_wall_clock(task["name"], summary, overheads)
      out.append((task, summary))
  return out


def header_lines(grid: dict[str, Any], grid_path: str, runs: int,
                 rule: str = "fastest") -> list[str]:
  """The report's title, provenance, metric and rate rule."""
  command = f"python -m benchmarks.report {os.path.relpath(grid_path)}" + (
      "" if rule == "fastest" else f" --rule {rule}")
  lines = [f"# Benchmark report: `{grid['name']}`", ""]
  if grid.get("description"):
    lines += [grid["description"], ""]
  return lines + [
      f"Generated by `{command}` from {runs} runs. Seeds: {grid['seeds']}; learning-rate ladder "
      f"{', '.join(f'{x:g}' for x in grid['lrs'])} (extended per optimizer while its best "
      "(or AlgoPerf's fastest rate) sits at an edge); baselines: "
      + ", ".join(grid["baselines"]) + ".",
      "",
      "Metric: iterations until the centered moving average of the minibatch training loss "
      "first reaches the task's target (fixed from the best baseline before the other "
      "optimizers ran, recorded in the grid file or beside the runs); *n.r.* = not reached "
      "within the budget (counted as infinite in medians). Ratios < 1 mean fewer iterations "
      "than the baseline.",
      "",
      f"**{protocol.RULE_TEXT[rule][0].upper()}{protocol.RULE_TEXT[rule][1:]}**; ties go to "
      "the smaller rate. Each task's table gives the other rule's rate and median "
      "iterations beside it (final loss: the mean over the last 10% of steps).",
      "",
  ]


def summary_lines(names: list[str], summaries: list[dict], labels: list[str],
                  overheads: Optional[dict], folder: str, suffix: str = "") -> list[str]:
  """The cross-task summaries: ratio tables, the wall-clock source, overheads, the figure
  (``ratios<suffix>.png``)."""
  lines = []
  for key, title in SUMMARIES:
    lines += [f"## Summary: {title}", ""] + ratio_table(names, summaries, labels, key) + [""]
  if any(s["degenerate"] for s in summaries):
    lines += ["† Degenerate target: the best baseline never beat the uniform predictor "
              f"(target > {DEGENERATE:.0%} of log(classes)), so iterations to target "
              "measure noise around a plateau, not progress. Compare the final losses and "
              "the number of seeds that left the plateau in the task's section instead.", ""]
  timing = ("the per-step times of `benchmarks/overheads.py` (" + overheads["device"] + ")"
            if overheads else "the runs' own per-step times")
  lines += [f"Wall-clock to target = median iterations x time per step, from {timing}.", ""]
  if overheads:
    lines += overhead_tables(names, labels, overheads)
  plot_ratios(names, summaries, labels, os.path.join(folder, f"ratios{suffix}.png"))
  return lines + ["", f"![ratios](ratios{suffix}.png)", ""]


def _optimizer_row(label: str, s: dict[str, Any]) -> str:
  finite = [i for i in s["iterations"] if i is not None]
  spread = (f" [{min(finite)}, {max(finite)}]" if finite else "")
  if len(finite) < len(s["iterations"]) and finite:
    spread = f" [{min(finite)}, n.r.]"
  sec, wall = s["step_seconds"], s["wall_seconds"]
  return (f"| {label} | {s['best_lr']:g}{'*' if s['edge'] else ''} | "
          f"{fmt_iters(s['median_iterations'])}{spread} | {s['reached']}/{len(s['iterations'])}"
          f" | {fmt_ratio(s['ratio_rmsprop'])} | {fmt_ratio(s['ratio_adam'])} | "
          f"{np.median(s['final_losses']):.4f} [{min(s['final_losses']):.4f}, "
          f"{max(s['final_losses']):.4f}] | {s['test_accuracy']:.3f} | {1e3 * sec:.2f} | "
          f"{'n.r.' if math.isinf(wall) else f'{wall:.1f}'} | "
          f"{_other_cell(s)} |")


def _other_cell(s: dict[str, Any]) -> str:
  """The other rule's rate and median iterations ("same" when it picks the same rate)."""
  other = s["other"]
  if other["lr"] == s["best_lr"]:
    return "same"
  return f"{other['lr']:g}: {fmt_iters(other['median_iterations'])}"


def task_lines(grid: dict[str, Any], name: str, summary: dict[str, Any],
               folder: str, suffix: str = "") -> list[str]:
  """One task's section: setup, per-optimizer figures (at the rate of ``summary["rule"]``,
  the other rule's beside them), the learning-rate sweeps (final loss, iterations to target),
  its plot (``<task><suffix>.png``)."""
  rule = summary.get("rule", "fastest")
  other = next(r for r in protocol.RULES if r != rule)
  task = next(t for t in grid["tasks"] if t["name"] == name)
  config = run_lib.task_config(grid, task)
  lines = [f"## {name}", "",
           f"{config.dataset}, {config.model} depth {config.depth} width {config.width}"
           + (f" channels {config.channels}" if config.model == "cnn" else "")
           + f", {config.activation}, {config.init}, batch {config.batch_size}, "
           f"{config.steps} steps. Target {summary['target']} "
           f"({task.get('target_source', 'given')})."]
  if summary["degenerate"]:
    lines += ["", f"**Degenerate target**: {summary['target']} is within "
              f"{1 - DEGENERATE:.0%} of the uniform predictor's loss "
              f"{summary['chance_loss']:.4f}; the baselines stayed on that plateau. Seeds "
              f"whose final loss fell below {LEFT_PLATEAU:g} x that loss (left the plateau), at "
              "each optimizer's best learning rate: "
              + "; ".join(f"{label} {s['left_plateau']}/{len(s['runs'])}"
                          for label, s in summary["optimizers"].items()) + "."]
  lines += ["",
            f"| optimizer | lr ({rule} rule) | iterations to target (median [min, max]) | "
            "reached | vs RMSProp | vs Adam | final loss (median [min, max]) | test acc. | "
            f"ms/step | wall-clock to target (s) | {other} rule: lr, iterations |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
  lines += [_optimizer_row(label, s) for label, s in summary["optimizers"].items()]
  lines += ["", "Learning-rate sweep (median final loss over seeds; inf = diverged):", ""]
  all_lrs = sorted({lr for s in summary["optimizers"].values() for lr in s["lrs"]})
  lines.append("| optimizer | " + " | ".join(f"{lr:g}" for lr in all_lrs) + " |")
  lines.append("|---|" + "---|" * len(all_lrs))
  for label, s in summary["optimizers"].items():
    cells = [f"{s['sweep'][lr]:.4f}" if lr in s["sweep"] else "" for lr in all_lrs]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  if summary["target"]:
    lines += ["", "Median iterations to target per rate (n.r. = the median seed missed):", "",
              "| optimizer | " + " | ".join(f"{lr:g}" for lr in all_lrs) + " |",
              "|---|" + "---|" * len(all_lrs)]
    for label, s in summary["optimizers"].items():
      cells = [fmt_iters(s["iteration_sweep"][lr]) if lr in s["iteration_sweep"] else ""
               for lr in all_lrs]
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
  image = name.replace("/", "_") + suffix + ".png"
  plot_task(task, summary, os.path.join(folder, image))
  return lines + ["", f"![{name}]({image})", ""]


def build_report(grid_path: str, results_dir: Optional[str] = None,
                 overheads_path: Optional[str] = None, rule: str = "fastest") -> str:
  """Writes ``REPORT.md`` (``REPORT-<rule>.md`` for a rule other than ``fastest``) and its
  figures into the grid's results folder; returns its path."""
  protocol.check_rule(rule)
  suffix = "" if rule == "fastest" else f"-{rule}"
  grid, folder, records, overheads = load(grid_path, results_dir, overheads_path)
  lines = header_lines(grid, grid_path, len(records), rule)
  done = summarize_tasks(grid, records, overheads, rule)
  names = [task["name"] for task, _ in done]
  summaries = [summary for _, summary in done]
  labels = [lab for lab in grid["optimizers"] if any(lab in s["optimizers"] for s in summaries)]
  if summaries:
    lines += summary_lines(names, summaries, labels, overheads, folder, suffix)
  else:
    lines.append("No complete results yet.")
  for name, summary in zip(names, summaries):
    lines += task_lines(grid, name, summary, folder, suffix)
  lines.append("`*` the rule's learning rate at the edge of the ladder run for that optimizer.")
  report = os.path.join(folder, f"REPORT{suffix}.md")
  with open(report, "w") as f:
    f.write("\n".join(lines) + "\n")
  return report


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid")
  parser.add_argument("--results-dir", default=None)
  parser.add_argument("--overheads", default=None,
                      help="overheads.json from benchmarks.overheads (default: next to the "
                           "results), used for wall-clock to target")
  parser.add_argument("--rule", choices=protocol.RULES, default="fastest",
                      help="the rate rule: fastest (AlgoPerf: fewest median iterations to the "
                           "target) or final-loss (lowest median final loss)")
  args = parser.parse_args(argv)
  print(build_report(args.grid, args.results_dir, args.overheads, args.rule))


if __name__ == "__main__":
  main()
