"""benchmarks.overheads: repeated sessions record each session and their min/median/max."""

from __future__ import annotations

import itertools

import pytest

from benchmarks import overheads


@pytest.fixture
def fake_timing(monkeypatch):
  """Sessions whose seconds per step are known: rmsprop 1, 3, 2 ms; adam 2, 3, 8 ms."""
  times = {"rmsprop": iter([1e-3, 3e-3, 2e-3]), "adam": iter([2e-3, 3e-3, 8e-3])}
  counter = itertools.count()

  def step_seconds(config, specs, train_data, **kwargs):
    next(counter)
    return {spec: {"seconds_per_step": next(times[spec]), "bytes": 100 * (i + 1)}
            for i, spec in enumerate(specs)}

  monkeypatch.setattr(overheads, "step_seconds", step_seconds)
  monkeypatch.setattr(overheads.run_lib, "load_splits", lambda config: (None, None))
  return counter


GRID = {"name": "t", "defaults": {"dataset": "fashion_mnist_small", "depth": 2, "width": 8},
        "optimizers": {"rmsprop": "rmsprop", "adam": "adam"}, "lrs": [1e-3], "seeds": [0],
        "tasks": [{"name": "task"}]}


def test_sessions_record_every_timing_and_their_spread(fake_timing):
  out = overheads.measure_task(GRID, GRID["tasks"][0], labels=["rmsprop", "adam"], sessions=3)
  assert next(fake_timing) == 3  # three whole sessions ran
  adam = out["adam"]
  assert adam["sessions"] == [2e-3, 3e-3, 8e-3]
  assert (adam["min"], adam["median"], adam["max"]) == (2e-3, 3e-3, 8e-3)
  assert adam["seconds_per_step"] == 3e-3
  # Ratios are taken session by session against that session's base: 2, 1, 4 -> median 2.
  assert adam["session_ratios"] == pytest.approx([2.0, 1.0, 4.0])
  assert adam["ratio_rmsprop"] == pytest.approx(2.0)
  assert adam["memory_ratio_rmsprop"] == pytest.approx(2.0)


def test_one_session_keeps_the_old_record(fake_timing):
  out = overheads.measure_task(GRID, GRID["tasks"][0], labels=["rmsprop", "adam"])
  assert set(out["adam"]) == {"seconds_per_step", "ratio_rmsprop", "bytes",
                              "memory_ratio_rmsprop"}
  assert out["adam"]["ratio_rmsprop"] == pytest.approx(2.0)


def test_sessions_must_be_positive():
  with pytest.raises(ValueError, match="sessions must be at least 1"):
    overheads.measure_task(GRID, GRID["tasks"][0], sessions=0)


def test_add_scales_the_new_figures_to_the_recorded_base(fake_timing):
  """--add: adam is timed beside rmsprop (this process: 1 ms and 2 ms); the record's rmsprop
  took 4 ms, so adam's seconds are scaled by 4 (8 ms) and the recorded figures are kept."""
  recorded = {"rmsprop": {"seconds_per_step": 4e-3, "ratio_rmsprop": 1.0, "bytes": 100,
                          "memory_ratio_rmsprop": 1.0},
              "other": {"seconds_per_step": 6e-3, "ratio_rmsprop": 1.5, "bytes": 100,
                        "memory_ratio_rmsprop": 1.0}}
  out = overheads.add_to_task(GRID, GRID["tasks"][0], recorded, ["adam"])
  assert out["rmsprop"] == recorded["rmsprop"] and out["other"] == recorded["other"]
  assert out["adam"]["seconds_per_step"] == pytest.approx(8e-3)
  assert out["adam"]["scaled_by"] == pytest.approx(4.0)
  assert out["adam"]["ratio_rmsprop"] == pytest.approx(2.0)
  assert next(fake_timing) == 1  # one session, both timed in it


def test_add_needs_a_record():
  with pytest.raises(ValueError, match="no recorded figures"):
    overheads.add_to_task(GRID, GRID["tasks"][0], {}, ["adam"])


def test_add_keeps_the_recorded_base_for_the_ratios(fake_timing):
  """A record whose base is adam (no rmsprop timed): rmsprop added is scaled to adam's
  recorded time and its ratios are against adam, not against itself."""
  recorded = {"adam": {"seconds_per_step": 4e-3, "ratio_rmsprop": 1.0, "bytes": 200,
                       "memory_ratio_rmsprop": 1.0}}
  out = overheads.add_to_task(GRID, GRID["tasks"][0], recorded, ["rmsprop"])
  # this process: adam 2 ms (bytes 100), rmsprop 1 ms (bytes 200): rmsprop is 0.5x adam
  assert out["rmsprop"]["ratio_rmsprop"] == pytest.approx(0.5)
  assert out["rmsprop"]["memory_ratio_rmsprop"] == pytest.approx(2.0)
  assert out["rmsprop"]["seconds_per_step"] == pytest.approx(2e-3)


def test_a_task_with_nothing_selected_is_skipped(fake_timing, tmp_path, monkeypatch):
  """--optimizers matching nothing on a task times nothing there (an empty selection once
  meant every optimizer of the task)."""
  grid = GRID | {"baselines": [], "tasks": [{"name": "task", "optimizers": ["rmsprop"]},
                           {"name": "other", "optimizers": ["rmsprop", "adam"]}]}
  monkeypatch.setattr(overheads.run_lib, "load_grid", lambda path: grid)
  out = tmp_path / "overheads.json"
  overheads.main(["grid.json", "--optimizers", "adam", "--out", str(out)])
  import json
  tasks = json.loads(out.read_text())["tasks"]
  assert list(tasks) == ["other"] and list(tasks["other"]) == ["adam"]


def test_add_scales_every_session_and_the_spread(fake_timing):
  """--add with repeated sessions: the base's median in this process (1, 3, 2 ms -> 2 ms)
  against its recorded 4 ms gives a factor 2, applied to each of adam's sessions (2, 3, 8 ms)
  and to their minimum, median and maximum."""
  recorded = {"rmsprop": {"seconds_per_step": 4e-3, "ratio_rmsprop": 1.0, "bytes": 100,
                          "memory_ratio_rmsprop": 1.0}}
  out = overheads.add_to_task(GRID, GRID["tasks"][0], recorded, ["adam"], sessions=3)
  adam = out["adam"]
  assert adam["scaled_by"] == pytest.approx(2.0)
  assert adam["sessions"] == pytest.approx([4e-3, 6e-3, 16e-3])
  assert (adam["min"], adam["median"], adam["max"]) == pytest.approx((4e-3, 6e-3, 16e-3))
  assert adam["seconds_per_step"] == pytest.approx(6e-3)
