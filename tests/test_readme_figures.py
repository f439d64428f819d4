"""Figures the README and the docs quote from a tracked result file, checked against that file.

Each test recomputes a quoted figure from the record it cites (the fine grid's and the
self-tuning track's interleaved step times, ``benchmarks/results/step_cost.json``, the
library's own defaults, the H200 measurement under ``../shared/accelerator`` when it is
there) and asserts that the text says exactly that, rounded as the text rounds it. A re-timing
that moves a figure, or an edit that mistypes one, fails here until the text follows.
"""

from __future__ import annotations

import ast
import inspect
import json
import pathlib
import re
import statistics

import pytest

import avggrad
from benchmarks import run as run_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
H200 = ROOT.parent / "shared" / "accelerator" / "h200-2026-12-04"


def text(path: str = "README.md") -> str:
  """The file's prose with block-quote markers and line breaks folded into single spaces."""
  raw = (ROOT / path).read_text()
  return re.sub(r"\s+", " ", re.sub(r"(?m)^\s*>\s?", "", raw))


def load(path: pathlib.Path) -> dict:
  return json.loads(path.read_text())


def step_ratios(overheads: dict, numerator: str, denominator: str,
                tasks: list[str]) -> list[float]:
  return [overheads["tasks"][t][numerator]["seconds_per_step"]
          / overheads["tasks"][t][denominator]["seconds_per_step"]
          for t in tasks if numerator in overheads["tasks"].get(t, {})]


def fine_tasks(*, models: tuple[str, ...] = ("mlp", "text-mlp", "cnn"),
               min_depth: int = 8) -> list[str]:
  """The fine grid's deep tasks (depth >= 8, as the performance profile takes them)."""
  grid = run_lib.load_grid(str(ROOT / "benchmarks" / "grids" / "fine.json"))
  out = []
  for task in grid["tasks"]:
    config = run_lib.task_config(grid, task)
    if config.depth >= min_depth and config.model in models:
      out.append(task["name"])
  return out


def span(values: list[float], digits: int) -> str:
  return f"{min(values):.{digits}f}-{max(values):.{digits}f}x"


def test_avggrad_adam_step_range_is_the_fine_grids():
  ratios = step_ratios(load(RESULTS / "fine" / "overheads.json"), "avg-adam-q", "adam",
                       fine_tasks())
  assert len(ratios) == 9
  readme = text()
  assert f"Its step costs {span(ratios, 2)} an Adam step here" in readme
  assert f"A default step costs {span(ratios, 2)} an Adam step here" in readme
  assert f"for {span(ratios, 2)} an Adam step on the fine grid's deep tasks" in text(
      "docs/guide.md")


def test_muon_step_range_on_the_deep_mlps_is_the_fine_grids():
  ratios = step_ratios(load(RESULTS / "fine" / "overheads.json"), "muon", "adam",
                       fine_tasks(models=("mlp", "text-mlp")))
  assert len(ratios) == 7
  readme = text()
  assert f"costs {span(ratios, 1)} an Adam step on the MLPs on CPU" in readme
  assert f"costs {span(ratios, 1)} an Adam step on the deep MLPs on these CPUs" in readme
  cnn = step_ratios(load(RESULTS / "fine" / "overheads.json"), "muon", "adam",
                    fine_tasks(models=("cnn",)))
  assert f"({min(cnn):.2f}-{max(cnn):.2f}x on the CNNs)" in readme


def test_auto_adam_step_cost_is_the_self_tuning_tracks():
  overheads = load(RESULTS / "selftuning" / "overheads.json")
  mlps = [t for t in overheads["tasks"] if "mlp" in t]
  ratios = step_ratios(overheads, "auto-adam", "adam-1e-3", mlps)
  readme = text()
  assert (f"{span(ratios, 2)} an Adam step on the MLPs here, median "
          f"{statistics.median(ratios):.2f}x") in readme
  resnet = step_ratios(overheads, "auto-adam", "adam-1e-3", ["fmnist-resnet4-relu-he"])
  assert (f"costs {resnet[0]:.1f}x an Adam step (convolutions; {span(ratios, 2)} on the MLPs)"
          in readme)


def test_estimator_costs_are_step_costs():
  estimators = load(RESULTS / "step_cost.json")["estimators"]
  base = estimators["jax.value_and_grad"]["seconds"]
  factorized = estimators["factorized"]["seconds"] / base
  trapezoid = estimators["trapezoid"]["seconds"] / base
  readme = text()
  assert f"| factorized | {factorized:.2f}x |" in readme
  assert f"| trapezoid | {trapezoid:.2f}x |" in readme
  assert f"({factorized:.2f}x and {trapezoid:.2f}x on a 16-layer tanh MLP" in text(
      "docs/factorization.md")
  steps = load(RESULTS / "step_cost.json")["steps"]
  previous = (steps["AvgGrad-RMSProp, the paper's form, previous step's range"]["seconds"]
              / steps["rmsprop (same-core baseline)"]["seconds"])
  assert f"(the paper's RMSProp form: {previous:.2f}x a same-core RMSProp step" in text(
      "docs/guide.md")


