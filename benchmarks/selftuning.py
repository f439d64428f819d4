"""The self-tuning track (issue 24): one configuration per optimizer on every task, AlgoPerf's
rules, scored on wall-clock to target with performance profiles.

Three reports, each from one command:

* ``calibration``: the one cross-task calibration, on the development tasks only
  (``grids/selftuning_calibration.json``): per optimizer, each candidate configuration's
  iterations to target per task and their geometric mean (a miss is infinite); the rule picks
  the lowest (ties: the default, listed first).
* ``track``: ``grids/selftuning.json``, development and held-out tasks apart. Per task, each
  entry's median iterations to target over the seeds and its wall-clock (median iterations x
  the interleaved step time of ``benchmarks/overheads.py``); the performance profile over
  tau in [1, 4] (each task's fastest *self-tuning* entry is the reference; a miss counts as
  infinite) and its area, normalised to 1, as AlgoPerf scores. Beside it, each entry against
  the tuned best peer of the fine grid (the peers grid on its tasks; ``muon-split`` joins
  from ``grids/muon_split.json``; on the two variants, which no other grid has, the track's
  own tuned ladders, its ``tuned_peers``): the fastest in wall-clock of Adam, NAdam, schedule-free
  AdamW and Muon (``muon-split`` where it ran), each at the rate a rate rule picks, under both
  rules (AlgoPerf's ``fastest`` first, then ``final-loss``), re-timed in the same process as
  the entries.
* ``robustness``: ``grids/selftuning_robustness.json``: median iterations to target at each
  initial scale (auto-adam) or rate (Adam, schedule-free AdamW) over three decades.

Usage::

  python -m benchmarks.selftuning calibration
  python -m benchmarks.selftuning track [--out benchmarks/results/selftuning]
  python -m benchmarks.selftuning robustness

References:
  G. E. Dahl et al., Benchmarking Neural Network Training Algorithms (AlgoPerf),
  arXiv:2306.07179 (2023); E. D. Dolan and J. J. More, Mathematical Programming 91 (2002).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from avggrad import metrics, protocol
from benchmarks import figures, headline, performance_profile, report
from benchmarks import run as run_lib

HERE = os.path.dirname(os.path.abspath(__file__))
GRIDS = {name: os.path.join(HERE, "grids", f"{file}.json") for name, file in
         (("calibration", "selftuning_calibration"), ("track", "selftuning"),
          ("robustness", "selftuning_robustness"), ("fine", "fine"), ("peers", "peers"),
          ("muon-split", "muon_split"))}
TAU_MAX = 4.0


def geometric_mean(values: Sequence[float]) -> float:
  """Of positive values; infinite when one is (a miss).

  Example:
    >>> round(geometric_mean([100.0, 400.0]), 9), geometric_mean([100.0, math.inf])
    (200.0, inf)
  """
  if any(not math.isfinite(v) for v in values):
    return math.inf
  return float(np.exp(np.mean(np.log(values))))


def profile_area(times: dict[str, list[float]], tau_max: float = TAU_MAX,
                 points: int = 3001) -> dict[str, float]:
  """AlgoPerf's score: the area under each entry's performance profile over tau in
  [1, tau_max], divided by tau_max - 1 (1: fastest on every task; 0: never within tau_max).

  Example (on one task, "a" is fastest; "b" takes 2x, so it scores from tau = 2 on):
    >>> area = profile_area({"a": [1.0], "b": [2.0]})
    >>> round(area["a"], 3), round(area["b"], 3)
    (1.0, 0.667)
  """
  taus = np.linspace(1.0, tau_max, points)
  rho = performance_profile.profile(times, list(taus))
  return {k: float(np.trapezoid(v, taus) / (tau_max - 1.0)) for k, v in rho.items()}


def _load(grid_path: str, results_dir: Optional[str] = None
          ) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]], list[dict]]:
  """A grid, its (task, summary) pairs and its run records, read once."""
  grid, _, records, overheads = report.load(grid_path, results_dir)
  return grid, report.summarize_tasks(grid, records, overheads), records


def _iterations(record: dict[str, Any], target: Optional[float], steps: int) -> float:
  """A run's iterations to ``target`` (infinite for a miss)."""
  it = run_lib.record_iterations(record, target, steps)
  return math.inf if it is None else float(it)


