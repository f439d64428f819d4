"""The benchmark protocol: learning-rate ladder, target setting, resume and the report's figures.

Training is replaced by synthetic loss curves whose shape is known in closed form, so every
figure the runner and the report produce can be checked against an independent computation.
"""

import dataclasses
import json
import math
import types

import jax
import numpy as np
import pytest

from avggrad import metrics
from benchmarks import headline, performance_profile, report
from benchmarks import run as run_lib

STEPS = 200
# Each optimizer's synthetic "best" learning rate (its loss decays fastest there) and speed.
BEST = {"rmsprop": 1e-3, "adam": 1e-2, "avg-rmsprop": 3e-5}
SPEED = {"rmsprop": 1.0, "adam": 1.2, "avg-rmsprop": 1.1}


def synthetic_losses(label: str, lr: float, seed: int) -> list[float]:
  """Exponential decay whose rate peaks at the optimizer's best lr (log-distance)."""
  rate = 0.03 * SPEED[label] / (1.0 + abs(math.log10(lr / BEST[label])))
  t = np.arange(STEPS)
  return list(0.1 + 2.0 * np.exp(-rate * t) + 1e-3 * seed)


def make_grid(tmp_path, target=None, dataset="fashion_mnist_small"):
  grid = {
      "name": "t", "lrs": [1e-4, 3e-4, 1e-3, 3e-3], "seeds": [0, 1, 2], "max_extensions": 2,
      "target_fraction": 0.8, "baselines": ["rmsprop", "adam"],
      "defaults": {"steps": STEPS, "dataset": dataset, "depth": 2, "width": 8},
      "optimizers": {k: k for k in BEST},
      "tasks": [{"name": "task", "target": target}],
  }
  path = tmp_path / "grid.json"
  path.write_text(json.dumps(grid))
  return str(path)


@pytest.fixture(params=["sweep", "one-at-a-time"])
def fake_training(monkeypatch, request):
  """Replaces training by the synthetic curves, through the sweep harness (the runner's
  default) or one run at a time; ``calls`` lists every (optimizer, lr, seed) trained."""
  calls = []

  def train(config, **kwargs):
    label = {v: k for k, v in BEST.items()}.get(config.optimizer, config.optimizer)
    calls.append((label, config.lr, config.seed))
    return types.SimpleNamespace(
        status="ok", losses=synthetic_losses(label, config.lr, config.seed), evals=[],
        test_loss=0.0, test_accuracy=0.5, seconds_per_step=1e-3, compile_seconds=0.0,
        batched_runs=1, scale=None)

  def sweep(config, lrs, seeds, **kwargs):
    return {(lr, s): train(dataclasses.replace(config, lr=lr, seed=s)) for lr in lrs
            for s in seeds}

  monkeypatch.setattr(run_lib.training, "train", train)
  monkeypatch.setattr(run_lib.sweep, "sweep", sweep)
  monkeypatch.setattr(run_lib.Runner, "datasets", lambda self, config: (None, None))
  if request.param == "one-at-a-time":
    init = run_lib.Runner.__init__

    def one_at_a_time(self, *args, **kwargs):
      init(self, *args, **(kwargs | {"batched": False}))

    monkeypatch.setattr(run_lib.Runner, "__init__", one_at_a_time)
  return calls


def test_runner_ladder_target_and_resume(tmp_path, fake_training):
  grid_path = make_grid(tmp_path)
  out = str(tmp_path / "results" / "runs.jsonl")
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results")])
  ran = {(label, lr) for label, lr, _ in fake_training}
  # Adam's best (1e-2) lies above the ladder: it gets 1e-2, then 3e-2 (1e-2 was an edge); 3e-2
  # is worse, so the extension stops there.
  assert ("adam", 1e-2) in ran and ("adam", 3e-2) in ran and ("adam", 0.1) not in ran
  # AvgGrad's best (3e-5) lies below it: 3e-5, then 9e-6 (3e-5 was an edge), then it stops.
  assert ("avg-rmsprop", 3e-5) in ran and ("avg-rmsprop", 9e-6) in ran
  assert not any(label == "avg-rmsprop" and lr < 9e-6 for label, lr in ran)
  # RMSProp's best sits inside the ladder: nothing beyond it.
  assert {lr for label, lr in ran if label == "rmsprop"} == {1e-4, 3e-4, 1e-3, 3e-3}
  # Target: the best baseline (lowest median final loss: Adam at 1e-2 decays fastest) at 80%
  # of the budget, smoothed, median over seeds; recorded beside the runs, the grid file left
  # as it was, and filled into the grid wherever the results are read.
  assert json.loads(open(grid_path).read())["tasks"][0]["target"] is None
  window = metrics.default_window(STEPS)
  expected = np.median([metrics.smooth(synthetic_losses("adam", 1e-2, s), window)[159]
                        for s in (0, 1, 2)])
  recorded = run_lib.read_targets(str(tmp_path / "results"))["task"]
  assert recorded["target"] == pytest.approx(expected, rel=1e-4)
  assert recorded["target_source"].startswith("adam (lr 0.01)")
  grid = run_lib.load_grid(grid_path)
  run_lib.results_folder(grid, str(tmp_path / "results"))
  assert grid["tasks"][0]["target"] == recorded["target"]
  assert len(run_lib.read_results(out)) == len(fake_training)
  # Resume: a second invocation trains nothing.
  before = len(fake_training)
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results")])
  assert len(fake_training) == before


