"""The comparison protocol, in one place: each optimizer's best learning rate, the target, the
iterations and seconds to it, and ratios between optimizers.

``avggrad compare`` (:mod:`avggrad.compare`), the benchmark runner (``benchmarks/run.py``) and
the report (``benchmarks/report.py``) all use these functions. A run is seen as its per-step
minibatch losses and whether it finished (``ok``; a run stopped by the divergence guard is
not ok).

1. **Score** of a run: :func:`avggrad.metrics.final_loss`, the mean loss over the last 10% of
   the budget (infinite for a run that is not ok).
2. **Best learning rate** of an optimizer, under one of two rules (:data:`RULES`):

   - ``"final-loss"`` (:func:`best_lr`): the lowest median score over seeds; ties go to the
     smaller rate. What the project's tables used first.
   - ``"fastest"`` (:func:`fastest_lr`), AlgoPerf's rule: the rate whose median iterations to
     the target is the fewest; ties go to the smaller rate, and a rate missing a seed does not
     count. The field's reference rule for time to result (AlgoPerf takes each submission's
     fastest trial).
3. **Target** (:func:`target_loss`): the median over seeds of the smoothed loss a reference
   optimizer reaches at its best rate after ``fraction`` of the budget (a run that is not ok,
   or too short, counts as infinite).
4. **Iterations to target** (:func:`iterations`): steps until the smoothed loss first reaches
   the target; ``None`` (a miss, infinite in medians) if never or if the run is not ok.
5. **Seconds to target**: median iterations x the optimizer's time per step.
6. **Ratios** (:func:`ratio`): against a baseline's figure; infinite when the optimizer
   missed and the baseline did not, undefined (NaN) when the baseline has no finite, positive
   figure.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from avggrad import metrics

Losses = Sequence[float]


def score(losses: Losses, ok: bool = True) -> float:
  """The score that picks a learning rate: :func:`avggrad.metrics.final_loss`."""
  return metrics.final_loss(losses, not ok)


def best_lr(scores: Mapping[float, Sequence[float]]) -> Optional[float]:
  """The learning rate with the lowest median score over seeds (ties: the smaller rate);
  ``None`` when there is none.

  Example:
    >>> best_lr({1e-3: [0.5, 0.7, 0.6], 3e-3: [0.4, float("inf"), 0.5]})
    0.003
  """
  if not scores:
    return None
  medians = {float(lr): float(np.median(s)) for lr, s in scores.items()}
  # A NaN median (a NaN score) ranks as a miss, not by the dict's order.
  medians = {lr: (m if not math.isnan(m) else math.inf) for lr, m in medians.items()}
  return min(medians, key=lambda lr: (medians[lr], lr))


#: The two rate rules by name, ``"fastest"`` (AlgoPerf's, :func:`fastest_lr`) and
#: ``"final-loss"`` (:func:`best_lr`).
RULES = ("fastest", "final-loss")

#: One line per rule, for the tables that name the rule they use.
RULE_TEXT = {
    "fastest": "rate rule: fastest (AlgoPerf: each optimizer at the rate with the fewest median "
               "iterations to the target)",
    "final-loss": "rate rule: final loss (each optimizer at the rate with the lowest median "
                  "final loss)",
}


def check_rule(rule: str) -> str:
  """``rule`` if it is one of :data:`RULES`; a ``ValueError`` naming the choices otherwise."""
  if rule not in RULES:
    raise ValueError(f"unknown rate rule {rule!r}; choose one of {', '.join(RULES)}.")
  return rule


def fastest_lr(iters: Mapping[float, Sequence[Optional[float]]],
               seeds: Optional[int] = None) -> Optional[float]:
  r"""AlgoPerf's rule: the learning rate whose median iterations to the target is the fewest.

  A seed that missed the target (``None`` or infinite) counts as infinite in the median; ties
  go to the smaller rate; a rate with fewer than ``seeds`` results (a seed still missing) does
  not count. ``None`` when no counted rate has a finite median (the optimizer misses the
  target at every rate it ran).

  .. math::

     r^\star = \arg\min_r \operatorname{median}_s T(r, s)

  Args:
    iters: ``{learning rate: [iterations to target per seed]}``, ``None`` for a miss.
    seeds: how many seeds a rate needs to count (default: the most any rate has).

  Returns:
    The fastest rate, or ``None``. (Where the two rules disagree, :func:`best_lr` may pick a
    slower rate whose final loss is lower.)

  Example:
    >>> fastest_lr({1e-3: [400, 420, 410], 3e-3: [150, None, 160], 1e-2: [90, 95]})
    0.003
  """
  if not iters:
    return None
  need = max(len(v) for v in iters.values()) if seeds is None else int(seeds)
  medians = {}
  for lr, values in iters.items():
    if len(values) < need:
      continue
    finite = [math.inf if v is None else float(v) for v in values]
    medians[float(lr)] = float(np.median(finite))
  finite_rates = {lr: m for lr, m in medians.items() if math.isfinite(m)}
  if not finite_rates:
    return None
  return min(finite_rates, key=lambda lr: (finite_rates[lr], lr))


def pick_lr(rule: str, scores: Mapping[float, Sequence[float]],
            iters: Mapping[float, Sequence[Optional[float]]],
            seeds: Optional[int] = None) -> Optional[float]:
  """The rate ``rule`` picks: :func:`fastest_lr` of ``iters`` (falling back to
  :func:`best_lr` of ``scores`` when no rate reaches the target, so that a table still has a
  rate to show for a miss) or :func:`best_lr` of ``scores``. Under either rule a rate with fewer
  than ``seeds`` results (default: the most any rate has in ``iters``) does not count.

  Example (the two rules disagree: 3e-3 is faster, 1e-3 ends lower):
    >>> scores = {1e-3: [0.30, 0.31], 3e-3: [0.35, 0.36]}
    >>> iters = {1e-3: [400, 420], 3e-3: [150, 160]}
    >>> pick_lr("fastest", scores, iters), pick_lr("final-loss", scores, iters)
    (0.003, 0.001)
  """
  check_rule(rule)
  if seeds is None and iters:
    seeds = max(len(v) for v in iters.values())
  if rule == "fastest":
    fastest = fastest_lr(iters, seeds)
    if fastest is not None:
      return fastest
  if seeds is not None:
    scores = {lr: s for lr, s in scores.items() if len(s) >= seeds}
  return best_lr(scores)


def target_loss(runs: Sequence[tuple[Losses, bool]], fraction: float, steps: int) -> float:
  """Median over seeds of the smoothed loss at ``fraction`` of the budget ``steps``.

  Example (a budget of 4 steps smooths over all 4 around step 2):
    >>> target_loss([([4.0, 3.0, 2.0, 1.0], True), ([4.0, 3.0, 2.0, 2.0], True)], 0.5, 4)
    2.625
    >>> target_loss([([4.0, 3.0, 2.0, 1.0], True), ([4.0, float("nan")], False)], 0.5, 4)
    inf
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"the target fraction must be in (0, 1], got {fraction}.")
  window = metrics.default_window(steps)
  index = max(0, min(steps, int(round(fraction * steps))) - 1)
  values = []
  for losses, ok in runs:
    smoothed = metrics.smooth(losses, window)
    values.append(float(smoothed[index]) if ok and index < len(smoothed) else math.inf)
  return float(np.median(values)) if values else math.inf


