r"""The trapezoid (endpoint) rule: the mean of the gradients at both ends of the step.

.. math::

  \bar g \approx \tfrac12 \left(\nabla L(w) + \nabla L(w + \Delta)\right),

exact when the loss is quadratic along the step. Cost: two gradient evaluations.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax


def value_and_average_grad(
    fun: Callable[..., Any],
    params: Any,
    delta: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    has_aux: bool,
) -> tuple[Any, Any]:
  """Average gradient by the trapezoid rule (see module doc)."""

  def loss(p: Any) -> Any:
    return fun(p, *args, **kwargs)

  output, g0 = jax.value_and_grad(loss, has_aux=has_aux)(params)
  end = jax.tree.map(lambda p, d: (p + d).astype(p.dtype), params, delta)
  g1 = jax.grad(loss, has_aux=has_aux)(end)
  if has_aux:
    g1 = g1[0]
  return output, jax.tree.map(lambda a, b: (0.5 * (a + b)).astype(a.dtype), g0, g1)
