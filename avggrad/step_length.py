r"""A step length set by the parabola each step measures along itself: no learning rate to tune.

:func:`avggrad.auto` wraps any Optax optimizer. Its update :math:`u_t` (the inner learning rate
included) is the direction and the initial step; a global scale :math:`s_t` multiplies it,
:math:`\Delta_t = s_t u_t`. Every step measures, on every :math:`k`-th example of the
minibatch, the parabola of the loss along the step:

.. math::

  p_t = -\nabla L_S(w_t) \cdot u_t, \qquad
  c_t = \frac{2}{s_t^2}\bigl(L_S(w_t + \Delta_t) - L_S(w_t) + s_t p_t\bigr)
  \approx u_t^\top \nabla^2 L_S(w_t)\, u_t ,

the slope (a forward-mode derivative) and the secant curvature per unit scale (one more
loss). On a step so short that float32 cannot resolve that loss change (the difference of two
close losses is rounding noise), :math:`c_t` is the second directional derivative
:math:`u_t^\top \nabla^2 L_S(w_t) u_t` instead (``jax.jvp`` of ``jax.jvp``, exact); on a long
step the secant sees how the curvature changes along it, which the local one misses (on a
32-layer tanh MLP the local curvature alone let one seed of three diverge). Exponential
averages :math:`\bar p, \bar c` of the two parts (not of their ratio) give the scale at the minimum of the averaged
parabola, :math:`s^* = \bar p / \bar c`, and the scale moves toward :math:`s^*/\kappa` in log
space with a capped change per step:

.. math::

  \log s_{t+1} = \log s_t + \mathrm{clip}\bigl(\gamma \log\tfrac{s^*}{\kappa s_t},
  -\log \rho_{\downarrow}, \log \rho_{\uparrow}\bigr),

(the growth cap doubles as a warmup from a small initial scale). Where the averaged curvature
is not positive the scale grows at the cap. The parabola's verdict acts on the step it
measured:

- when it says the step raises the loss (:math:`s_t > 2 s^*`), the scale is cut to
  :math:`s^*/\kappa` at once;
- on an uphill direction (:math:`\bar p < 0`, or :math:`\bar p = 0 < \bar c`), where every
  step raises it, the scale is cut by :math:`\rho_\downarrow`;
- a step is applied at :math:`\min(s_t, s_{t+1})`: a cut shortens it at once, growth waits
  for the next (measured) step;
- where the loss at the far end :math:`w_t + s_t u_t` is not finite the step is not applied
  at all (a zero update) and the scale is cut by :math:`\rho_\downarrow`.
"""

from __future__ import annotations

import types
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avggrad import transforms


class ScaleByAutoState(NamedTuple):
  r"""State of :func:`avggrad.auto`.

  Attributes:
    scale: the current global scale :math:`s_t` of the inner update (shown by the CLI).
    slope: the exponential average :math:`\bar p` of the slope per unit scale.
    curvature: the exponential average :math:`\bar c` of the curvature per unit scale.
    count: steps measured (for the averages' bias correction).
    inner_state: the state of the wrapped optimizer.
  """

  scale: jax.Array
  slope: jax.Array
  curvature: jax.Array
  count: jax.Array
  inner_state: optax.OptState


RESOLVED = 100.0
"""The secant curvature is used where the loss change it rests on exceeds this many times its
rounding error (about 1% error); on shorter steps the second directional derivative is."""


