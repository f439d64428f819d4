"""The rate rules of :mod:`avggrad.protocol` on hand-made loss curves.

Each curve is piecewise: a straight descent to a floor. The smoothed loss of a straight line
is the line itself away from the ends (a centred moving average), so the iterations to a
target are known in closed form; the final loss is the floor. The two rules then disagree by
construction: a fast descent to a high floor against a slow descent to a low one.
"""

import math
import types

import numpy as np
import pytest

from avggrad import metrics, protocol

STEPS = 400
WINDOW = metrics.default_window(STEPS)
TARGET = 1.0


def descent(slope: float, floor: float, start: float = 3.0) -> list[float]:
  """``start - slope * t`` until ``floor``, then ``floor``."""
  return list(np.maximum(start - slope * np.arange(STEPS), floor))


def crossing(slope: float, start: float = 3.0) -> int:
  """The first step where the (smoothed) line is at or below ``TARGET``, in closed form."""
  return math.ceil((start - TARGET) / slope)


# Per rate and seed: (slope, floor). 1e-2: fastest descent, highest floor (final-loss rule
# rejects it); 3e-3: slower, lowest floor (final-loss rule picks it); 1e-3: slowest.
CURVES = {
    1e-3: [(0.010, 0.30), (0.011, 0.31)],
    3e-3: [(0.012, 0.20), (0.013, 0.21)],
    1e-2: [(0.040, 0.80), (0.044, 0.82)],
}


def figures(curves):
  scores = {lr: [protocol.score(descent(*c)) for c in cs] for lr, cs in curves.items()}
  iters = {lr: [protocol.iterations(descent(*c), True, TARGET, STEPS) for c in cs]
           for lr, cs in curves.items()}
  return scores, iters


def test_the_two_rules_disagree_on_hand_made_curves():
  scores, iters = figures(CURVES)
  # The iterations are the closed-form crossings of the lines (the smoothing window, 9 steps
  # here, leaves a line as it is; the floors lie below the target).
  assert WINDOW < 20
  for lr, cs in CURVES.items():
    assert iters[lr] == [crossing(slope) for slope, _ in cs]
  # The scores are the floors (the last 10% of the budget sits on them).
  for lr, cs in CURVES.items():
    np.testing.assert_allclose(scores[lr], [floor for _, floor in cs], rtol=1e-6)
  assert protocol.pick_lr("final-loss", scores, iters) == 3e-3
  assert protocol.pick_lr("fastest", scores, iters) == 1e-2
  assert protocol.fastest_lr(iters) == 1e-2 and protocol.best_lr(scores) == 3e-3


def test_ties_go_to_the_smaller_rate():
  iters = {1e-3: [100, 120], 3e-3: [110, 110], 1e-2: [90, 200]}
  # Medians: 110, 110, 145: 1e-3 and 3e-3 tie.
  assert protocol.fastest_lr(iters) == 1e-3
  assert protocol.fastest_lr({3e-3: [50], 1e-3: [50]}) == 1e-3  # order of the mapping aside


def test_a_rate_missing_a_seed_does_not_count():
  iters = {1e-3: [300, 310, 320], 3e-3: [100, 110]}  # 3e-3's third seed has not run
  assert protocol.fastest_lr(iters) == 1e-3
  assert protocol.fastest_lr(iters, seeds=2) == 3e-3
  scores = {1e-3: [0.5, 0.5, 0.5], 3e-3: [0.1, 0.1]}
  assert protocol.pick_lr("fastest", scores, iters, seeds=3) == 1e-3
  # The final-loss rule leaves an incomplete rate out as well when told how many seeds count.
  assert protocol.pick_lr("final-loss", scores, iters, seeds=3) == 1e-3


def test_misses_count_as_infinite_and_no_rate_reaching_gives_none():
  # One miss of three: the median is still finite; two of three: infinite.
  iters = {1e-3: [200, None, 210], 3e-3: [100, None, None]}
  assert protocol.fastest_lr(iters) == 1e-3
  assert protocol.fastest_lr({1e-3: [None, None], 3e-3: [None, math.inf]}) is None
  assert protocol.fastest_lr({}) is None
  # pick_lr falls back to the final-loss rule so that a table still shows a rate for a miss.
  scores = {1e-3: [0.4, 0.5], 3e-3: [0.3, 0.35]}
  assert protocol.pick_lr("fastest", scores, {1e-3: [None, None], 3e-3: [None, None]}) == 3e-3
  # Curves that never reach the target, end to end: a floor above it.
  scores, iters = figures({1e-3: [(0.01, 1.5)], 3e-3: [(0.02, 1.2)]})
  assert iters == {1e-3: [None], 3e-3: [None]}
  assert protocol.fastest_lr(iters) is None
  assert protocol.pick_lr("fastest", scores, iters) == 3e-3


