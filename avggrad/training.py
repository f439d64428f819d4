"""Training loop: NNX models, any Optax or avggrad optimizer, jit-compiled steps.

:func:`train` runs one configuration (:class:`TrainConfig`) and returns a :class:`RunResult`
with the per-step minibatch losses, periodic evaluations of the training loss and accuracy,
the final test metrics and the wall-clock time per step. Its stages are separate functions, in
the spirit of the Flax examples' ``train.py``: the data (:func:`load_splits`,
:func:`batch_indices`), the model and optimizer (:func:`make_model`, :func:`make_tx`), one
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
from avggrad import metrics, optimizers, parallel, step_length
from avggrad.progress import Progress
from avggrad.models import CNN, MLP, ResNet, TextModel, TransformerLM

MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet", "text-mlp", "text-conv", "text-lm")
"""``mlp``, ``cnn``, ``text-mlp``, ``text-conv``: the plain deep networks of the paper's kind;
``resnet`` (residual CNN with GroupNorm) and ``text-lm`` (a causal transformer language model
on the IMDb text: next-token prediction) are of the kind users train today."""

SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine")

MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"depth": 16, "width": 128},
    "cnn": {"depth": 8, "channels": 32},
    "resnet": {"depth": 4, "channels": 16, "activation": "relu", "init": "he_normal"},
    "text-mlp": {"depth": 8, "width": 128, "vocab_size": 20000, "max_len": 128,
                 "embed_dim": 32},
    "text-conv": {"depth": 4, "width": 128, "vocab_size": 20000, "max_len": 128,
                  "embed_dim": 32},
    "text-lm": {"depth": 2, "vocab_size": 1000, "max_len": 33, "embed_dim": 64, "heads": 4,
                "activation": "gelu", "batch_size": 32},
}
"""Each model's defaults where they differ from :class:`TrainConfig`'s, sized to train at
interactive speed on a 2-core CPU (the sizes the benchmarks use; ``text-lm``: 32-token
windows of a 1,000-word vocabulary). The command line and :meth:`TrainConfig.for_model` apply
them; the dataclass's own defaults stay those of the MLP."""


class NonFiniteLossError(FloatingPointError):
  """Raised by :func:`train` with ``raise_on_nonfinite=True`` when the loss diverges."""


@dataclasses.dataclass
class TrainConfig:
  """Everything that defines one training run.

  ``schedule`` is ``"constant"`` (the learning rate ``lr`` throughout) or
  ``"warmup_cosine"`` (linear warmup from 0 over ``warmup_fraction`` of the budget, then
  cosine decay to 0 at the last step, peaking at ``lr``). ``divergence_factor`` stops a run
  whose trailing mean loss exceeds that multiple of its initial loss (0: only a non-finite
  loss stops it).
  """

  dataset: str = data_lib.EMBEDDED
  model: str = "mlp"
  depth: int = 16
  width: int = 128
  channels: int = 32
  kernel_size: int = 3
  pooling: str = "stride"
  activation: str = "tanh"
  init: str = "glorot_uniform"
  optimizer: str = "avg-rmsprop"
  lr: float = 1e-3
  steps: int = 2000
  batch_size: int = 128
  seed: int = 0
  eval_every: int = 50
  eval_examples: int = 2000
  data_dir: Optional[str] = None
  limit: Optional[int] = None
  vocab_size: int = 20000
  max_len: int = 256
  embed_dim: int = 64
  heads: int = 4
  schedule: str = "constant"
  warmup_fraction: float = 0.05
  divergence_factor: float = metrics.DEFAULT_DIVERGENCE_FACTOR

  @classmethod
  def for_model(cls, model: str, **settings: Any) -> "TrainConfig":
    """A configuration of ``model`` with its :data:`MODEL_DEFAULTS`, then ``settings``."""
    if model not in MODELS:
      raise ValueError(f"Unknown model {model!r}; expected one of {', '.join(MODELS)}.")
    return cls(model=model, **(MODEL_DEFAULTS[model] | settings))

  def validate(self) -> None:
    """Raises ``ValueError`` for settings that cannot work together."""
    if self.model not in MODELS:
      raise ValueError(f"Unknown model {self.model!r}; expected one of {', '.join(MODELS)}.")
    if self.dataset not in data_lib.DATASETS:
      raise ValueError(
          f"Unknown dataset {self.dataset!r}; expected one of {', '.join(data_lib.DATASETS)}."
      )
    is_text = self.dataset == "imdb_reviews"
    if is_text != self.model.startswith("text-"):
      raise ValueError(
          f"Model {self.model!r} does not fit dataset {self.dataset!r}: IMDb takes "
          f"{', '.join(m for m in MODELS if m.startswith('text-'))}, the image datasets take "
          f"{', '.join(m for m in MODELS if not m.startswith('text-'))}."
      )
    for name in ("steps", "batch_size", "eval_every", "eval_examples", "width", "channels"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"lr must be a positive number, got {self.lr}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(
          f"Unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}."
      )
    if not 0 <= self.warmup_fraction < 1:
      raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
    if not (self.divergence_factor >= 0 and math.isfinite(self.divergence_factor)):
      raise ValueError(
          f"divergence_factor must be 0 (off) or positive, got {self.divergence_factor}."
      )
    optimizers.parse_optimizer(self.optimizer)


