"""Training loop: NNX models, any Optax or avggrad optimizer, jit-compiled steps.

:func:`train` runs one configuration (:class:`avggrad.config.TrainConfig`) on a task
(:class:`avggrad.tasks.Task`: a built-in model named by the configuration, or a user's model,
loss and data) and returns a :class:`avggrad.config.RunResult`
with the per-step minibatch losses, periodic evaluations of the training loss and accuracy,
the final test metrics and the wall-clock time per step. Its stages are separate functions, in
the spirit of the Flax examples' ``train.py``: the task
(:mod:`avggrad.tasks`), the minibatch order (:func:`batch_indices`), the optimizer
(:func:`avggrad.config.make_tx`), one
step (:func:`update_step`), the chunked loop (:func:`run_loop`) and the record
(:class:`MetricsLog`). :mod:`avggrad.sweep` trains many learning rates and seeds of one
configuration in one compiled program with the same step and the same loop. Each step is one
compiled call; the losses of ``eval_every`` steps are fetched together, so the host does not
wait on the device between steps. The same seed gives the same initial weights and the same
minibatch order whatever the optimizer, so optimizers are compared on identical data.

Both are data parallel (:mod:`avggrad.parallel`): the batch is sharded over a ``data`` mesh
axis of every device JAX sees (``devices=`` chooses fewer), parameters replicated or
(``shard_params=True``) sharded FSDP-style; on one device nothing is placed. :func:`train`
saves and resumes checkpoints (:mod:`avggrad.checkpoint`).

Every optimizer receives ``value_fn(params, batch)`` (the loss on a batch as a function of the
parameters) and ``batch=(x, y)`` (the current minibatch) as extra arguments of ``update``; the
average-gradient optimizers use them, all others ignore them. A run stops early, marked
``"diverged at step N"``, when its loss becomes non-finite or its trailing mean loss exceeds
``divergence_factor`` times its initial loss (:func:`avggrad.metrics.divergence_step`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avggrad import checkpoint as checkpoint_lib
from avggrad import data as data_lib
from avggrad import metrics, optimizers, parallel, step_length, tasks
from avggrad.config import NonFiniteLossError, RunResult, TrainConfig, make_tx
from avggrad.progress import Progress
from avggrad.tasks import Task

Data = Union[None, data_lib.Dataset, Task]


def loss_fn(graphdef: Any, rest: Any, task: Optional[Task] = None
            ) -> Callable[[Any, tuple[Any, Any]], jax.Array]:
  """``value_fn(params, batch)``: the task's mean loss on ``batch = (x, y)`` of the model
  ``nnx.merge(graphdef, params, rest)`` (the built-in tasks' cross-entropy when ``task`` is
  ``None``); the form the optimizers receive as ``value_fn``."""
  value = task.value if task is not None else tasks.cross_entropy

  def value_fn(params: Any, batch: tuple[Any, Any]) -> jax.Array:
    x, y = batch
    return value(nnx.merge(graphdef, params, rest), x, y)

  return value_fn


def update_step(tx: optax.GradientTransformation, graphdef: Any, params: Any, rest: Any,
                opt_state: Any, x: Any, y: Any, task: Optional[Task] = None
                ) -> tuple[Any, Any, jax.Array]:
  """One training step, the one :func:`train` and :func:`avggrad.sweep.sweep` both run:
  the loss and gradient at the current weights, then the optimizer's update.

  The optimizer receives ``value_fn(params, batch)`` (:func:`loss_fn` of ``task``),
  ``batch=(x, y)``, and, as Optax's line searches take them, ``value=`` (the loss) and
  ``grad=`` (the raw gradient); average-gradient optimizers use them, all others ignore them.
  Returns the new parameters, the new optimizer state and the loss before the update.
  """
  value_fn = loss_fn(graphdef, rest, task)
  loss, grads = jax.value_and_grad(value_fn)(params, (x, y))
  updates, opt_state = tx.update(grads, opt_state, params, value_fn=value_fn, batch=(x, y),
                                 value=loss, grad=grads)
  return optax.apply_updates(params, updates), opt_state, loss


def eval_sums(graphdef: Any, params: Any, rest: Any, x: Any, y: Any,
              task: Optional[Task] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Summed loss, count of correct predictions and count of predictions on ``x, y``
  (:meth:`avggrad.tasks.Task.eval_sums`; the built-in tasks' cross-entropy and accuracy,
  over tokens for a language model, when ``task`` is ``None``)."""
  model = nnx.merge(graphdef, params, rest)
  if task is None:
    return tasks.classification_sums(model(x), y)
  return task.eval_sums(model, x, y)

