"""Compare optimizers on your own model, loss and data: :func:`compare_on`.

The same comparison ``avggrad compare`` runs on the built-in models (:mod:`avggrad.compare`:
each optimizer at the rate a rate rule picks from one grid, every rate and seed of an
optimizer trained in one compiled program by :mod:`avggrad.sweep`, iterations and seconds to
a target from interleaved step times), on any Flax NNX model (a Linen module through
:func:`avggrad.linen.nnx_model`), any loss and any arrays. A user's model enters as a
:class:`avggrad.tasks.Task` (:func:`make_task` checks it first and names what is wrong); there
is no second loop, sweep or protocol.

Example:
  >>> import numpy as np, optax
  >>> from flax import nnx
  >>> import avggrad
  >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype(np.float32)
  >>> y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
  >>> result = avggrad.compare_on(
  ...     lambda rngs: nnx.Linear(4, 1, rngs=rngs),
  ...     lambda out, y: ((out[:, 0] - y) ** 2).mean(), (x, y),
  ...     optimizers=["adam", "avg-adam"], steps=60, batch_size=32, lrs=[1e-2, 3e-2],
  ...     seeds=(0,), progress=False)
  >>> sorted(result.summaries), result.summaries["adam"].best_lr in (1e-2, 3e-2)
  (['adam', 'avg-adam'], True)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import numpy as np
import optax
from flax import nnx

from avggrad import compare as compare_lib
from avggrad import optimizers as optimizers_lib
from avggrad import protocol, tasks
from avggrad.config import TrainConfig
from avggrad.tasks import Task

Factory = Callable[[optax.ScalarOrSchedule], optax.GradientTransformation]
Optimizer = Union[str, Factory, tuple[str, Factory]]

DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adam", "avg-adam", "nadam", "schedule-free-adamw",
                                       "muon")
""":func:`compare_on`'s optimizers when none are given: Adam first (it sets the target)."""

DEFAULT_LRS: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
""":func:`compare_on`'s learning-rate grid when none is given, shared by every optimizer:
``avggrad compare``'s (``avggrad.cli.MAIN_JOB_LRS``), wide enough that every default
optimizer's usual rate is inside it."""


def _describe(fn: Any) -> str:
  name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
  try:
    return f"{name}{inspect.signature(fn)}"
  except (TypeError, ValueError):
    return str(name)


def _as_pair(data: Any, what: str) -> tuple[Any, Any]:
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise ValueError(f"{what} must be a pair (x, y) of arrays (or of dicts of arrays) whose "
                     f"leading axis is examples; got {type(data).__name__}"
                     + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
                     + ".")
  x, y = (jax.tree.map(np.asarray, part) for part in data)
  lengths = {"x": [np.shape(a)[0] if np.ndim(a) else 0 for a in jax.tree.leaves(x)],
             "y": [np.shape(a)[0] if np.ndim(a) else 0 for a in jax.tree.leaves(y)]}
  if not lengths["x"] or not lengths["y"]:
    raise ValueError(f"{what}: x and y must each hold at least one array.")
  if len(set(lengths["x"] + lengths["y"])) != 1:
    shown = ", ".join(f"{k} {sorted(set(v))[0] if len(set(v)) == 1 else sorted(set(v))}"
                      for k, v in lengths.items())
    raise ValueError(f"{what}: x and y must have the same number of examples (leading axis); "
                     f"got {shown}.")
  if lengths["x"][0] == 0:
    raise ValueError(f"{what} holds no examples.")
  return x, y


def _model_factory(make_model: Any, x: Any) -> Callable[[nnx.Rngs], nnx.Module]:
  import flax.linen as nn

  from avggrad import linen

  if isinstance(make_model, nn.Module):
    return linen.nnx_model(make_model, tasks.take(x, slice(0, 1)))
  if isinstance(make_model, nnx.Module):
    raise ValueError("make_model must be a function rngs -> nnx.Module that builds a new model "
                     "(each seed gets its own initial weights), not a model; wrap it: "
                     "lambda rngs: MyModel(..., rngs=rngs).")
  if not callable(make_model):
    raise ValueError(f"make_model must be a function rngs -> nnx.Module; got "
                     f"{type(make_model).__name__}.")
  try:
    inspect.signature(make_model).bind(nnx.Rngs(0))
  except TypeError as e:
    raise ValueError(f"make_model must take one argument, the nnx.Rngs (make_model(rngs) -> "
                     f"nnx.Module); {_describe(make_model)} cannot: {e}.") from None
  except ValueError:  # no signature to inspect (a builtin): trust it, the call below checks
    pass
  return make_model