@dataclasses.dataclass
class RunResult:
  """What one run produced.

  Attributes:
    config: the configuration, as a dict.
    losses: minibatch training loss at every step, measured before that step's update.
    evals: periodic evaluations ``{"step", "train_loss", "train_accuracy"}`` on the first
      ``eval_examples`` training examples.
    status: ``"ok"`` or ``"diverged at step N"`` (a non-finite loss, or a trailing mean loss
      above ``divergence_factor`` times the initial loss; the run stopped there).
    test_loss: the loss on the test split at the end (NaN if diverged).
    test_accuracy: the accuracy on the test split at the end (NaN if diverged).
    seconds_per_step: wall-clock per step, excluding compilation and the first
      ``eval_every`` steps (warm-up). For runs trained together by :mod:`avggrad.sweep`, the
      sweep's time per step divided by ``batched_runs`` (an amortised figure, not the time
      of one run's step: time steps one at a time, as :mod:`avggrad.timing` does, for
      wall-clock comparisons).
    compile_seconds: time to compile the training step.
    batched_runs: how many runs were trained together in one compiled program.
    scale: the final step scale of a self-tuning optimizer (:func:`avggrad.auto`), else
      ``None``.
  """

  config: dict[str, Any]
  losses: list[float]
  evals: list[dict[str, float]]
  status: str
  test_loss: float
  test_accuracy: float
  seconds_per_step: float
  compile_seconds: float
  batched_runs: int = 1
  scale: Optional[float] = None

  @property
  def diverged(self) -> bool:
    return self.status != "ok"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def load_splits(config: TrainConfig) -> tuple[data_lib.Dataset, data_lib.Dataset]:
  """The training and test splits a configuration names. For ``text-lm`` the examples are
  next-token pairs: inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``."""
  kwargs = dict(data_dir=config.data_dir, limit=config.limit, vocab_size=config.vocab_size,
                max_len=config.max_len)
  splits = (data_lib.load(config.dataset, "train", **kwargs),
            data_lib.load(config.dataset, "test", **kwargs))
  if config.model == "text-lm":
    splits = tuple(dataclasses.replace(s, x=s.x[:, :-1], y=s.x[:, 1:].astype(np.int32),
                                       num_classes=s.vocab_size) for s in splits)
  return splits