def eval_params(params: Any, opt_state: Any) -> Any:
  """The parameters to evaluate: for schedule-free optimizers (a ``ScheduleFreeState``
  anywhere in the state) the averaged point, ``optax.contrib.schedule_free_eval_params``;
  the parameters themselves otherwise. The training loss is measured where the gradient is
  taken, as for every optimizer."""
  is_sf = lambda x: isinstance(x, optax.contrib.ScheduleFreeState)  # noqa: E731
  for leaf in jax.tree.leaves(opt_state, is_leaf=is_sf):
    if is_sf(leaf):
      return optax.contrib.schedule_free_eval_params(leaf, params)
  return params


def batch_indices(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """Minibatch indices for every step, ``(steps, batch_size)``: shuffled epochs, the same for
  every optimizer (and the first ``k`` rows the same for any budget of at least ``k``)."""
  rng = np.random.default_rng(seed)
  per_epoch = max(1, num_examples // batch_size)
  epochs = -(-steps // per_epoch)
  order = np.concatenate([
      rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(epochs)
  ]) if num_examples >= batch_size else rng.integers(0, num_examples, steps * batch_size)
  return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def evaluate_in_batches(evaluate: Callable, state: Any, x: Any, y: Any,
                        batch: int = 1000) -> tuple[Any, Any]:
  """Mean loss and accuracy of ``evaluate(state, x, y) -> (summed loss, correct, count)``
  over ``x, y`` (arrays or pytrees of arrays) in batches (arrays when ``evaluate`` is vmapped
  over runs)."""
  total, correct, count = 0.0, 0.0, 0.0
  for start in range(0, tasks.num_examples((x, y)), batch):
    part = slice(start, start + batch)
    loss, hits, n = evaluate(state, tasks.take(x, part), tasks.take(y, part))
    total = total + np.asarray(loss, np.float64)
    correct = correct + np.asarray(hits, np.float64)
    count = np.asarray(n, np.float64).reshape(-1)[0] + count  # examples, or tokens
  total, correct = total / count, correct / count
  if np.ndim(total) == 0:
    return float(total), float(correct)
  return total, correct


class MetricsLog:
  """The record of a run: ``config.json`` and ``metrics.jsonl`` in ``out_dir`` (nothing when
  ``out_dir`` is ``None``). A context manager: the file is closed however the run ends."""

  def __init__(self, out_dir: Optional[str], config: TrainConfig):
    self._file = None
    if out_dir and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)
      self._file = open(os.path.join(out_dir, "metrics.jsonl"), "w")

  def write(self, entry: dict[str, Any]) -> None:
    """Appends one JSON line and flushes it."""
    if self._file is not None:
      self._file.write(json.dumps(entry) + "\n")
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> "MetricsLog":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class Compiled:
  """``jax.jit(fn)`` compiled ahead of time for each shape of its arguments after the first
  (the state, whose shapes do not change): the data and the minibatch indices of a step or a
  chunk. ``seconds`` is the total compile time, the same figure for :func:`train` and
  :func:`avggrad.sweep.sweep`."""

  def __init__(self, fn: Callable[..., Any], donate_argnums: tuple[int, ...] = (0,)):
    self._jit = jax.jit(fn, donate_argnums=donate_argnums)
    self._cache: dict[tuple[int, ...], Any] = {}
    self.seconds = 0.0

  def compile(self, *args: Any) -> Any:
    """The executable for these arguments' shapes (compiled on first use)."""
    key = tuple((np.shape(x), str(getattr(x, "dtype", ""))) for x in jax.tree.leaves(args[1:]))
    if key not in self._cache:
      start = time.perf_counter()
      self._cache[key] = self._jit.lower(*args).compile()
      self.seconds += time.perf_counter() - start
    return self._cache[key]

  def __call__(self, *args: Any) -> Any:
    return self.compile(*args)(*args)


@dataclasses.dataclass
class Program:
  """One run, or many trained together, as the shared loop (:func:`run_loop`) drives it.

  Attributes:
    carry: ``(params, opt_state)`` (leading runs axis when ``num_runs > 1``).
    advance: ``(carry, idx) -> (carry, losses)`` for the minibatch indices ``idx`` of a
      chunk of steps; ``losses`` is ``(steps, num_runs)`` or ``(steps,)``.
    evaluate: ``(carry, x, y) -> (summed loss, correct)``, per run, at the parameters
      :func:`eval_params` picks (schedule-free's averaged point).
    compiled: the compiled pieces whose ``seconds`` add up to the compile time.
    data: the training inputs and labels as the devices hold them (what ``advance`` reads).
    num_runs: how many runs ``carry`` holds.
  """

  carry: Any
  advance: Callable[[Any, Any], tuple[Any, Any]]
  evaluate: Callable[..., Any]
  compiled: list[Compiled]
  data: tuple[Any, Any]
  num_runs: int = 1


def chunk_advance(step: Callable[..., Any], x_all: Any, y_all: Any, dp: parallel.DataParallel,
                  *, scan: bool, batch_axis: int) -> tuple[Callable, Compiled]:
  """``advance(carry, idx)`` from ``step(carry, x, y) -> (carry, loss)``: the minibatches
  ``x_all[idx[i]]`` (sharded over the data axis), one compiled call per step, or one
  ``lax.scan`` per chunk."""

  def one(carry: Any, x_all: Any, y_all: Any, row: jax.Array) -> tuple[Any, jax.Array]:
    x, y = dp.constrain_batch((tasks.take(x_all, row), tasks.take(y_all, row)), batch_axis)
    with dp.tracing():  # the models keep activations on the data axis (shard_examples)
      return step(carry, x, y)

  if scan:
    compiled = Compiled(lambda carry, x_all, y_all, idx: jax.lax.scan(
        lambda c, row: one(c, x_all, y_all, row), carry, idx))
    return (lambda carry, idx: compiled(carry, x_all, y_all, idx)), compiled
  compiled = Compiled(one)

  def advance(carry: Any, idx: Any) -> tuple[Any, jax.Array]:
    losses = []
    for row in idx:
      carry, loss = compiled(carry, x_all, y_all, row)
      losses.append(loss)
    return carry, jnp.stack(losses)

  return advance, compiled


@dataclasses.dataclass
class LoopResult:
  """What :func:`run_loop` produced, per run."""

  carry: Any
  losses: list[list[float]]
  evals: list[list[dict[str, float]]]
  statuses: list[str]
  test_loss: list[float]
  test_accuracy: list[float]
  seconds_per_step: float
  compile_seconds: float


def _boundaries(steps: int, start: int, *every: int) -> list[int]:
  """The steps after ``start`` where the loop stops to evaluate or checkpoint."""
  marks = {steps}
  for k in every:
    if k:
      marks.update(range(k, steps, k))
  return sorted(m for m in marks if m > start)


def _advance_chunk(program: Program, carry: Any, idx: Any) -> tuple[Any, np.ndarray, float]:
  """One chunk of steps: the new carry, the losses ``(steps, runs)`` and the seconds it took
  without compiling."""
  tick = time.perf_counter()
  compile_before = sum(c.seconds for c in program.compiled)
  carry, chunk = program.advance(carry, idx)
  chunk = np.asarray(jax.device_get(chunk), np.float64).reshape(len(idx), program.num_runs)
  seconds = time.perf_counter() - tick - (sum(c.seconds for c in program.compiled)
                                          - compile_before)
  return carry, chunk, seconds


def _mark_diverged(stopped: list[Optional[int]], losses: np.ndarray, step: int,
                   config: TrainConfig) -> None:
  """Records the step where each run still alive diverged (:func:`metrics.divergence_step`)."""
  window = metrics.default_window(config.steps)
  for r, s in enumerate(stopped):
    if s is None:
      stopped[r] = metrics.divergence_step(losses[:step, r], config.divergence_factor, window)


def _loop_result(carry: Any, losses: np.ndarray, evals: list, stopped: list[Optional[int]],
                 step: int, test: tuple[np.ndarray, np.ndarray], seconds_per_step: float,
                 program: Program) -> LoopResult:
  """The :class:`LoopResult` of a finished loop (a diverged run's losses end where it did)."""
  test_loss, test_acc = test
  return LoopResult(
      carry=carry,
      losses=[(losses[:step, r] if s is None else losses[: s + 1, r]).tolist()
              for r, s in enumerate(stopped)],
      evals=evals, statuses=["ok" if s is None else f"diverged at step {s}" for s in stopped],
      test_loss=[float(v) if s is None else math.nan for v, s in zip(test_loss, stopped)],
      test_accuracy=[float(v) if s is None else math.nan for v, s in zip(test_acc, stopped)],
      seconds_per_step=seconds_per_step,
      compile_seconds=sum(c.seconds for c in program.compiled),
  )


def run_loop(config: TrainConfig, program: Program, indices: Any, *, eval_data: tuple,
             test_data: Optional[tuple], desc: str, progress: bool = True,
             log: Optional[MetricsLog] = None, resume: Optional[dict[str, Any]] = None,
             checkpoint: Optional[Callable[[int, Any, dict[str, Any]], None]] = None,
             checkpoint_every: int = 0) -> LoopResult:
  """The chunked loop of :func:`train` and :func:`avggrad.sweep.sweep`.

  Runs the steps in chunks up to each evaluation (every ``config.eval_every`` steps) and
  checkpoint; after each chunk it fetches the losses, marks runs that diverged
  (:func:`avggrad.metrics.divergence_step`), evaluates the training loss and accuracy on
  ``eval_data`` and reports progress. It stops when every run has diverged or the budget is
  spent, then evaluates the runs still alive on ``test_data`` (``None``: NaN). The time per
  step leaves out the compilation and the first chunk (warm-up). ``resume`` is a checkpoint's record
  (``step``, ``losses`` as a ``(steps, runs)`` array, ``evals``) to continue from;
  ``checkpoint(step, carry, record)`` is called every ``checkpoint_every`` steps with a record
  of the same form (the whole budget's loss array, unfilled past ``step``).
  """
  runs = program.num_runs
  start = step = int(resume["step"]) if resume else 0
  losses = np.zeros((config.steps, runs))
  evals: list[list[dict[str, float]]] = [[] for _ in range(runs)]
  if resume:
    losses[:step] = resume["losses"][:step]
    evals = [list(e) for e in resume["evals"]]
  stopped: list[Optional[int]] = [None] * runs
  carry = program.carry
  timed_seconds, timed_steps, elapsed = 0.0, 0, 0.0

  def evaluate_now(at: int) -> None:
    loss, acc = (np.atleast_1d(v) for v in evaluate_in_batches(program.evaluate, carry,
                                                                *eval_data))
    scales = step_length.run_scales(carry[1])  # avggrad.auto's scale, where there is one
    for r in range(runs):
      if stopped[r] is None:
        evals[r].append({"step": at, "train_loss": float(loss[r]),
                         "train_accuracy": float(acc[r])}
                        | ({} if scales is None else {"scale": float(scales[r % scales.size])}))
    if log is not None and stopped[0] is None:
      log.write(evals[0][-1] | {"elapsed": elapsed})

  with Progress(config.steps, desc, enabled=progress) as bar:
    if not resume:
      evaluate_now(0)
    else:
      bar.update(step)
    for stop_at in _boundaries(config.steps, step, config.eval_every, checkpoint_every):
      carry, losses[step:stop_at], seconds = _advance_chunk(program, carry,
                                                            indices[step:stop_at])
      elapsed += seconds
      if step > start:  # the first chunk is warm-up
        timed_seconds, timed_steps = timed_seconds + seconds, timed_steps + stop_at - step
      size, step = stop_at - step, stop_at
      _mark_diverged(stopped, losses, step, config)
      if all(s is not None for s in stopped):
        break
      if step % config.eval_every == 0 or step == config.steps:
        evaluate_now(step)
      bar.update(size, loss=float(min(evals[r][-1]["train_loss"]
                                      for r in range(runs) if stopped[r] is None)))
      if checkpoint is not None and checkpoint_every and step % checkpoint_every == 0:
        checkpoint(step, carry, {"step": step, "losses": losses, "evals": evals})
    test = (np.full(runs, np.nan), np.full(runs, np.nan))
    if test_data is not None and any(s is None for s in stopped):
      test = tuple(np.atleast_1d(v) for v in
                   evaluate_in_batches(program.evaluate, carry, *test_data))
  seconds_per_step = (timed_seconds / timed_steps if timed_steps
                      else elapsed / max(step - start, 1))
  return _loop_result(carry, losses, evals, stopped, step, test, seconds_per_step, program)


def place_eval(dp: parallel.DataParallel, x: Any, y: Any) -> tuple:
  """Evaluation data as the devices read it (replicated on a mesh, host arrays otherwise)."""
  if dp.mesh is None:
    return x, y
  return place_data(dp, x), place_data(dp, y)


def eval_split(dp: parallel.DataParallel, task: Task, config: TrainConfig) -> tuple:
  """The periodic evaluation's data: the first ``config.eval_examples`` training examples."""
  part = slice(0, config.eval_examples)
  return place_eval(dp, tasks.take(task.train[0], part), tasks.take(task.train[1], part))


def held_out(dp: parallel.DataParallel, task: Task) -> Optional[tuple]:
  """The task's test data as the devices read it (``None`` without one)."""
  return None if task.test is None else place_eval(dp, *task.test)


def place_data(dp: parallel.DataParallel, tree: Any) -> Any:
  """The arrays of ``tree`` as the devices hold them
  (:meth:`avggrad.parallel.DataParallel.place_data`)."""
  return jax.tree.map(dp.place_data, tree)


def check_data(config: TrainConfig, task: Task) -> None:
  """``ValueError`` when the task's data cannot feed the configuration's minibatches."""
  n = tasks.num_examples(task.train)
  if task.test is not None:
    tasks.num_examples(task.test)
  if config.batch_size > n:
    raise ValueError(f"batch_size {config.batch_size} is larger than the training data "
                     f"({n} examples).")


def single_program(config: TrainConfig, task: Data, dp: parallel.DataParallel
                   ) -> tuple[Program, Any]:
  """The :class:`Program` of one run (one compiled call per step) and the model's graphdef.
  ``task``: a :class:`avggrad.tasks.Task`, or the training split of the built-in task
  ``config`` names."""
  task = tasks.as_task(config, task)
  dp.check_batch(config.batch_size)
  model = task.make_model(nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_tx(config)
  params = dp.place_state(params)
  rest = dp.place_state(rest)
  opt_state = dp.place_state(jax.jit(tx.init)(params))

  def step(carry: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
    params, opt_state = carry
    params, opt_state, loss = update_step(tx, graphdef, params, rest, opt_state, x, y, task)
    return (params, opt_state), loss

  x_all, y_all = place_data(dp, task.train[0]), place_data(dp, task.train[1])
  advance, compiled = chunk_advance(step, x_all, y_all, dp, scan=False, batch_axis=0)
  evaluate = jax.jit(lambda carry, x, y: eval_sums(graphdef, eval_params(*carry), rest, x, y,
                                                   task))
  return Program(carry=(params, opt_state), advance=advance, evaluate=evaluate,
                 compiled=[compiled], data=(x_all, y_all)), graphdef


def compile_step(config: TrainConfig, train_data: Data,
                 dp: Optional[parallel.DataParallel] = None) -> tuple[Program, float]:
  """The program of one run with its step compiled, as :func:`train` runs it, for timing:
  ``(program, compile seconds)``; ``program.compiled[0](carry, *program.data, idx) -> (carry,
  loss)`` is one step (``carry`` donated)."""
  dp = dp or parallel.DataParallel(None)
  program, _ = single_program(config, train_data, dp)
  idx = dp.place_batch(np.zeros((config.batch_size,), np.int32))
  program.compiled[0].compile(program.carry, *program.data, idx)
  return program, program.compiled[0].seconds


def machine_flops_per_second() -> float:
  """This machine's measured float32 matrix-multiply rate (a 1024x1024 product, best of 3)."""
  a = jnp.ones((1024, 1024), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  product(a).block_until_ready()
  best = math.inf
  for _ in range(3):
    tick = time.perf_counter()
    product(a).block_until_ready()
    best = min(best, time.perf_counter() - tick)
  return 2 * 1024**3 / best


def step_flops(config: TrainConfig, train_data: Data) -> float:
  """The FLOPs of one training step, before anything is compiled: the loss and gradient on a
  minibatch (XLA's cost analysis of the lowered program), twice that for an average-gradient
  optimizer (one more gradient at most)."""
  task = tasks.as_task(config, train_data)
  graphdef, params, rest = nnx.split(task.make_model(nnx.Rngs(0)), nnx.Param, ...)
  batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct((config.batch_size, *np.shape(a)[1:]),
                                                      a.dtype), task.train)
  lowered = jax.jit(jax.value_and_grad(loss_fn(graphdef, rest, task))).lower(params, batch)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  return (2.0 if optimizers.parse_optimizer(config.optimizer)[0].startswith("avg") else 1.0) * flops


def estimated_step_seconds(config: TrainConfig, train_data: Data) -> float:
  """A rough time per training step: :func:`step_flops` over this machine's measured
  matrix-multiply rate. Memory-bound models run slower than this; it tells a minute from an
  hour, not more."""
  return step_flops(config, train_data) / machine_flops_per_second()


SLOW_STEP_SECONDS = 2.0
"""Above this estimated time per step, :func:`warn_if_slow` prints the estimate."""

SLOWEST_FLOPS_PER_SECOND = 1e9
"""A floor under any machine's matrix-multiply rate. A step of fewer FLOPs than
``SLOW_STEP_SECONDS`` times this cannot be slow, and the machine is not timed for it."""


def warn_if_slow(config: TrainConfig, train_data: Data, runs: int = 1) -> float:
  """Prints an estimate to stderr before a run whose steps will take more than
  :data:`SLOW_STEP_SECONDS` (:func:`estimated_step_seconds`); returns the estimate (for a step
  too small to be slow, the bound from :data:`SLOWEST_FLOPS_PER_SECOND`, without timing the
  machine)."""
  flops = step_flops(config, train_data)
  if flops < SLOW_STEP_SECONDS * SLOWEST_FLOPS_PER_SECOND:
    return flops / SLOWEST_FLOPS_PER_SECOND
  seconds = flops / machine_flops_per_second()
  if seconds > SLOW_STEP_SECONDS:
    total = seconds * config.steps * runs
    print(f"avggrad: this configuration will be slow: about {seconds:.1f} s per step, "
          f"{total / 60:.0f} min for {runs} run(s) of {config.steps} steps (estimated from its "
          "FLOPs and this machine's speed). Smaller --vocab-size, --max-len, --width, --depth "
          "or --batch-size train faster.", file=sys.stderr, flush=True)
  return seconds


def _checkpointing(config: TrainConfig, directory: Optional[str], every: int,
                   carry: Any, indices: np.ndarray):
  """Opens the run's checkpoints: ``(checkpointer, carry, resume record)``."""
  if not directory:
    if every:
      raise ValueError("checkpoint_every needs checkpoint_dir.")
    return None, carry, None
  if every < 1:
    raise ValueError(f"checkpoint_every must be a positive number of steps, got {every}.")
  ckpt = checkpoint_lib.Checkpointer(directory, dataclasses.asdict(config))
  step = ckpt.latest_step()
  if step is None:
    return ckpt, carry, None
  carry, saved = ckpt.restore(step, carry)
  if "data_order" not in saved:
    raise checkpoint_lib.CheckpointError(
        f"the checkpoint at step {step} in {directory} is in an older format (its record "
        "keeps the whole minibatch order instead of the data order's position and hash); "
        "this version cannot resume it. Start again in a new or empty checkpoint folder, or "
        "finish the run with the avggrad version that wrote it.")
  if saved.get("data_order") != data_order(indices, step):
    raise checkpoint_lib.CheckpointError(
        f"the checkpoint at step {step} in {directory} was trained on another data order.")
  return ckpt, carry, decode_record(saved)


def data_order(indices: np.ndarray, step: int) -> dict[str, Any]:
  """What identifies the data order of the first ``step`` steps in a checkpoint, in a size
  that does not grow with the run: the order regenerates from the configuration (seed, batch
  size, dataset), and its hash checks on resume that it is the one the run was trained on."""
  return {"position": int(step), "batch_size": int(indices.shape[1]),
          "sha256": hashlib.sha256(np.ascontiguousarray(indices[:step], np.int32)).hexdigest()}


def _eval_slots(config: TrainConfig) -> int:
  return len(_boundaries(config.steps, 0, config.eval_every)) + 1  # and step 0


def encode_record(record: dict[str, Any], indices: np.ndarray,
                  config: TrainConfig) -> dict[str, Any]:
  """A checkpoint's record whose size does not depend on the step: the whole budget's loss
  array and a fixed table of evaluation slots as raw float64 bytes (base64, exact), and the
  data order as :func:`data_order`."""
  losses = np.asarray(record["losses"], np.float64)
  # Columns: step, loss, accuracy and ``avggrad.auto``'s scale (NaN for an optimizer without
  # one: a scale, when there is one, is finite and positive).
  table = np.full((len(record["evals"]), _eval_slots(config), 4), np.nan)
  for r, run in enumerate(record["evals"]):
    for i, e in enumerate(run):
      table[r, i] = (e["step"], e["train_loss"], e["train_accuracy"], e.get("scale", np.nan))
  pack = lambda a: {"shape": list(a.shape),  # noqa: E731
                    "float64": base64.b64encode(a.tobytes()).decode("ascii")}
  return {"step": int(record["step"]), "losses": pack(losses), "evals": pack(table),
          "data_order": data_order(indices, int(record["step"]))}


def decode_record(saved: dict[str, Any]) -> dict[str, Any]:
  """The record :func:`run_loop` resumes from, out of :func:`encode_record`'s form."""
  unpack = lambda d: np.frombuffer(base64.b64decode(d["float64"]),  # noqa: E731
                                   np.float64).reshape(d["shape"])
  table = unpack(saved["evals"])

  def entry(row: np.ndarray) -> dict[str, Any]:
    e = {"step": int(row[0]), "train_loss": float(row[1]), "train_accuracy": float(row[2])}
    if len(row) > 3 and not np.isnan(row[3]):
      e["scale"] = float(row[3])
    return e

  evals = [[entry(row) for row in run if not np.isnan(row[0])] for run in table]
  return {"step": saved["step"], "losses": unpack(saved["losses"]), "evals": evals}


def train(
    config: TrainConfig,
    *,
    task: Optional[Task] = None,
    train_data: Optional[data_lib.Dataset] = None,
    test_data: Optional[data_lib.Dataset] = None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    raise_on_nonfinite: bool = False,
    devices: Union[None, int, Sequence[jax.Device]] = None,
    shard_params: bool = False,
    checkpoint_dir: Optional[str] = None,
    checkpoint_every: int = 0,
) -> RunResult:
  """Trains one configuration and returns its :class:`RunResult`.

  Args:
    config: the run's settings.
    task: the model, loss and data to train (:class:`avggrad.tasks.Task`); ``None``: the
      built-in task ``config`` names (its model and dataset).
    train_data, test_data: preloaded splits of the built-in task (loaded from ``config`` when
      omitted; unused with ``task``).
    out_dir: if given, ``config.json`` and ``metrics.jsonl`` (one JSON object per evaluation,
      then a final summary with the per-step losses) are written there as the run goes.
    progress: report progress (a bar on a terminal, one line per evaluation otherwise).
    raise_on_nonfinite: raise :class:`avggrad.config.NonFiniteLossError` (after writing the
      log) instead of returning a result with ``status="diverged at step N"``.
    devices: data parallelism over all devices JAX sees (``None``, the default), the first
      ``n`` (an int: ``1`` for one device) or the given devices: the batch is sharded over a
      ``data`` mesh axis (:mod:`avggrad.parallel`).
    shard_params: shard parameters and optimizer state over the devices (FSDP-style)
      instead of replicating them.
    checkpoint_dir: save checkpoints there (:mod:`avggrad.checkpoint`) and, if it holds one
      of this configuration, resume from the latest.
    checkpoint_every: steps between checkpoints (needs ``checkpoint_dir``).

  Returns:
    The :class:`RunResult` (with a checkpoint, of the whole run, restored steps included).
  """
  config.validate(builtin=task is None)
  task = task if task is not None else tasks.for_config(config, train_data, test_data)
  check_data(config, task)
  dp = parallel.DataParallel.create(devices, shard_params)
  program, _ = single_program(config, task, dp)
  indices = batch_indices(len(task), config.batch_size, config.steps, config.seed)
  ckpt, program.carry, resume = _checkpointing(config, checkpoint_dir, checkpoint_every,
                                               program.carry, indices)

  def save(step: int, carry: Any, record: dict[str, Any]) -> None:
    ckpt.save(step, carry, encode_record(record, indices, config))

  try:
    with MetricsLog(out_dir, config) as log:
      out = run_loop(config, program, dp.place_batch(indices, 1),
                     eval_data=eval_split(dp, task, config), test_data=held_out(dp, task),
                     desc=f"{config.optimizer} lr={config.lr:g}", progress=progress, log=log,
                     resume=resume, checkpoint=save if ckpt else None,
                     checkpoint_every=checkpoint_every)
      result = RunResult(
          config=dataclasses.asdict(config), losses=out.losses[0], evals=out.evals[0],
          status=out.statuses[0], test_loss=out.test_loss[0],
          test_accuracy=out.test_accuracy[0], seconds_per_step=out.seconds_per_step,
          compile_seconds=out.compile_seconds,
          scale=step_length.current_scale(out.carry[1]))
      log.write({"event": "end", "status": result.status, "test_loss": result.test_loss,
                 "test_accuracy": result.test_accuracy,
                 "seconds_per_step": result.seconds_per_step,
                 "compile_seconds": result.compile_seconds, "scale": result.scale,
                 "losses": result.losses})
  finally:
    if ckpt is not None:
      ckpt.close()
  if result.diverged and raise_on_nonfinite:
    raise NonFiniteLossError(
        f"{config.optimizer} (lr={config.lr:g}): the training loss became non-finite or "
        f"exceeded {config.divergence_factor:g}x its initial loss ({result.status}); the log "
        f"is kept{' in ' + out_dir if out_dir else ''}."
    )
  return result
