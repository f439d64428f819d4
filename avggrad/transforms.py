r"""Optax gradient transformations that use the average gradient over a weight update.

* :func:`scale_by_average_gradient`: replaces the incoming (point) gradient by the average
  gradient over the update applied at the previous step. Chains in front of any Optax
  scaling: ``optax.chain(scale_by_average_gradient(), optax.scale_by_rms(), ...)``.
* :func:`average_gradient`: wraps a transformation (RMSProp's or Adam's scaling and the
  learning rate), predicts the update it would make from the point gradient, averages the
  gradient over that predicted update, and feeds the average to the wrapped transformation.
* :func:`scale_by_rms` and :func:`scale_by_adam`: RMSProp's and Adam's scalings with ``eps``
  outside the square root (Keras/PyTorch) and ``eps_root`` inside (Optax), whose second moment
  can be fed a different gradient than the step (the ``second_moment_updates`` extra
  argument, which :func:`average_gradient` uses for ``accumulate="point"``).

The transformations that need the loss take it as the keyword-only extra argument
``value_fn`` (Optax's convention, as in its line searches): ``value_fn(params)`` returns the
loss on the current batch. Extra keyword arguments whose names match parameters of
``value_fn`` are passed on to it; all others are ignored.
"""

from __future__ import annotations

import functools
import inspect
import types
import warnings
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax
from optax import tree as otree

from avggrad import estimators, parallel

Updates = optax.Updates
Params = optax.Params

RANGES: tuple[str, ...] = ("predicted", "previous")
ACCUMULATORS: tuple[str, ...] = ("average", "point")


def _replace(point: Any, average: Any) -> Any:
  """``combine="replace"``: the average gradient, everywhere."""
  del point
  return average


def _accelerate(point: Any, average: Any, max_gain: Optional[Any] = None) -> Any:
  r"""``combine="accelerate"``: :math:`\bar g_i` only where it enlarges the step.

  :math:`\bar g_i` replaces :math:`g_i` where both have the same sign and
  :math:`|\bar g_i| > |g_i|` (the loss curves down along the step), and :math:`g_i` is kept
  elsewhere, so no coordinate's step is ever shortened or reversed. With ``max_gain`` the
  gain is bounded, :math:`|\bar g_i| \le \max(1, \text{max\_gain})\,|g_i|`.
  """

  def pick(g: jax.Array, gbar: jax.Array) -> jax.Array:
    keep = (g * gbar > 0) & (jnp.abs(gbar) > jnp.abs(g))
    if max_gain is not None:
      bound = jnp.maximum(max_gain, 1.0) * jnp.abs(g)  # a traced bound below 1 acts as 1
      gbar = jnp.clip(gbar, -bound, bound)
    return jnp.where(keep, gbar, g).astype(g.dtype)

  return jax.tree.map(pick, point, average)


def _no_flip(point: Any, average: Any) -> Any:
  r"""``combine="no_flip"``: :math:`\bar g_i` unless it has the opposite sign of :math:`g_i`.

  Steps may be lengthened or shortened, but no coordinate moves against its gradient.
  """

  def pick(g: jax.Array, gbar: jax.Array) -> jax.Array:
    return jnp.where(g * gbar > 0, gbar, g).astype(g.dtype)

  return jax.tree.map(pick, point, average)


def _finite_or_point(point: Any, average: Any) -> Any:
  """The average gradient where it is finite, the point gradient elsewhere.

  A long step can reach a region where the loss overflows; the average over such a range is
  not defined, and the point gradient (its limit for a short step) stands in for it.
  """
  return jax.tree.map(lambda g, a: jnp.where(jnp.isfinite(a), a, g).astype(g.dtype),
                      point, average)


Combine = Callable[[Any, Any], Any]
"""``combine(point, average) -> combined``: how the point and the average gradient combine."""

COMBINES: types.MappingProxyType[str, Combine] = types.MappingProxyType({
    "replace": _replace,
    "accelerate": _accelerate,
    "no_flip": _no_flip,
})
"""How the average gradient :math:`\bar g` and the point gradient :math:`g` combine, by name:
``"replace"`` (:math:`\bar g` everywhere: the paper's form), ``"accelerate"`` (:math:`\bar
g_i` only where it has the sign of :math:`g_i` and a larger magnitude: no coordinate's step
is shortened or reversed; the recommended form) and ``"no_flip"`` (:math:`\bar g_i` unless it
has the opposite sign of :math:`g_i`: steps may grow or shrink but never reverse). Read-only;
``combine=`` also takes a callable ``(point, average) -> combined`` (a probe or a new rule)."""


def _check_choice(name: str, value: str, choices: Any) -> None:
  if not isinstance(value, str) or value not in choices:
    raise ValueError(
        f"Unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}."
    )


def _combine_fn(combine: str | Combine) -> Combine:
  """The combine rule ``combine`` names, or ``combine`` itself when it is a callable."""
  if callable(combine):
    return combine
  _check_choice("combine", combine, COMBINES)
  return COMBINES[combine]