def learning_rate(config: TrainConfig, lr: Any = None) -> optax.ScalarOrSchedule:
  """The learning rate or schedule of a configuration, peaking at ``lr`` (default
  ``config.lr``; may be a traced value, as in :mod:`avggrad.sweep`)."""
  lr = config.lr if lr is None else lr
  if config.schedule == "constant":
    return lr
  warmup = int(round(config.warmup_fraction * config.steps))
  unit = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=1.0, warmup_steps=warmup, decay_steps=config.steps,
      end_value=0.0)
  return lambda count: lr * unit(count)


def make_model(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
  """The model a configuration names, sized for the dataset."""
  common = dict(activation=config.activation, kernel_init=config.init, rngs=rngs)
  if config.model == "mlp":
    features = int(np.prod(train.x.shape[1:]))
    return MLP(features, train.num_classes, depth=config.depth, width=config.width, **common)
  if config.model == "cnn":
    return CNN(train.x.shape[1:], train.num_classes, depth=config.depth,
               channels=config.channels, kernel_size=config.kernel_size,
               pooling=config.pooling, **common)
  if config.model == "resnet":
    return ResNet(train.x.shape[1:], train.num_classes, depth=config.depth,
                  channels=config.channels, **common)
  if config.model == "text-lm":
    return TransformerLM(train.vocab_size, train.x.shape[1], dim=config.embed_dim,
                         depth=config.depth, heads=config.heads,
                         activation=config.activation, rngs=rngs)
  kind = config.model.split("-", 1)[1]
  return TextModel(train.vocab_size, train.num_classes, kind=kind, embed_dim=config.embed_dim,
                   depth=config.depth, width=config.width, kernel_size=config.kernel_size,
                   **common)


def make_tx(config: TrainConfig, lr: Any = None) -> optax.GradientTransformationExtraArgs:
  """The optimizer of a configuration (:func:`avggrad.optimizers.make_optimizer`) with its
  learning rate or schedule peaking at ``lr`` (default ``config.lr``; may be traced)."""
  return optimizers.make_optimizer(config.optimizer, learning_rate(config, lr))


def cross_entropy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of the model's logits."""
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def loss_fn(graphdef: Any, rest: Any) -> Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]:
  """``value_fn(params, batch)``: the mean cross-entropy on ``batch = (x, y)`` of the model
  ``nnx.merge(graphdef, params, rest)``; the form the optimizers receive as ``value_fn``."""

  def value_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return cross_entropy(nnx.merge(graphdef, params, rest), x, y)

  return value_fn