def test_runner_optimizer_filter_keeps_the_baselines(tmp_path, fake_training, capsys):
  grid_path = make_grid(tmp_path)
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results"), "--optimizers", "adam"])
  # The filter names a baseline only, and the baselines always run (they set the target).
  assert {label for label, _, _ in fake_training} == {"rmsprop", "adam"}
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results"),
                "--optimizers", "adam, avg-*"])
  assert "avg-rmsprop" in {label for label, _, _ in fake_training}
  # A pattern that matches no optimizer of the grid (a typo) is an error that names it.
  with pytest.raises(SystemExit):
    run_lib.main([grid_path, "--optimizers", "avg-adm*"])
  assert "avg-adm*" in capsys.readouterr().err


def test_report_figures(tmp_path, fake_training):
  grid_path = make_grid(tmp_path)
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results")])
  grid = run_lib.load_grid(grid_path)
  run_lib.results_folder(grid, str(tmp_path / "results"))
  records = run_lib.read_results(str(tmp_path / "results" / "runs.jsonl"))
  summary = report.summarize_task(grid, grid["tasks"][0], records)
  window = metrics.default_window(STEPS)
  target = grid["tasks"][0]["target"]

  def iters(label, lr):
    # Records store losses to 5 significant digits.
    found = [metrics.iterations_to_target([float(f"{v:.5g}") for v in
                                           synthetic_losses(label, lr, s)], target, window)
             for s in (0, 1, 2)]
    assert None not in found
    return float(np.median(found))

  s = summary["optimizers"]
  assert s["adam"]["best_lr"] == 1e-2 and s["rmsprop"]["best_lr"] == 1e-3
  assert s["avg-rmsprop"]["best_lr"] == 3e-5
  assert s["rmsprop"]["ratio_adam"] == pytest.approx(iters("rmsprop", 1e-3) / iters("adam", 1e-2))
  assert s["avg-rmsprop"]["ratio_rmsprop"] == pytest.approx(
      iters("avg-rmsprop", 3e-5) / iters("rmsprop", 1e-3))
  assert 0.8 < s["avg-rmsprop"]["ratio_rmsprop"] < 1.0
  assert not summary["degenerate"]
  text = open(report.build_report(grid_path, str(tmp_path / "results"))).read()
  assert "| rmsprop | 0.001 |" in text and "†" not in text
  # The README table lays out the same ratios.
  row = headline.table([grid_path], str(tmp_path / "results")).splitlines()[-1]
  adam_vs_rmsprop = f"{iters('adam', 1e-2) / iters('rmsprop', 1e-3):.2f}"
  assert row.startswith("| task | 3 | " + adam_vs_rmsprop)
  # The peers layout: one row per optimizer, each against Adam.
  peers = headline.table([grid_path], str(tmp_path / "results"), columns="peers").splitlines()
  assert peers[0] == "| optimizer | task |"
  assert peers[2] == f"| Adam: iterations | {iters('adam', 1e-2):.0f} |"
  rmsprop_vs_adam = f"{iters('rmsprop', 1e-3) / iters('adam', 1e-2):.2f}"
  assert peers[3].startswith(f"| rmsprop | {rmsprop_vs_adam} (")