def _fmt(value: float, digits: int = 0) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  return "miss" if math.isinf(value) else f"{value:.{digits}f}"


def calibration(grid_path: str = GRIDS["calibration"], results_dir: Optional[str] = None,
                track_path: str = GRIDS["track"]) -> tuple[str, dict[str, tuple[str, float]]]:
  """The calibration table (markdown) and each optimizer's pick ``{family: (label@lr, gm)}``.

  A configuration is a label at one rate; the family of ``auto-adam-k2`` is ``auto-adam``.
  Ties (all missed, say) go to the default: the rate the track grid gives the family.
  """
  track_grid = run_lib.load_grid(track_path)
  defaults = {label: rates[0] for label, rates in track_grid["tasks"][0]["lrs"].items()}
  grid, summaries, records = _load(grid_path, results_dir)
  candidates: dict[str, dict[str, list[float]]] = {}
  for task, _ in summaries:
    steps = run_lib.task_config(grid, task).steps
    for r in records:
      if r["task"] == task["name"]:
        family = r["optimizer"].split("-k")[0]
        candidates.setdefault(family, {}).setdefault(f"{r['optimizer']}@{r['lr']:g}", []).append(
            _iterations(r, task.get("target"), steps))
  tasks = [t["name"] for t, _ in summaries]
  lines = ["| optimizer | configuration | " + " | ".join(tasks) + " | geometric mean |",
           "|---|---|" + "---|" * (len(tasks) + 1)]
  picks: dict[str, tuple[str, float]] = {}
  for family, configs in candidates.items():
    for name, iters in configs.items():
      gm = geometric_mean(iters) if len(iters) == len(tasks) else math.nan
      lines.append(f"| {family} | {name} | " + " | ".join(_fmt(i) for i in iters)
                   + f" | {_fmt(gm)} |")
      default = name == f"{family}@{defaults.get(family, math.nan):g}"
      if not math.isnan(gm) and (family not in picks or gm < picks[family][1]
                                 or (gm == picks[family][1] and default)):
        picks[family] = (name, gm)
  lines += ["", "Picked (lowest geometric mean; ties: the default rate): "
            + ", ".join(f"{k}: {v[0]}" for k, v in picks.items())]
  return "\n".join(lines), picks


# The track's entry whose step is the tuned peer's (the step time does not depend on the rate).
SAME_STEP = {"adam": "adam-1e-3", "nadam": "nadam-1e-3",
             "schedule-free-adamw": "schedule-free-adamw"}


@functools.cache
def _tuned_summaries(rule: str = "fastest") -> dict[str, dict[str, Any]]:
  """The fine grid's task summaries (and the peers grid's, for its tasks), by task name, each
  optimizer at the rate ``rule`` picks, ``muon-split`` merged in where it ran
  (:func:`benchmarks.headline.merge`); read once per rule."""
  found: dict[str, dict[str, Any]] = {}
  for grid in (GRIDS["peers"], GRIDS["fine"]):  # the fine grid's win where both have a task
    found |= {task["name"]: summary for _, task, summary in headline.summaries(
        grid, rule=rule, extra=[GRIDS["muon-split"]])}
  return found


def _step_here(peer: str, tuned: dict[str, Any], summary: dict[str, Any]) -> float:
  """A tuned peer's step time in the track's process: its own entry's (:data:`SAME_STEP`), or
  for a peer without one (Muon), its tuned step time scaled by Adam's step here over Adam's
  there."""
  if peer in SAME_STEP:
    return summary["optimizers"].get(SAME_STEP[peer], {}).get("step_seconds", math.nan)
  adam_here = summary["optimizers"].get(SAME_STEP["adam"], {}).get("step_seconds", math.nan)
  adam_there = tuned["optimizers"].get("adam", {}).get("step_seconds", math.nan)
  return tuned["optimizers"][peer]["step_seconds"] * adam_here / adam_there


