"""Performance profiles and the best-peer table: time to target against the best free optimizer.

For every selected task of a grid, each optimizer's time to the task's target is its median
iterations to target at the learning rate of one rate rule (as in ``benchmarks.report``:
``fastest``, AlgoPerf's, or ``final-loss``) times its interleaved step time
(``overheads.json``); a run that diverged or missed the target counts as infinite time. The
*best peer* of a task is the fastest of the peers (by default Adam, NAdam, schedule-free AdamW
and Muon: what a user would pick instead of avggrad), each at the rate the rule picks; Muon is
``muon-split`` (Muon as usually set up) on a task where that ran, plain ``muon`` elsewhere.
The optimizers of the grids given by ``--with`` (default: ``grids/muon_split.json``) join the
tasks of the same name and target, their step times scaled to this grid's
(:func:`benchmarks.headline.merge`).

Outputs, from one command, under each rate rule (``--rule``; default both, fastest first):

* a per-task table: each optimizer's iterations and wall-clock relative to the task's best
  peer (the peer named in the row);
* the performance profile (Dolan and More, 2002; the scoring of MLCommons' AlgoPerf): for
  each optimizer, the fraction of tasks it reaches within tau times the fastest time of any
  profiled optimizer on that task, at a few tau, as a table and as a figure (wall-clock and
  iterations side by side).

A task enters only if every profiled optimizer has complete results and a step time on it; the
tasks left out are named with what they lack. Usage::

  python -m benchmarks.performance_profile benchmarks/grids/fine.json
      [--min-depth 8] [--peers adam,nadam,...] [--optimizers ...] [--out FOLDER]
      [--rule fastest] [--with benchmarks/grids/muon_split.json]

References:
  E. D. Dolan and J. J. More, Benchmarking optimization software with performance profiles,
  Mathematical Programming 91 (2002). G. E. Dahl et al., Benchmarking Neural Network Training
  Algorithms (AlgoPerf), arXiv:2306.07179 (2023).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Optional, Sequence

from avggrad import protocol
from benchmarks import figures, headline, report
from benchmarks import run as run_lib

PEERS = ("adam", "nadam", "schedule-free-adamw", "muon")
# A peer's stand-in where it ran: Muon as usually set up (hidden matrices only).
STAND_INS = {"muon": "muon-split"}
EXTRA_GRIDS = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "grids",
                            "muon_split.json"),)


def resolve(summary: dict[str, Any], label: str) -> str:
  """``label``'s stand-in (:data:`STAND_INS`) where the task has it, else ``label``."""
  stand_in = STAND_INS.get(label)
  return stand_in if stand_in in summary["optimizers"] else label
AVGGRAD = ("avg-adam-q", "avg-rmsprop-momentum")
TAUS = (1.0, 1.25, 1.5, 2.0, 4.0)


def select_tasks(grid_path: str, labels: Sequence[str], min_depth: int = 8,
                 results_dir: Optional[str] = None, rule: str = "fastest",
                 extra: Sequence[str] = ()
                 ) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
  """The (task name, summary) pairs where every label (or its stand-in, :func:`resolve`) has
  a result and a step time, and a line for each deep task left out, naming what it lacks."""
  kept, left = [], []
  for _, task, summary in headline.summaries(grid_path, results_dir, rule=rule, extra=extra):
    if task.get("depth", 0) < min_depth:
      continue
    found = summary["optimizers"]
    missing = [k for k in labels if resolve(summary, k) not in found]
    untimed = [k for k in labels if k not in missing
               and math.isnan(found[resolve(summary, k)]["step_seconds"])]
    if missing or untimed:
      left.append(f"{task['name']}: " + "; ".join(
          part for part in (f"not run: {', '.join(missing)}" if missing else "",
                            f"no step time: {', '.join(untimed)}" if untimed else "")
          if part))
      continue
    if summary["degenerate"]:
      left.append(f"{task['name']}: degenerate target")
      continue
    kept.append((task["name"], summary))
  return kept, left