def test_report_and_headline_under_both_rate_rules(tmp_path):
  """Hand-made records where the rules disagree for Adam (its fast rate ends higher): the
  report and the README layouts take each optimizer at the rule's rate and say which rule."""
  from avggrad import protocol

  grid_path = make_grid(tmp_path, target=1.0)
  results = tmp_path / "results"
  results.mkdir()

  def line(slope, floor):
    return [float(v) for v in np.maximum(3.0 - slope * np.arange(STEPS), floor)]

  curves = {"rmsprop": {1e-3: (0.0125, 0.6), 3e-3: (0.01, 0.7)},
            "adam": {1e-3: (0.02, 0.3), 3e-3: (0.04, 0.8)}}  # 1e-3 ends lower, 3e-3 is faster
  with open(results / "runs.jsonl", "w") as f:
    for label, by_lr in curves.items():
      for lr, c in by_lr.items():
        for seed in (0, 1, 2):
          f.write(json.dumps({"task": "task", "optimizer": label, "lr": lr, "seed": seed,
                              "losses": line(*c), "status": "ok", "seconds_per_step": 1e-3,
                              "test_accuracy": 0.5}) + "\n")
  grid, _, records, _ = report.load(grid_path, str(results))
  task = grid["tasks"][0]
  fastest = report.summarize_task(grid, task, records, "fastest")["optimizers"]
  final = report.summarize_task(grid, task, records, "final-loss")["optimizers"]
  # Crossings of 1.0 in closed form (the smoothing leaves a line as it is): 2 / slope.
  assert fastest["adam"]["best_lr"] == 3e-3 and fastest["adam"]["median_iterations"] == 50
  assert final["adam"]["best_lr"] == 1e-3 and final["adam"]["median_iterations"] == 100
  assert fastest["adam"]["other"] == {"rule": "final-loss", "lr": 1e-3, "median_iterations": 100}
  assert fastest["adam"]["iteration_sweep"] == {1e-3: 100, 3e-3: 50}
  assert fastest["rmsprop"]["best_lr"] == final["rmsprop"]["best_lr"] == 1e-3
  assert fastest["adam"]["ratio_rmsprop"] == pytest.approx(50 / 160)
  assert final["adam"]["ratio_rmsprop"] == pytest.approx(100 / 160)
  text = open(report.build_report(grid_path, str(results))).read()
  assert protocol.RULE_TEXT["fastest"][1:] in text
  assert "| adam | 0.003* | 50 [50, 50] |" in text and "| 0.001: 100 |" in text
  assert "| adam | 100 | 50 |" in text  # the per-rate iterations table
  other = report.build_report(grid_path, str(results), rule="final-loss")
  assert other.endswith("REPORT-final-loss.md") and "| adam | 0.001* | 100 [100, 100] |" in open(
      other).read()
  # The README layouts: both rules, fastest first, each under the line naming it.
  printed = headline.tables([grid_path], str(results))
  first, second = printed.split(protocol.RULE_TEXT["final-loss"])
  assert first.startswith(protocol.RULE_TEXT["fastest"])
  assert f"| task | 3 | {50 / 160:.2f}" in first and f"| task | 3 | {100 / 160:.2f}" in second


def test_report_flags_a_target_at_the_uniform_predictors_loss(tmp_path, fake_training):
  # A target within 2% of log(10) (the baselines never left the plateau) is flagged.
  grid_path = make_grid(tmp_path, target=0.99 * math.log(10))
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results")])
  grid = run_lib.load_grid(grid_path)
  run_lib.results_folder(grid, str(tmp_path / "results"))
  records = run_lib.read_results(str(tmp_path / "results" / "runs.jsonl"))
  summary = report.summarize_task(grid, grid["tasks"][0], records)
  assert summary["degenerate"]
  # Every synthetic run ends at ~0.1 < 0.9 log(10): all seeds left the plateau.
  assert all(o["left_plateau"] == 3 for o in summary["optimizers"].values())
  text = open(report.build_report(grid_path, str(tmp_path / "results"))).read()
  assert "Degenerate target" in text and "task †" in text


@pytest.mark.parametrize("fraction_of", [2, 1000])
def test_a_language_models_uniform_predictor_is_over_its_vocabulary(tmp_path, fake_training,
                                                                     fraction_of):
  # The transformer LM predicts one of vocab_size words: its uniform predictor's loss is
  # log(vocab_size), not log(2) of IMDb's sentiment labels. A target at 0.99 log(2) is far
  # below that plateau (not degenerate); at 0.99 log(1000) it is on it.
  grid_path = make_grid(tmp_path, target=0.99 * math.log(fraction_of), dataset="imdb_reviews")
  grid = json.loads(open(grid_path).read())
  grid["defaults"] |= {"model": "text-lm", "vocab_size": 1000, "max_len": 9}
  open(grid_path, "w").write(json.dumps(grid))
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "results")])
  grid = run_lib.load_grid(grid_path)
  records = run_lib.read_results(str(tmp_path / "results" / "runs.jsonl"))
  summary = report.summarize_task(grid, grid["tasks"][0], records)
  assert summary["chance_loss"] == pytest.approx(math.log(1000))
  assert summary["degenerate"] == (fraction_of == 1000)


def test_grid_errors_name_the_problem(tmp_path):
  path = tmp_path / "g.json"
  path.write_text(json.dumps({"name": "x", "lrs": [1e-3], "seeds": [0], "optimizers": {},
                              "tasks": [], "baselines": ["rmsprop"]}))
  with pytest.raises(ValueError, match="baselines .*rmsprop"):
    run_lib.load_grid(str(path))