def update_step(tx: optax.GradientTransformation, graphdef: Any, params: Any, rest: Any,
                opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
  """One training step, the one :func:`train` and :func:`avggrad.sweep.sweep` both run:
  the loss and gradient at the current weights, then the optimizer's update.

  The optimizer receives ``value_fn(params, batch)`` (:func:`loss_fn`), ``batch=(x, y)``,
  and, as Optax's line searches take them, ``value=`` (the loss) and ``grad=`` (the raw
  gradient); average-gradient optimizers use them, all others ignore them. Returns the new
  parameters, the new optimizer state and the loss before the update.
  """
  value_fn = loss_fn(graphdef, rest)
  loss, grads = jax.value_and_grad(value_fn)(params, (x, y))
  updates, opt_state = tx.update(grads, opt_state, params, value_fn=value_fn, batch=(x, y),
                                 value=loss, grad=grads)
  return optax.apply_updates(params, updates), opt_state, loss


def eval_sums(graphdef: Any, params: Any, rest: Any, x: jax.Array,
              y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed cross-entropy and count of correct predictions on ``x, y`` (tokens for a
  language model)."""
  logits = nnx.merge(graphdef, params, rest)(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
  return loss, (jnp.argmax(logits, -1) == y).sum()


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


def evaluate_in_batches(evaluate: Callable, state: Any, x: np.ndarray, y: np.ndarray,
                        batch: int = 1000) -> tuple[Any, Any]:
  """Mean loss and accuracy of ``evaluate(state, x, y) -> (summed loss, correct)`` over
  ``x, y`` in batches (arrays when ``evaluate`` is vmapped over runs)."""
  total, correct = 0.0, 0
  for start in range(0, len(y), batch):
    loss, hits = evaluate(state, x[start : start + batch], y[start : start + batch])
    total = total + np.asarray(loss, np.float64)
    correct = correct + np.asarray(hits, np.int64)
  count = np.size(y)  # examples, or tokens for a language model
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
    x, y = dp.constrain_batch((x_all[row], y_all[row]), batch_axis)
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
             test_data: tuple, desc: str, progress: bool = True,
             log: Optional[MetricsLog] = None, resume: Optional[dict[str, Any]] = None,
             checkpoint: Optional[Callable[[int, Any, dict[str, Any]], None]] = None,
             checkpoint_every: int = 0) -> LoopResult:
  """The chunked loop of :func:`train` and :func:`avggrad.sweep.sweep`.

  Runs the steps in chunks up to each evaluation (every ``config.eval_every`` steps) and
  checkpoint; after each chunk it fetches the losses, marks runs that diverged
  (:func:`avggrad.metrics.divergence_step`), evaluates the training loss and accuracy on
  ``eval_data`` and reports progress. It stops when every run has diverged or the budget is
  spent, then evaluates the runs still alive on ``test_data``. The time per step leaves out
  the compilation and the first chunk (warm-up). ``resume`` is a checkpoint's record
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
    for r in range(runs):
      if stopped[r] is None:
        evals[r].append({"step": at, "train_loss": float(loss[r]),
                         "train_accuracy": float(acc[r])})
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
    if any(s is None for s in stopped):
      test = tuple(np.atleast_1d(v) for v in
                   evaluate_in_batches(program.evaluate, carry, *test_data))
  seconds_per_step = (timed_seconds / timed_steps if timed_steps
                      else elapsed / max(step - start, 1))
  return _loop_result(carry, losses, evals, stopped, step, test, seconds_per_step, program)


def place_eval(dp: parallel.DataParallel, x: np.ndarray, y: np.ndarray) -> tuple:
  """Evaluation data as the devices read it (replicated on a mesh, host arrays otherwise)."""
  if dp.mesh is None:
    return x, y
  return dp.place_data(x), dp.place_data(y)


def single_program(config: TrainConfig, train_data: data_lib.Dataset,
                   dp: parallel.DataParallel) -> tuple[Program, Any]:
  """The :class:`Program` of one run (one compiled call per step) and the model's graphdef."""
  dp.check_batch(config.batch_size)
  model = make_model(config, train_data, nnx.Rngs(config.seed))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = make_tx(config)
  params = dp.place_state(params)
  rest = dp.place_state(rest)
  opt_state = dp.place_state(jax.jit(tx.init)(params))

  def step(carry: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
    params, opt_state = carry
    params, opt_state, loss = update_step(tx, graphdef, params, rest, opt_state, x, y)
    return (params, opt_state), loss

  x_all, y_all = dp.place_data(train_data.x), dp.place_data(train_data.y)
  advance, compiled = chunk_advance(step, x_all, y_all, dp, scan=False, batch_axis=0)
  evaluate = jax.jit(lambda carry, x, y: eval_sums(graphdef, eval_params(*carry), rest, x, y))
  return Program(carry=(params, opt_state), advance=advance, evaluate=evaluate,
                 compiled=[compiled], data=(x_all, y_all)), graphdef


def compile_step(config: TrainConfig, train_data: data_lib.Dataset,
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


def step_flops(config: TrainConfig, train_data: data_lib.Dataset) -> float:
  """The FLOPs of one training step, before anything is compiled: the loss and gradient on a
  minibatch (XLA's cost analysis of the lowered program), twice that for an average-gradient
  optimizer (one more gradient at most)."""
  model = make_model(config, train_data, nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = (jax.ShapeDtypeStruct((config.batch_size, *train_data.x.shape[1:]), train_data.x.dtype),
           jax.ShapeDtypeStruct((config.batch_size, *train_data.y.shape[1:]), train_data.y.dtype))
  lowered = jax.jit(jax.value_and_grad(loss_fn(graphdef, rest))).lower(params, batch)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get("flops", 0.0))
  return (2.0 if optimizers.parse_optimizer(config.optimizer)[0].startswith("avg") else 1.0) * flops


def estimated_step_seconds(config: TrainConfig, train_data: data_lib.Dataset) -> float:
  """A rough time per training step: :func:`step_flops` over this machine's measured
  matrix-multiply rate. Memory-bound models run slower than this; it tells a minute from an
  hour, not more."""
  return step_flops(config, train_data) / machine_flops_per_second()


SLOW_STEP_SECONDS = 2.0
"""Above this estimated time per step, :func:`warn_if_slow` prints the estimate."""

SLOWEST_FLOPS_PER_SECOND = 1e9
"""A floor under any machine's matrix-multiply rate. A step of fewer FLOPs than
``SLOW_STEP_SECONDS`` times this cannot be slow, and the machine is not timed for it."""


def warn_if_slow(config: TrainConfig, train_data: data_lib.Dataset, runs: int = 1) -> float:
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
  table = np.full((len(record["evals"]), _eval_slots(config), 3), np.nan)
  for r, run in enumerate(record["evals"]):
    for i, e in enumerate(run):
      table[r, i] = (e["step"], e["train_loss"], e["train_accuracy"])
  pack = lambda a: {"shape": list(a.shape),  # noqa: E731
                    "float64": base64.b64encode(a.tobytes()).decode("ascii")}
  return {"step": int(record["step"]), "losses": pack(losses), "evals": pack(table),
          "data_order": data_order(indices, int(record["step"]))}


def decode_record(saved: dict[str, Any]) -> dict[str, Any]:
  """The record :func:`run_loop` resumes from, out of :func:`encode_record`'s form."""
  unpack = lambda d: np.frombuffer(base64.b64decode(d["float64"]),  # noqa: E731
                                   np.float64).reshape(d["shape"])
  table = unpack(saved["evals"])
  evals = [[{"step": int(s), "train_loss": float(l), "train_accuracy": float(a)}
            for s, l, a in run if not np.isnan(s)] for run in table]
  return {"step": saved["step"], "losses": unpack(saved["losses"]), "evals": evals}


def train(
    config: TrainConfig,
    *,
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
    train_data, test_data: preloaded splits (loaded from ``config`` when omitted).
    out_dir: if given, ``config.json`` and ``metrics.jsonl`` (one JSON object per evaluation,
      then a final summary with the per-step losses) are written there as the run goes.
    progress: report progress (a bar on a terminal, one line per evaluation otherwise).
    raise_on_nonfinite: raise :class:`NonFiniteLossError` (after writing the log) instead of
      returning a result with ``status="diverged at step N"``.
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
  config.validate()
  if train_data is None or test_data is None:
    loaded = load_splits(config)
    train_data, test_data = train_data or loaded[0], test_data or loaded[1]
  dp = parallel.DataParallel.create(devices, shard_params)
  program, _ = single_program(config, train_data, dp)
  indices = batch_indices(len(train_data), config.batch_size, config.steps, config.seed)
  ckpt, program.carry, resume = _checkpointing(config, checkpoint_dir, checkpoint_every,
                                               program.carry, indices)

  def save(step: int, carry: Any, record: dict[str, Any]) -> None:
    ckpt.save(step, carry, encode_record(record, indices, config))

  eval_data = place_eval(dp, train_data.x[: config.eval_examples],
                           train_data.y[: config.eval_examples])
  try:
    with MetricsLog(out_dir, config) as log:
      out = run_loop(config, program, dp.place_batch(indices, 1), eval_data=eval_data,
                     test_data=place_eval(dp, test_data.x, test_data.y),
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
