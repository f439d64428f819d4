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