def test_overhead_tables_are_ratios_against_each_baseline():
  overheads = {"device": "cpu", "tasks": {"t": {
      "rmsprop": {"seconds_per_step": 2.0, "bytes": 10},
      "adam": {"seconds_per_step": 2.5, "bytes": 20},
      "avg": {"seconds_per_step": 5.0, "bytes": 50}}}}
  lines = report.overhead_tables(["t"], ["rmsprop", "adam", "avg"], overheads)
  rows = [line for line in lines if line.startswith("| t |")]
  assert rows == ["| t | 1.00 (1.00) | 1.25 (2.00) | 2.50 (5.00) |",
                  "| t | 0.80 (0.50) | 1.00 (1.00) | 2.00 (2.50) |"]


def test_device_benchmark_writes_its_results_within_a_budget(tmp_path):
  """benchmarks.device on CPU: a spent budget still writes a (partial) result; a small one
  measures the step-cost part, every variant against optax.adam."""
  from benchmarks import device

  out = device.main(["--quick", "--budget", "0", "--out", str(tmp_path)])
  name = device.device_name()
  saved = json.loads((tmp_path / f"{name}.json").read_text())
  assert saved["step_cost"] == {} and saved["sweeps"] == {}
  assert any("budget spent" in s for s in saved["skipped"]) and out["device"] == name
  out = device.main(["--quick", "--budget", "60", "--parts", "step_cost", "--out",
                     str(tmp_path)])
  assert set(out["step_cost"]) == {"4x32, batch 32", "2x64, batch 64"}
  for row in out["step_cost"].values():
    assert set(row) == set(device.VARIANTS) and row["optax.adam"]["vs_optax_adam"] == 1.0
    assert all(v["seconds"] > 0 for v in row.values())
  assert "Step time relative to `optax.adam`" in (tmp_path / f"{name}.md").read_text()


def test_device_benchmark_sweep_on_cpu(tmp_path, monkeypatch):
  """The tuned sweep of benchmarks.device end to end at --quick sizes (two of its optimizers,
  to keep the compilations few on CPU): every rate's iterations kept, both rules' rows, avg-muon
  on its own part of the ladder."""
  from avggrad import protocol
  from benchmarks import device

  monkeypatch.setattr(device, "PEERS", ["adam", "avg-muon"])
  monkeypatch.setattr(device, "LADDERS", {"avg-muon": (1e-2, 1e-2)})
  out = device.main(["--quick", "--budget", "600", "--parts", "sweep", "--out", str(tmp_path)])
  [(task, s)] = out["sweeps"].items()
  assert set(s["per_rate"]["adam"]) == {"0.001", "0.01"} and set(s["per_rate"]["avg-muon"]) == {
      "0.01"}
  assert list(s["rules"]) == list(protocol.RULES)
  for rule, by_rule in s["rules"].items():
    for spec, row in by_rule["optimizers"].items():
      per_rate = {float(lr): v for lr, v in s["per_rate"][spec].items()}
      if rule == "fastest" and protocol.fastest_lr(per_rate) is not None:
        assert row["lr"] == protocol.fastest_lr(per_rate)
      assert row["iterations"] == per_rate[row["lr"]]
      assert row["seconds_to_target"] == pytest.approx(
          row["median_iterations"] * row["seconds_per_step"]) or math.isinf(
              row["median_iterations"])
    assert by_rule["optimizers"]["avg-muon"]["lr"] == 1e-2
  text = (tmp_path / f"{device.device_name()}.md").read_text()
  assert text.index("Rate rule: fastest") < text.index("Rate rule: final loss")
  assert "| avg-muon |  | " in text  # not run at 1e-3: an empty cell in the per-rate table
  assert set(out["sweep_seconds"][task]) == {"adam", "avg-muon"}
  assert "Seconds per sweep, compilation included: " in text


def _fake_run(losses):
  return types.SimpleNamespace(losses=list(losses), diverged=False)