def _check_whole_params(params: Params, who: str) -> None:
  """Raises when ``params`` is a masked part of the parameters (``optax.masked``,
  ``optax.multi_transform``): the loss can only be evaluated on all of them."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  if any(is_masked(x) for x in jax.tree.leaves(params, is_leaf=is_masked)):
    raise ValueError(
        f"{who} cannot run inside optax.masked or optax.multi_transform: it evaluates the "
        "loss at other parameters, which needs all of them, and those wrappers hand it only "
        "part. Wrap the other way round: avggrad.average_gradient(optax.multi_transform("
        "{...}, labels), ...) for per-group optimizers, or put the mask inside the wrapped "
        "chain (e.g. optax.add_decayed_weights(wd, mask=...)) for masked weight decay; see "
        "the guide's 'Optax compositions'."
    )


def _require(params: Optional[Params], value_fn: Optional[Callable[..., Any]], who: str,
             updates: Updates, extra_args: dict[str, Any]) -> None:
  """Raises a clear error for what ``update`` cannot work with: no ``params`` or
  ``value_fn``, a ``value_fn`` whose parameters the extra arguments do not fill (a batch
  argument under another name than ``batch``), or updates that a transformation upstream in
  the chain has changed (seen when the raw gradient is passed as ``grad=``)."""
  if params is None:
    raise ValueError(
        f"{who} needs the current parameters: call "
        "tx.update(grads, state, params, value_fn=loss_fn)."
    )
  if value_fn is None:
    raise TypeError(
        f"{who} needs the keyword argument value_fn (a function params -> loss on the "
        "current batch): call tx.update(grads, state, params, value_fn=loss_fn)."
    )
  _check_value_fn(value_fn, extra_args, who)
  _check_upstream(updates, extra_args, who)


def _check_value_fn(value_fn: Callable[..., Any], extra_args: dict[str, Any], who: str) -> None:
  """Raises ``ValueError`` when ``value_fn`` cannot be called with the extra arguments:
  ``batch=`` given to a ``value_fn`` without a parameter named ``batch``, or a required
  parameter after the first that no extra argument of its name fills."""
  try:
    parameters = list(inspect.signature(value_fn).parameters.values())
  except (TypeError, ValueError):
    return
  if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters):
    return
  rest = parameters[1:] if parameters and parameters[0].kind != inspect.Parameter.KEYWORD_ONLY \
      else parameters
  names = [p.name for p in rest]
  fix = ("name that argument `batch` (value_fn(params, batch), called with batch=...), or "
         "close over the batch (value_fn=lambda params: loss(params, x)) and pass no batch=")
  if "batch" in extra_args and "batch" not in names:
    raise ValueError(
        f"{who} got batch= but value_fn takes no parameter named `batch` (its parameters "
        f"after the parameters are {names or 'none'}); the batch is passed by that name. "
        f"To fix: {fix}.")
  missing = [p.name for p in rest
             if p.default is inspect.Parameter.empty and p.name not in extra_args
             and p.kind != inspect.Parameter.VAR_POSITIONAL]
  if missing:
    raise ValueError(
        f"{who} cannot fill value_fn's parameter(s) {missing}: update passes value_fn only "
        f"the extra arguments of the same name, and the batch goes by the name `batch`. "
        f"To fix: {fix}.")


def _check_upstream(updates: Updates, extra_args: dict[str, Any], who: str) -> None:
  """Raises ``ValueError`` when ``grad=`` (the raw gradient, Optax's line-search convention)
  was passed and the incoming updates are provably not it: a transformation before this one
  in an ``optax.chain`` (clipping, weight decay, ...) changed them, and it cannot act on the
  gradient this transformation takes at the far end of the step.

  What can be told at trace time is checked, leaf by leaf (:func:`_changed_upstream`); what
  cannot is let through, so no valid composition is refused: a wrapper that traces its inner
  update apart (``optax.MultiSteps`` accumulates the gradients in a ``lax.cond``) or the same
  array passed to a jitted step twice are accepted. The price: a transformation before the
  wrapper goes unseen when the raw gradient comes from outside the traced function that
  transforms it (a concrete gradient closed over by a jitted step, a ``lax.cond`` around the
  whole update), and under ``jax.vmap`` or inside ``jax.grad`` (batch and JVP tracers record
  no origin); a step that computes the gradient and updates in one function is covered,
  jitted or not."""
  grad = extra_args.get("grad")
  if grad is None:
    return
  ours, raw = jax.tree.leaves(updates), jax.tree.leaves(grad)
  if len(ours) == len(raw) and not any(map(_changed_upstream, ours, raw)):
    return
  raise ValueError(
      f"{who} received updates that a transformation before it in the chain changed (they "
      "are not the raw gradient passed as grad=). It takes another gradient at the far end "
      "of the step, which that transformation never sees: a clip would hold for one end "
      "only, weight decay would be halved. Put such transformations inside instead, where "
      "they act on the average gradient: avggrad.average_gradient(optax.chain("
      "optax.clip_by_global_norm(1.0), optax.adam(1e-3))); see the README's Usage. (grad= "
      "must be the gradient that tx.update receives as its updates.)")


def _changed_upstream(update: Any, raw: Any) -> bool:
  """Whether the leaf ``update`` is provably not the raw gradient's leaf ``raw``.

  * the same object, or two concrete arrays of equal values: unchanged;
  * another shape or dtype: changed;
  * two tracers of one traced function: changed when an operation of that function produced
    ``update`` (a transformation before the wrapper), unchanged when it is one of the
    function's inputs (the same array passed as two arguments of a jitted step);
  * a tracer of another trace than ``raw`` (``optax.MultiSteps`` traces its inner update in
    a ``lax.cond`` and feeds it the accumulated gradient), or a tracer whose origin JAX does
    not record: cannot be told, let through.
  """
  if update is raw:
    return False
  if jnp.shape(update) != jnp.shape(raw) or jnp.result_type(update) != jnp.result_type(raw):
    return True
  traced = isinstance(update, jax.core.Tracer), isinstance(raw, jax.core.Tracer)
  if not any(traced):
    return not bool(jnp.array_equal(update, raw))
  if all(traced) and getattr(update, "_trace", None) is getattr(raw, "_trace", False):
    # A jit tracer records the operation that produced it (``parent``); inputs have none.
    return getattr(update, "parent", None) is not None
  return False


def _bind_value_fn(value_fn: Callable[..., Any], extra_args: dict[str, Any]) -> Callable:
  """``value_fn`` with the extra arguments whose names it declares (Optax's convention)."""
  names = _value_fn_argnames(value_fn)
  kwargs = {k: v for k, v in extra_args.items() if k in names}
  return functools.partial(value_fn, **kwargs) if kwargs else value_fn


def far_batch_stride(fraction: float) -> int:
  """The stride ``k`` of the far end's sub-batch for ``far_batch_fraction = 1/k``."""
  return max(1, int(round(1.0 / fraction)))


def select_far_examples(x: jax.Array, stride: int) -> jax.Array:
  """Every ``stride``-th example of ``x`` (leading axis), starting with the first.

  A strided selection keeps every shard's share local: when the examples are sharded over
  devices in contiguous blocks (a batch sharded over a ``data`` mesh axis) and each block's
  size is a multiple of ``stride``, each device keeps every ``stride``-th of its own examples
  and nothing moves between devices. It is written as a reshape to ``(n / stride, stride,
  ...)`` and a slice of the second axis, which XLA's partitioner keeps local; sizes that are
  not multiples of ``stride`` fall back to a strided slice. The same examples are chosen
  whatever the number of devices, so sharded and single-device runs agree.
  """
  size = x.shape[0]
  if stride == 1:
    return x
  shards = parallel.typed_shards(x)
  if shards is not None:
    # Explicit mesh axes: the sharding is part of the type. A strided slice keeps every shard
    # local when each block splits by the stride; otherwise the examples are gathered first
    # (the same examples, moved), since JAX cannot type an uneven split.
    if size % (shards * stride) == 0:
      return x[::stride]
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())[::stride]
  if size % stride == 0:
    return x.reshape(size // stride, stride, *x.shape[1:])[:, 0]
  return x[::stride]



def _far_batch(extra_args: dict[str, Any], fraction: float) -> Optional[dict[str, Any]]:
  """``extra_args`` with its ``batch`` cut to every ``1/fraction``-th example (the leading
  axis of every array leaf, see :func:`~avggrad.transforms.select_far_examples`); ``None`` when there is no
  ``batch`` to cut."""
  batch = extra_args.get("batch")
  leaves = jax.tree.leaves(batch)
  if batch is None or not leaves or any(jnp.ndim(x) == 0 for x in leaves):
    return None
  size = jnp.shape(leaves[0])[0]
  if any(jnp.shape(x)[0] != size for x in leaves):
    raise ValueError(
        "far_batch_fraction needs every leaf of `batch` to have the batch on its leading "
        f"axis; got leading sizes {sorted({jnp.shape(x)[0] for x in leaves})}."
    )
  stride = far_batch_stride(fraction)
  return dict(extra_args, batch=jax.tree.map(lambda x: select_far_examples(x, stride), batch))


def _cast_floats(tree: Any, dtype: Any) -> Any:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
      tree,
  )


def _far_args(value_fn: Callable[..., Any], extra_args: dict[str, Any], *, auto: bool,
              fraction: float) -> dict[str, Any]:
  """The extra arguments for the loss at the far end: ``batch`` cut to every ``1/fraction``-th
  example (:func:`select_far_examples`), or to :data:`AUTO_FAR_BATCH_FRACTION` of it under
  ``auto`` when ``update`` received a ``batch`` that ``value_fn`` takes; ``extra_args``
  unchanged otherwise (with a warning when a fraction below 1 was asked for and cannot be
  had)."""
  if auto:
    fraction = AUTO_FAR_BATCH_FRACTION
  if fraction >= 1.0:
    return extra_args
  cut = _far_batch(extra_args, fraction)
  if cut is not None and "batch" in _value_fn_argnames(value_fn):
    return cut
  if not auto:
    warnings.warn(
        "far_batch_fraction < 1 needs the minibatch: call tx.update(grads, state, params, "
        "value_fn=loss_fn, batch=batch) with a loss_fn(params, batch); the far end uses the "
        "full loss instead.",
        stacklevel=4,
    )
  return extra_args


def _far_end_gradient(
    value_fn: Callable[..., Any],
    args: dict[str, Any],
    params: Params,
    delta: Updates,
    *,
    dtype: Optional[str],
) -> Updates:
  """The gradient at ``params + delta`` of ``value_fn`` with the extra arguments ``args``
  (:func:`_far_args`), in ``dtype`` (the parameters' own dtypes by default)."""
  end = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, delta)
  if dtype is not None:
    end = _cast_floats(end, dtype)
    if "batch" in args:
      args = dict(args, batch=_cast_floats(args["batch"], dtype))
  grad = jax.grad(_bind_value_fn(value_fn, args))(end)
  return optax.tree.cast_like(grad, params)


