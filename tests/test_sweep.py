"""The batched harness (avggrad.sweep) against one run at a time, schedules and the
divergence guard."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from avggrad import data, metrics, sweep, training

TINY = dict(depth=3, width=16, steps=30, batch_size=32, eval_every=10, eval_examples=200)


@pytest.fixture(scope="module")
def splits():
  return (data.load("fashion_mnist_small", "train", limit=400),
          data.load("fashion_mnist_small", "test", limit=100))


@pytest.mark.parametrize("optimizer,schedule,rtol", [
    ("adam", "constant", 1e-5),
    ("adam", "warmup_cosine", 1e-5),
    ("avg-adam", "constant", 1e-3),  # accelerate-only selects per coordinate: a bit chaotic
    ("avg-adam:far_batch_fraction=0.25", "constant", 1e-3),
])
def test_sweep_gives_the_curves_of_single_runs(splits, optimizer, schedule, rtol):
  config = training.TrainConfig(optimizer=optimizer, schedule=schedule, warmup_fraction=0.2,
                                **TINY)
  runs = sweep.sweep(config, [1e-3, 4e-3], [0, 1], train_data=splits[0],
                     test_data=splits[1], progress=False)
  assert sorted(runs) == [(1e-3, 0), (1e-3, 1), (4e-3, 0), (4e-3, 1)]
  for (lr, seed), batched in runs.items():
    single = training.train(dataclasses.replace(config, lr=lr, seed=seed),
                            train_data=splits[0], test_data=splits[1], progress=False)
    assert batched.status == single.status == "ok"
    assert batched.batched_runs == 4 and single.batched_runs == 1
    np.testing.assert_allclose(batched.losses, single.losses, rtol=rtol)
    assert [e["step"] for e in batched.evals] == [e["step"] for e in single.evals]
    np.testing.assert_allclose([e["train_loss"] for e in batched.evals],
                               [e["train_loss"] for e in single.evals], rtol=10 * rtol)
    assert batched.test_accuracy == pytest.approx(single.test_accuracy, abs=0.02)
  # different learning rates and seeds really are different runs
  assert runs[(1e-3, 0)].losses[-1] != runs[(4e-3, 0)].losses[-1]
  assert runs[(1e-3, 0)].losses[0] != runs[(1e-3, 1)].losses[0]


def test_schedule_warms_up_and_decays_to_zero():
  config = training.TrainConfig(steps=100, schedule="warmup_cosine", warmup_fraction=0.1)
  schedule = training.learning_rate(config, 2e-3)
  values = [float(schedule(t)) for t in (0, 5, 10, 55, 100)]
  assert values[0] == 0.0 and values[1] == pytest.approx(1e-3)
  assert values[2] == pytest.approx(2e-3)
  assert values[3] == pytest.approx(1e-3, rel=1e-5)  # half-way through the cosine
  assert values[4] == pytest.approx(0.0, abs=1e-12)
  assert training.learning_rate(training.TrainConfig(), 2e-3) == 2e-3
  with pytest.raises(ValueError, match="Unknown schedule 'cosine'"):
    training.TrainConfig(schedule="cosine").validate()


# SGD at lr 10 on this tiny tanh MLP: the loss grows from 2.5 to ~80 but stays finite.
DIVERGING = dict(optimizer="sgd", lr=10.0, depth=2, width=16, steps=40, batch_size=32,
                 eval_every=20, eval_examples=200)


def test_divergence_guard_stops_a_finite_blow_up(splits):
  config = training.TrainConfig(**DIVERGING)
  guarded = training.train(config, train_data=splits[0], test_data=splits[1], progress=False)
  assert guarded.status.startswith("diverged at step")
  stop = int(guarded.status.split()[-1])
  assert len(guarded.losses) == stop + 1 < 40 and math.isfinite(guarded.losses[-1])
  assert metrics.divergence_step(guarded.losses, 10.0, metrics.default_window(40)) == stop
  assert math.isnan(guarded.test_loss)
  with pytest.raises(training.NonFiniteLossError, match="exceeded 10x its initial loss"):
    training.train(config, train_data=splits[0], test_data=splits[1], progress=False,
                   raise_on_nonfinite=True)
  unguarded = training.train(dataclasses.replace(config, divergence_factor=0.0),
                             train_data=splits[0], test_data=splits[1], progress=False)
  assert unguarded.status == "ok" and len(unguarded.losses) == 40
  assert max(unguarded.losses) > 10 * unguarded.losses[0]  # it did blow up, finitely
  np.testing.assert_allclose(guarded.losses, unguarded.losses[: stop + 1], rtol=1e-6)
  # The sweep applies the same guard per run, and keeps the runs that train.
  runs = sweep.sweep(config, [0.01, 10.0], [0], train_data=splits[0], test_data=splits[1],
                     progress=False)
  assert runs[(10.0, 0)].status == guarded.status
  np.testing.assert_allclose(runs[(10.0, 0)].losses, guarded.losses, rtol=1e-5)
  assert runs[(0.01, 0)].status == "ok" and len(runs[(0.01, 0)].losses) == 40
  assert math.isnan(runs[(10.0, 0)].test_loss) and runs[(0.01, 0)].test_accuracy > 0
  # A diverged run never counts as reaching a target (the harness cut its curve).
  assert metrics.divergence_step([2.0, 1.0, 30.0, 40.0], 10.0, window=1) == 2


def test_sweep_rejects_bad_input(splits):
  config = training.TrainConfig(optimizer="adam", **TINY)
  with pytest.raises(ValueError, match="at least one learning rate"):
    sweep.sweep(config, [], [0], train_data=splits[0], test_data=splits[1])
  with pytest.raises(ValueError, match="positive numbers"):
    sweep.sweep(config, [-1.0], [0], train_data=splits[0], test_data=splits[1])
  with pytest.raises(ValueError, match="Unknown optimizer 'lamb'"):
    sweep.sweep(dataclasses.replace(config, optimizer="lamb"), [1e-3], [0],
                train_data=splits[0], test_data=splits[1])