def test_device_summary_under_both_rules():
  """benchmarks.device.summarize on hand-made curves: straight descents to a floor, so the
  iterations to the target are closed-form crossings; Muon's two rules disagree (its fast
  rate ends higher), avg-muon is compared with Muon under each."""
  from avggrad import protocol
  from benchmarks import device

  steps, lrs, seeds = 400, [1e-3, 1e-2], [0, 1]

  def line(slope, floor):
    return np.maximum(3.0 - slope * np.arange(steps), floor)

  curves = {  # (slope, floor) per rate; Adam's lowest-final-loss rate 1e-3 sets target 1.0
      "adam": {1e-3: (0.010, 1.0), 1e-2: (0.005, 1.2)},
      "muon": {1e-3: (0.020, 0.2), 1e-2: (0.040, 0.8)},
      "avg-muon": {1e-2: (0.025, 0.5)},
  }
  runs = {spec: {(lr, s): _fake_run(line(*c)) for lr, c in by_lr.items() for s in seeds}
          for spec, by_lr in curves.items()}
  step = {"adam": 1e-3, "muon": 2e-3, "avg-muon": 4e-3}
  config = device.training.TrainConfig(steps=steps)
  s = device.summarize(config, runs, {k: {"seconds_per_step": v} for k, v in step.items()},
                       lrs, seeds)
  assert s["target"] == pytest.approx(1.0)

  def crossing(slope):
    return math.ceil(2.0 / slope)

  assert s["per_rate"]["muon"] == {"0.001": [100, 100], "0.01": [50, 50]}
  assert s["per_rate"]["avg-muon"] == {"0.01": [crossing(0.025)] * 2}
  fastest, final = s["rules"]["fastest"]["optimizers"], s["rules"]["final-loss"]["optimizers"]
  assert fastest["muon"]["lr"] == 1e-2 and final["muon"]["lr"] == 1e-3
  assert fastest["adam"]["lr"] == final["adam"]["lr"] == 1e-3
  # Adam meets its own target where its line bends onto the floor 1.0: the smoothing window
  # (9 steps) delays that crossing by up to half a window.
  adam_iters = fastest["adam"]["median_iterations"]
  assert 200 <= adam_iters <= 205
  # Best peer in wall-clock: Muon at 50 x 2 ms (fastest rule), at 100 x 2 ms (final loss):
  # both beat Adam's ~200 x 1 ms.
  assert s["rules"]["fastest"]["best_peer"] == s["rules"]["final-loss"]["best_peer"] == "muon"
  assert fastest["avg-muon"]["wall_vs_muon"] == pytest.approx(80 * 4e-3 / (50 * 2e-3))
  assert final["avg-muon"]["wall_vs_muon"] == pytest.approx(80 * 4e-3 / (100 * 2e-3))
  assert fastest["avg-muon"]["wall_vs_best_peer"] == fastest["avg-muon"]["wall_vs_muon"]
  assert fastest["adam"]["wall_vs_best_peer"] == pytest.approx(adam_iters * 1e-3 / (50 * 2e-3))
  assert fastest["muon"]["edge"]
  assert fastest["muon"]["iterations_vs_adam"] == pytest.approx(50 / adam_iters)
  out = {"device": "cpu", "budget": 1.0, "jax": "", "device_count": 1, "elapsed": 0.0,
         "step_cost": {}, "sweeps": {"t": s}, "skipped": []}
  text = device.markdown(out)
  assert f"| muon | 0.01* | 50 | {50 / adam_iters:.2f} |" in text
  assert f"| muon | 0.001* | 100 | {100 / adam_iters:.2f} |" in text
  assert "avg-muon / Muon: iterations 1.60, wall-clock 3.20." in text
  assert "| avg-muon |  | 80 |" in text


def test_performance_profile_and_best_peer_table(tmp_path, fake_training):
  grid_path = make_grid(tmp_path)
  results = tmp_path / "results"
  run_lib.main([grid_path, "--results-dir", str(results)])
  step = {"rmsprop": 1e-3, "adam": 2e-3, "avg-rmsprop": 3e-3}
  (results / "overheads.json").write_text(json.dumps(
      {"tasks": {"task": {k: {"seconds_per_step": v} for k, v in step.items()}}}))
  target = run_lib.read_targets(str(results))["task"]["target"]
  window = metrics.default_window(STEPS)

  def seconds(label, lr):
    found = [metrics.iterations_to_target([float(f"{v:.5g}") for v in
                                           synthetic_losses(label, lr, s)], target, window)
             for s in (0, 1, 2)]
    return float(np.median(found)) * step[label]

  wall = {"rmsprop": seconds("rmsprop", 1e-3), "adam": seconds("adam", 1e-2),
          "avg-rmsprop": seconds("avg-rmsprop", 3e-5)}
  peer = min(("rmsprop", "adam"), key=wall.get)
  text = performance_profile.build(grid_path, ["avg-rmsprop"], ["rmsprop", "adam"],
                                   min_depth=0, out=str(tmp_path / "out"),
                                   results_dir=str(results))
  row = next(line for line in text.splitlines() if line.startswith("| task | ") and " s | " in line)
  assert f"| {peer}: " in row
  assert f"({wall['avg-rmsprop'] / wall[peer]:.2f}) |" in row
  # With one task, rho(1) is 1 for the fastest optimizer and 0 for the others.
  fastest = min(wall, key=wall.get)
  assert f"| {fastest} | 1.00 |" in text
  assert (tmp_path / "out" / "profile.png").exists()
  # Closed form with a miss: the miss never counts, ties count for both.
  rho = performance_profile.profile({"a": [1.0, math.inf, 3.0], "b": [2.0, 5.0, 3.0]},
                                    [1.0, 2.0])
  assert rho == {"a": [2 / 3, 2 / 3], "b": [2 / 3, 1.0]}
  # A task where a profiled optimizer did not run is left out, by name.
  with pytest.raises(ValueError, match="not run: lion"):
    performance_profile.build(grid_path, ["lion"], ["adam"], min_depth=0,
                              results_dir=str(results))


