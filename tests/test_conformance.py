"""The factorized estimator on models built only from Flax library layers (nnx and linen).

For every model of ``benchmarks/conformance.py`` (attention with and without a causal mask,
LayerNorm, RMSNorm, BatchNorm in inference mode, Embed, LSTM and GRU through ``nn.RNN``,
convolutions with average and max pooling, deterministic Dropout, gelu, silu, relu, softplus
and elu), in float64:

* ``delta = 0`` gives ``jax.value_and_grad``;
* the estimate is closer to the exact average gradient than the point gradient is;
* on smooth models the error is second order (it falls about 4x when the step halves);
* where the rule table claims exactness (``avggrad.coverage``), ``g.delta`` is the actual loss
  change ``L(w + delta) - L(w)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import conformance

CASES = conformance.cases()


@pytest.mark.parametrize("name", list(CASES))
def test_library_model(name, x64):
  row = conformance.measure(name, CASES[name])
  rounding = 1e-6 if row.float32_inside else 1e-12  # flax.nnx attention: float32 softmax
  assert row.zero_step_error < rounding
  assert row.factorized_error < 0.2 * row.point_error
  if row.smooth:
    assert row.order > 1.8  # second order: the error falls ~4x per halving
  else:
    assert row.order > 1.2  # kinks: between first and second order (docs/factorization.md)
  if row.exact:
    assert row.loss_change_error < 1e4 * rounding
  else:
    assert row.fallbacks  # an inexact claim names the rules responsible
  expected_fallbacks = {"linen LSTM (nn.RNN)": ["scan"], "linen GRU (nn.RNN)": ["scan"],
                        "nnx Conv, max pool, tanh": ["reduce_window_max"]}
  assert row.fallbacks == expected_fallbacks.get(name, [])


def test_softmax_outside_the_loss_head(x64):
  """The reproduction of the softmax crash: a keepdims max-shift broadcast by size-1 axes."""
  import jax
  import jax.numpy as jnp

  import avggrad

  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  f = lambda w: jnp.sum(jax.nn.softmax(x @ w, axis=-1) ** 2)
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 8))
  errors = []
  for scale in (1e-1, 5e-2):
    d = scale * w
    value, g = avggrad.value_and_average_grad(f)(w, d)
    exact = avggrad.value_and_average_grad(f, estimator="quadrature", num_points=16)(w, d)[1]
    errors.append(float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact)))
    assert float(jnp.sum(g * d)) == pytest.approx(float(f(w + d) - f(w)), rel=1e-10)
  assert errors[0] / errors[1] > 3.5


AUDIT = {
    # a reduction with keepdims, broadcast back by a size-1 axis (LayerNorm's centring)
    "keepdims reduction": lambda w, x: jnp.sum(
        jnp.tanh((x @ w) - jnp.mean(x @ w, axis=-1, keepdims=True)) ** 2),
    # a held max-shift broadcast by broadcast_in_dim, cancelling as in a softmax over axis 0
    "broadcast held shift": lambda w, x: jnp.sum(jnp.tanh(
        jnp.exp(x @ w - jax.lax.stop_gradient(jnp.max(x @ w, axis=0))[None, :])
        / jnp.sum(jnp.exp(x @ w - jax.lax.stop_gradient(jnp.max(x @ w, axis=0))[None, :]),
                  axis=0, keepdims=True)) ** 2),
    # stop_gradient of a vector and of a scalar (not shifts), multiplying the moving value
    "stop_gradient shapes": lambda w, x: jnp.sum(
        jnp.tanh(x @ w) * jax.lax.stop_gradient(jnp.tanh(x @ w).sum(0))
        * jax.lax.stop_gradient(jnp.sum(w ** 2))),
    # a max-shift that does not cancel: held all the same (the documented limit)
    "non-cancelling max-shift": lambda w, x: jnp.sum(jnp.exp(
        x @ w - jax.lax.stop_gradient(jnp.max(x @ w, axis=0))[None, :]) ** 2),
}


@pytest.mark.parametrize("name", list(AUDIT))
def test_rule_table_audit_broadcasts_and_held_values(name, x64):
  """No shape errors with keepdims reductions, broadcast held values or stop_gradient of any
  shape, and delta = 0 is jax.grad. A stability shift (the stop_gradient of a max reduction) is
  held at its value at ``params``: exact where it cancels, as in softmax; a first-order error
  where it does not (docs/factorization.md, "Held values"). Other stop_gradient values move
  with the step: second order."""
  import avggrad

  x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  w = jax.random.normal(jax.random.PRNGKey(1), (5, 4)) / 3
  f = lambda p: AUDIT[name](p, x)
  direction = jax.random.normal(jax.random.PRNGKey(2), w.shape)
  _, g0 = avggrad.value_and_average_grad(f)(w, jnp.zeros_like(w))
  np.testing.assert_allclose(g0, jax.grad(f)(w), rtol=1e-12, atol=1e-14)
  errors, point = [], []
  for scale in (2e-2, 1e-2):
    d = scale * direction
    _, g = avggrad.value_and_average_grad(f)(w, d)
    exact = avggrad.value_and_average_grad(f, estimator="quadrature", num_points=16)(w, d)[1]
    errors.append(float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact)))
    point.append(float(jnp.linalg.norm(jax.grad(f)(w) - exact) / jnp.linalg.norm(exact)))
  order = np.log2(errors[0] / errors[1]) if errors[1] > 1e-12 else np.inf
  if name == "keepdims reduction":
    assert errors[0] < 1e-12  # exact along this path
  elif name == "non-cancelling max-shift":
    assert 0.8 < order < 1.2
  else:
    assert order > 1.8 and errors[1] < 0.2 * point[1]