def _value_fn_argnames(value_fn: Callable[..., Any]) -> set[str]:
  """Names of the parameters of ``value_fn`` after the first (empty if unknown)."""
  try:
    parameters = list(inspect.signature(value_fn).parameters.values())[1:]
  except (TypeError, ValueError):
    return set()
  return {
      p.name
      for p in parameters
      if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  }


def _trapezoid(point: Updates, far: Updates) -> Updates:
  """The trapezoid rule from the incoming (point) updates and the far-end gradient."""
  return jax.tree.map(lambda g, f: (0.5 * (g + f)).astype(g.dtype), point, far)


def _scale_tree(tree: Any, scale: Any) -> Any:
  """``scale * tree`` with every leaf kept in its own dtype."""
  return jax.tree.map(lambda x: (scale * x).astype(x.dtype), tree)


def _average_gradient_fn(estimator: str, num_points: Any) -> Callable[..., Any]:
  """``(value_fn, params, delta) -> avg_grad`` for the configured estimator."""

  def average(value_fn: Callable[..., Any], params: Params, delta: Updates) -> Updates:
    fn = estimators.value_and_average_grad(
        value_fn, estimator=estimator, num_points=num_points
    )
    _, avg_grad = fn(params, delta)
    return avg_grad

  return average


class ScaleByAverageGradientState(NamedTuple):
  """State of :func:`scale_by_average_gradient`.

  Attributes:
    prev_params: the parameters at the previous step; ``params - prev_params`` is the update
      actually applied there (all zeros before the first step).
  """

  prev_params: Params