def test_runner_tasks_take_several_globs_and_shard_the_selection(tmp_path, fake_training):
  grid_path = make_grid(tmp_path)
  grid = json.loads(open(grid_path).read())
  grid["tasks"] = [{"name": n, "target": None} for n in ("a1", "b1", "a2")]
  open(grid_path, "w").write(json.dumps(grid))
  run_lib.main([grid_path, "--results-dir", str(tmp_path / "r"), "--tasks", "b*,a2",
                "--shard", "1/2", "--optimizers", "adam"])
  # The selection is [b1, a2] (grid order); shard 1 of 2 takes its second task.
  assert {r["task"] for r in run_lib.read_results(str(tmp_path / "r" / "runs.jsonl"))} == {"a2"}


def test_gain_probe_reports_what_accelerate_did():
  import jax
  from avggrad import transforms
  from benchmarks.probes import gain_stats
  point = {"a": np.array([1.0, -1.0, 2.0, 0.5]), "b": np.array([[1.0, 1.0]])}
  average = {"a": np.array([3.0, -2.0, 1.0, -1.0]), "b": np.array([[4.0, 1.0]])}
  records = []
  with gain_stats.probing(records) as probe:
    out = jax.jit(probe)(point, average)
  assert set(transforms.COMBINES) == {"replace", "accelerate", "no_flip"}  # nothing patched
  # accelerate fires where the signs agree and |average| > |point|: a[0] (x3), a[1] (x2),
  # b[0, 0] (x4); not a[2] (shorter), a[3] (flipped) or b[0, 1] (equal).
  np.testing.assert_allclose(out["a"], [3.0, -2.0, 2.0, 0.5])
  fired, gain, lengthening = records[0]
  assert fired == pytest.approx(3 / 6) and gain == pytest.approx(3.0)
  g = np.concatenate([point["a"], point["b"].ravel()])
  c = np.array([3.0, -2.0, 2.0, 0.5, 4.0, 1.0])
  assert lengthening == pytest.approx(np.linalg.norm(c) / np.linalg.norm(g), rel=1e-6)


def test_a_run_recorded_twice_counts_once(tmp_path, fake_training):
  grid_path = make_grid(tmp_path)
  results = tmp_path / "results"
  run_lib.main([grid_path, "--results-dir", str(results)])
  out = results / "runs.jsonl"
  lines = out.read_text().splitlines()
  out.write_text("\n".join(lines + lines[:5]) + "\n")  # five runs recorded twice
  assert len(run_lib.read_results(str(out))) == len(lines)
  grid, _, records, _ = report.load(grid_path, str(results))
  [(_, summary)] = report.summarize_tasks(grid, records, None)
  for s in summary["optimizers"].values():
    assert len(s["iterations"]) == 3  # three seeds, not more


def test_selftuning_calibration_rule_and_profile_area(tmp_path):
  from benchmarks import selftuning
  # Geometric mean over tasks, a miss infinite: the rule's figure.
  assert selftuning.geometric_mean([100.0, 400.0]) == pytest.approx(200.0)
  assert math.isinf(selftuning.geometric_mean([100.0, math.inf]))
  # Area under the profile over tau in [1, 4], normalised: closed forms on two tasks.
  # "a" fastest on task 0, 3x slower on task 1: rho_a = 1/2 on [1, 3), 1 on [3, 4].
  area = selftuning.profile_area({"a": [1.0, 3.0], "b": [2.0, 1.0], "c": [math.inf, 1.0]})
  assert area["a"] == pytest.approx((0.5 * 2 + 1.0 * 1) / 3, abs=2e-3)
  assert area["b"] == pytest.approx((0.5 * 1 + 1.0 * 2) / 3, abs=2e-3)
  assert area["c"] == pytest.approx(0.5, abs=2e-3)  # a miss never counts


