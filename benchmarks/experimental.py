"""Experimental optimizers for research probes (not part of the library).

:func:`register` makes them known to ``avggrad.optimizers`` so that grid files can name them
(the benchmark runner calls it before it reads a grid):

* ``pc-adam`` / ``pc-rmsprop``: the *per-coordinate* reading of the average gradient (design
  brief section 3). Each weight's gradient is averaged over its own range with the others
  held, which to second order is :math:`\\bar g_i = g_i + \\tfrac12 H_{ii} \\hat\\Delta_i`. The
  Hessian diagonal comes from Hutchinson's estimator, :math:`\\mathrm{diag}(H) \\approx
  \\mathbb{E}[z \\odot Hz]` with Rademacher :math:`z` (``probes`` of them per step, one
  Hessian-vector product each, by forward-over-reverse). Options: ``span``, ``combine``,
  ``probes``.
* ``sf-avg-adamw``: schedule-free AdamW with the average gradient *inside* it,
  ``optax.contrib.schedule_free(average_gradient(base))``: the far end lies along the raw base
  step from the gradient point :math:`y` (the :math:`z` step), not along the interpolated step
  that ``avg-schedule-free-adamw`` (the wrapper outside) predicts. Options: the wrapper's
  (``span``, ``far_batch_fraction``, ...) and ``b1``, ``b2``, ``eps``, ``weight_decay``.
* ``sf-auto-adamw``: the same base with its step length set by :func:`avggrad.auto` inside
  schedule-free (issue 24, lead 6). Options: ``auto``'s and ``b1``, ``b2``, ``eps``,
  ``weight_decay``.
* ``kron``: PSGD Kron (``distributed-kron`` on PyPI, pure JAX/Optax; not a dependency of
  avggrad: install it to run this peer). Options: ``b1``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

import avggrad
from avggrad import optimizers
from avggrad.transforms import COMBINES, _bind_value_fn


def hutchinson_diagonal(grad_fn: Callable[[Any], Any], params: Any, key: jax.Array,
                        probes: int) -> Any:
  """Hutchinson's estimate of the Hessian diagonal, the mean of ``z * (H z)`` over ``probes``
  Rademacher vectors ``z`` (one forward-over-reverse Hessian-vector product each)."""
  leaves, treedef = jax.tree.flatten(params)
  diag = jax.tree.map(jnp.zeros_like, params)
  for k in jax.random.split(key, probes):
    keys = jax.random.split(k, len(leaves))
    z = jax.tree.unflatten(treedef, [
        jax.random.rademacher(kk, leaf.shape, leaf.dtype) for kk, leaf in zip(keys, leaves)])
    hz = jax.jvp(grad_fn, (params,), (z,))[1]
    diag = jax.tree.map(lambda d, a, b: d + a * b / probes, diag, z, hz)
  return diag


class PerCoordinateState(NamedTuple):
  inner_state: optax.OptState
  key: jax.Array


def per_coordinate_average(inner: optax.GradientTransformation, *, span: float = 1.0,
                           combine: str = "replace", probes: int = 1,
                           seed: int = 0) -> optax.GradientTransformationExtraArgs:
  inner = optax.with_extra_args_support(inner)
  combine_fn = COMBINES[combine]

  def init_fn(params: Any) -> PerCoordinateState:
    return PerCoordinateState(inner.init(params), jax.random.key(seed))

  def update_fn(updates: Any, state: PerCoordinateState, params: Any = None, *,
                value_fn: Optional[Callable[..., Any]] = None, **extra: Any):
    predicted, _ = inner.update(updates, state.inner_state, params, **extra)
    key, sub = jax.random.split(state.key)
    if value_fn is None:
      raise ValueError("pc-adam / pc-rmsprop need the loss: tx.update(grads, state, params, "
                       "value_fn=loss_fn, batch=batch).")
    # The loss with the extra arguments it declares (its batch), as the package's wrapper
    # binds them; jax.grad(value_fn) alone would call it without its batch.
    diag = hutchinson_diagonal(jax.grad(_bind_value_fn(value_fn, extra)), params, sub, probes)
    average = jax.tree.map(lambda g, h, u: g + 0.5 * h * span * u, updates, diag, predicted)
    combined = combine_fn(updates, average)
    new_updates, inner_state = inner.update(combined, state.inner_state, params, **extra)
    return new_updates, PerCoordinateState(inner_state, key)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _pc_adam(learning_rate, **options) -> optax.GradientTransformationExtraArgs:
  return per_coordinate_average(avggrad.adam_baseline(learning_rate), **options)


def _pc_rmsprop(learning_rate, **options) -> optax.GradientTransformationExtraArgs:
  return per_coordinate_average(avggrad.rmsprop_baseline(learning_rate), **options)


class PreviousGradientState(NamedTuple):
  inner_state: optax.OptState
  previous: Any


def previous_gradient_control(inner: optax.GradientTransformation, *,
                              combine: str = "accelerate") -> optax.GradientTransformation:
  """A zero-cost control for the accelerate-only rule: the "far end" is the previous step's
  gradient (another minibatch, the previous weights) instead of a gradient at ``w + s
  Delta``, ``c = combine(g_t, (g_t + g_{t-1}) / 2)``. If it matched the average gradient's
  gain, that gain would come from the rule's selection of noise, not from the range."""
  inner = optax.with_extra_args_support(inner)
  combine_fn = COMBINES[combine]

  def init_fn(params: Any) -> PreviousGradientState:
    return PreviousGradientState(inner.init(params), jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates: Any, state: PreviousGradientState, params: Any = None, **extra: Any):
    average = jax.tree.map(lambda g, p: 0.5 * (g + p), updates, state.previous)
    combined = combine_fn(updates, average)
    new_updates, inner_state = inner.update(combined, state.inner_state, params, **extra)
    return new_updates, PreviousGradientState(inner_state, updates)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _prev_adam(learning_rate, **options) -> optax.GradientTransformation:
  return previous_gradient_control(avggrad.adam_baseline(learning_rate), **options)


