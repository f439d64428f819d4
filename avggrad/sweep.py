"""Many runs of one configuration in one compiled program: learning rates x seeds.

:func:`sweep` trains one model with one optimizer at several learning rates and seeds at
once. The runs are ``jax.vmap``-ed (over learning rates, and over seeds with stacked initial
parameters and minibatch orders) and the steps between two evaluations are one
``jax.lax.scan``, so the host launches one program per evaluation interval instead of one per
step and run. Each run is the same computation as :func:`avggrad.training.train` with the same
configuration, learning rate and seed: the same initial weights, minibatches, optimizer and
losses (up to floating-point reassociation; ``tests/test_sweep.py`` checks the curves).

The learning rate reaches the optimizer as a traced value: the optimizer is built inside the
vmapped step, ``make_optimizer(spec, lr)`` (or the configuration's schedule peaking at ``lr``),
which is what ``optax.inject_hyperparams`` does with a hyperparameter held in the state, without
the extra state.

A run that diverges (:func:`avggrad.metrics.divergence_step`) is marked at the step it diverged
and its losses are cut there; the vmapped program cannot drop it, so it keeps computing until
every run of the sweep has diverged or the budget ends.

Example:
  >>> from avggrad import sweep, training
  >>> config = training.TrainConfig(optimizer="adam", depth=2, width=16, steps=20,
  ...                               batch_size=32, eval_every=10, limit=256)
  >>> runs = sweep.sweep(config, lrs=[1e-3, 3e-3], seeds=[0, 1], progress=False)
  >>> sorted(runs), len(runs[(1e-3, 0)].losses)
  ([(0.001, 0), (0.001, 1), (0.003, 0), (0.003, 1)], 20)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avggrad import data as data_lib
from avggrad import loop, parallel, tasks
from avggrad.config import RunResult, TrainConfig, make_tx
from avggrad.tasks import Task

Key = tuple[float, int]


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def sweep_program(config: TrainConfig, task: Union[Task, data_lib.Dataset, None],
                  lrs: Sequence[float], seeds: Sequence[int], dp: parallel.DataParallel, *,
                  scan: bool = True) -> tuple[loop.Program, np.ndarray]:
  """The :class:`avggrad.loop.Program` of every (learning rate, seed) run, vmapped, and
  each run's index into ``seeds``. ``task``: a :class:`avggrad.tasks.Task`, or the training
  split of the built-in task ``config`` names."""
  task = tasks.as_task(config, task)
  dp.check_batch(config.batch_size)
  runs = [(float(lr), i) for lr in lrs for i in range(len(seeds))]
  split = [nnx.split(task.make_model(nnx.Rngs(int(s))), nnx.Param, ...) for s in seeds]
  graphdef = split[0][0]
  params = dp.place_state(_stack([split[i][1] for _, i in runs]), runs_axis=True)
  rest = dp.place_state(_stack([split[i][2] for _, i in runs]), runs_axis=True)
  lr_array = jnp.asarray([lr for lr, _ in runs], jnp.float32)
  opt_state = jax.jit(jax.vmap(lambda lr, p: make_tx(config, lr).init(p)))(
      lr_array, params)
  opt_state = dp.place_state(opt_state, runs_axis=True)

  def one_run(lr, params, rest, opt_state, x, y):
    return loop.update_step(make_tx(config, lr), graphdef, params, rest, opt_state, x, y,
                            task)

  def step(carry: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
    params, opt_state = carry
    params, opt_state, loss = jax.vmap(one_run)(lr_array, params, rest, opt_state, x, y)
    return (params, opt_state), loss

  x_all, y_all = loop.place_data(dp, task.train[0]), loop.place_data(dp, task.train[1])
  advance, compiled = loop.chunk_advance(step, x_all, y_all, dp, scan=scan, batch_axis=1)
  evaluate = jax.jit(jax.vmap(
      lambda p, s, r, x, y: loop.eval_sums(graphdef, loop.eval_params(p, s), r, x, y, task),
      in_axes=(0, 0, 0, None, None)))
  program = loop.Program(carry=(params, opt_state), advance=advance,
                             evaluate=lambda carry, x, y: evaluate(*carry, rest, x, y),
                             compiled=[compiled], data=(x_all, y_all), num_runs=len(runs))
  return program, np.asarray([i for _, i in runs])


def sweep(
    config: TrainConfig,
    lrs: Sequence[float],
    seeds: Sequence[int] = (0,),
    *,
    task: Optional[Task] = None,
    train_data: Optional[data_lib.Dataset] = None,
    test_data: Optional[data_lib.Dataset] = None,
    progress: bool = True,
    scan: bool = True,
    devices: Union[None, int, Sequence[jax.Device]] = None,
    shard_params: bool = False,
) -> dict[Key, RunResult]:
  """Trains ``config`` at every learning rate and seed in one compiled program.

  Args:
    config: the configuration; its ``lr`` and ``seed`` are replaced by each run's.
    lrs: the learning rates (the peaks, with a schedule).
    seeds: the seeds (initial weights and minibatch order).
    task: the model, loss and data (:class:`avggrad.tasks.Task`); ``None``: the built-in
      task ``config`` names.
    train_data, test_data: preloaded splits of the built-in task (loaded from ``config`` when
      omitted; unused with ``task``).
    progress: report progress (a bar on a terminal, one line per evaluation otherwise).
    scan: run the steps between two evaluations as one ``lax.scan`` (``False``: one compiled
      call per step, all runs together; on CPU a scan over convolutions can be slower).
    devices, shard_params: data parallelism, as in :func:`avggrad.training.train` (every
      run's batch sharded over the devices; parameters replicated or sharded).

  Returns:
    ``{(lr, seed): RunResult}``; each result's ``seconds_per_step`` is the sweep's time per
    step divided by the number of runs (``batched_runs``).
  """
  config.validate(builtin=task is None)
  if not lrs or not seeds:
    raise ValueError("sweep needs at least one learning rate and one seed.")
  for lr in lrs:
    if not (lr > 0 and math.isfinite(lr)):
      raise ValueError(f"learning rates must be positive numbers, got {lr}.")
  task = task if task is not None else tasks.for_config(config, train_data, test_data)
  loop.check_data(config, task)
  dp = parallel.DataParallel.create(devices, shard_params)
  program, seed_index = sweep_program(config, task, lrs, seeds, dp, scan=scan)
  per_seed = np.stack([loop.batch_indices(len(task), config.batch_size, config.steps, int(s))
                       for s in seeds])
  # (steps, runs, batch): each run follows its seed's minibatch order
  indices = dp.place_batch(per_seed[seed_index].transpose(1, 0, 2), 2)
  out = loop.run_loop(
      config, program, indices, eval_data=loop.eval_split(dp, task, config),
      test_data=loop.held_out(dp, task),
      desc=f"{config.optimizer} ({len(lrs)} lr x {len(seeds)} seed)", progress=progress)
  results: dict[Key, RunResult] = {}
  for r, i in enumerate(seed_index):
    lr, seed = float(lrs[r // len(seeds)]), int(seeds[i])
    results[(lr, seed)] = RunResult(
        config=dataclasses.asdict(dataclasses.replace(config, lr=lr, seed=seed)),
        losses=out.losses[r], evals=out.evals[r], status=out.statuses[r],
        test_loss=out.test_loss[r], test_accuracy=out.test_accuracy[r],
        seconds_per_step=out.seconds_per_step / program.num_runs,
        compile_seconds=out.compile_seconds, batched_runs=program.num_runs)
  return results