def test_an_unknown_rule_is_named():
  with pytest.raises(ValueError, match="unknown rate rule 'slowest'.*fastest, final-loss"):
    protocol.pick_lr("slowest", {}, {})
  assert protocol.check_rule("fastest") == "fastest"
  assert set(protocol.RULE_TEXT) == set(protocol.RULES)


def test_compare_picks_each_optimizers_rate_by_the_rule_and_says_which(monkeypatch):
  """``avggrad compare`` on the hand-made curves (training and timing replaced): the table's
  first line names the rule, and each summary's rate is the one that rule picks."""
  from avggrad import compare, sweep, timing
  from avggrad.training import RunResult, TrainConfig

  # The baseline "base" sets the target; "peer" has the curves above (rules disagree).
  base_curves = {1e-3: [(0.01, TARGET), (0.01, TARGET)], 3e-3: [(0.02, 1.2), (0.02, 1.2)],
                 1e-2: [(0.03, 1.4), (0.03, 1.4)]}
  curves = {"base": base_curves, "peer": CURVES}

  def fake_sweep(config, lrs, seeds, **kwargs):
    return {(lr, s): RunResult(config={}, losses=descent(*curves[config.optimizer][lr][s]),
                               evals=[], status="ok", test_loss=0.0, test_accuracy=0.0,
                               seconds_per_step=1e-3, compile_seconds=0.0)
            for lr in lrs for s in seeds}

  monkeypatch.setattr(sweep, "sweep", fake_sweep)
  monkeypatch.setattr(timing, "step_seconds", lambda config, specs, data, **kw: {
      spec: {"seconds_per_step": 1e-3} for spec in specs})
  config = TrainConfig(model="mlp", steps=STEPS)
  split = types.SimpleNamespace(x=np.zeros((1, 1)), y=np.zeros(1))  # never trained on
  figures_by_rule = {}
  for rule in protocol.RULES:
    result = compare.compare(config, ["base", "peer"], [1e-3, 3e-3, 1e-2], [0, 1],
                             train_data=split, test_data=split, progress=False,
                             batched=True, rule=rule)
    assert result.table().splitlines()[0] == protocol.RULE_TEXT[rule]
    assert result.to_dict()["rule"] == rule
    figures_by_rule[rule] = {s.optimizer: s for s in result.summaries}
  # The target: base's lowest-final-loss rate (1e-3) at 80% of the budget, on its floor.
  assert result.target == pytest.approx(TARGET)
  # Under final-loss: peer at 3e-3 (floor 0.20); fastest: 1e-2 (slope 0.04, its crossing
  # comes first).
  peer_final, peer_fast = figures_by_rule["final-loss"]["peer"], figures_by_rule["fastest"]["peer"]
  assert peer_final.best_lr == 3e-3 and peer_fast.best_lr == 1e-2
  assert peer_fast.iterations == [crossing(slope) for slope, _ in CURVES[1e-2]]
  assert peer_fast.median_iterations < peer_final.median_iterations
  with pytest.raises(ValueError, match="unknown rate rule"):
    compare.compare(config, ["base"], [1e-3], [0], train_data=split, test_data=split,
                    rule="slowest")


def test_pick_lr_without_seeds_ignores_a_rate_missing_a_seed_under_both_rules():
  """The default ``seeds`` is the most any rate has: a one-seed rate neither wins the fastest
  rule nor the final-loss fallback."""
  iters = {1e-3: [None, None], 1e-2: [None]}
  scores = {1e-3: [0.5, 0.6], 1e-2: [0.1]}
  assert protocol.pick_lr("fastest", scores, iters) == 1e-3
  assert protocol.pick_lr("final-loss", scores, iters) == 1e-3


def test_best_lr_ranks_a_nan_median_as_a_miss_whatever_the_order():
  nan = float("nan")
  assert protocol.best_lr({1e-2: [nan], 1e-3: [0.5]}) == 1e-3
  assert protocol.best_lr({1e-3: [0.5], 1e-2: [nan]}) == 1e-3