def _schedule_free_base(learning_rate, b2: float, eps: float,
                        weight_decay: float) -> optax.GradientTransformation:
  """optax.contrib.schedule_free_adamw's base: Adam without momentum, weight decay, the rate."""
  return optax.chain(
      optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(learning_rate))


def _inside_schedule_free(wrap: Any) -> Any:
  """A factory of schedule-free AdamW whose base is ``wrap(base, **options)``: options are
  ``wrap``'s and ``b1``, ``b2``, ``eps``, ``weight_decay`` (schedule_free passes value_fn and
  batch on to its base)."""

  def factory(learning_rate, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, **options: Any) -> optax.GradientTransformationExtraArgs:
    base = _schedule_free_base(learning_rate, b2, eps, weight_decay)
    return optax.contrib.schedule_free(wrap(base, **options), learning_rate=learning_rate,
                                       b1=b1)

  return factory


# The base fed the average gradient, inside schedule_free.
_sf_avg_adamw = _inside_schedule_free(avggrad.average_gradient)
# Issue 24, lead 6: schedule-free averaging around the self-tuning step: the base's step length
# set by avggrad.auto; the rate is the initial z-step (and schedule_free's constant averaging
# weight).
_sf_auto_adamw = _inside_schedule_free(avggrad.auto)


def _kron(learning_rate, **options) -> optax.GradientTransformation:
  # distributed-kron 2.0.0 subscripts PartitionSpec in an annotation (``PartitionSpec[str,
  # str]``), evaluated once at its import, which jax >= 0.10 rejects. An identity
  # __class_getitem__ lets it load; it is removed again right after, so nothing else sees it.
  spec = jax.sharding.PartitionSpec
  added = "__class_getitem__" not in vars(spec)
  if added:
    spec.__class_getitem__ = classmethod(lambda cls, item: cls)
  try:
    import distributed_kron  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the 'kron' peer needs PSGD Kron: pip install distributed-kron") from e
  finally:
    if added:
      del spec.__class_getitem__
  return distributed_kron.kron(learning_rate, **options)


EXPERIMENTAL = {"pc-adam": _pc_adam, "pc-rmsprop": _pc_rmsprop, "prev-adam": _prev_adam,
                "sf-avg-adamw": _sf_avg_adamw, "sf-auto-adamw": _sf_auto_adamw, "kron": _kron}
"""The research optimizers by name."""


def register() -> None:
  """Registers :data:`EXPERIMENTAL` with :mod:`avggrad.optimizers` (repeat calls are no-ops)."""
  for name, factory in EXPERIMENTAL.items():
    optimizers.register_optimizer(name, factory)