def test_per_coordinate_average_uses_the_batch_and_the_exact_diagonal():
  """pc-adam on a separable quadratic whose loss takes its batch: the Hutchinson diagonal of
  a diagonal Hessian is exact (z * (H z) = h for Rademacher z), so the average gradient is
  g + diag(H) * span * Delta / 2 in closed form, Delta being Adam's step from g."""
  import jax.numpy as jnp
  import optax

  import avggrad
  from benchmarks import experimental

  curvature = jnp.array([1.0, 4.0, 0.25])
  params = jnp.array([1.0, -2.0, 3.0])
  batch = jnp.array([[0.5, 0.5, 0.5], [1.5, -0.5, 2.5]])

  def value_fn(p, batch):
    return 0.5 * jnp.mean(jnp.sum(curvature * (p - batch) ** 2, axis=-1))

  g = jax.grad(value_fn)(params, batch)
  tx = experimental.per_coordinate_average(avggrad.adam_baseline(0.1), span=2.0, combine="replace")
  updates, _ = tx.update(g, tx.init(params), params, value_fn=value_fn, batch=batch)
  adam = avggrad.adam_baseline(0.1)
  delta, _ = adam.update(g, adam.init(params), params)
  average = g + 0.5 * curvature * 2.0 * delta
  want, _ = adam.update(average, adam.init(params), params)
  np.testing.assert_allclose(updates, want, rtol=1e-6)
  with pytest.raises(ValueError, match="value_fn"):
    tx.update(g, tx.init(params), params)


def test_packed_results_read_as_the_plain_ones(tmp_path, fake_training, monkeypatch):
  """--pack turns a folder's run files into one runs.jsonl.xz that reads back record for
  record; runs appended after packing are read too and win over a packed copy; new runs go
  to results/<name> in the current folder by default, never to the tracked record."""
  grid_path = make_grid(tmp_path)
  results = tmp_path / "results"
  run_lib.main([grid_path, "--results-dir", str(results)])
  plain = run_lib.read_results(str(results / "runs.jsonl"))
  run_lib.main([grid_path, "--results-dir", str(results), "--pack"])
  assert sorted(p.name for p in results.iterdir()) == ["runs.jsonl.xz", "targets.json"]
  packed = run_lib.read_results(str(results / "runs.jsonl"))
  key = lambda r: (r["optimizer"], r["lr"], r["seed"])
  assert sorted(packed, key=key) == sorted(plain, key=key)
  newer = dict(packed[0], status="diverged")
  with open(results / "runs.jsonl", "w") as f:
    f.write(json.dumps(newer) + "\n")
  again = run_lib.read_results(str(results / "runs.jsonl"))
  assert len(again) == len(packed) and newer in again
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("AVGGRAD_RESULTS_DIR", raising=False)
  grid = run_lib.load_grid(grid_path)
  assert run_lib.results_path(grid, write=True) == str(tmp_path / "results" / grid["name"]
                                                       / "runs.jsonl")


def _gate_fixture():
  """A hand-made gate: three tasks (one development, two held-out), auto-adam's scales, and
  tuned ladders in the sources, with picks and ratios known by construction."""
  import dataclasses
  from benchmarks import auto_gate, run as run_lib
  base = {"dataset": "fashion_mnist", "model": "mlp", "target": 2.0, "steps": 10,
          "budget": 50}
  gate = {"name": "auto-gate", "defaults": {"width": 8, "batch_size": 4, "eval_every": 5},
          "lrs": [1e-3], "seeds": [0, 1], "baselines": [],
          "optimizers": {"auto-adam": "auto-adam"},
          "tasks": [base | {"name": "dev", "depth": 2, "split": "development"},
                    base | {"name": "h1", "depth": 4, "split": "held-out"},
                    base | {"name": "h2", "depth": 6, "split": "held-out (variant)"}]}
  tasks = {t["name"]: t for t in gate["tasks"]}

  def config(name, **changes):
    c = dataclasses.replace(run_lib.task_config(gate, tasks[name]), steps=50, **changes)
    return dataclasses.asdict(c)

  fast = [3.0] * 10 + [1.0] * 40  # reaches the target 2.0 first, ends higher
  slow = [3.0] * 30 + [0.5] * 20  # reaches it later, ends lower

  def runs(task, label, lr, losses, **changes):
    return [{"task": task, "optimizer": label, "lr": lr, "seed": s, "status": "ok",
             "losses": losses, "config": config(task, **changes)} for s in (0, 1)]

  auto_records = []
  for task, scale in (("dev", 4.0), ("h1", 2.0), ("h2", 8.0)):
    for seed in (0, 1):
      auto_records.append({"task": task, "optimizer": "auto-adam", "lr": 1e-3, "seed": seed,
                           "evals": [{"step": 0, "scale": 1.0}, {"step": 5, "scale": scale},
                                     {"step": 10, "scale": scale}]})
  sources = {
      "fine": (runs("h1", "adam", 1e-2, fast) + runs("h1", "adam", 1e-3, slow)
               + runs("h1", "muon", 0.05, fast) + runs("h1", "muon", 0.02, slow)
               + runs("h1", "nadam", 1e-3, slow, depth=3)),  # another configuration
      "muon-split": runs("h1", "muon-split", 0.03, fast) + runs("h1", "muon-split", 0.01, slow),
      "selftuning": (runs("h2", "adam-tuned", 4e-3, fast) + runs("h2", "adam-tuned", 1e-2, slow)
                     + runs("h2", "adam", 1.0, [0.1] * 50)),  # one untuned rate: not a ladder
  }
  return auto_gate, gate, auto_records, sources


