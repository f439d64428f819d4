"""How often, and how much, the accelerate rule lengthens the step, under different bases.

Issue 17, lead 2: the average gradient stacks on Adam and NAdam but not on schedule-free
AdamW. This trains one run per base on a task of a grid (the average gradient around the
base, far end on a quarter of the batch, span 8 unless the spec says otherwise) and records, at
every step, what ``combine="accelerate"`` did: the fraction of coordinates where
:math:`\\bar g_i` replaced :math:`g_i` (same sign, larger magnitude), the median gain
:math:`|\\bar g_i| / |g_i|` over those coordinates, and the lengthening of the whole update
:math:`\\|\\tilde g\\| / \\|g\\|` (it does not record the step length at the far end).
Figures are means over the first, middle and last thirds of training.

Usage::

  python -m benchmarks.probes.gain_stats benchmarks/grids/fine.json --task fmnist-mlp16-tanh-glorot
      [--steps 600] [--out benchmarks/results/fine/gain_stats.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from avggrad import optimizers, protocol, training, transforms
from benchmarks import report
from benchmarks import run as run_lib

PROBE = "gain-probe"  # the registry name of the base being probed
# (label, spec with the probe combine, the grid label whose best learning rate it uses)
BASES = (
    ("avg-adam (Adam base)", "avg-adam:far_batch_fraction=0.25", "adam"),
    ("avg-nadam (NAdam base)", "avg-nadam:far_batch_fraction=0.25", "nadam"),
    ("avg-schedule-free-adamw (wrapper outside)",
     "avg-schedule-free-adamw:far_batch_fraction=0.25", "schedule-free-adamw"),
    ("sf-avg-adamw, span 8 (inside schedule-free)", "sf-avg-adamw:far_batch_fraction=0.25",
     "schedule-free-adamw"),
    ("sf-avg-adamw, span 2 (inside schedule-free)",
     "sf-avg-adamw:span=2,far_batch_fraction=0.25", "schedule-free-adamw"),
)


@contextlib.contextmanager
def probing(records: list[tuple[float, float, float]]) -> Iterator[Any]:
  """Yields the probe combine (passed as ``combine=``): ``accelerate``, reporting per step the
  fired fraction, the median gain where it fired and the update's lengthening into
  ``records``; the records are complete when the context exits."""

  def probe(point: Any, average: Any) -> Any:
    out = transforms.COMBINES["accelerate"](point, average)
    g = jnp.concatenate([x.ravel() for x in jax.tree.leaves(point)])
    a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(average)])
    c = jnp.concatenate([x.ravel() for x in jax.tree.leaves(out)])
    fired = (g * a > 0) & (jnp.abs(a) > jnp.abs(g))
    gain = jnp.nanmedian(jnp.where(fired, jnp.abs(a) / jnp.abs(g), jnp.nan))
    jax.debug.callback(lambda *v: records.append(tuple(float(x) for x in v)),
                       fired.mean(), gain, jnp.linalg.norm(c) / jnp.linalg.norm(g))
    return out

  try:
    yield probe
  finally:
    jax.effects_barrier()


def thirds(values: np.ndarray) -> list[float]:
  return [float(np.mean(part)) for part in np.array_split(values, 3)]


def measure(config: training.TrainConfig, spec: str, train_data: Any, test_data: Any
            ) -> dict[str, Any]:
  records: list[tuple[float, float, float]] = []
  name, _ = optimizers.parse_optimizer(spec)
  base = optimizers.factory(name)
  with probing(records) as probe:
    optimizers.register_optimizer(PROBE, lambda lr, **o: base(lr, combine=probe, **o),
                                  replace=True)
    result = training.train(dataclasses.replace(config, optimizer=PROBE + spec[len(name):]),
                            train_data=train_data, test_data=test_data, progress=False,
                            devices=1)
  stats = np.array(records)
  return {"spec": spec, "lr": config.lr, "status": result.status,
          "final_loss": protocol.score(result.losses, not result.diverged),
          "fired_fraction": thirds(stats[:, 0]), "median_gain_where_fired": thirds(stats[:, 1]),
          "update_lengthening": thirds(stats[:, 2])}


def main(argv: Optional[list[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("grid")
  parser.add_argument("--task", default="fmnist-mlp16-tanh-glorot")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--data-dir", default=os.environ.get("AVGGRAD_DATA_DIR"))
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  grid, folder, records, overheads = report.load(args.grid)
  task = next((t for t in grid["tasks"] if t["name"] == args.task), None)
  if task is None:
    parser.error(f"--task {args.task!r} is not a task of {args.grid} "
                 f"({', '.join(t['name'] for t in grid['tasks'])})")
  best = {label: s["best_lr"] for t, summary in report.summarize_tasks(grid, records, overheads)
          if t["name"] == args.task for label, s in summary["optimizers"].items()}
  config = dataclasses.replace(run_lib.task_config(grid, task), steps=args.steps,
                               seed=args.seed, eval_every=args.steps,
                               data_dir=args.data_dir)
  train_data, test_data = run_lib.load_splits(config)
  out: dict[str, Any] = {"task": args.task, "steps": args.steps, "seed": args.seed, "bases": {}}
  for label, spec, lr_from in BASES:
    if lr_from not in best:
      print(f"{label}: no tuned learning rate for {lr_from} on {args.task} yet; skipped")
      continue
    out["bases"][label] = m = measure(dataclasses.replace(config, lr=best[lr_from]), spec,
                                      train_data, test_data)
    print(f"{label:45s} lr {m['lr']:.3g}  fired {m['fired_fraction']}  gain "
          f"{m['median_gain_where_fired']}  lengthening {m['update_lengthening']}  "
          f"final {m['final_loss']:.4f}", flush=True)
  path = args.out or os.path.join(folder, "gain_stats.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(path)


if __name__ == "__main__":
  main()