def tuned_best(task_name: str, summary: dict[str, Any], rule: str = "fastest",
               own: Optional[dict[str, Any]] = None,
               tuned_peers: Optional[dict[str, str]] = None) -> Optional[dict[str, Any]]:
  """The tuned best peer on a task: ``{"label", "iterations", "wall_seconds"}``: the fastest
  in wall-clock of Adam, NAdam, schedule-free AdamW and Muon (``muon-split`` where it ran;
  :data:`benchmarks.performance_profile.PEERS`), each at the rate ``rule`` picks.

  From the fine (or peers) grid where it has the task (by that grid's figures, its
  wall-clock re-timed here: its median iterations x the step time of :func:`_step_here`,
  ``summary`` holding the track's entries); else from the track's own tuned ladders
  (``tuned_peers``, peer -> label, in ``own``: the track's summary of the task under
  ``rule``, timed with its entries); ``None`` if neither has it."""
  tuned = _tuned_summaries(rule).get(task_name)
  if tuned is None:
    if not own or not tuned_peers:
      return None
    opts = own["optimizers"]
    found = [label for label in tuned_peers.values()
             if label in opts and not math.isnan(opts[label].get("wall_seconds", math.nan))]
    if not found:
      return None
    label = min(found, key=lambda p: (opts[p]["wall_seconds"], opts[p]["median_iterations"]))
    return {"label": label, "iterations": opts[label]["median_iterations"],
            "wall_seconds": opts[label]["wall_seconds"]}
  opts = tuned["optimizers"]
  found = [p for p in (performance_profile.resolve(tuned, p) for p in performance_profile.PEERS)
           if p in opts and not math.isnan(opts[p].get("wall_seconds", math.nan))]
  if not found:
    return None
  peer = performance_profile.best_peer(tuned, found)
  iters = opts[peer]["median_iterations"]
  return {"label": peer, "iterations": iters,
          "wall_seconds": protocol.seconds_to_target(iters, _step_here(peer, tuned, summary))}


def track(grid_path: str = GRIDS["track"], results_dir: Optional[str] = None,
          out: Optional[str] = None) -> str:
  """The track's tables (markdown), development and held-out tasks apart; writes the profile
  figure into ``out``."""
  grid, _, records, overheads = report.load(grid_path, results_dir)
  by_rule = {rule: report.summarize_tasks(grid, records, overheads, rule)
             for rule in protocol.RULES}
  summaries = by_rule["fastest"]
  # The tuned peers' own ladders (on tasks of no other grid) are references, not entries.
  tuned_peers = grid.get("tuned_peers", {})
  entries = [k for k in grid["optimizers"]
             if k not in grid["baselines"] and k not in tuned_peers.values()]
  own = {rule: {t["name"]: s for t, s in pairs} for rule, pairs in by_rule.items()}
  md: list[str] = []
  profiles: dict[str, dict[str, list[float]]] = {}
  for split in ("development", "held-out"):
    rows = [(t, s) for t, s in summaries if t.get("split", "").startswith(split)]
    complete = [(t, s) for t, s in rows if all(
        k in s["optimizers"] and not math.isnan(s["optimizers"][k].get("wall_seconds", math.nan))
        for k in entries)]
    left = [t["name"] for t, _ in rows if (t, _) not in complete]
    if not complete:
      md += [f"### {split} tasks", "", "no task with every entry run and timed yet"
             + (f" ({', '.join(left)})" if left else ""), ""]
      continue
    wall = {k: [s["optimizers"][k]["wall_seconds"] for _, s in complete] for k in entries}
    iters = {k: [s["optimizers"][k]["median_iterations"] for _, s in complete]
             for k in entries}
    area_wall, area_iters = profile_area(wall), profile_area(iters)
    md += [f"### {split.capitalize()} tasks ({len(complete)}): "
           + ", ".join(t["name"] for t, _ in complete), ""]
    head = "| entry | area (wall-clock) | area (iterations) | reached | " + " | ".join(
        t["name"] for t, _ in complete) + " |"
    md += ["Median iterations to target (wall-clock in seconds); reached = seeds that reached "
           "the target, of all; the last rows are the tuned best peer (the fine or peers grid's; "
           "on the variants, this grid's tuned ladders) under each "
           "rate rule (fastest: AlgoPerf's, each peer at its fewest median iterations; final "
           "loss: each at its lowest median final loss):", "", head,
           "|---|---|---|---|" + "---|" * len(complete)]
    for k in sorted(entries, key=lambda k: -area_wall[k]):
      reached = sum(s["optimizers"][k]["reached"] for _, s in complete)
      seeds = sum(len(s["optimizers"][k]["iterations"]) for _, s in complete)
      cells = [f"{_fmt(s['optimizers'][k]['median_iterations'])} "
               f"({_fmt(s['optimizers'][k]['wall_seconds'], 2)})" for _, s in complete]
      md.append(f"| {k} | {area_wall[k]:.3f} | {area_iters[k]:.3f} | {reached}/{seeds} | "
                + " | ".join(cells) + " |")
    best = {rule: [tuned_best(t["name"], s, rule, own[rule].get(t["name"]), tuned_peers)
                   for t, s in complete]
            for rule in protocol.RULES}
    for rule in protocol.RULES:
      md.append(f"| tuned best peer ({rule} rule) | | | | " + " | ".join(
          f"{b['label']}: {_fmt(b['iterations'])} ({_fmt(b['wall_seconds'], 2)})" if b
          else "n/a" for b in best[rule]) + " |")
    for rule in protocol.RULES:
      vs = {k: [s["optimizers"][k]["wall_seconds"] / b["wall_seconds"]
                for (_, s), b in zip(complete, best[rule]) if b and b["wall_seconds"] > 0]
            for k in entries}
      md += ["", f"Wall-clock against the tuned best peer ({rule} rule), median over these "
             "tasks: " + ", ".join(f"{k} {np.median(v):.2f}x" for k, v in vs.items() if v)]
    if left:
      md += ["", f"Not yet complete: {', '.join(left)}."]
    md.append("")
    profiles[f"{split}: wall-clock to target"] = performance_profile.profile(
        wall, list(np.linspace(1, TAU_MAX, 301)))
  text = "\n".join(md)
  if out and profiles:
    os.makedirs(out, exist_ok=True)
    plot(profiles, list(np.linspace(1, TAU_MAX, 301)), os.path.join(out, "profile.png"))
    with open(os.path.join(out, "track.md"), "w") as f:
      f.write(text + "\n")
  return text


