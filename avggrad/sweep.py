"""Many runs of one configuration in one compiled program: learning rates x seeds.

:func:`sweep` trains one model with one optimizer at several learning rates and seeds at
once. The runs are ``jax.vmap``-ed (over learning rates, and over seeds with stacked initial
parameters and minibatch orders) and the steps between two evaluations are one
``jax.lax.scan``, so the host launches one program per evaluation interval instead of one per
step and run. Each run is the same computation as :func:`avggrad.loop.train` with the same
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
import sys
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
    memory_bytes: Optional[int] = None,
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
    devices, shard_params: data parallelism, as in :func:`avggrad.loop.train` (every
      run's batch sharded over the devices; parameters replicated or sharded).
    memory_bytes: the device memory the runs may use (default: what the device reports
      free, or the host's available memory on CPU; :func:`free_bytes`). The runs are split
      into chunks that fit (:func:`plan_chunks`), trained one chunk after the other, and the
      split is logged to stderr; a ``MemoryError`` before training if one run does not fit.

  Returns:
    ``{(lr, seed): RunResult}``; each result's ``seconds_per_step`` is its chunk's time per
    step divided by the chunk's number of runs (``batched_runs``).
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
  chunks = plan_chunks(config, task, dp, [float(lr) for lr in lrs], [int(s) for s in seeds],
                       memory_bytes)
  results: dict[Key, RunResult] = {}
  for i, (chunk_lrs, chunk_seeds) in enumerate(chunks):
    part = f", chunk {i + 1}/{len(chunks)}" if len(chunks) > 1 else ""
    results.update(_sweep_chunk(config, task, dp, chunk_lrs, chunk_seeds, scan=scan,
                                progress=progress, part=part))
  return {(float(lr), int(s)): results[(float(lr), int(s))] for lr in lrs for s in seeds}


def _sweep_chunk(config: TrainConfig, task: Task, dp: parallel.DataParallel,
                 lrs: Sequence[float], seeds: Sequence[int], *, scan: bool, progress: bool,
                 part: str) -> dict[Key, RunResult]:
  """Trains the runs ``lrs x seeds`` in one compiled program (one chunk of :func:`sweep`)."""
  program, seed_index = sweep_program(config, task, lrs, seeds, dp, scan=scan)
  per_seed = np.stack([loop.batch_indices(len(task), config.batch_size, config.steps, int(s))
                       for s in seeds])
  # (steps, runs, batch): each run follows its seed's minibatch order
  indices = dp.place_batch(per_seed[seed_index].transpose(1, 0, 2), 2)
  out = loop.run_loop(
      config, program, indices, eval_data=loop.eval_split(dp, task, config),
      test_data=loop.held_out(dp, task),
      desc=f"{config.optimizer} ({len(lrs)} lr x {len(seeds)} seed{part})", progress=progress)
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


MEMORY_FRACTION = 0.8
"""The share of the free memory :func:`plan_chunks` plans to fill (XLA's figures leave out
the runtime's own buffers and fragmentation)."""


def free_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
  """The memory free on ``device`` (default: the first device): its allocator's limit less
  what is in use where it reports them (GPU, TPU), the host's available memory otherwise
  (CPU, from ``/proc/meminfo``); ``None`` when neither is known."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 (backends without memory statistics)
    stats = None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def run_bytes(config: TrainConfig, task: Task, dp: parallel.DataParallel) -> tuple[int, int]:
  """``(bytes of one run, bytes shared by all runs)`` on a device, from XLA's memory analysis
  of one run's compiled training step (``compiled.memory_analysis()``): the run's parameters,
  optimizer state and minibatch (arguments and outputs, less what donation aliases) and the
  step's temporaries (activations, gradients); the training data is shared."""
  program, _ = loop.compile_step(dataclasses.replace(config, seed=0), task, dp)
  idx = dp.place_batch(np.zeros((config.batch_size,), np.int32))
  stats = program.compiled[0].compile(program.carry, *program.data, idx).memory_analysis()
  shared = sum(int(a.nbytes) for a in jax.tree.leaves(program.data))  # replicated
  if stats is None:
    return 0, shared
  per_run = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes) - shared
  return max(int(per_run), 1), shared


def _mib(n: float) -> str:
  return f"{n / 2**20:,.1f} MiB"


def plan_chunks(config: TrainConfig, task: Task, dp: parallel.DataParallel, lrs: Sequence[float],
                seeds: Sequence[int], memory_bytes: Optional[int] = None
                ) -> list[tuple[list[float], list[int]]]:
  """The chunks ``(lrs, seeds)`` that :func:`sweep` trains one after the other so that each
  fits in memory: all runs in one chunk when they fit, otherwise groups of learning rates
  with every seed (or, when even one rate's seeds do not fit, groups of seeds of one rate).

  The memory of ``n`` runs is estimated as ``shared + n x per_run`` (:func:`run_bytes`)
  against :data:`MEMORY_FRACTION` of ``memory_bytes`` (default :func:`free_bytes`; with no
  figure known, one chunk). A split is logged to stderr.

  Raises:
    MemoryError: before training, when one run alone does not fit.
  """
  lrs, seeds = list(lrs), list(seeds)
  runs = len(lrs) * len(seeds)
  # The devices the runs train on: the data mesh's first (each holds its share of every run),
  # else the default device.
  device = dp.mesh.devices.flat[0] if dp.mesh is not None else jax.devices()[0]
  available = free_bytes(device) if memory_bytes is None else int(memory_bytes)
  if available is None:
    return [(lrs, seeds)]
  per_run, shared = run_bytes(config, task, dp)
  budget = MEMORY_FRACTION * available
  fit = int((budget - shared) // per_run) if budget > shared else 0
  if fit < 1:
    raise MemoryError(
        f"one run of {config.optimizer} on this model needs about {_mib(per_run)} (XLA's "
        f"memory analysis of one training step at batch size {config.batch_size}) beside "
        f"{_mib(shared)} of training data, but {_mib(budget)} is usable on "
        f"{device.platform} ({MEMORY_FRACTION:.0%} of {_mib(available)} free). A smaller "
        "batch size or model, or shard_params=True over several devices, would fit.")
  if fit >= runs:
    return [(lrs, seeds)]
  if fit >= len(seeds):
    step = fit // len(seeds)
    chunks = [(lrs[i:i + step], seeds) for i in range(0, len(lrs), step)]
  else:
    chunks = [([lr], seeds[i:i + fit]) for lr in lrs for i in range(0, len(seeds), fit)]
  print(f"avggrad: {config.optimizer}: {runs} runs need about {_mib(shared + runs * per_run)} "
        f"({_mib(per_run)} per run, XLA's memory analysis) and {_mib(budget)} is usable on "
        f"{device.platform}: training them in {len(chunks)} chunks of up to {fit} runs.",
        file=sys.stderr, flush=True)
  return chunks