def best_peer(summary: dict[str, Any], peers: Sequence[str]) -> str:
  """The peer with the shortest wall-clock to target (fewest iterations on a tie), each peer
  by its stand-in where the task has it (:func:`resolve`); the label found is returned."""
  opts = summary["optimizers"]
  found = [resolve(summary, p) for p in peers if resolve(summary, p) in opts]
  return min(found, key=lambda p: (opts[p]["wall_seconds"], opts[p]["median_iterations"]))


def profile(times: dict[str, list[float]], taus: Sequence[float]) -> dict[str, list[float]]:
  """rho_o(tau): the fraction of tasks where optimizer o is within tau of the fastest.

  ``times[o][t]`` is optimizer o's time on task t (``inf`` for a miss). A task that nobody
  solved counts as a miss for everyone.

  Example:
    >>> profile({"a": [1.0, 4.0], "b": [2.0, 2.0]}, [1.0, 1.5, 2.0])
    {'a': [0.5, 0.5, 1.0], 'b': [0.5, 0.5, 1.0]}
  """
  n = len(next(iter(times.values())))
  best = [min(t[i] for t in times.values()) for i in range(n)]
  return {o: [sum(math.isfinite(best[i]) and t[i] <= tau * best[i] for i in range(n)) / n
              for tau in taus]
          for o, t in times.items()}