def scale_by_average_gradient(
    *,
    estimator: str = "trapezoid",
    num_points: int = 3,
    span: jax.typing.ArrayLike = 1.0,
    combine: str = "accelerate",
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces the gradient by its average over the update applied at the previous step.

  .. math::

    \Delta_{t-1} = w_t - w_{t-1}, \qquad
    \bar g_t = \int_0^1 \nabla L_t(w_t + \tau s \Delta_{t-1})\, d\tau ,

  where :math:`L_t` is the loss on the current batch (``value_fn``) and :math:`s` the
  ``span``. At the first step :math:`\Delta = 0` and the point gradient passes through; so
  it does for any element where the average is not finite (the loss overflows somewhere
  along the range). The
  previous update is the one actually applied, whatever follows in the chain, so this is
  chainable in front of any scaling::

    optax.chain(avggrad.scale_by_average_gradient(), optax.scale_by_rms(),
                optax.scale_by_learning_rate(1e-3))

  Args:
    estimator: ``"trapezoid"`` (the default: the incoming gradient and one gradient at the
      far end), ``"factorized"`` or ``"quadrature"`` (see
      :func:`avggrad.value_and_average_grad`; these two re-evaluate the whole range).
    num_points: Gauss-Legendre nodes of the ``"quadrature"`` estimator.
    span: how far along the previous update to average, :math:`s` (schedule it with
      ``optax.inject_hyperparams``).
    combine: how :math:`\bar g` and :math:`g` combine, one of :data:`~avggrad.transforms.COMBINES`:
      ``"accelerate"`` (the default: :math:`\bar g_i` only where it has the sign of
      :math:`g_i` and a larger magnitude, so no step is shortened or reversed),
      ``"replace"`` (:math:`\bar g` everywhere) or ``"no_flip"`` (:math:`\bar g_i` unless
      its sign differs from :math:`g_i`'s).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params, *,
    value_fn, **extra_args)`` needs ``params`` and ``value_fn``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum(jnp.tanh(w) ** 2)
    >>> tx = optax.chain(avggrad.scale_by_average_gradient(), optax.scale_by_rms(),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> w = jnp.array([1.0, -2.0])
    >>> state = tx.init(w)
    >>> for _ in range(3):
    ...   grads = jax.grad(loss)(w)
    ...   updates, state = tx.update(grads, state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(loss(w) < loss(jnp.array([1.0, -2.0])))
    True

  References:
    R. Wolniak and B. Kostek, Neural Computation (DOI 10.1162/neco.a.1514).
  """
  estimators.check_estimator(estimator, num_points)
  combine_fn = _combine_fn(combine)

  def init_fn(params: Params) -> ScaleByAverageGradientState:
    _check_whole_params(params, "scale_by_average_gradient")
    # A copy, not the same buffers: a train step that donates its state must not donate one
    # buffer twice.
    return ScaleByAverageGradientState(prev_params=jax.tree.map(jnp.copy, params))

  def update_fn(
      updates: Updates,
      state: ScaleByAverageGradientState,
      params: Optional[Params] = None,
      *,
      value_fn: Optional[Callable[..., Any]] = None,
      **extra_args: Any,
  ) -> tuple[Updates, ScaleByAverageGradientState]:
    _require(params, value_fn, "scale_by_average_gradient", updates, extra_args)
    delta = _scale_tree(otree.sub(params, state.prev_params), span)
    avg = _average_over(updates, value_fn, extra_args, params, delta, estimator=estimator,
                        num_points=num_points, auto=False, fraction=1.0, far_dtype=None)
    new_updates = _combined_gradient(combine_fn, updates, avg)
    return new_updates, ScaleByAverageGradientState(prev_params=params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


AUTO_FAR_BATCH_FRACTION = 0.25
"""The part of the minibatch the far end uses under ``far_batch_fraction="auto"``."""


def _check_far_end(fraction: Any, dtype: Optional[str], estimator: str,
                   update_range: str) -> tuple[bool, float]:
  """Validates the far-end options: ``(auto, fraction)``, whether the far end is on a
  sub-batch only when ``update`` gets the batch, and the fraction of the batch otherwise."""
  auto = False
  if isinstance(fraction, str):
    if fraction != "auto":
      raise ValueError(f"far_batch_fraction must be a number or 'auto', got {fraction!r}.")
    # Other estimators evaluate the whole range: no far end of their own.
    auto = estimator == "trapezoid" and update_range == "predicted"
    fraction = None
  if fraction is None:
    fraction = 1.0
  if isinstance(fraction, jax.core.Tracer) or not isinstance(fraction, (int, float)):
    raise TypeError(
        "far_batch_fraction must be a Python number (it sets the sub-batch's static size); "
        f"got {type(fraction).__name__}. Under optax.inject_hyperparams pass "
        "static_args=('far_batch_fraction',)."
    )
  if not 0 < fraction <= 1:
    raise ValueError(f"far_batch_fraction must be in (0, 1], got {fraction}.")
  if abs(far_batch_stride(fraction) * fraction - 1.0) > 1e-6:
    raise ValueError(
        "far_batch_fraction must be 1/k for a whole number k (the far end takes every k-th "
        f"example of the minibatch); got {fraction}.")
  if dtype is not None:
    try:
      if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise TypeError
    except TypeError:
      raise ValueError(f"far_dtype must be a floating dtype, got {dtype!r}.") from None
  unpaired = fraction < 1 or dtype is not None
  if unpaired and (estimator != "trapezoid" or update_range != "predicted"):
    raise ValueError(
        "far_batch_fraction < 1 and far_dtype take the far-end gradient of the trapezoid "
        "rule apart from the point gradient: they need estimator='trapezoid' and "
        f"update_range='predicted'; got estimator={estimator!r}, "
        f"update_range={update_range!r}."
    )
  return auto, float(fraction)


class AverageGradientState(NamedTuple):
  """State of :func:`average_gradient`.

  Attributes:
    inner_state: the state of the wrapped transformation.
    range_state: with ``update_range="previous"``, the state of the
      :func:`scale_by_average_gradient` that tracks the previous update; ``None`` otherwise.
  """

  inner_state: optax.OptState
  range_state: Optional[ScaleByAverageGradientState]


def _has_second_moment_input(state: Any) -> bool:
  """Whether a state tree holds a scaling that accepts ``second_moment_updates``."""
  kinds = (ScaleByRmsState, ScaleByAdamState)
  leaves = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kinds))
  return any(isinstance(leaf, kinds) for leaf in leaves)


PAPER_FORM: types.MappingProxyType[str, Any] = types.MappingProxyType({
    "estimator": "factorized",
    "span": 1.0,
    "combine": "replace",
    "accumulate": "average",
})
"""The paper's form as we reconstruct it, one argument away from the recommended defaults:
``avggrad.average_gradient(inner, **avggrad.PAPER_FORM)`` (the factorized estimator over the
predicted step, fed to ``inner`` in place of the gradient). It did not beat its baselines on
any deep task we ran (see the README's Results). Read-only: copy it (``dict(PAPER_FORM)``)
to change a field."""


def _bounded_combine(combine: Union[str, Callable[..., Any]],
                     max_gain: Optional[Any]) -> Callable[..., Any]:
  """The combine rule, with ``accelerate``'s gain bounded by ``max_gain`` when one is given
  (only ``accelerate`` takes a bound, and a bound below 1 is refused)."""
  combine_fn = _combine_fn(combine)
  if max_gain is None:
    return combine_fn
  if combine != "accelerate":
    raise ValueError(f"max_gain bounds combine='accelerate'; got combine={combine!r}.")
  if isinstance(max_gain, (int, float)) and not max_gain >= 1:
    raise ValueError(
        f"max_gain must be at least 1, got {max_gain}: accelerate never shortens a step, "
        "and a bound below 1 would.")
  return functools.partial(_accelerate, max_gain=max_gain)


def _trapezoid_over(point: Updates, value_fn: Callable[..., Any], extra_args: dict[str, Any],
                    params: Params, delta: Updates, *, auto: bool, fraction: float,
                    far_dtype: Optional[str]) -> Updates:
  """The trapezoid rule over ``delta``: the incoming (point) updates and the gradient at the
  far end, on the whole batch (fraction 1) or every k-th example (:func:`_far_args`); one
  path for every far end."""
  far_args = _far_args(value_fn, extra_args, auto=auto, fraction=fraction)
  far = _far_end_gradient(value_fn, far_args, params, delta, dtype=far_dtype)
  return _trapezoid(point, far)


def _predicted_step(inner: optax.GradientTransformationExtraArgs, point: Updates,
                    inner_state: optax.OptState, params: Params, value_fn: Callable[..., Any],
                    extra_args: dict[str, Any]) -> Updates:
  """The predicted range before the span: the update ``inner`` would make from the point
  gradient, its new state discarded (the step itself is ``inner`` on the combined gradient)."""
  predicted, _ = inner.update(point, inner_state, params, value_fn=value_fn, **extra_args)
  return predicted


def _average_over(point: Updates, value_fn: Callable[..., Any], extra_args: dict[str, Any],
                  params: Params, delta: Updates, *, estimator: str, num_points: int,
                  auto: bool, fraction: float, far_dtype: Optional[str]) -> Updates:
  """The average gradient over ``delta`` from ``params``: the trapezoid rule with its far-end
  options (:func:`_trapezoid_over`), or an estimator that re-evaluates the whole range."""
  if estimator == "trapezoid":
    return _trapezoid_over(point, value_fn, extra_args, params, delta, auto=auto,
                           fraction=fraction, far_dtype=far_dtype)
  average = _average_gradient_fn(estimator, num_points)
  return average(_bind_value_fn(value_fn, extra_args), params, delta)


def _combined_gradient(combine_fn: Combine, point: Updates, average: Updates) -> Updates:
  """What the wrapped transformation is fed: ``combine_fn(point, average)``, the point
  gradient standing in where the average is not finite, in the point gradient's dtypes."""
  return optax.tree.cast_like(combine_fn(point, _finite_or_point(point, average)), point)


def _check_second_moment_input(inner_state: optax.OptState) -> None:
  """Raises for ``accumulate="point"`` when ``inner`` has no scaling that accepts
  ``second_moment_updates`` (:func:`scale_by_rms`, :func:`scale_by_adam`)."""
  if not _has_second_moment_input(inner_state):
    raise ValueError(
        "accumulate='point' needs an inner transformation that accepts "
        "second_moment_updates (avggrad.scale_by_rms or avggrad.scale_by_adam); none "
        "was found in the state of `inner`."
    )


def average_gradient(
    inner: optax.GradientTransformation,
    *,
    estimator: str = "trapezoid",
    num_points: int = 3,
    span: jax.typing.ArrayLike = 8.0,
    update_range: str = "predicted",
    accumulate: str = "average",
    combine: str = "accelerate",
    far_batch_fraction: Optional[float | str] = "auto",
    far_dtype: Optional[str] = None,
    max_gain: Optional[jax.typing.ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Feeds ``inner`` the average gradient over the update it is about to make.

  With ``update_range="predicted"`` the range is predicted by running ``inner`` on the point
  gradient :math:`g` without keeping that state; with ``"previous"`` it is the update applied
  at the previous step (see :func:`scale_by_average_gradient`):

  .. math::

    \hat\Delta = \mathrm{inner}(g), \qquad
    \bar g = \int_0^1 \nabla L(w + \tau s \hat\Delta)\, d\tau, \qquad
    \Delta = \mathrm{inner}(\mathrm{combine}(g, \bar g)).

  Elements where :math:`\bar g` is not finite (the loss overflows somewhere along a long
  range) take :math:`g`. With ``accumulate="point"`` the second-moment accumulator of
  ``inner`` is fed :math:`g`
  while the step uses :math:`\bar g` (``inner`` must then contain :func:`scale_by_rms` or
  :func:`scale_by_adam`, which take the ``second_moment_updates`` extra argument).

  Why a safeguard can matter: on a quadratic with Hessian :math:`H` and a diagonal
  preconditioner :math:`P`, the predicted step gives :math:`\bar g = (I - \tfrac12 HP) g`, so
  along an eigendirection of :math:`PH` with eigenvalue :math:`\lambda > 0` the step is
  shortened by :math:`1 - \lambda/2` (reversed beyond :math:`\lambda = 2`); only where the
  loss curves down (:math:`\lambda < 0`: plateaus, saddles) is it lengthened.
  ``combine="accelerate"`` keeps that lengthening and never shortens or flips a coordinate.

  **Defaults** are the form the benchmarks recommend (the one :func:`avggrad.adam` uses,
  figures in the README): the trapezoid estimator, accelerate-only, a span of 8 predicted
  steps and the far end on a quarter of the minibatch when ``update`` receives ``batch``.
  The paper's form is one argument away, ``average_gradient(inner, **avggrad.PAPER_FORM)``
  (:data:`~avggrad.transforms.PAPER_FORM`).

  **Cost.** With the predicted range ``inner``'s update runs twice a step: on :math:`g`, to
  predict :math:`\hat\Delta` (its new state discarded), and on the combined gradient, for the
  step. Both are needed: the second input depends on the first call's output (through the far
  end), so for an ``inner`` that is not linear in its input (Adam's and RMSProp's
  normalisation, Lion's sign, Muon's Newton-Schulz orthogonalisation) neither result gives the
  other; for a linear one (SGD, momentum) the step could be had from the prediction, but only
  by applying the same linear map to the difference, which costs what the call does. With
  ``update_range="previous"`` it runs once (another algorithm: the range is the update
  applied at the previous step).

  Args:
    inner: the transformation to feed (e.g. RMSProp's scaling and the learning rate).
    estimator: ``"trapezoid"`` (the point gradient, i.e. the incoming updates, and one
      gradient at the far end of the range), ``"factorized"`` or ``"quadrature"`` (these
      re-evaluate the whole range; see :func:`avggrad.value_and_average_grad`).
    num_points: Gauss-Legendre nodes of the ``"quadrature"`` estimator.
    span: average over ``span`` times the range (:math:`s`), the step itself unchanged.
    update_range: ``"predicted"`` or ``"previous"``.
    accumulate: ``"average"`` (the accumulator sees :math:`\bar g`) or ``"point"``
      (it sees :math:`g`).
    combine: ``"accelerate"``, ``"replace"`` or ``"no_flip"`` (see :data:`~avggrad.transforms.COMBINES` and
      :func:`scale_by_average_gradient`).
    far_batch_fraction: with the ``"trapezoid"`` estimator and the predicted range, take the
      gradient at the far end of the range on every :math:`k`-th example of the minibatch
      only (``far_batch_fraction = 1/k``), and average it with the point gradient,
      :math:`\bar g \approx \tfrac12(g + \nabla L_{\text{sub}}(w + s\hat\Delta))`. It cuts
      the extra cost of a step to that fraction of a gradient. The strided choice keeps each
      device's share local when the batch is sharded over devices
      (:func:`~avggrad.transforms.select_far_examples`). It needs the minibatch: pass ``batch=`` (any pytree of
      arrays with the examples on the leading axis) to ``update`` and a
      ``value_fn(params, batch)``; without them the far end uses the full ``value_fn`` (with
      a warning). ``"auto"`` (the default) is :data:`~avggrad.transforms.AUTO_FAR_BATCH_FRACTION` of it when
      ``update`` receives ``batch`` (and the whole loss, silently, when it does not);
      ``None`` or ``1`` is the whole minibatch. A static Python number ``1/k``: under
      ``optax.inject_hyperparams`` name it in ``static_args``.
    far_dtype: with the ``"trapezoid"`` estimator, compute the far-end gradient in this
      dtype (e.g. ``"bfloat16"``), casting the parameters and the floating leaves of
      ``batch``; the result is cast back to the parameters' dtypes.
    max_gain: with ``combine="accelerate"``, bound the gain of a coordinate,
      :math:`|\bar g_i| \le \text{max\_gain}\,|g_i|` (``None``: unbounded).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params, *,
    value_fn, **extra_args)`` needs ``params`` and ``value_fn``; other extra arguments are
    passed on to ``inner``.

  Raises:
    ValueError: for an unknown ``estimator``, ``update_range``, ``accumulate`` or
      ``combine``, or options that do not go together (``far_batch_fraction`` or
      ``far_dtype`` without the trapezoid estimator and the predicted range, ``max_gain``
      without ``combine="accelerate"``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum(jnp.tanh(w) ** 2)
    >>> inner = optax.chain(avggrad.scale_by_rms(), optax.scale_by_learning_rate(0.1))
    >>> tx = avggrad.average_gradient(inner)
    >>> w = jnp.array([1.0, -2.0])
    >>> state = tx.init(w)
    >>> updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    >>> bool(loss(w + updates) < loss(w))
    True

  References:
    R. Wolniak and B. Kostek, Neural Computation (DOI 10.1162/neco.a.1514).
  """
  estimators.check_estimator(estimator, num_points)
  _check_choice("update_range", update_range, RANGES)
  _check_choice("accumulate", accumulate, ACCUMULATORS)
  combine_fn = _bounded_combine(combine, max_gain)
  auto, fraction = _check_far_end(far_batch_fraction, far_dtype, estimator, update_range)
  inner = optax.with_extra_args_support(inner)
  tracker = scale_by_average_gradient(
      estimator=estimator, num_points=num_points, span=span, combine="replace"
  )

  def init_fn(params: Params) -> AverageGradientState:
    _check_whole_params(params, "avggrad.average_gradient (and avggrad.adam, avggrad.rmsprop)")
    inner_state = inner.init(params)
    if accumulate == "point":
      _check_second_moment_input(inner_state)
    range_state = tracker.init(params) if update_range == "previous" else None
    return AverageGradientState(inner_state=inner_state, range_state=range_state)

  def update_fn(
      updates: Updates,
      state: AverageGradientState,
      params: Optional[Params] = None,
      *,
      value_fn: Optional[Callable[..., Any]] = None,
      **extra_args: Any,
  ) -> tuple[Updates, AverageGradientState]:
    _require(params, value_fn, "average_gradient", updates, extra_args)
    extra_args = {k: v for k, v in extra_args.items() if k != "grad"}  # inner sees no raw grad
    point, range_state = updates, state.range_state
    if update_range == "predicted":
      delta = _scale_tree(
          _predicted_step(inner, point, state.inner_state, params, value_fn, extra_args), span)
      avg = _average_over(point, value_fn, extra_args, params, delta, estimator=estimator,
                          num_points=num_points, auto=auto, fraction=fraction,
                          far_dtype=far_dtype)
    else:
      avg, range_state = tracker.update(
          point, range_state, params, value_fn=value_fn, **extra_args
      )
    combined = _combined_gradient(combine_fn, point, avg)
    if accumulate == "point":
      extra_args = dict(extra_args, second_moment_updates=point)
    new_updates, inner_state = inner.update(
        combined, state.inner_state, params, value_fn=value_fn, **extra_args
    )
    return new_updates, AverageGradientState(inner_state, range_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByRmsState(NamedTuple):
  """State of :func:`scale_by_rms`.

  Attributes:
    count: steps taken (for the bias correction).
    mu: the moving average of the gradients (``centered=True``; ``None`` otherwise).
    nu: the moving average of the squared gradients.
  """

  count: jax.Array
  mu: Optional[Updates]
  nu: Updates


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-7,
    eps_root: jax.typing.ArrayLike = 0.0,
    initial_scale: jax.typing.ArrayLike = 0.0,
    *,
    centered: bool = False,
    bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""RMSProp's scaling, with ``eps`` outside the square root.

  .. math::

    \nu_t = \beta \nu_{t-1} + (1 - \beta) v_t^2, \qquad
    u_t = \frac{g_t}{\sqrt{\hat\nu_t - \hat\mu_t^2 + \epsilon_{\text{root}}} + \epsilon},

  where :math:`v_t` is the ``second_moment_updates`` extra argument when given and the
  incoming update :math:`g_t` otherwise, :math:`\mu_t = \beta\mu_{t-1} + (1-\beta) v_t`
  with ``centered=True`` (and :math:`\hat\mu = 0` otherwise), and the hats divide by
  :math:`1 - \beta^t` with ``bias_correction=True``. ``eps`` is added outside the root, as in
  Keras and PyTorch; ``optax.scale_by_rms`` adds it inside by default, where ``eps=1e-7``
  acts like an epsilon of about ``3e-4`` and freezes networks whose gradients are small.
  ``eps_root`` gives Optax's placement (``optax.scale_by_rms(eps=e)`` is
  ``scale_by_rms(eps=0, eps_root=e)``).

  Args:
    decay: :math:`\beta`, the decay of the moving average.
    eps: :math:`\epsilon`, added to the root.
    eps_root: :math:`\epsilon_{\text{root}}`, added under the root.
    initial_scale: initial value of :math:`\nu`.
    centered: subtract the squared mean (``optax.scale_by_stddev``).
    bias_correction: divide the averages by :math:`1 - \beta^t`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import avggrad
    >>> tx = avggrad.scale_by_rms(decay=0.0, eps=0.0)
    >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
    >>> u.tolist()
    [1.0, -1.0]

  References:
    T. Tieleman and G. Hinton, Lecture 6.5 - RMSProp, COURSERA: Neural Networks for Machine
    Learning (2012).
  """

  def init_fn(params: Params) -> ScaleByRmsState:
    return ScaleByRmsState(count=jnp.zeros([], jnp.int32),
                           mu=otree.zeros_like(params) if centered else None,
                           nu=otree.full_like(params, initial_scale))

  def update_fn(
      updates: Updates,
      state: ScaleByRmsState,
      params: Optional[Params] = None,
      *,
      second_moment_updates: Optional[Updates] = None,
      **extra_args: Any,
  ) -> tuple[Updates, ScaleByRmsState]:
    del params, extra_args
    moment_input = updates if second_moment_updates is None else second_moment_updates
    count = optax.safe_increment(state.count)
    nu = otree.update_moment_per_elem_norm(moment_input, state.nu, decay, 2)
    nu_hat = otree.bias_correction(nu, decay, count) if bias_correction else nu
    mu = None
    if centered:
      mu = otree.update_moment(moment_input, state.mu, decay, 1)
      mu_hat = otree.bias_correction(mu, decay, count) if bias_correction else mu
      nu_hat = jax.tree.map(lambda n, m: n - jnp.square(m), nu_hat, mu_hat)
      mu = otree.cast_like(mu, state.mu)
    new_updates = jax.tree.map(
        lambda g, n: (g / (jnp.sqrt(n + eps_root) + eps)).astype(g.dtype), updates, nu_hat
    )
    return new_updates, ScaleByRmsState(count=count, mu=mu, nu=otree.cast_like(nu, state.nu))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class ScaleByAdamState(NamedTuple):
  """State of :func:`scale_by_adam`: step count and first and second moments."""

  count: jax.Array
  mu: Updates
  nu: Updates


def scale_by_adam(
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Optional[Any] = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam's scaling, whose second moment can be fed a different gradient than the first.

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \quad
    \nu_t = \beta_2 \nu_{t-1} + (1 - \beta_2) v_t^2, \quad
    u_t = \frac{m_t / (1 - \beta_1^t)}{\sqrt{\nu_t / (1 - \beta_2^t) + \epsilon_{\text{root}}}
    + \epsilon},

  where :math:`v_t` is the ``second_moment_updates`` extra argument when given and
  :math:`g_t` otherwise (then this is exactly ``optax.scale_by_adam``, with its arguments).

  Args:
    b1: :math:`\beta_1`, decay of the first moment.
    b2: :math:`\beta_2`, decay of the second moment.
    eps: :math:`\epsilon`, added outside the root.
    eps_root: :math:`\epsilon_{\text{root}}`, added under the root.
    mu_dtype: the dtype of the first moment (``None``: the parameters').
    nesterov: Nesterov's momentum (NAdam's first moment, as ``optax.scale_by_adam``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp
    >>> import avggrad
    >>> tx = avggrad.scale_by_adam(eps=0.0)
    >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
    >>> [round(x, 4) for x in u.tolist()]  # the first Adam step is the sign of g
    [1.0, -1.0]

  References:
    D. P. Kingma and J. Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
  """

  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params: Params) -> ScaleByAdamState:
    return ScaleByAdamState(
        count=jnp.zeros([], jnp.int32),
        mu=otree.zeros_like(params, dtype=mu_dtype),
        nu=otree.zeros_like(params),
    )

  def update_fn(
      updates: Updates,
      state: ScaleByAdamState,
      params: Optional[Params] = None,
      *,
      second_moment_updates: Optional[Updates] = None,
      **extra_args: Any,
  ) -> tuple[Updates, ScaleByAdamState]:
    del params, extra_args
    moment_input = updates if second_moment_updates is None else second_moment_updates
    mu = otree.update_moment(updates, state.mu, b1, 1)
    nu = otree.update_moment_per_elem_norm(moment_input, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    if nesterov:
      mu_hat = jax.tree.map(
          lambda m, g: b1 * m + (1 - b1) * g,
          otree.bias_correction(mu, b1, optax.safe_increment(count)),
          otree.bias_correction(updates, b1, count))
    else:
      mu_hat = otree.bias_correction(mu, b1, count)
    nu_hat = otree.bias_correction(nu, b2, count)
    new_updates = jax.tree.map(
        lambda m, v, g: (m / (jnp.sqrt(v + eps_root) + eps)).astype(g.dtype),
        mu_hat,
        nu_hat,
        updates,
    )
    return new_updates, ScaleByAdamState(
        count=count, mu=otree.cast_like(mu, state.mu), nu=otree.cast_like(nu, state.nu)
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
