r"""Estimators of the average gradient over the range of a weight update.

For a step from :math:`w` to :math:`w + \Delta`, the average (integrated) gradient is

.. math::

  \bar g(w, \Delta) = \int_0^1 \nabla L(w + \tau\Delta)\, d\tau ,
  \qquad L(w + \Delta) - L(w) = \bar g \cdot \Delta ,

so it sees the loss change a step really causes. Expanding along the segment,
:math:`\bar g = g + \tfrac12 H\Delta + \tfrac16 \nabla^3 L[\Delta, \Delta] + \dots`.

:func:`value_and_average_grad` is the one entry point; ``estimator`` picks the method:

* ``"quadrature"``: Gauss-Legendre with ``num_points`` nodes (the reference);
* ``"trapezoid"``: the endpoint rule (exact for quadratics);
* ``"factorized"``: the product of per-operation average Jacobians (second-order accurate,
  about one forward pass more than ``jax.value_and_grad``).
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable

import jax
import jax.numpy as jnp

from avggrad.estimators import factorized, quadrature, trapezoid
from avggrad.estimators.factorized import Coverage, coverage

ESTIMATORS: tuple[str, ...] = ("factorized", "quadrature", "trapezoid")


def check_estimator(estimator: str, num_points: Any) -> None:
  """Raises ``ValueError`` for an unknown estimator or a bad ``num_points``."""
  if estimator not in ESTIMATORS:
    raise ValueError(
        f"Unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}."
    )
  if estimator != "quadrature":
    return  # num_points is not used (and may be an injected hyperparameter array)
  if isinstance(num_points, jax.core.Tracer):
    raise TypeError(
        "num_points must be a concrete integer, got a traced value; under "
        "optax.inject_hyperparams pass static_args=('num_points',)."
    )
  try:
    value = operator.index(num_points)
  except TypeError:
    if getattr(num_points, "shape", None) == () and jnp.issubdtype(
        jnp.result_type(num_points), jnp.integer
    ):
      value = int(num_points)
    else:
      raise TypeError(
          f"num_points must be an integer, got {type(num_points).__name__}."
      ) from None
  if value < 1:
    raise ValueError(f"num_points must be at least 1, got {value}.")


def _check_delta(params: Any, delta: Any) -> None:
  """Raises ``ValueError``/``TypeError`` unless ``delta`` is shaped exactly like ``params``."""
  params_def = jax.tree.structure(params)
  delta_def = jax.tree.structure(delta)
  if params_def != delta_def:
    raise ValueError(
        "delta must have the same tree structure as params; got params "
        f"{params_def} and delta {delta_def}."
    )
  p_paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, p), d in zip(p_paths, jax.tree.leaves(delta)):
    where = jax.tree_util.keystr(path)
    if not jnp.issubdtype(jnp.result_type(p), jnp.floating):
      raise TypeError(
          f"params{where} has dtype {jnp.result_type(p)}; the average gradient is defined "
          "for real floating-point parameters only."
      )
    if jnp.shape(p) != jnp.shape(d):
      raise ValueError(
          f"delta{where} has shape {jnp.shape(d)} but params{where} has shape "
          f"{jnp.shape(p)}."
      )


def _check_output(output: Any, has_aux: bool) -> None:
  """Raises ``TypeError`` unless the loss is a real scalar (and aux is a pair with aux)."""
  if has_aux:
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
      raise TypeError(
          "With has_aux=True the function must return a pair (value, aux); got "
          f"{type(output).__name__}."
      )
    output = output[0]
  shape = jnp.shape(output)
  dtype = jnp.result_type(output)
  if shape != () or not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        "The function must return a real floating-point scalar loss (like "
        f"jax.value_and_grad); got shape {shape} and dtype {dtype}."
    )


def value_and_average_grad(
    fun: Callable[..., Any],
    *,
    estimator: str = "factorized",
    num_points: int = 3,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, Any]]:
  r"""Creates a function that evaluates ``fun`` and its average gradient over a step.

  .. math::

    \bar g = \int_0^1 \nabla_w f(w + \tau\Delta, \dots)\, d\tau

  The returned function has the signature ``(params, delta, *args, **kwargs)`` and returns
  ``(value, avg_grad)`` (with ``has_aux``, ``((value, aux), avg_grad)``), where
  ``value = fun(params, *args, **kwargs)`` and ``avg_grad`` is shaped like ``params``. With
  ``delta`` all zeros it returns ``jax.value_and_grad(fun)(params, ...)`` for every estimator.
  It is jit-compilable and can be ``jax.vmap``-ed wherever ``fun`` can.

  Args:
    fun: the loss ``fun(params, *args, **kwargs)``, returning a real scalar (or
      ``(scalar, aux)`` with ``has_aux``); only ``params`` is differentiated.
    estimator: ``"factorized"`` (product of per-operation average Jacobians, the default),
      ``"quadrature"`` (Gauss-Legendre, the reference) or ``"trapezoid"`` (endpoint rule).
    num_points: number of Gauss-Legendre nodes of the ``"quadrature"`` estimator (exact for
      losses that are polynomials of degree ``<= 2 * num_points`` along the step); unused by
      the other estimators.
    has_aux: whether ``fun`` returns ``(value, aux)``; ``aux`` is evaluated at ``params``.

  Returns:
    A function ``(params, delta, *args, **kwargs) -> (value, avg_grad)``.

  Raises:
    ValueError: for an unknown estimator, ``num_points < 1``, or (when called) a ``delta``
      whose tree structure or leaf shapes differ from ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> import avggrad
    >>> f = lambda w: jnp.sum(jnp.tanh(w))
    >>> w, d = jnp.array([0.0, 1.0]), jnp.array([0.5, -0.5])
    >>> value, g = avggrad.value_and_average_grad(f)(w, d)
    >>> exact = (jnp.tanh(w + d) - jnp.tanh(w)) / d  # closed form for a separable loss
    >>> bool(jnp.allclose(g, exact, rtol=1e-5))
    True

  References:
    R. Wolniak and B. Kostek, "Average gradient for training deep networks", Neural
    Computation (DOI 10.1162/neco.a.1514).
  """
  check_estimator(estimator, num_points)
  if estimator == "factorized":
    impl = factorized.value_and_average_grad
  elif estimator == "trapezoid":
    impl = trapezoid.value_and_average_grad
  else:
    impl = functools.partial(
        quadrature.value_and_average_grad, num_points=operator.index(int(num_points))
    )

  @functools.wraps(fun)
  def value_and_average_grad_fn(params: Any, delta: Any, *args: Any, **kwargs: Any):
    _check_delta(params, delta)
    output, avg_grad = impl(fun, params, delta, args, kwargs, has_aux=has_aux)
    _check_output(output, has_aux)
    return output, avg_grad

  return value_and_average_grad_fn


__all__ = ["ESTIMATORS", "Coverage", "check_estimator", "coverage", "value_and_average_grad"]
