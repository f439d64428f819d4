"""Training loop: NNX models, any Optax or avggrad optimizer, jit-compiled steps.

:func:`train` runs one configuration (:class:`TrainConfig`) and returns a :class:`RunResult`
with the per-step minibatch losses, periodic evaluations of the training loss and accuracy,
the final test metrics and the wall-clock time per step. Its stages are separate functions, in
the spirit of the Flax examples' ``train.py``: the data (:func:`load_splits`,
:func:`batch_indices`), the compiled step (:func:`make_model`, :func:`make_optimizer`,
:func:`step_fn`), the loop (:func:`train`) and the record (:class:`MetricsLog`). Each step is
one compiled call; the losses of ``eval_every`` steps are fetched together, so the host does
not wait on the device between steps. The same seed gives the same initial weights and the
same minibatch order whatever the optimizer, so optimizers are compared on identical data.
:mod:`avggrad.sweep` trains many learning rates and seeds of one configuration in one
compiled program, with the same stages.

Every optimizer receives ``value_fn(params, batch)`` (the loss on a batch as a function of the
parameters) and ``batch=(x, y)`` (the current minibatch) as extra arguments of ``update``; the
average-gradient optimizers use them, all others ignore them. A run stops early, marked
``"diverged at step N"``, when its loss becomes non-finite or its trailing mean loss exceeds
``divergence_factor`` times its initial loss (:func:`avggrad.metrics.divergence_step`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import avggrad
from avggrad import data as data_lib
from avggrad import metrics
from avggrad.progress import Progress
from avggrad.models import CNN, MLP, ResNet, TextModel, TransformerLM

MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet", "text-mlp", "text-conv", "text-lm")
"""``mlp``, ``cnn``, ``text-mlp``, ``text-conv``: the plain deep networks of the paper's kind;
``resnet`` (residual CNN with GroupNorm) and ``text-lm`` (a causal transformer language model
on the IMDb text: next-token prediction) are of the kind users train today."""

def _with_objective(tx: optax.GradientTransformation, name: str) -> Callable[..., Any]:
  """Adapts an Optax transformation that needs the loss under another name: ``obj_fn``
  (params -> loss, Sophia) or ``grad_fn`` ((params, i) -> gradient, SAM's opaque mode), built
  from the ``value_fn`` and ``batch`` every optimizer receives here."""

  def update_fn(updates: Any, state: Any, params: Any = None, *, value_fn: Any = None,
                batch: Any = None, **extra_args: Any) -> Any:
    del extra_args
    if value_fn is None:
      raise TypeError(f"{name} needs value_fn (and batch) in update.")
    loss = (lambda p: value_fn(p, batch)) if batch is not None else value_fn
    if name == "sophia":
      return tx.update(updates, state, params, obj_fn=loss)
    return tx.update(updates, state, params, grad_fn=lambda p, _: jax.grad(loss)(p))

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _sophia(learning_rate: optax.ScalarOrSchedule, **options: Any) -> Any:
  return _with_objective(optax.contrib.sophia(learning_rate, **options), "sophia")


def _sam(learning_rate: optax.ScalarOrSchedule, rho: float = 0.05, **options: Any) -> Any:
  """SAM (opaque mode) around Adam: one adversarial step of size ``rho`` along the normalised
  gradient, then Adam on the gradient there; two gradients a step, as the average gradient."""
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
  return _with_objective(
      optax.contrib.sam(optax.adam(learning_rate, **options), adversary, opaque_mode=True),
      "sam")


def _muon(learning_rate: optax.ScalarOrSchedule, **options: Any) -> Any:
  """Optax's Muon with ``consistent_rms=0.2``: updates sized like AdamW's, so one learning
  rate serves its Newton-Schulz (matrices) and Adam (vectors) parts."""
  return optax.contrib.muon(learning_rate, **({"consistent_rms": 0.2} | options))


def _schedule_free_adamw(learning_rate: optax.ScalarOrSchedule, **options: Any) -> Any:
  return optax.contrib.schedule_free_adamw(learning_rate, **options)


def _averaged(inner: Callable[..., optax.GradientTransformation]) -> Callable[..., Any]:
  """``inner`` fed the average gradient as ``avggrad.adam`` is (trapezoid, accelerate-only,
  span 8, the far end on ``far_batch_fraction`` of the batch when given)."""

  def factory(learning_rate: optax.ScalarOrSchedule, *, span: float = 8.0,
              far_batch_fraction: Optional[float] = None, **options: Any) -> Any:
    return avggrad.average_gradient(
        inner(learning_rate, **options), estimator="trapezoid", span=span,
        combine="accelerate", far_batch_fraction=far_batch_fraction)

  return factory


_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "rmsprop": avggrad.rmsprop_baseline,
    "avg-rmsprop": avggrad.rmsprop,
    "adam": avggrad.adam_baseline,
    "avg-adam": avggrad.adam,
    "optax-rmsprop": optax.rmsprop,
    "optax-adam": optax.adam,
    "sgd": optax.sgd,
    # Peers users would pick instead (Optax's own implementations):
    "adamw": optax.adamw,
    "nadam": optax.nadam,
    "lion": optax.lion,
    "adopt": optax.contrib.adopt,
    "muon": _muon,
    "sophia": _sophia,
    "sam": _sam,
    "schedule-free-adamw": _schedule_free_adamw,
    # ... and some of them fed the average gradient:
    "avg-adamw": _averaged(optax.adamw),
    "avg-nadam": _averaged(optax.nadam),
    "avg-lion": _averaged(optax.lion),
    "avg-muon": _averaged(_muon),
}
OPTIMIZERS: tuple[str, ...] = tuple(_OPTIMIZERS)
_BUILTIN: frozenset[str] = frozenset(_OPTIMIZERS)


def register_optimizer(name: str, factory: Callable[..., optax.GradientTransformation]) -> None:
  """Makes ``factory(learning_rate, **options)`` available to specs as ``name`` (for
  experiments; the built-in names cannot be replaced)."""
  global OPTIMIZERS
  if name in _BUILTIN:
    raise ValueError(f"{name!r} is a built-in optimizer.")
  _OPTIMIZERS[name] = factory
  OPTIMIZERS = tuple(_OPTIMIZERS)

_FLOAT_OPTIONS = {"span", "decay", "eps", "eps_root", "b1", "b2", "momentum", "initial_scale",
                  "far_batch_fraction", "max_gain", "weight_decay", "rho", "gamma"}
_INT_OPTIONS = {"num_points", "probes"}
_STR_OPTIONS = {"estimator", "update_range", "accumulate", "combine", "far_dtype"}
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine")


class NonFiniteLossError(FloatingPointError):
  """Raised by :func:`train` with ``raise_on_nonfinite=True`` when the loss diverges."""


def parse_optimizer(spec: str) -> tuple[str, dict[str, Any]]:
  """Splits ``"name:key=value,key=value"`` into the name and typed options.

  Example:
    >>> parse_optimizer("avg-adam:span=8,combine=accelerate")
    ('avg-adam', {'span': 8.0, 'combine': 'accelerate'})
  """
  name, _, rest = spec.partition(":")
  if name not in _OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
  options: dict[str, Any] = {}
  for item in filter(None, rest.split(",")):
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
      raise ValueError(f"Optimizer option {item!r} in {spec!r} is not of the form key=value.")
    try:
      if key == "far_batch_fraction" and value.strip() == "auto":
        options[key] = "auto"
      elif key in _FLOAT_OPTIONS:
        options[key] = float(value)
      elif key in _INT_OPTIONS:
        options[key] = int(value)
      elif key in _STR_OPTIONS:
        options[key] = value.strip()
      else:
        known = sorted(_FLOAT_OPTIONS | _INT_OPTIONS | _STR_OPTIONS)
        raise ValueError(
            f"Unknown optimizer option {key!r} in {spec!r}; expected one of {', '.join(known)}."
        )
    except ValueError as e:
      if "Unknown optimizer option" in str(e):
        raise
      raise ValueError(f"Bad value {value!r} for optimizer option {key!r} in {spec!r}.") from e
  return name, options


def make_optimizer(
    spec: str, learning_rate: optax.ScalarOrSchedule
) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer a spec names (see :data:`OPTIMIZERS` and :func:`parse_optimizer`).

  ``rmsprop`` and ``adam`` are avggrad's same-core baselines (``eps`` outside the root);
  ``optax-rmsprop`` and ``optax-adam`` are Optax's own.
  """
  name, options = parse_optimizer(spec)
  try:
    tx = _OPTIMIZERS[name](learning_rate, **options)
  except TypeError as e:
    raise ValueError(f"Optimizer {name!r} does not take the options {sorted(options)}: {e}") from e
  return optax.with_extra_args_support(tx)


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
    parse_optimizer(self.optimizer)


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
    test_loss, test_accuracy: on the test split at the end (NaN if diverged).
    seconds_per_step: wall-clock per step, excluding compilation and the first
      ``eval_every`` steps (warm-up). For runs trained together by :mod:`avggrad.sweep`, the
      sweep's time per step divided by ``batched_runs`` (an amortised figure, not the time
      of one run's step: time steps one at a time, as :mod:`avggrad.timing` does, for
      wall-clock comparisons).
    compile_seconds: time to compile the training step.
    batched_runs: how many runs were trained together in one compiled program.
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