def api_defaults(name: str) -> dict[str, str]:
  """``k=v`` pairs of the README API table's signature for ``name(...)``."""
  match = re.search(rf"`{name}\(([^`]*)\)`", text())
  assert match, f"no `{name}(...)` in the README's API table"
  return dict(re.findall(r"(\w+)=(\"[^\"]*\"|[^,]+)", match.group(1)))


@pytest.mark.parametrize("name", ["auto", "auto_adam", "adam", "rmsprop",
                                  "value_and_average_grad"])
def test_api_table_defaults_are_the_codes(name):
  quoted = api_defaults(name)
  assert quoted, name
  parameters = inspect.signature(getattr(avggrad, name)).parameters
  for key, value in quoted.items():
    assert key in parameters, f"{name}: the README names an argument {key} it does not take"
    assert ast.literal_eval(value.strip()) == parameters[key].default, (
        f"{name}: the README says {key}={value}, the code's default is "
        f"{parameters[key].default!r}")


@pytest.mark.skipif(not H200.is_dir(), reason="the shared accelerator measurements are absent")
def test_h200_figures_are_the_shared_measurements():
  device = load(H200 / "gpu_nvidia_h200.json")
  stacking = load(H200 / "muon_stacking.json")
  readme = text()
  assert f"One NVIDIA H200, JAX {device['jax']}" in readme
  sweeps = list(device["sweeps"].values())  # the 16-layer tanh MLP, then the ELU MLP

  def fastest(per_rate: dict) -> float:
    medians = [statistics.median(v) for v in per_rate.values() if None not in v]
    return min(medians)

  def rounded(x: float) -> int:
    return round(x)  # half to even, as the shared README rounds (137.5 -> 138, 770.5 -> 770)

  tasks = list(stacking["tasks"].values())
  muon = [rounded(t["muon"]["iterations"]) for t in tasks]  # muon_stacking's own sweep
  # (benchmarks.device's sweep of the same tasks found 127 and 137: GPU runs differ slightly)
  assert [abs(m - fastest(s["per_rate"]["muon"])) <= 1 for m, s in zip(muon, sweeps)] == [
      True, True]
  assert f"Muon reaches the target in {muon[0]} and {muon[1]} iterations" in readme
  adam = [rounded(fastest(s["per_rate"]["adam"])) for s in sweeps]
  adam_final = [rounded(s["optimizers"]["adam"]["median_iterations"]) for s in sweeps]
  assert f"against {adam[0]} and {adam[1]} for Adam ({adam_final[0]} and {adam_final[1]} at" \
         in readme
  free = [rounded(fastest(s["per_rate"]["schedule-free-adamw"])) for s in sweeps]
  assert f"{free[0]} and {free[1]} for schedule-free AdamW" in readme
  avg = [t[spec]["iterations"] for t in tasks for spec in t if spec != "muon"]
  assert f"needed {rounded(min(avg))} to {rounded(max(avg))} iterations" in readme
  times = [t[spec]["seconds_to_target"] / t["muon"]["seconds_to_target"]
           for t in tasks for spec in t if spec != "muon"]
  assert f"took {min(times):.2f}x to {max(times):.2f}x Muon's wall-clock" in readme
  cost = [v["vs_muon"] for k, v in stacking["step_cost"]["32x1024b512"].items()
          if k.startswith("avg-muon")]
  assert f"{min(cost):.1f}x to {max(cost):.1f}x Muon's step at width 1024" in readme
  default = [size["avggrad.adam (1/4 batch, default)"]["vs_optax_adam"]
             for size in device["step_cost"].values()]
  assert "default step costs {:.2f}x, {:.2f}x and {:.2f}x `optax.adam`'s at".format(
      *default) in readme
  assert f"and {span(default, 2)} on one NVIDIA H200" in text("docs/guide.md")
  vs_peer = [s["optimizers"]["avg-adam"]["wall_vs_best_peer"] for s in sweeps]
  assert f"takes {vs_peer[0]:.2f}x and {vs_peer[1]:.2f}x its wall-clock" in readme