def make_task(make_model: Any, loss: Callable[[Any, Any], jax.Array], data: Any,
              test: Any = None, name: Optional[str] = None) -> Task:
  """A :class:`avggrad.tasks.Task` of a user's model, loss and data, checked.

  Args:
    make_model: ``rngs -> nnx.Module``, or a Linen module (through
      :func:`avggrad.linen.nnx_model`, initialised on the first example).
    loss: ``(model outputs, targets) -> scalar``, the mean loss on a batch.
    data: the training pair ``(x, y)``: arrays, or dicts (pytrees) of arrays, whose leading
      axis is examples.
    test: held-out ``(x, y)`` of the same form, or ``None``.
    name: what the records call the task (default: ``make_model``'s name).

  Returns:
    The task.

  Raises:
    ValueError: naming the problem: data that is not an ``(x, y)`` pair or whose arrays have
      different numbers of examples; a ``make_model`` that does not take ``rngs`` or does
      not return an NNX module; a model that fails on a batch of ``x``; a loss that fails or
      does not return a scalar.
  """
  x, y = _as_pair(data, "the training data")
  test_pair = None if test is None else _as_pair(test, "the test data")
  factory = _model_factory(make_model, x)
  try:
    model = factory(nnx.Rngs(0))
  except TypeError as e:
    raise ValueError(f"make_model(rngs) failed: {_describe(make_model)} raised "
                     f"TypeError: {e}") from e
  if not isinstance(model, nnx.Module):
    raise ValueError(f"make_model(rngs) must return an nnx.Module; it returned "
                     f"{type(model).__name__} (a Linen module goes in as the module itself, "
                     "or through avggrad.linen.nnx_model).")
  batch = tasks.take((x, y), slice(0, min(2, tasks.num_examples((x, y)))))
  graphdef, state = nnx.split(model)
  apply = lambda state, x: nnx.merge(graphdef, state)(x)  # noqa: E731 (as the loop calls it)
  try:
    outputs = jax.eval_shape(apply, state, batch[0])
  except Exception as e:  # noqa: BLE001 (whatever the model raises, named)
    raise ValueError(f"the model fails on a batch of x: {type(e).__name__}: {e}") from e
  try:
    value = jax.eval_shape(lambda state, x, y: loss(apply(state, x), y), state, *batch)
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"loss(outputs, y) fails on the model's outputs (shapes "
                     f"{jax.tree.map(lambda a: a.shape, outputs)}): {type(e).__name__}: "
                     f"{e}") from e
  if not hasattr(value, "shape") or value.shape != ():
    shape = getattr(value, "shape", type(value).__name__)
    raise ValueError(f"loss(outputs, y) must return a scalar, the mean loss over the batch; "
                     f"{_describe(loss)} returned shape {shape} on a batch of 2 (take its "
                     ".mean()).")
  label = name or getattr(make_model, "__name__", None) or type(make_model).__name__
  return Task(make_model=factory, loss=loss, train=(x, y), test=test_pair,
              name="custom" if label == "<lambda>" else label)


def register(spec: Optimizer, position: int) -> str:
  """The registry spec of one entry of :func:`compare_on`'s ``optimizers``: a spec (checked),
  or a factory ``lr -> GradientTransformation`` (or ``(name, factory)``) registered under
  its name (:func:`avggrad.optimizers.register_optimizer`)."""
  if isinstance(spec, str):
    optimizers_lib.parse_optimizer(spec)  # unknown names and options, named
    return spec
  if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
    name, factory = spec
  elif callable(spec):
    name, factory = getattr(spec, "__name__", ""), spec
    if not name or name == "<lambda>":
      name = f"custom-{position}"
  else:
    raise ValueError(f"optimizers[{position}] must be a registry spec (e.g. 'avg-adam'), a "
                     f"factory lr -> GradientTransformation or (name, factory); got {spec!r}.")
  if not callable(factory):
    raise ValueError(f"optimizers[{position}]: {factory!r} is not a factory.")
  if name in optimizers_lib.BUILTIN:
    raise ValueError(f"optimizers[{position}]: {name!r} is a built-in optimizer's name; give "
                     f"yours another: ('my-{name}', factory).")
  try:  # built once here, so that a factory's own error names its place in the list
    factory(1e-3)
  except Exception as error:
    raise ValueError(f"optimizers[{position}] ({name!r}): the factory failed at lr=1e-3: "
                     f"{type(error).__name__}: {error}") from error
  optimizers_lib.register_optimizer(name, factory, replace=True)
  return name


@dataclasses.dataclass
class Result:
  """What :func:`compare_on` found: the comparison and convenient views of it.

  Attributes:
    comparison: the :class:`avggrad.compare.Comparison` (every run, the target, the rule).
    task: the task it ran.
  """

  comparison: compare_lib.Comparison
  task: Task

  @property
  def summaries(self) -> dict[str, compare_lib.OptimizerSummary]:
    """Each optimizer's figures at its chosen rate, by spec (``best_lr``, ``iterations``
    per seed with ``None`` where the target was missed, ``seconds_per_step``, ...)."""
    return {s.optimizer: s for s in self.comparison.summaries}

  @property
  def target(self) -> float:
    return self.comparison.target

  @property
  def fastest(self) -> Optional[str]:
    """The optimizer fastest to the target (median seconds, iterations x measured time per
    step); ``"tie: a, b"`` when others are within :data:`avggrad.compare.TIE_MARGIN` of it;
    ``None`` when none reached the target."""
    reached = sorted((s for s in self.comparison.summaries
                      if math.isfinite(s.seconds_to_target)), key=lambda s: s.seconds_to_target)
    if not reached:
      return None
    best = reached[0].seconds_to_target
    tied = [s.optimizer for s in reached if s.seconds_to_target <= compare_lib.TIE_MARGIN * best]
    return tied[0] if len(tied) == 1 else "tie: " + ", ".join(tied)

  def table(self) -> str:
    """The table ``avggrad compare`` prints."""
    return self.comparison.table()

  def save(self, folder: str) -> dict[str, str]:
    """Writes ``table.txt``, ``results.json`` and ``loss_curves.png`` into ``folder``;
    returns their paths."""
    return compare_lib.save(self.comparison, folder)