def _measure(value_fn: Callable[..., Any], params: Any, direction: Any,
             scale: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""``(p, c, far loss)``: the slope :math:`p = -\nabla L \cdot u` and curvature :math:`c`
  per unit scale along ``direction`` :math:`u`, and the loss at the far end :math:`w + s u`.

  :math:`p` and the local curvature :math:`u^\top H u` are the first and second directional
  derivatives at ``params`` (``jax.jvp`` of ``jax.jvp``), exact. :math:`c` is the secant
  curvature of the step, :math:`2 (L(w + s u) - L(w) + s p) / s^2`, which sees the curvature
  change along a long step, where the loss change resolves it (:data:`RESOLVED`: its rounding
  error under about 1%); on a step too short for float32 to resolve it (the difference of two
  close losses is rounding noise), the local curvature.
  """
  along = jax.tree.map(lambda d, p: d.astype(p.dtype), direction, params)
  first = lambda w: jax.jvp(value_fn, (w,), (along,))  # noqa: E731
  (loss0, derivative), (_, second) = jax.jvp(first, (params,), (along,))
  far = jax.tree.map(lambda p, d: (p + scale * d).astype(p.dtype), params, along)
  far_loss = value_fn(far)
  excess = far_loss - loss0 - scale * derivative  # s^2 c / 2 for the secant c
  eps = jnp.finfo(jnp.result_type(far_loss, loss0)).eps
  rounding = 4.0 * eps * (jnp.abs(loss0) + jnp.abs(far_loss))
  resolved = jnp.isfinite(far_loss) & (jnp.abs(excess) > RESOLVED * rounding)
  safe = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)
  curvature = jnp.where(resolved, 2.0 * excess / jnp.square(safe), second)
  return (-derivative).astype(jnp.float32), curvature.astype(jnp.float32), far_loss


def _check_hyperparameters(**values: Any) -> None:
  """Clear errors for hyperparameters that would silently break the controller; only
  concrete Python or NumPy numbers are checked (a traced value under
  ``optax.inject_hyperparams`` passes through)."""
  concrete = {k: float(v) for k, v in values.items()
              if not isinstance(v, jax.core.Tracer) and jnp.ndim(v) == 0
              and not callable(v)}
  bounds = {
      "decay": (lambda v: 0 <= v < 1, "in [0, 1): at 1 the averages never take a "
                "measurement and the scale is frozen (0/0)"),
      "max_cut": (lambda v: v >= 1, "at least 1: it is the most the scale shrinks in one "
                  "step (a factor), below 1 a cut would grow it"),
      "max_growth": (lambda v: v >= 1, "at least 1: it is the most the scale grows in one "
                     "step (a factor), below 1 growth would shrink it"),
      "target_ratio": (lambda v: v > 0, "positive: the scale aims at s*/target_ratio"),
      "gain": (lambda v: v > 0, "positive: at 0 the scale never moves"),
  }
  for name, value in concrete.items():
    ok, text = bounds[name]
    if not ok(value):
      raise ValueError(f"avggrad.auto: {name} must be {text}; got {name}={value}.")


AUTO_DEFAULTS: types.MappingProxyType[str, float] = types.MappingProxyType({
    "target_ratio": 2.0, "decay": 0.9, "gain": 0.1, "max_growth": 1.2, "max_cut": 2.0,
})
"""The one documented configuration of :func:`avggrad.auto` (see its arguments)."""


def auto(
    inner: optax.GradientTransformation,
    *,
    target_ratio: jax.typing.ArrayLike = AUTO_DEFAULTS["target_ratio"],
    decay: jax.typing.ArrayLike = AUTO_DEFAULTS["decay"],
    gain: jax.typing.ArrayLike = AUTO_DEFAULTS["gain"],
    max_growth: jax.typing.ArrayLike = AUTO_DEFAULTS["max_growth"],
    max_cut: jax.typing.ArrayLike = AUTO_DEFAULTS["max_cut"],
    far_batch_fraction: Optional[float | str] = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""Sets the length of ``inner``'s step from the loss change each step measures.

  See :mod:`avggrad.step_length` for the controller:

  .. math::

    \Delta_t = s_t\, u_t, \qquad s^* = \bar p / \bar c, \qquad
    \log s_{t+1} = \log s_t + \mathrm{clip}\bigl(\gamma \log\tfrac{s^*}{\kappa s_t},
    -\log \rho_{\downarrow}, \log \rho_{\uparrow}\bigr).

  The scale starts at 1, so ``inner``'s learning rate is only the initial step. The
  measurement costs a second-order forward-mode derivative and one loss (the far end's) on a
  quarter of the minibatch
  (``far_batch_fraction``), when ``update`` receives ``batch=`` (and ``value_fn`` takes it);
  on the whole loss otherwise. :math:`\bar p, \bar c` are global scalars: under data
  parallelism one all-reduce each.

  Args:
    inner: any Optax optimizer, its learning rate included (the initial step).
    target_ratio: :math:`\kappa`: the scale aims at :math:`s^*/\kappa`. Above 1 the step
      stops short of the line minimum: with momentum the next steps keep going the same way,
      so the greedy one-step minimum is too long (``target_ratio=0.7``, past the minimum,
      diverged on the development tasks). Calibrated once, on the development tasks.
    decay: the exponential averages' decay, in :math:`[0, 1)`.
    gain: :math:`\gamma`, the fraction of the log distance to the aim moved per step.
    max_growth: :math:`\rho_\uparrow \ge 1`, the most the scale grows in one step.
    max_cut: :math:`\rho_\downarrow \ge 1`, the most it shrinks in one step (except the cut
      when the averaged parabola says the step raises the loss).
    far_batch_fraction: measure on every :math:`k`-th example (``1/k``); ``"auto"`` is a
      quarter when ``update`` receives ``batch``; ``None`` or 1: the whole minibatch.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params, *,
    value_fn, **extra_args)`` needs ``params`` and ``value_fn``; its state
    (:class:`ScaleByAutoState`) holds the current ``scale``.

  Raises:
    ValueError: for a concrete ``decay`` outside :math:`[0, 1)`, ``max_cut`` or
      ``max_growth`` below 1, or a ``target_ratio`` or ``gain`` that is not positive (a
      value traced under ``optax.inject_hyperparams`` is not checked); and, at ``init`` or
      ``update``, for parameters that ``optax.masked`` or ``optax.multi_transform`` cut to
      a part (the loss needs all of them).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = avggrad.auto(optax.sgd(1e-3))  # a step 1000x too short to begin with
    >>> w = jnp.zeros(3)
    >>> state = tx.init(w)
    >>> for _ in range(60):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(loss(w) < 1e-3), bool(state.scale > 100)
    (True, True)

  References:
    M. Mutschler and A. Zell, Parabolic Approximation Line Search for DNNs (PAL), NeurIPS
    2020; the AlgoPerf benchmark's self-tuning rules (G. E. Dahl et al., 2023).
  """
  _check_hyperparameters(target_ratio=target_ratio, decay=decay, gain=gain,
                         max_growth=max_growth, max_cut=max_cut)
  auto_fraction, fraction = transforms._check_far_end(far_batch_fraction, None, "trapezoid",
                                                      "predicted")
  inner = optax.with_extra_args_support(inner)

  def init_fn(params: Any) -> ScaleByAutoState:
    transforms._check_whole_params(params, "avggrad.auto")
    zero = jnp.zeros([], jnp.float32)
    return ScaleByAutoState(scale=jnp.ones([], jnp.float32), slope=zero, curvature=zero,
                            count=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

  def update_fn(updates: Any, state: ScaleByAutoState, params: Any = None, *,
                value_fn: Optional[Callable[..., Any]] = None,
                **extra_args: Any) -> tuple[Any, ScaleByAutoState]:
    if params is not None:
      transforms._check_whole_params(params, "avggrad.auto")
    transforms._require(params, value_fn, "avggrad.auto", updates, extra_args)
    extra_args = {k: v for k, v in extra_args.items() if k != "grad"}
    direction, inner_state = inner.update(updates, state.inner_state, params,
                                          value_fn=value_fn, **extra_args)
    args = transforms._far_args(value_fn, extra_args, auto=auto_fraction, fraction=fraction)
    loss = transforms._bind_value_fn(value_fn, args)
    scale = state.scale
    slope, curvature, far_loss = _measure(loss, params, direction, scale)
    measured = jnp.isfinite(slope) & jnp.isfinite(curvature)
    finite = measured & jnp.isfinite(far_loss)
    count = jnp.where(measured, optax.safe_increment(state.count), state.count)
    mean_slope = jnp.where(measured, decay * state.slope + (1 - decay) * slope, state.slope)
    mean_curv = jnp.where(measured, decay * state.curvature + (1 - decay) * curvature,
                          state.curvature)
    correction = 1 - decay ** jnp.maximum(count, 1).astype(jnp.float32)
    p_bar, c_bar = mean_slope / correction, mean_curv / correction
    best = p_bar / jnp.where(c_bar > 0, c_bar, 1.0)
    aim = best / target_ratio
    descent = p_bar > 0
    unseen = (p_bar == 0) & (c_bar <= 0)  # nothing measured yet (or a zero direction)
    log_move = jnp.where(
        descent,
        jnp.where(c_bar > 0,
                  jnp.clip(gain * jnp.log(jnp.maximum(aim, 1e-30) / scale),
                           -jnp.log(max_cut), jnp.log(max_growth)),
                  jnp.log(max_growth)),  # no curvature seen: grow
        jnp.where(unseen, 0.0, -jnp.log(max_cut)))  # uphill: every step raises the loss
    new_scale = scale * jnp.exp(log_move)
    rises = descent & (c_bar > 0) & (scale > 2.0 * best)
    new_scale = jnp.where(rises, jnp.minimum(new_scale, aim), new_scale)
    new_scale = jnp.where(finite, new_scale, scale / max_cut)  # a non-finite far end: shrink
    # Act on the measurement now: a cut shortens this step already; growth waits for the
    # next one (it has not been measured); a step whose far end is not finite is not taken.
    applied = jnp.where(finite, jnp.minimum(scale, new_scale), 0.0)
    step = jax.tree.map(lambda d: jnp.where(finite, applied * d, 0).astype(d.dtype), direction)
    return step, ScaleByAutoState(scale=new_scale.astype(jnp.float32),
                                  slope=mean_slope.astype(jnp.float32),
                                  curvature=mean_curv.astype(jnp.float32), count=count,
                                  inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def auto_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    *,
    target_ratio: jax.typing.ArrayLike = AUTO_DEFAULTS["target_ratio"],
    decay: jax.typing.ArrayLike = AUTO_DEFAULTS["decay"],
    gain: jax.typing.ArrayLike = AUTO_DEFAULTS["gain"],
    max_growth: jax.typing.ArrayLike = AUTO_DEFAULTS["max_growth"],
    max_cut: jax.typing.ArrayLike = AUTO_DEFAULTS["max_cut"],
    far_batch_fraction: Optional[float | str] = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""Adam whose step length the loss change sets: :func:`avggrad.auto` around Adam.

  .. math::

    \Delta_t = s_t\, \eta\, \mathrm{Adam}(g_t),

  with :math:`s_t` from :func:`avggrad.auto`. Callable with no argument: ``learning_rate`` is only the
  initial step, which the controller lengthens or shortens.

  Args:
    learning_rate: the initial step :math:`\eta` (``s_0 = 1``).
    b1: decay of Adam's first moment.
    b2: decay of Adam's second moment.
    eps: Adam's epsilon.
    target_ratio: see :func:`avggrad.auto`.
    decay: see :func:`avggrad.auto`.
    gain: see :func:`avggrad.auto`.
    max_growth: see :func:`avggrad.auto`.
    max_cut: see :func:`avggrad.auto`.
    far_batch_fraction: see :func:`avggrad.auto`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and
    ``value_fn`` (and takes ``batch=``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum(jnp.tanh(w - 1.0) ** 2)
    >>> tx = avggrad.auto_adam()
    >>> w = jnp.zeros(3)
    >>> state = tx.init(w)
    >>> for _ in range(100):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(loss(w) < 0.01)
    True

  References:
    D. P. Kingma and J. Ba, ICLR 2015; see :func:`avggrad.auto`.
  """
  from avggrad import aliases

  return auto(aliases.adam_baseline(learning_rate, b1, b2, eps), target_ratio=target_ratio,
              decay=decay, gain=gain, max_growth=max_growth, max_cut=max_cut,
              far_batch_fraction=far_batch_fraction)


def run_scales(opt_state: optax.OptState) -> Optional[np.ndarray]:
  """The scales :math:`s_t` of the first :class:`ScaleByAutoState` in an optimizer state (any
  nesting) as a 1-D NumPy array: one per run where the state carries a leading runs axis
  (:func:`avggrad.sweep.sweep`), else one; ``None`` when there is no such state.

  Example:
    >>> import jax, jax.numpy as jnp, optax, avggrad
    >>> states = jax.vmap(avggrad.auto_adam().init)(jnp.zeros((3, 2)))  # three runs
    >>> avggrad.step_length.run_scales(states), avggrad.step_length.run_scales(
    ...     optax.adam(1e-3).init(jnp.zeros(2)))
    (array([1., 1., 1.], dtype=float32), None)
  """
  is_auto = lambda x: isinstance(x, ScaleByAutoState)  # noqa: E731
  for leaf in jax.tree.leaves(opt_state, is_leaf=is_auto):
    if is_auto(leaf):
      return np.atleast_1d(np.asarray(jax.device_get(leaf.scale)))
  return None


def current_scale(opt_state: optax.OptState) -> Optional[float]:
  """The scale :math:`s_t` of the first :class:`ScaleByAutoState` in an optimizer state (any
  nesting: ``inject_hyperparams``, chains), ``None`` when there is none (one run's state;
  :func:`run_scales` for a sweep's).

  Example:
    >>> import jax.numpy as jnp, avggrad
    >>> avggrad.current_scale(avggrad.auto_adam().init(jnp.zeros(2)))
    1.0
  """
  scales = run_scales(opt_state)
  if scales is None:
    return None
  if scales.size != 1:
    raise ValueError(f"the state holds {scales.size} runs' scales; use run_scales.")
  return float(scales[0])
