"""avggrad.linen.TrainState: Flax's TrainState whose apply_gradients passes value_fn."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax.training import train_state

import avggrad
from avggrad.linen import TrainState
from tests import helpers


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = nn.tanh(nn.Dense(16)(x))
    return nn.Dense(3)(x)


def _setup(tx):
  x = jax.random.normal(jax.random.PRNGKey(0), (32, 5))
  y = jax.random.randint(jax.random.PRNGKey(1), (32,), 0, 3)
  net = _MLP()
  params = net.init(jax.random.PRNGKey(2), x)["params"]

  def value_fn(p):
    return optax.softmax_cross_entropy_with_integer_labels(net.apply({"params": p}, x), y).mean()

  return TrainState.create(apply_fn=net.apply, params=params, tx=tx), value_fn


def test_apply_gradients_is_tx_update_with_value_fn():
  tx = avggrad.adam(1e-2)
  state, value_fn = _setup(tx)
  params, opt_state = state.params, state.opt_state
  for _ in range(3):
    grads = jax.grad(value_fn)(state.params)
    state = jax.jit(lambda s, g: s.apply_gradients(grads=g, value_fn=value_fn))(state, grads)
    updates, opt_state = tx.update(jax.grad(value_fn)(params), opt_state, params,
                                   value_fn=value_fn)
    params = optax.apply_updates(params, updates)
  assert int(state.step) == 3
  assert helpers.rel_error(state.params, params) < 1e-5
  # the average gradient really was used: a same-core Adam ends elsewhere
  adam_state, _ = _setup(avggrad.adam_baseline(1e-2))
  for _ in range(3):
    adam_state = adam_state.apply_gradients(grads=jax.grad(value_fn)(adam_state.params))
  assert helpers.rel_error(state.params, adam_state.params) > 1e-4


def test_plain_optax_ignores_value_fn_and_flax_behaviour_is_kept():
  state, value_fn = _setup(optax.adam(1e-2))
  grads = jax.grad(value_fn)(state.params)
  ours = state.apply_gradients(grads=grads, value_fn=value_fn)
  flax_state = train_state.TrainState.create(apply_fn=state.apply_fn, params=state.params,
                                             tx=optax.adam(1e-2))
  theirs = flax_state.apply_gradients(grads=grads)
  assert helpers.rel_error(ours.params, theirs.params) == 0.0


def test_average_gradient_without_value_fn_says_what_is_missing():
  state, value_fn = _setup(avggrad.adam(1e-2))
  with pytest.raises(TypeError, match="needs the keyword argument value_fn"):
    state.apply_gradients(grads=jax.grad(value_fn)(state.params))