def test_recommended_rmsprop_call_is_the_measured_form():
  # The README's recommended call (prose and code block) builds what the benchmarks ran: the
  # registry's avg-rmsprop. Same updates, step by step, on a small least-squares loss.
  import jax
  import jax.numpy as jnp

  from avggrad import optimizers

  readme = text()
  prose = re.search(r"`avggrad\.rmsprop\(lr / 10, ([^`]*)\)`", readme)
  code = re.search(r"recommended = avggrad\.rmsprop\(1e-4, ([^)]*)\)", readme)
  assert prose and code and prose.group(1) == code.group(1), "prose and code block differ"
  options = {k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=([^,]+)", code.group(1))}
  mine = avggrad.rmsprop(1e-4, **options)
  measured = optimizers.make_optimizer("avg-rmsprop", 1e-4)

  def loss(p):
    return jnp.sum((jnp.tanh(p["w"] @ jnp.arange(3.0)) - 0.5) ** 2)

  params = {"w": jnp.array([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3]])}
  states = [tx.init(params) for tx in (mine, measured)]
  for _ in range(3):
    g = jax.grad(loss)(params)
    results = [tx.update(g, st, params, value_fn=loss)
               for tx, st in zip((mine, measured), states)]
    (u1, s1), (u2, s2) = results
    assert jnp.array_equal(u1["w"], u2["w"])
    states = [s1, s2]
    params = jax.tree.map(lambda p, u: p + u, params, u1)
  # Optax's placement (the aliases' default) is a different update where gradients are small.
  eps_inside = avggrad.rmsprop(1e-4, momentum=0.9)

  def small(p):
    return 1e-6 * loss(p)

  g = jax.grad(small)(params)
  other, _ = eps_inside.update(g, eps_inside.init(params), params, value_fn=small)
  ours, _ = mine.update(g, mine.init(params), params, value_fn=small)
  assert not jnp.allclose(other["w"], ours["w"], rtol=0.1)


def test_the_result_figures_stay_light():
  # Issue 31 item 7: every PNG under benchmarks/results together under 2 MB (benchmarks.figures
  # saves them as small palette PNGs; the raw runs are not figures).
  pngs = list(RESULTS.rglob("*.png"))
  assert pngs
  total = sum(p.stat().st_size for p in pngs)
  assert total < 2_000_000, f"{len(pngs)} PNGs take {total / 1e6:.2f} MB"


SPREAD_LABELS = {"fmnist-mlp20-elu-lecun": "the ELU MLP",
                 "imdb-textmlp8-tanh-glorot": "the IMDb text MLP",
                 "fmnist-mlp64-tanh-glorot": "the 64-layer MLP"}


def test_close_calls_step_time_spread_is_the_repeated_timings():
  # Schedule-free AdamW's step against NAdam's, session by session (each session times both
  # interleaved, compilation included): min-max and median as the README quotes them.
  spread = load(RESULTS / "fine" / "overheads_spread.json")["tasks"]
  readme = text()
  assert spread
  for task, optimizers in spread.items():
    ratios = [a / b for a, b in zip(optimizers["schedule-free-adamw"]["sessions"],
                                    optimizers["nadam"]["sessions"])]
    assert len(ratios) >= 3
    quoted = (f"{min(ratios):.2f}-{max(ratios):.2f}x NAdam's (median "
              f"{statistics.median(ratios):.2f}, {len(ratios)} sessions) on {SPREAD_LABELS[task]}")
    assert quoted in readme


def test_rmsprop_eps_placement_claim_is_the_probes():
  # "0 of 2 seeds reached Adam's target at any of ..." for every form at both placements.
  probe = load(RESULTS / "fine" / "rmsprop_eps.json")
  reached = [i is not None for rows in probe["runs"].values() for row in rows.values()
             for i in row["iterations"]]
  assert len(probe["runs"]) == 6 and reached and not any(reached)
  def rate(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")  # 1e-05 -> 1e-5

  rates = ", ".join(rate(lr) for lr in probe["lrs"][:-1]) + f" and {rate(probe['lrs'][-1])}"
  assert (f"0 of {len(probe['seeds'])} seeds reached Adam's target at any of {rates} in "
          f"{probe['steps']} steps") in text()


@pytest.mark.skipif(not H200.is_dir(), reason="the shared accelerator measurements are absent")
def test_h200_auto_adam_figures_are_the_shared_measurements():
  sweeps = list(load(H200 / "gpu_nvidia_h200.json")["sweeps"].values())
  per_rate = [s["per_rate"]["auto-adam"] for s in sweeps]
  seed1 = [sum(v[1] is not None for v in p.values()) for p in per_rate]
  assert all(v[0] is None for p in per_rate for v in p.values())  # seed 0 never reached
  reached = [i for p in per_rate for v in p.values() for i in v if i is not None]
  scales = len(per_rate[0])
  assert (f"seed 1 from {seed1[0]} of {scales} initial scales (1e-4 to 1e-2) on the tanh MLP "
          f"and {seed1[1]} of {scales} on the ELU MLP ({min(reached)} to {max(reached)} "
          "iterations), seed 0 from none") in text()
