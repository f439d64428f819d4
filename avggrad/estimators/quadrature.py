r"""Gauss-Legendre quadrature of the gradient along the step: the reference estimator.

.. math::

  \bar g = \int_0^1 \nabla L(w + \tau\Delta)\, d\tau \approx \sum_{k=1}^{K} w_k\,
  \nabla L(w + \tau_k \Delta),

with the ``K`` Gauss-Legendre nodes :math:`\tau_k` and weights :math:`w_k` mapped to
:math:`[0, 1]`. The rule is exact when the loss is a polynomial of degree :math:`\le 2K` along
the step; :math:`K = 8` is effectively exact on smooth networks at training step sizes. Cost:
``K`` gradient evaluations (run in a ``lax.scan``, so memory does not grow with ``K``) plus
one evaluation of the loss at ``w``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def nodes_and_weights(num_points: int) -> tuple[np.ndarray, np.ndarray]:
  """Gauss-Legendre nodes and weights on ``[0, 1]`` (weights sum to one)."""
  x, w = np.polynomial.legendre.leggauss(num_points)
  return (x + 1.0) / 2.0, w / 2.0


def value_and_average_grad(
    fun: Callable[..., Any],
    params: Any,
    delta: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    has_aux: bool,
    num_points: int,
) -> tuple[Any, Any]:
  """Average gradient by ``num_points``-node Gauss-Legendre quadrature (see module doc)."""

  def loss(p: Any) -> Any:
    return fun(p, *args, **kwargs)

  grad_fn = jax.grad(loss, has_aux=has_aux)
  output = loss(params)
  taus, weights = nodes_and_weights(num_points)
  dtype = jnp.promote_types(optax.tree.dtype(params, "highest"), jnp.float32)
  accumulate = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), dtype), params)

  def body(acc: Any, node: tuple[jax.Array, jax.Array]) -> tuple[Any, None]:
    tau, weight = node
    point = jax.tree.map(lambda p, d: (p + tau * d).astype(p.dtype), params, delta)
    g = grad_fn(point)
    if has_aux:
      g = g[0]
    return jax.tree.map(lambda a, gi: a + weight * gi.astype(a.dtype), acc, g), None

  acc, _ = jax.lax.scan(body, accumulate, (jnp.asarray(taus, dtype), jnp.asarray(weights, dtype)))
  return output, jax.tree.map(lambda a, p: a.astype(p.dtype), acc, params)