def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
  """One step: loss and gradient at the current weights, then ``optimizer.update``.

  The optimizer receives ``value_fn(params, batch)`` (on the pure ``nnx.Param`` state) and
  ``batch=(x, y)``, as average-gradient optimizers need.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  value_fn = loss_fn(graphdef, rest)
  loss, grads = jax.value_and_grad(value_fn)(params, (x, y))
  optimizer.update(model, grads, value_fn=value_fn, batch=(x, y))
  return loss


def step_fn(graphdef: Any) -> Callable:
  """``step(state, x_all, y_all, batch_idx) -> (state, loss)``: one training step on the
  minibatch ``x_all[batch_idx]``; ``state`` is the ``nnx.split((model, optimizer))`` state
  belonging to ``graphdef``. (One compiled step per call: on CPU a ``lax.scan`` over steps
  made convolutions several times slower.)"""

  def step(state: Any, x_all: jax.Array, y_all: jax.Array, batch_idx: jax.Array):
    model, optimizer = nnx.merge(graphdef, state)
    loss = train_step(model, optimizer, x_all[batch_idx], y_all[batch_idx])
    return nnx.state((model, optimizer)), loss

  return step


def batch_indices(num_examples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """Minibatch indices for every step, ``(steps, batch_size)``: shuffled epochs, the same for
  every optimizer."""
  rng = np.random.default_rng(seed)
  per_epoch = max(1, num_examples // batch_size)
  epochs = -(-steps // per_epoch)
  order = np.concatenate([
      rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(epochs)
  ]) if num_examples >= batch_size else rng.integers(0, num_examples, steps * batch_size)
  return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


_batch_indices = batch_indices  # the name earlier versions used


def evaluate_fn(graphdef: Any) -> Callable:
  """``evaluate(model_state, x, y) -> (summed loss, correct count)``, jit-compiled."""

  @jax.jit
  def evaluate(state: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    model = nnx.merge(graphdef, state)
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    correct = (jnp.argmax(logits, -1) == y).sum()
    return loss, correct

  return evaluate


def evaluate_in_batches(evaluate: Callable, state: Any, x: np.ndarray, y: np.ndarray,
                        batch: int = 1000) -> tuple[Any, Any]:
  """Mean loss and accuracy of ``evaluate`` over ``x, y`` in batches (arrays when
  ``evaluate`` is vmapped over runs)."""
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
    if out_dir:
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


def compile_step(config: TrainConfig, train_data: data_lib.Dataset) -> tuple[Any, Any, Any, float]:
  """The model and optimizer of a run as ``(graphdef, state)``, its compiled step (state
  donated) and the compile time in seconds."""
  tx = make_optimizer(config.optimizer, learning_rate(config))
  model = make_model(config, train_data, nnx.Rngs(config.seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  x = jnp.asarray(train_data.x)
  y = jnp.asarray(train_data.y)
  idx = jnp.zeros((config.batch_size,), jnp.int32)
  start = time.perf_counter()
  compiled = jax.jit(step_fn(graphdef), donate_argnums=0).lower(state, x, y, idx).compile()
  return graphdef, state, compiled, time.perf_counter() - start


def train(
    config: TrainConfig,
    *,
    train_data: Optional[data_lib.Dataset] = None,
    test_data: Optional[data_lib.Dataset] = None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    raise_on_nonfinite: bool = False,
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

  Returns:
    The :class:`RunResult`.
  """
  config.validate()
  if train_data is None or test_data is None:
    loaded = load_splits(config)
    train_data, test_data = train_data or loaded[0], test_data or loaded[1]
  graphdef, state, compiled, compile_seconds = compile_step(config, train_data)
  model_graphdef = nnx.graphdef(nnx.merge(graphdef, state)[0])
  evaluate = evaluate_fn(model_graphdef)
  x_all, y_all = jnp.asarray(train_data.x), jnp.asarray(train_data.y)
  indices = jnp.asarray(batch_indices(len(train_data), config.batch_size, config.steps,
                                      config.seed))
  eval_x = train_data.x[: config.eval_examples]
  eval_y = train_data.y[: config.eval_examples]
  window = metrics.default_window(config.steps)

  def model_state(state: Any) -> Any:
    return nnx.state(nnx.merge(graphdef, state)[0])

  evals: list[dict[str, float]] = []
  losses: list[float] = []
  status = "ok"
  run_seconds = 0.0  # all chunks (the elapsed time in the log)
  timed_seconds, timed_steps = 0.0, 0  # chunks after the first (warm), for seconds_per_step
  with MetricsLog(out_dir, config) as log, Progress(
      config.steps, f"{config.optimizer} lr={config.lr:g}", enabled=progress) as bar:

    def evaluate_now(step: int) -> None:
      loss, acc = evaluate_in_batches(evaluate, model_state(state), eval_x, eval_y)
      entry = {"step": step, "train_loss": loss, "train_accuracy": acc}
      evals.append(entry)
      log.write(entry | {"elapsed": run_seconds})

    evaluate_now(0)
    step = 0
    while step < config.steps:
      size = min(config.eval_every, config.steps - step)
      tick = time.perf_counter()
      chunk_losses = []
      for i in range(step, step + size):
        state, loss = compiled(state, x_all, y_all, indices[i])
        chunk_losses.append(loss)
      losses.extend(np.asarray(jax.device_get(chunk_losses), np.float64).tolist())
      seconds = time.perf_counter() - tick
      run_seconds += seconds
      if step > 0:
        timed_seconds += seconds
        timed_steps += size
      stop = metrics.divergence_step(losses, config.divergence_factor, window)
      if stop is not None:
        del losses[stop + 1:]
        status = f"diverged at step {stop}"
        break
      step += size
      evaluate_now(step)
      bar.update(size, loss=evals[-1]["train_loss"])
    if status == "ok":
      test_loss, test_acc = evaluate_in_batches(evaluate, model_state(state), test_data.x,
                                                test_data.y)
    else:
      test_loss, test_acc = math.nan, math.nan
    result = RunResult(
        config=dataclasses.asdict(config),
        losses=losses,
        evals=evals,
        status=status,
        test_loss=test_loss,
        test_accuracy=test_acc,
        seconds_per_step=(timed_seconds / timed_steps if timed_steps
                          else run_seconds / max(len(losses), 1)),
        compile_seconds=compile_seconds,
    )
    log.write({"event": "end", "status": status, "test_loss": test_loss,
               "test_accuracy": test_acc, "seconds_per_step": result.seconds_per_step,
               "compile_seconds": compile_seconds, "losses": losses})
  if status != "ok" and raise_on_nonfinite:
    raise NonFiniteLossError(
        f"{config.optimizer} (lr={config.lr:g}): the training loss became non-finite or "
        f"exceeded {config.divergence_factor:g}x its initial loss ({status}); the log is kept"
        f"{' in ' + out_dir if out_dir else ''}."
    )
  return result
