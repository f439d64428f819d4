"""Compare optimizers on one model: each at its own best learning rate, iterations to target.

Protocol (the same for every optimizer, the baseline included):

1. every optimizer is trained at every learning rate of one shared grid, for every seed, with
   the same initial weights and minibatch order per seed;
2. the target is the smoothed training loss the first optimizer (the baseline) reaches, at
   its lowest-final-loss learning rate, after ``target_fraction`` of the budget (median over
   seeds), unless a target is given;
3. each optimizer's learning rate is chosen on its own, under one of two rate rules
   (``rule``, :data:`avggrad.protocol.RULES`): ``"fastest"`` (the default, AlgoPerf's rule:
   the fewest median iterations to the target, :func:`avggrad.protocol.fastest_lr`) or
   ``"final-loss"`` (the lowest median final training loss, the mean minibatch loss over the
   last 10% of the budget; a diverged run counts as infinite);
4. for each optimizer at its chosen learning rate, the iterations until its smoothed training
   loss first reaches the target, per seed ("not reached" counts as infinite in the median;
   a run stopped by the divergence guard never reaches it);
5. the time per step of every optimizer, measured in this process with the steps of all
   optimizers interleaved (:func:`avggrad.timing.step_seconds`), and the seconds to target:
   iterations x time per step, the figure the benchmark reports compute.

Runs of one optimizer are trained together (:mod:`avggrad.sweep`) on the fully connected
models and one at a time on the convolutional ones, where batched convolutions are slower on
CPU; the curves are the same either way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from avggrad import metrics, parallel, protocol, sweep, timing
from avggrad.data import Dataset
from avggrad.tasks import Task
from avggrad.training import RunResult, TrainConfig, train

Key = tuple[str, float, int]


def final_loss(result: RunResult) -> float:
  """:func:`avggrad.protocol.score` of a run."""
  return protocol.score(result.losses, not result.diverged)


TIE_MARGIN = 1.1
"""The factor in time to target under which a lead is called a tie (repeated step timings on
one machine vary by about 10%)."""


@dataclasses.dataclass
class OptimizerSummary:
  """One optimizer's figures at the learning rate the comparison's rate rule picks
  (``best_lr``)."""

  optimizer: str
  best_lr: float
  iterations: list[Optional[int]]
  final_losses: list[float]
  seconds_per_step: float

  @property
  def median_iterations(self) -> float:
    return metrics.median_iterations(self.iterations)

  @property
  def reached(self) -> int:
    return sum(i is not None for i in self.iterations)

  @property
  def seconds_to_target(self) -> float:
    """Median iterations to target x the measured time per step (infinite if not reached)."""
    return protocol.seconds_to_target(self.median_iterations, self.seconds_per_step)


@dataclasses.dataclass
class Comparison:
  """All runs of a comparison and the summaries derived from them."""

  config: dict[str, Any]
  optimizers: list[str]
  lrs: list[float]
  seeds: list[int]
  target: float
  target_rule: str
  runs: dict[Key, RunResult]
  summaries: list[OptimizerSummary]
  timing: str = ""
  rule: str = "fastest"
  """The rate rule that picked each ``best_lr`` (:data:`avggrad.protocol.RULES`)."""

  def table(self) -> str:
    """A fixed-width text table of the summaries (ratios against the first optimizer)."""
    base = self.summaries[0]
    lines = [
        protocol.RULE_TEXT[self.rule],
        f"target training loss {self.target:.4f} ({self.target_rule}); "
        f"{len(self.seeds)} seed(s), {self.config['steps']} steps, learning rates "
        f"{', '.join(f'{lr:g}' for lr in self.lrs)}",
        "",
        f"{'optimizer':<40} {'best lr':>8} {'iters to target':>16} {'reached':>8} "
        f"{'x base':>7} {'ms/step':>8} {'s to target':>12} {'x base':>7} {'final loss':>11}",
    ]
    edges = (min(self.lrs), max(self.lrs))
    for s in self.summaries:
      iters = s.median_iterations
      ratio = protocol.ratio(iters, base.median_iterations)
      seconds = s.seconds_to_target
      time_ratio = protocol.ratio(seconds, base.seconds_to_target)
      iters_text = "not reached" if math.isinf(iters) else f"{iters:.0f}"
      seconds_text = "-" if not math.isfinite(seconds) else f"{seconds:.2f}"
      final = float(np.median(s.final_losses))
      edge = "*" if len(self.lrs) > 1 and s.best_lr in edges else " "
      lines.append(
          f"{s.optimizer:<40} {s.best_lr:7.0e}{edge} {iters_text:>16} "
          f"{s.reached:>3}/{len(s.iterations):<4} {_fmt(ratio):>7} "
          f"{1e3 * s.seconds_per_step:8.2f} {seconds_text:>12} {_fmt(time_ratio):>7} "
          f"{final:11.4f}"
      )
    if any(s.best_lr in edges for s in self.summaries) and len(self.lrs) > 1:
      lines.append("* best learning rate at the edge of the grid: extend the grid (--lrs)")
    lines.append(self.fastest())
    lines.append(
        f"ms/step: one training step, all optimizers timed in turns in this process "
        f"({self.timing}); s to target = iters to target x ms/step")
    return "\n".join(lines)

  def fastest(self) -> str:
    """The line naming the fastest optimizer in time to target (and the fewest iterations)."""
    reached = [s for s in self.summaries if math.isfinite(s.seconds_to_target)]
    if not reached:
      return "fastest in time to target: none reached it"
    best = min(reached, key=lambda s: s.seconds_to_target)
    fewest = min(reached, key=lambda s: s.median_iterations)
    runner_up = [s.seconds_to_target for s in reached if s is not best]
    margin = ""
    if runner_up:
      nearest = min(runner_up)
      # A target reached at iteration 0 takes 0 s: a tie with another 0, else infinitely ahead.
      lead = (nearest / best.seconds_to_target if best.seconds_to_target > 0
              else (1.0 if nearest == 0 else math.inf))
      margin = f", {lead:.2f}x ahead of the next"
      if lead < TIE_MARGIN:
        margin += f"; within {TIE_MARGIN - 1:.0%}, a tie at the step-time noise"
    return (f"fastest in time to target: {best.optimizer} ({best.seconds_to_target:.2f} s"
            f"{margin}); fewest iterations: {fewest.optimizer} "
            f"({fewest.median_iterations:.0f})")

  def to_dict(self) -> dict[str, Any]:
    return {
        "config": self.config,
        "optimizers": self.optimizers,
        "lrs": self.lrs,
        "seeds": self.seeds,
        "target": self.target,
        "target_rule": self.target_rule,
        "rule": self.rule,
        "timing": self.timing,
        "summaries": [dataclasses.asdict(s) | {"median_iterations": s.median_iterations,
                                               "seconds_to_target": s.seconds_to_target}
                      for s in self.summaries],
        "runs": [
            {"optimizer": k[0], "lr": k[1], "seed": k[2]} | r.to_dict()
            for k, r in self.runs.items()
        ],
    }

  def plot(self, path: str) -> None:
    """Smoothed training-loss curves at each optimizer's best learning rate, against
    iterations and against wall-clock seconds (iterations x measured time per step), PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    window = metrics.default_window(self.config["steps"])
    for s in self.summaries:
      curves = [metrics.smooth(self.runs[(s.optimizer, s.best_lr, seed)].losses, window)
                for seed in self.seeds]
      length = min(len(c) for c in curves)
      stack = np.stack([c[:length] for c in curves])
      steps = np.arange(length)
      for ax, xs in ((by_step, steps), (by_time, steps * s.seconds_per_step)):
        line, = ax.plot(xs, np.median(stack, 0), label=f"{s.optimizer} (lr {s.best_lr:g})")
        if len(curves) > 1:
          ax.fill_between(xs, stack.min(0), stack.max(0), alpha=0.2, color=line.get_color())
    for ax in (by_step, by_time):
      ax.axhline(self.target, color="gray", linestyle="--", linewidth=1, label="target")
      ax.set_yscale("log")
    by_step.set_xlabel("iteration")
    by_time.set_xlabel("seconds (iterations x measured time per step)")
    by_step.set_ylabel(f"training loss (smoothed, window {window})")
    by_step.legend(fontsize=8)
    c = self.config
    from avggrad.config import MODELS

    fig.suptitle(f"{c['dataset']}: {c['model']} depth {c['depth']}, {c['activation']}, "
                 f"{c['init']}" if c["model"] in MODELS else c["model"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)  # the size a README or a report needs
    plt.close(fig)


def _fmt(ratio: float) -> str:
  if math.isnan(ratio):
    return "-"
  return "n.r." if math.isinf(ratio) else f"{ratio:.2f}"


def compare(
    base: TrainConfig,
    optimizers: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int] = (0,),
    *,
    target: Optional[float] = None,
    target_fraction: float = 0.8,
    train_data: Optional[Dataset] = None,
    test_data: Optional[Dataset] = None,
    progress: bool = True,
    batched: Optional[bool] = None,
    devices: Any = None,
    shard_params: bool = False,
    task: Optional[Task] = None,
    rule: str = "fastest",
) -> Comparison:
  """Runs the comparison protocol of the module docstring and returns its results.

  ``rule`` picks each optimizer's learning rate: ``"fastest"`` (AlgoPerf's) or
  ``"final-loss"`` (:func:`avggrad.protocol.pick_lr`).

  ``batched`` trains each optimizer's runs together (default: on the fully connected models,
  not on the convolutional ones). ``devices`` and ``shard_params``: data parallelism, as in
  :func:`avggrad.loop.train` (every device by default). ``task``: the model, loss and
  data (:class:`avggrad.tasks.Task`; ``None``: the built-in task ``base`` names, on
  ``train_data`` and ``test_data``).
  """
  if not optimizers or not lrs or not seeds:
    raise ValueError("compare needs at least one optimizer, learning rate and seed.")
  if not 0 < target_fraction <= 1:
    raise ValueError(f"target_fraction must be in (0, 1], got {target_fraction}.")
  protocol.check_rule(rule)
  if task is None:
    from avggrad.tasks import for_config

    base.validate()
    task = for_config(base, train_data, test_data)
    if batched is None:
      batched = base.model in ("mlp", "text-mlp")
  batched = True if batched is None else batched
  placement = dict(devices=devices, shard_params=shard_params, task=task)
  runs: dict[Key, RunResult] = {}
  for spec in optimizers:
    config = dataclasses.replace(base, optimizer=spec)
    if batched:
      results = sweep.sweep(config, [float(lr) for lr in lrs], [int(s) for s in seeds],
                            progress=progress, **placement)
      runs.update({(spec, lr, seed): r for (lr, seed), r in results.items()})
      continue
    for lr in lrs:
      for seed in seeds:
        runs[(spec, float(lr), int(seed))] = train(
            dataclasses.replace(config, lr=float(lr), seed=int(seed)), progress=progress,
            **placement)

  def results(spec: str, lr: float) -> list[RunResult]:
    return [runs[(spec, float(lr), int(s))] for s in seeds]

  if target is None:
    target, _, _ = protocol.set_target(
        {optimizers[0]: {float(lr): [(r.losses, not r.diverged) for r in results(optimizers[0], lr)]
                         for lr in lrs}}, target_fraction, base.steps)
    target_rule = (f"{optimizers[0]}'s smoothed loss at {target_fraction:.0%} of the budget, "
                   "at its lowest-final-loss learning rate")
  else:
    target_rule = "given"
  best = {spec: protocol.pick_lr(
      rule, {float(lr): [final_loss(r) for r in results(spec, lr)] for lr in lrs},
      {float(lr): [protocol.iterations(r.losses, not r.diverged, target, base.steps)
                   for r in results(spec, lr)] for lr in lrs}) for spec in optimizers}
  step_times = timing.step_seconds(base, list(optimizers), task,
                                   dp=parallel.DataParallel.create(devices, shard_params))
  summaries = []
  for spec in optimizers:
    chosen = results(spec, best[spec])
    summaries.append(OptimizerSummary(
        optimizer=spec,
        best_lr=best[spec],
        iterations=[protocol.iterations(r.losses, not r.diverged, target, base.steps)
                    for r in chosen],
        final_losses=[final_loss(r) for r in chosen],
        seconds_per_step=step_times[spec]["seconds_per_step"],
    ))
  import jax

  device = jax.devices()[0]
  return Comparison(
      config=dataclasses.asdict(base), optimizers=list(optimizers), lrs=[float(x) for x in lrs],
      seeds=[int(s) for s in seeds], target=target, target_rule=target_rule, runs=runs,
      summaries=summaries, timing=f"{device.platform}, {device.device_kind}", rule=rule,
  )


def save(comparison: Comparison, out_dir: str) -> dict[str, str]:
  """Writes ``results.json``, ``table.txt`` and ``loss_curves.png``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {name: os.path.join(out_dir, name)
           for name in ("results.json", "table.txt", "loss_curves.png")}
  with open(paths["results.json"], "w") as f:
    json.dump(comparison.to_dict(), f)
  with open(paths["table.txt"], "w") as f:
    f.write(comparison.table() + "\n")
  comparison.plot(paths["loss_curves.png"])
  return paths