def test_auto_gate_table_arithmetic():
  auto_gate, gate, auto_records, sources = _gate_fixture()
  result = auto_gate.table(gate, auto_records, sources)
  rows = {r["task"]: r for r in result["rows"]}
  assert [rows[t]["auto"]["rate"] for t in ("dev", "h1", "h2")] == pytest.approx(
      [4e-3, 2e-3, 8e-3])
  h1, h2 = rows["h1"]["peers"], rows["h2"]["peers"]
  assert (h1["adam"]["fastest"], h1["adam"]["final-loss"]) == (1e-2, 1e-3)
  assert h1["adam"]["ratio"]["fastest"] == pytest.approx(5.0)
  assert h1["adam"]["ratio"]["final-loss"] == pytest.approx(0.5)
  # the track's adam-tuned ladder counts, its one-rate plain label does not
  assert (h2["adam"]["fastest"], h2["adam"]["final-loss"]) == (4e-3, 1e-2)
  # Muon as muon-split where that ran; a ladder of another configuration is no record
  assert h1["muon"]["label"] == "muon-split" and h1["muon"]["fastest"] == 0.03
  assert h1["nadam"]["rates"] == 0 and h2["muon"]["rates"] == 0
  spreads = result["spreads"]
  assert spreads[("held-out", "adam", "fastest")]["spread"] == pytest.approx(5.0 / 0.5)
  assert spreads[("held-out", "adam", "final-loss")]["spread"] == pytest.approx(1.25 / 0.5)
  assert spreads[("held-out", "adam", "final-loss")]["tasks"] == 2
  muon = spreads[("held-out", "muon", "fastest")]
  assert muon["missing"] == ["h2"] and muon["tasks"] == 1 and math.isnan(muon["spread"])
  assert math.isnan(spreads[("development", "adam", "fastest")]["spread"])
  text = auto_gate.markdown(result)
  assert "no records" in text and "| held-out | adam | final-loss | 2.5x | 2 of 2 | - |" in text
  assert "adam (final-loss, 2.5x" in auto_gate.verdict(result)
  assert "fails" in auto_gate.verdict(result, gate=2.0)


def test_auto_gate_grid_cuts_each_budget_to_a_fifth():
  from benchmarks import auto_gate
  track = {"defaults": {"steps": 1000}, "lrs": [1e-3], "seeds": [0, 1, 2],
           "optimizers": {"auto-adam": "auto-adam", "adam": "adam"},
           "tasks": [{"name": "a", "lrs": {"adam": [1.0]}, "split": "held-out"},
                     {"name": "b", "steps": 600, "target": 0.5}]}
  grid = auto_gate.gate_grid(track)
  assert [(t["steps"], t["eval_every"], t["budget"]) for t in grid["tasks"]] == [
      (200, 50, 1000), (120, 30, 600)]
  assert grid["optimizers"] == {"auto-adam": "auto-adam"} and grid["seeds"] == [0, 1, 2]
  assert "lrs" not in grid["tasks"][0] and grid["tasks"][1]["target"] == 0.5


def test_selftuning_tuned_best_on_a_variant_uses_the_tracks_own_ladders(monkeypatch):
  """A task of no other grid: the tuned best peer is the fastest in wall-clock of the track's
  own tuned ladders (its ``tuned_peers``), as summarised under the rule; without them, none."""
  from benchmarks import selftuning
  monkeypatch.setattr(selftuning, "_tuned_summaries", lambda rule="fastest": {})
  own = {"optimizers": {
      "adam-tuned": {"median_iterations": 100, "wall_seconds": 2.0},
      "nadam-tuned": {"median_iterations": 120, "wall_seconds": 1.5},
      "muon-split-tuned": {"median_iterations": 80, "wall_seconds": math.nan},  # not timed
      "auto-adam": {"median_iterations": 50, "wall_seconds": 0.5}}}  # an entry, not a peer
  peers = {"adam": "adam-tuned", "nadam": "nadam-tuned", "muon": "muon-split-tuned"}
  best = selftuning.tuned_best("variant", {}, "fastest", own, peers)
  assert best == {"label": "nadam-tuned", "iterations": 120, "wall_seconds": 1.5}
  assert selftuning.tuned_best("variant", {}, "fastest") is None
  assert selftuning.tuned_best("variant", {}, "fastest", {"optimizers": {}}, peers) is None
