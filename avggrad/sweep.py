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
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avggrad import data as data_lib
from avggrad import metrics, training
from avggrad.progress import Progress

Key = tuple[float, int]


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@dataclasses.dataclass
class _Program:
  """The pieces of a sweep: stacked state, the vmapped step and evaluation."""

  graphdef: Any
  rest: Any
  params: Any  # (runs, ...) leaves
  opt_state: Any
  lrs: jax.Array  # (runs,)
  seed_index: np.ndarray  # (runs,) index into the seeds
  step: Callable[..., Any]
  evaluate: Callable[..., Any]


def _build(config: training.TrainConfig, train_data: data_lib.Dataset,
           lrs: Sequence[float], seeds: Sequence[int]) -> _Program:
  runs = [(float(lr), i) for lr in lrs for i in range(len(seeds))]
  split = [nnx.split(training.make_model(config, train_data, nnx.Rngs(int(s))), nnx.Param, ...)
           for s in seeds]
  graphdef = split[0][0]
  params = _stack([split[i][1] for _, i in runs])
  rest = _stack([split[i][2] for _, i in runs])
  lr_array = jnp.asarray([lr for lr, _ in runs], jnp.float32)

  def make_tx(lr: jax.Array) -> optax.GradientTransformation:
    return training.make_optimizer(config.optimizer, training.learning_rate(config, lr))

  opt_state = jax.jit(jax.vmap(lambda lr, p: make_tx(lr).init(p)))(lr_array, params)

  def one_step(lr, p, s, r, x, y):
    tx = make_tx(lr)
    value_fn = training.loss_fn(graphdef, r)
    loss, grads = jax.value_and_grad(value_fn)(p, (x, y))
    updates, s = tx.update(grads, s, p, value_fn=value_fn, batch=(x, y))
    return optax.apply_updates(p, updates), s, loss

  def evaluate(p, r, x, y):
    logits = nnx.merge(graphdef, p, r)(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, (jnp.argmax(logits, -1) == y).sum()

  return _Program(
      graphdef=graphdef, rest=rest, params=params, opt_state=opt_state, lrs=lr_array,
      seed_index=np.asarray([i for _, i in runs]),
      step=jax.vmap(one_step), evaluate=jax.jit(jax.vmap(evaluate, in_axes=(0, 0, None, None))),
  )


def sweep(
    config: training.TrainConfig,
    lrs: Sequence[float],
    seeds: Sequence[int] = (0,),
    *,
    train_data: Optional[data_lib.Dataset] = None,
    test_data: Optional[data_lib.Dataset] = None,
    progress: bool = True,
    scan: bool = True,
) -> dict[Key, training.RunResult]:
  """Trains ``config`` at every learning rate and seed in one compiled program.

  Args:
    config: the configuration; its ``lr`` and ``seed`` are replaced by each run's.
    lrs: the learning rates (the peaks, with a schedule).
    seeds: the seeds (initial weights and minibatch order).
    train_data, test_data: preloaded splits (loaded from ``config`` when omitted).
    progress: report progress (a bar on a terminal, one line per evaluation otherwise).
    scan: run the steps between two evaluations as one ``lax.scan`` (``False``: one compiled
      call per step, all runs together; on CPU a scan over convolutions can be slower).

  Returns:
    ``{(lr, seed): RunResult}``; each result's ``seconds_per_step`` is the sweep's time per
    step divided by the number of runs (``batched_runs``).
  """
  config.validate()
  if not lrs or not seeds:
    raise ValueError("sweep needs at least one learning rate and one seed.")
  for lr in lrs:
    if not (lr > 0 and math.isfinite(lr)):
      raise ValueError(f"learning rates must be positive numbers, got {lr}.")
  if train_data is None or test_data is None:
    loaded = training.load_splits(config)
    train_data, test_data = train_data or loaded[0], test_data or loaded[1]
  program = _build(config, train_data, lrs, seeds)
  num_runs = len(program.seed_index)
  x_all, y_all = jnp.asarray(train_data.x), jnp.asarray(train_data.y)
  per_seed = np.stack([training.batch_indices(len(train_data), config.batch_size, config.steps,
                                              int(s)) for s in seeds])
  # (steps, runs, batch): each run follows its seed's minibatch order
  indices = jnp.asarray(per_seed[program.seed_index].transpose(1, 0, 2))

  def steps_fn(carry: Any, idx: jax.Array) -> tuple[Any, jax.Array]:
    params, opt_state = carry
    params, opt_state, loss = program.step(program.lrs, params, opt_state, program.rest,
                                           x_all[idx], y_all[idx])
    return (params, opt_state), loss

  if scan:
    compiled = jax.jit(lambda carry, idx: jax.lax.scan(steps_fn, carry, idx),
                       donate_argnums=0)
  else:
    one = jax.jit(steps_fn, donate_argnums=0)

    def compiled(carry: Any, idx: jax.Array) -> tuple[Any, jax.Array]:
      losses = []
      for row in idx:
        carry, loss = one(carry, row)
        losses.append(loss)
      return carry, jnp.stack(losses)

  eval_x = train_data.x[: config.eval_examples]
  eval_y = train_data.y[: config.eval_examples]
  window = metrics.default_window(config.steps)
  losses = np.zeros((config.steps, num_runs))
  evals: list[list[dict[str, float]]] = [[] for _ in range(num_runs)]
  stopped: list[Optional[int]] = [None] * num_runs
  carry = (program.params, program.opt_state)

  def evaluate_now(step: int) -> None:
    loss, acc = training.evaluate_in_batches(
        lambda p, x, y: program.evaluate(p, program.rest, x, y), carry[0], eval_x, eval_y)
    for r in range(num_runs):
      if stopped[r] is None:
        evals[r].append({"step": step, "train_loss": float(loss[r]),
                         "train_accuracy": float(acc[r])})

  desc = f"{config.optimizer} ({len(lrs)} lr x {len(seeds)} seed)"
  compile_seconds = timed_seconds = 0.0
  timed_steps = step = 0
  with Progress(config.steps, desc, enabled=progress) as bar:
    evaluate_now(0)
    while step < config.steps:
      size = min(config.eval_every, config.steps - step)
      tick = time.perf_counter()
      carry, chunk = compiled(carry, indices[step : step + size])
      losses[step : step + size] = np.asarray(jax.device_get(chunk), np.float64)
      seconds = time.perf_counter() - tick
      if step == 0:
        compile_seconds = seconds  # the first chunk compiles (and runs) the program
      else:
        timed_seconds += seconds
        timed_steps += size
      step += size
      for r in range(num_runs):
        if stopped[r] is None:
          stopped[r] = metrics.divergence_step(losses[:step, r], config.divergence_factor,
                                               window)
      evaluate_now(step)
      alive = [r for r in range(num_runs) if stopped[r] is None]
      if not alive:
        break
      bar.update(size, best=float(min(evals[r][-1]["train_loss"] for r in alive)))
    test_loss = test_acc = np.full(num_runs, np.nan)
    if any(s is None for s in stopped):
      test_loss, test_acc = training.evaluate_in_batches(
          lambda p, x, y: program.evaluate(p, program.rest, x, y), carry[0], test_data.x,
          test_data.y)
  per_step = timed_seconds / timed_steps if timed_steps else compile_seconds / max(step, 1)
  results: dict[Key, training.RunResult] = {}
  for r, (lr, i) in enumerate(zip(np.asarray(program.lrs).tolist(), program.seed_index)):
    lr = float(lrs[r // len(seeds)])
    stop = stopped[r]
    ok = stop is None
    run_losses = losses[:step, r] if ok else losses[: stop + 1, r]
    results[(lr, int(seeds[i]))] = training.RunResult(
        config=dataclasses.asdict(dataclasses.replace(config, lr=lr, seed=int(seeds[i]))),
        losses=run_losses.tolist(),
        evals=evals[r],
        status="ok" if ok else f"diverged at step {stop}",
        test_loss=float(test_loss[r]) if ok else math.nan,
        test_accuracy=float(test_acc[r]) if ok else math.nan,
        seconds_per_step=per_step / num_runs,
        compile_seconds=compile_seconds,
        batched_runs=num_runs,
    )
  return results