def compare_on(
    make_model: Any,
    loss: Callable[[Any, Any], jax.Array],
    data: Any,
    optimizers: Sequence[Optimizer] = DEFAULT_OPTIMIZERS,
    steps: int = 300,
    batch_size: int = 64,
    lrs: Optional[Sequence[float]] = None,
    seeds: Sequence[int] = (0, 1),
    target: Optional[float] = None,
    test: Any = None,
    *,
    rule: str = "fastest",
    target_fraction: float = 0.8,
    eval_every: Optional[int] = None,
    eval_examples: int = 2000,
    schedule: str = "constant",
    progress: bool = True,
    devices: Any = None,
    shard_params: bool = False,
    name: Optional[str] = None,
) -> Result:
  """Compares optimizers on a user's model, loss and data, as ``avggrad compare`` does on the
  built-in ones.

  Every optimizer trains at every rate of one grid and every seed (one compiled program per
  optimizer, data-parallel over every device JAX sees, split into chunks that fit in memory);
  a rate rule picks each optimizer's rate; the target is the first optimizer's smoothed loss
  at ``target_fraction`` of the budget unless given; iterations and seconds to it follow.

  Args:
    make_model: ``rngs -> nnx.Module`` (``nnx.Rngs(seed)``), or a Linen module.
    loss: ``(model outputs, targets) -> scalar`` mean loss of a batch.
    data: the training ``(x, y)``; arrays or dicts of arrays, leading axis examples.
    optimizers: registry specs (``"avg-adam:span=4"``), factories ``lr ->
      GradientTransformation`` or ``(name, factory)``; the first sets the target.
    steps: training steps per run.
    batch_size: examples per minibatch (sharded over the devices).
    lrs: the learning-rate grid (``None``: :data:`DEFAULT_LRS`).
    seeds: seeds (initial weights and minibatch order), each run at every rate.
    target: the target training loss (``None``: set by the first optimizer).
    test: held-out ``(x, y)`` for the runs' test metrics, or ``None``.
    rule: the rate rule, ``"fastest"`` (AlgoPerf's) or ``"final-loss"``
      (:data:`avggrad.protocol.RULES`).
    target_fraction: where in the budget the first optimizer's loss sets the target.
    eval_every: steps between evaluations on the first ``eval_examples`` training examples
      (``None``: a sixth of the budget).
    eval_examples: training examples the periodic evaluation uses.
    schedule: ``"constant"`` or ``"warmup_cosine"`` (peaking at each rate).
    progress: a progress bar per optimizer (with its time left).
    devices, shard_params: data parallelism, as in :func:`avggrad.loop.train`.
    name: what records call the task (default: ``make_model``'s name).

  Returns:
    A :class:`Result`: ``.table()``, ``.summaries[name].best_lr``, ``.fastest``,
    ``.save(folder)``.

  Raises:
    ValueError: bad inputs, each named (:func:`make_task`; an unknown optimizer; a batch
      larger than the data); ``MemoryError`` when one run does not fit in memory.
  """
  protocol.check_rule(rule)
  task = make_task(make_model, loss, data, test, name)
  if isinstance(optimizers, str) or callable(optimizers):
    raise ValueError(f"optimizers must be a list of optimizers; got {optimizers!r} (write "
                     f"[{optimizers!r}]).")
  if not optimizers:
    raise ValueError("optimizers must name at least one optimizer.")
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and at least one; got {seeds} (a repeated seed "
                     "would count the same run twice in the medians).")
  if eval_every is not None and eval_every <= 0:
    raise ValueError(f"eval_every must be a positive number of steps (or None); got "
                     f"{eval_every}.")
  specs = [register(spec, i) for i, spec in enumerate(optimizers)]
  if len(set(specs)) != len(specs):
    raise ValueError(f"optimizers must differ; got {specs}.")
  n = len(task)
  if batch_size > n:
    raise ValueError(f"batch_size {batch_size} is larger than the training data ({n} "
                     "examples).")
  config = TrainConfig(dataset=task.name, model=task.name, optimizer=specs[0], steps=steps,
                       batch_size=batch_size, eval_every=eval_every or max(1, steps // 6),
                       eval_examples=eval_examples, schedule=schedule)
  config.validate(builtin=False)
  comparison = compare_lib.compare(
      config, specs, list(DEFAULT_LRS if lrs is None else lrs), list(seeds), target=target,
      target_fraction=target_fraction, progress=progress, batched=True, devices=devices,
      shard_params=shard_params, task=task, rule=rule)
  return Result(comparison=comparison, task=task)