Runs = Sequence[tuple[Losses, bool]]


def target_run(baselines: Mapping[str, Mapping[float, Runs]]) -> Optional[tuple[str, float]]:
  """Which runs set a task's target: each baseline at its best learning rate
  (:func:`best_lr` of the :func:`score` medians), the one whose median score there is lowest
  (ties: the first listed). ``None`` when a baseline has no runs yet, or none finished.

  The one rule of the runner (the grid's baselines), ``avggrad compare`` (its first
  optimizer) and the device benchmark (Adam): only the set of baselines differs.

  Args:
    baselines: ``{label: {learning rate: [(losses, ok) per seed]}}``.

  Returns:
    ``(label, learning rate)`` of the runs that set the target.

  Example:
    >>> target_run({"adam": {1e-3: [([3.0, 1.0], True)], 1e-2: [([3.0, 2.0], True)]},
    ...             "rmsprop": {1e-3: [([3.0, 1.5], True)]}})
    ('adam', 0.001)
  """
  best_label, best_score, best_rate = None, math.inf, None
  for label, by_rate in baselines.items():
    rate = best_lr({lr: [score(losses, ok) for losses, ok in runs]
                    for lr, runs in by_rate.items()})
    if rate is None:
      return None
    median = float(np.median([score(losses, ok) for losses, ok in by_rate[rate]]))
    if median < best_score:
      best_label, best_score, best_rate = label, median, rate
  return None if best_label is None else (best_label, best_rate)


def set_target(baselines: Mapping[str, Mapping[float, Runs]], fraction: float,
               steps: int) -> Optional[tuple[float, str, float]]:
  """A task's target: :func:`target_loss` of the runs :func:`target_run` picks.

  Returns:
    ``(target, label, learning rate)``, or ``None`` when a baseline has no runs yet.
  """
  chosen = target_run(baselines)
  if chosen is None:
    return None
  label, rate = chosen
  return target_loss(baselines[label][rate], fraction, steps), label, rate


def iterations(losses: Losses, ok: bool, target: Optional[float],
               steps: int) -> Optional[int]:
  """Iterations until the smoothed loss first reaches ``target`` (smoothing window of a
  budget of ``steps``); ``None`` if never, if the run is not ok, or without a target."""
  if not ok or target is None:
    return None
  return metrics.iterations_to_target(losses, target, metrics.default_window(steps))


def ratio(value: float, base: float) -> float:
  """``value / base``: infinite when ``value`` is (a miss) and ``base`` is finite; NaN when
  ``base`` is not a finite positive number or ``value`` is NaN.

  Example:
    >>> ratio(50.0, 100.0), ratio(math.inf, 100.0), ratio(50.0, math.inf)
    (0.5, inf, nan)
  """
  if math.isnan(value) or not (math.isfinite(base) and base > 0):
    return math.nan
  return math.inf if math.isinf(value) else value / base


def seconds_to_target(median_iterations: float, seconds_per_step: float) -> float:
  """Median iterations x time per step (infinite for a miss)."""
  return median_iterations * seconds_per_step
