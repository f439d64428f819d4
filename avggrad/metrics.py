"""Loss-curve metrics: smoothing, iterations to a target loss, and summaries over seeds."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def smooth(losses: Sequence[float], window: int) -> np.ndarray:
  """Centered moving average of a loss curve (no lag), shrinking the window at the ends.

  Example:
    >>> smooth([4.0, 2.0, 0.0, 2.0], window=3).tolist()
    [3.0, 2.0, 1.3333333333333333, 1.0]
  """
  values = np.asarray(losses, np.float64)
  if window <= 1 or len(values) == 0:
    return values.copy()
  half = window // 2
  cumulative = np.concatenate([[0.0], np.cumsum(values)])
  idx = np.arange(len(values))
  lo = np.maximum(idx - half, 0)
  hi = np.minimum(idx + half + 1, len(values))
  return (cumulative[hi] - cumulative[lo]) / (hi - lo)


def default_window(num_steps: int) -> int:
  """The smoothing window used for iterations-to-target: 2% of the budget, at least 5 steps."""
  return max(5, int(round(0.02 * num_steps)) | 1)


def iterations_to_target(
    losses: Sequence[float], target: float, window: Optional[int] = None
) -> Optional[int]:
  """Steps until the smoothed training loss first reaches ``target``; ``None`` if never.

  The count is the number of updates made before the loss was measured: a run whose
  smoothed loss at step index ``i`` is the first at or below the target needed ``i`` updates
  (its loss at index 0 is measured before any update). Non-finite losses never reach it.

  Example:
    >>> iterations_to_target([3.0, 2.0, 1.0, 0.5], target=1.0, window=1)
    2
    >>> iterations_to_target([3.0, 2.0], target=1.0, window=1) is None
    True
  """
  values = np.asarray(losses, np.float64)
  if window is None:
    window = default_window(len(values))
  smoothed = smooth(values, window)
  finite_prefix = np.cumprod(np.isfinite(values)).astype(bool)
  hits = np.flatnonzero((smoothed <= target) & finite_prefix)
  return int(hits[0]) if len(hits) else None


DEFAULT_DIVERGENCE_FACTOR = 10.0


def divergence_step(
    losses: Sequence[float],
    factor: float = DEFAULT_DIVERGENCE_FACTOR,
    window: Optional[int] = None,
) -> Optional[int]:
  """The first step at which a run counts as diverged; ``None`` if it never does.

  A run diverges at the first non-finite loss, or (with ``factor > 0``) at the first step
  where the trailing mean of its minibatch losses over ``window`` steps exceeds ``factor``
  times its initial loss (the loss at step 0, before any update). ``factor = 0`` checks for
  non-finite losses only. The trailing mean only looks back, so a run can be stopped as soon
  as it crosses the threshold.

  Example:
    >>> divergence_step([2.0, 2.5, 30.0, 60.0, 90.0], factor=10.0, window=2)
    3
    >>> divergence_step([2.0, 1.0, float("nan")], factor=0.0)
    2
    >>> divergence_step([2.0, 1.0, 0.5], factor=10.0) is None
    True
  """
  values = np.asarray(losses, np.float64)
  if len(values) == 0:
    return None
  bad = ~np.isfinite(values)
  first_bad = int(np.argmax(bad)) if bad.any() else None
  if factor > 0 and np.isfinite(values[0]):
    if window is None:
      window = default_window(len(values))
    window = max(1, int(window))
    finite = np.where(bad, 0.0, values)
    cumulative = np.concatenate([[0.0], np.cumsum(finite)])
    idx = np.arange(len(values))
    lo = np.maximum(idx - window + 1, 0)
    trailing = (cumulative[idx + 1] - cumulative[lo]) / (idx + 1 - lo)
    over = np.flatnonzero(trailing > factor * abs(values[0]))
    if len(over) and (first_bad is None or over[0] < first_bad):
      return int(over[0])
  return first_bad


def final_loss(losses: Sequence[float], diverged: bool = False) -> float:
  """Mean minibatch loss over the last 10% of a run; infinite if the run diverged.

  This is the score that picks each optimizer's best learning rate.

  Example:
    >>> final_loss([4.0] * 18 + [2.0, 1.0])
    1.5
  """
  if diverged or len(losses) == 0:
    return math.inf
  tail = max(1, len(losses) // 10)
  return float(np.mean(np.asarray(losses[-tail:], np.float64)))


def median_iterations(counts: Sequence[Optional[int]]) -> float:
  """Median of iterations-to-target over seeds, with "not reached" counted as infinite.

  Example:
    >>> median_iterations([100, None, 300])
    300.0
    >>> median_iterations([None, None, 300])
    inf
  """
  values = [math.inf if c is None else float(c) for c in counts]
  return float(np.median(values)) if values else math.nan