def best_peer_table(tasks: list[tuple[str, dict[str, Any]]], labels: Sequence[str],
                    peers: Sequence[str]) -> str:
  """Markdown: per task, each optimizer's iterations (wall-clock) relative to the best peer."""
  lines = ["| task | best peer: iterations, seconds | " + " | ".join(labels) + " |",
           "|---|---|" + "---|" * len(labels)]
  for name, summary in tasks:
    peer = best_peer(summary, peers)
    base = summary["optimizers"][peer]
    head = (f"{peer}: {report.fmt_iters(base['median_iterations'])}, "
            f"{base['wall_seconds']:.2f} s")
    cells = [headline.cell(summary, resolve(summary, k), peer)
             + (f" [{resolve(summary, k)}]" if resolve(summary, k) != k else "")
             for k in labels]
    lines.append(f"| {name} | {head} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def profile_table(rho: dict[str, list[float]], taus: Sequence[float]) -> str:
  lines = ["| optimizer | " + " | ".join(f"tau = {t:g}" for t in taus) + " |",
           "|---|" + "---|" * len(taus)]
  for o, values in sorted(rho.items(), key=lambda kv: [-v for v in kv[1]]):
    lines.append(f"| {o} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
  return "\n".join(lines)


def plot(profiles: dict[str, dict[str, list[float]]], taus: Sequence[float], path: str) -> None:
  """Step curves of rho(tau), one panel per measure (wall-clock, iterations)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4), sharey=True,
                           squeeze=False)
  axes = axes[0]
  for ax, (title, rho) in zip(axes, profiles.items()):
    for o, values in rho.items():
      style = "-" if o.startswith(("avg-", "sf-avg")) else "--"
      ax.step(taus, values, where="post", linestyle=style, label=o)
    ax.set_xscale("log")
    ax.set_xlabel("tau (time relative to the fastest on the task)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
  axes[0].set_ylabel("fraction of tasks within tau")
  axes[-1].legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  figures.save_png(fig, path)
  plt.close(fig)


def build(grid_path: str, labels: Sequence[str], peers: Sequence[str], min_depth: int = 8,
          out: Optional[str] = None, results_dir: Optional[str] = None,
          rules: Sequence[str] = protocol.RULES, extra: Sequence[str] = ()) -> str:
  """The markdown (tables and the list of tasks left out) under each rate rule of ``rules``,
  each section headed by the rule; writes ``profile.md`` and, for the first rule,
  ``profile.png`` into ``out``."""
  sections, figure = [], None
  for rule in rules:
    text, curves = _build_rule(grid_path, labels, peers, min_depth, results_dir, rule, extra)
    sections.append(f"### {protocol.RULE_TEXT[rule][0].upper()}{protocol.RULE_TEXT[rule][1:]}"
                    f"\n\n{text}")
    figure = figure or curves
  text = "\n\n".join(sections)
  if out:
    os.makedirs(out, exist_ok=True)
    plot(*figure, os.path.join(out, "profile.png"))
    with open(os.path.join(out, "profile.md"), "w") as f:
      f.write(text + "\n")
  return text


def _build_rule(grid_path: str, labels: Sequence[str], peers: Sequence[str], min_depth: int,
                results_dir: Optional[str], rule: str, extra: Sequence[str]
                ) -> tuple[str, tuple[dict[str, dict[str, list[float]]], list[float]]]:
  """One rule's markdown and its profile curves (for :func:`plot`)."""
  labels = list(dict.fromkeys([*peers, *labels]))
  tasks, left = select_tasks(grid_path, labels, min_depth, results_dir, rule, extra)
  if not tasks:
    raise ValueError("no task has results for every optimizer: " + "; ".join(left))
  wall = {k: [s["optimizers"][resolve(s, k)]["wall_seconds"] for _, s in tasks] for k in labels}
  iters = {k: [s["optimizers"][resolve(s, k)]["median_iterations"] for _, s in tasks]
           for k in labels}
  fine_taus = [1.0 + 0.01 * i for i in range(0, 901)]
  stand_ins = [f"{k} is {v} on the tasks where that ran" for k, v in STAND_INS.items()
               if k in labels]
  md = [f"Tasks ({len(tasks)}): {', '.join(name for name, _ in tasks)}.", "",
        "Iterations to target relative to the task's best peer (wall-clock in brackets; "
        "best peer = fastest in wall-clock of " + ", ".join(peers)
        + "".join(f"; {t}" for t in stand_ins) + "):", "",
        best_peer_table(tasks, labels, peers), "",
        "Performance profile, wall-clock to target (fraction of tasks within tau of the "
        "fastest):", "", profile_table(profile(wall, TAUS), TAUS), "",
        "Performance profile, iterations to target:", "",
        profile_table(profile(iters, TAUS), TAUS)]
  if left:
    md += ["", "Left out: " + "; ".join(left) + "."]
  curves = {f"wall-clock to target ({rule} rule)": profile(wall, fine_taus),
            f"iterations to target ({rule} rule)": profile(iters, fine_taus)}
  return "\n".join(md), (curves, fine_taus)


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid")
  parser.add_argument("--peers", default=",".join(PEERS),
                      help="comma-separated peers; the best peer of a task is the fastest")
  parser.add_argument("--optimizers", default=",".join(AVGGRAD),
                      help="comma-separated optimizers profiled beside the peers")
  parser.add_argument("--min-depth", type=int, default=8, help="only tasks at least this deep")
  parser.add_argument("--out", default=None,
                      help="folder for profile.png and profile.md (default: the grid's results)")
  parser.add_argument("--rule", choices=protocol.RULES, default=None,
                      help="one rate rule (default: both, fastest first; the figure shows the "
                           "first)")
  parser.add_argument("--with", dest="extra", action="append", default=None,
                      help="a grid whose optimizers join the tasks of the same name and target "
                           "(repeatable; default: grids/muon_split.json)")
  args = parser.parse_args(argv)
  out = args.out or os.path.dirname(run_lib.results_path(run_lib.load_grid(args.grid)))
  extra = [p for p in (args.extra if args.extra is not None else EXTRA_GRIDS)
           if os.path.abspath(p) != os.path.abspath(args.grid)]
  print(build(args.grid, args.optimizers.split(","), args.peers.split(","), args.min_depth,
              out, rules=[args.rule] if args.rule else protocol.RULES, extra=extra))


if __name__ == "__main__":
  main()