def plot(profiles: dict[str, dict[str, list[float]]], taus: Sequence[float], path: str) -> None:
  """Step curves of rho(tau), one panel per split; ``auto-adam`` drawn thick, each entry in
  its own colour."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, len(profiles), figsize=(6.5 * len(profiles), 4.5), sharey=True,
                           squeeze=False)
  colours = plt.get_cmap("tab20").colors
  for ax, (title, rho) in zip(axes[0], profiles.items()):
    for i, (entry, values) in enumerate(rho.items()):
      mine = entry.startswith("auto")
      ax.step(taus, values, where="post", color="black" if mine else colours[i % 20],
              linewidth=2.5 if mine else 1.2, linestyle="-" if mine else "--", label=entry)
    ax.set_xlabel("tau (wall-clock relative to the fastest self-tuning entry on the task)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
  axes[0][0].set_ylabel("fraction of tasks within tau")
  axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
  fig.tight_layout()
  figures.save_png(fig, path)
  plt.close(fig)


def robustness(grid_path: str = GRIDS["robustness"], results_dir: Optional[str] = None) -> str:
  """Median iterations to target at each initial scale (rate), per optimizer and task."""
  grid, summaries, records = _load(grid_path, results_dir)
  lines = []
  for task, summary in summaries:
    lines += [f"{task['name']} (target {task.get('target')}):", "",
              "| optimizer | " + " | ".join(f"{lr:g}" for lr in task["scales"]) + " |",
              "|---|" + "---|" * len(task["scales"])]
    steps = run_lib.task_config(grid, task).steps
    for label in summary["optimizers"]:
      cells = []
      for lr in task["scales"]:
        iters = [_iterations(r, task["target"], steps) for r in records
                 if r["task"] == task["name"] and r["optimizer"] == label
                 and math.isclose(r["lr"], lr)]
        cells.append(_fmt(metrics.median_iterations(
            [None if math.isinf(i) else int(i) for i in iters])) if iters else "")
      lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("report", choices=("calibration", "track", "robustness"))
  parser.add_argument("--grid", default=None)
  parser.add_argument("--out", default=None, help="track: folder for profile.png, track.md")
  args = parser.parse_args(argv)
  grid = args.grid or GRIDS[args.report]
  if args.report == "calibration":
    print(calibration(grid)[0])
  elif args.report == "track":
    print(track(grid, out=args.out or os.path.dirname(
        run_lib.results_path(run_lib.load_grid(grid)))))
  else:
    print(robustness(grid))


if __name__ == "__main__":
  main()
