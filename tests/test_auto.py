"""The self-tuning step length (avggrad.auto, avggrad.auto_adam): the controller against closed
forms, its invariances and the Optax conventions."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import avggrad
from tests import helpers


def _quadratic():
  a = jnp.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]])
  return jnp.array([1.0, -2.0, 0.5]), a, lambda w: 0.5 * w @ a @ w


def test_controller_scale_matches_the_closed_form_on_a_quadratic(x64):
  """On L = w'Aw/2 with SGD's direction u = -lr g: p = lr g.g, c = lr^2 g'Ag exactly (the
  parabola is the loss), and s* = p / c; one step with no averaging and gain 1 lands the
  scale on s*/kappa."""
  w, a, loss = _quadratic()
  w, a = w.astype(jnp.float64), a.astype(jnp.float64)
  lr, kappa = 1e-3, 0.8
  tx = avggrad.auto(optax.sgd(lr), target_ratio=kappa, decay=0.0, gain=1.0, max_growth=1e6,
                    max_cut=1e6)
  g = jax.grad(loss)(w)
  updates, state = tx.update(g, tx.init(w), w, value_fn=loss)
  np.testing.assert_allclose(updates, -lr * g, rtol=1e-12)  # the first step: scale 1
  p, c = lr * g @ g, lr**2 * g @ a @ g
  np.testing.assert_allclose(state.slope, p, rtol=1e-5)  # float32 state
  np.testing.assert_allclose(state.curvature, c, rtol=1e-5)
  np.testing.assert_allclose(state.scale, p / c / kappa, rtol=1e-5)


def test_controller_moves_in_log_space_with_capped_steps(x64):
  w, a, loss = _quadratic()
  tx = avggrad.auto(optax.sgd(1e-3), decay=0.0, gain=0.5, max_growth=1.5, max_cut=2.0)
  g = jax.grad(loss)(w)
  _, state = tx.update(g, tx.init(w), w, value_fn=loss)
  np.testing.assert_allclose(state.scale, 1.5, rtol=1e-6)  # s* ~ 500: growth capped at 1.5
  # Far too long a step (scale 1e4 > 2 s*): cut at once to s*/kappa.
  tx = avggrad.auto(optax.sgd(10.0), target_ratio=0.7, decay=0.0, gain=0.1)
  _, state = tx.update(g, tx.init(w), w, value_fn=loss)
  p, c = 10.0 * g @ g, 100.0 * g @ a @ g
  np.testing.assert_allclose(state.scale, p / c / 0.7, rtol=1e-5)


def test_averages_the_parts_not_the_ratio(x64):
  """Two steps with decay 0.5: s* is the ratio of the bias-corrected averages of p and c."""
  w, a, loss = _quadratic()
  tx = avggrad.auto(optax.sgd(1e-3), decay=0.5, gain=1.0, max_growth=1e6, max_cut=1e6,
                    target_ratio=1.0)
  state, ps, cs, scales = tx.init(w), [], [], []
  for _ in range(2):
    g = jax.grad(loss)(w)
    u = -1e-3 * g
    ps.append(-(g @ u))
    cs.append(u @ a @ u)
    updates, state = tx.update(g, state, w, value_fn=loss)
    w = w + updates
  p_bar = (0.5 * 0.5 * ps[0] + 0.5 * ps[1]) / 0.75
  c_bar = (0.5 * 0.5 * cs[0] + 0.5 * cs[1]) / 0.75
  np.testing.assert_allclose(state.scale, p_bar / c_bar, rtol=1e-4)


def _mlp_problem():
  params = helpers.mlp_params(jax.random.PRNGKey(0), [5, 16, 16, 3])
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 5))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 3)
  apply = functools.partial(helpers.mlp_apply, act=jnp.tanh)

  def loss(p, batch):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, batch[0]), batch[1]).mean()

  return params, loss, (x, y)


def _train(tx, loss, params, batch, steps=30):
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    grad = jax.grad(loss)(p, batch)
    updates, s = tx.update(grad, s, p, value_fn=loss, batch=batch, grad=grad)
    return optax.apply_updates(p, updates), s

  scales = []
  for _ in range(steps):
    params, state = step(params, state)
    scales.append(float(state.scale))
  return params, np.array(scales)


def test_scale_is_invariant_to_multiplying_the_loss_by_10():
  params, loss, batch = _mlp_problem()
  ten = lambda p, batch: 10.0 * loss(p, batch)
  p1, s1 = _train(avggrad.auto_adam(eps=0.0), loss, params, batch)
  p10, s10 = _train(avggrad.auto_adam(eps=0.0), ten, params, batch)
  np.testing.assert_allclose(s1, s10, rtol=1e-3)
  assert helpers.rel_error(p1, p10) < 1e-3
  assert s1[-1] > 2.0  # the scale did move (from 1)


def test_auto_adam_trains_from_scales_three_decades_apart():
  params, loss, batch = _mlp_problem()
  initial = float(loss(params, batch))
  finals = {}
  for lr in (1e-5, 1e-4, 1e-3, 1e-2):
    p, scales = _train(avggrad.auto_adam(lr), loss, params, batch, steps=150)
    finals[lr] = float(loss(p, batch))
    assert finals[lr] < 0.5 * initial, (lr, finals[lr], scales[-1])
  # Adam at a fixed 1e-5 barely moves in the same budget: the controller did the work.
  p, _ = _train(avggrad.auto(avggrad.adam_baseline(1e-5), max_growth=1.0), loss, params, batch,
                steps=150)
  assert float(loss(p, batch)) > 0.9 * initial


def test_auto_adam_under_jit_and_inject_hyperparams():
  params, loss, batch = _mlp_problem()
  tx = optax.inject_hyperparams(avggrad.auto_adam)(learning_rate=1e-3, target_ratio=0.7)
  state = tx.init(params)
  grad = jax.grad(loss)(params, batch)
  step = jax.jit(lambda p, s: tx.update(grad, s, p, value_fn=loss, batch=batch))

  def direct(**kwargs):
    opt = avggrad.auto_adam(**kwargs)
    s = opt.init(params)
    return jax.jit(lambda p, s: opt.update(grad, s, p, value_fn=loss, batch=batch))(params, s)

  u_a, s_a = step(params, state)
  u_d, s_d = direct(learning_rate=1e-3, target_ratio=0.7)
  assert helpers.rel_error(u_a, u_d) < 1e-5  # the rate as a traced float32 vs a constant
  np.testing.assert_allclose(s_a.inner_state.scale, s_d.scale, rtol=1e-5)
  state.hyperparams["target_ratio"] = jnp.asarray(0.35)
  _, s_b = step(params, state)  # the same compiled step, a new target
  _, s_e = direct(learning_rate=1e-3, target_ratio=0.35)
  np.testing.assert_allclose(s_b.inner_state.scale, s_e.scale, rtol=1e-5)


def test_measures_on_a_quarter_of_the_batch_when_given_it():
  params, loss, batch = _mlp_problem()
  quarter = jax.tree.map(lambda x: x[::4], batch)
  grad = jax.grad(loss)(params, batch)
  whole = avggrad.auto_adam(far_batch_fraction=None, decay=0.0)
  auto_ = avggrad.auto_adam(decay=0.0)
  closed = avggrad.auto_adam(far_batch_fraction=None, decay=0.0)
  _, s_auto = auto_.update(grad, auto_.init(params), params, value_fn=loss, batch=batch)
  _, s_quarter = closed.update(grad, closed.init(params), params,
                               value_fn=lambda p: loss(p, quarter))
  _, s_whole = whole.update(grad, whole.init(params), params, value_fn=loss, batch=batch)
  np.testing.assert_allclose(s_auto.slope, s_quarter.slope, rtol=1e-5)
  assert abs(float(s_auto.slope) - float(s_whole.slope)) > 1e-4 * abs(float(s_whole.slope))


def test_errors_name_the_problem():
  params, loss, batch = _mlp_problem()
  tx = avggrad.auto_adam()
  grad = jax.grad(loss)(params, batch)
  with pytest.raises(TypeError, match="value_fn"):
    tx.update(grad, tx.init(params), params)
  with pytest.raises(ValueError, match="no parameter named `batch`"):
    tx.update(grad, tx.init(params), params, value_fn=lambda p, b: loss(p, b), batch=batch)
  with pytest.raises(ValueError, match="before it in the chain"):
    chain = optax.chain(optax.clip_by_global_norm(1e-3), tx)
    chain.update(grad, chain.init(params), params, value_fn=loss, batch=batch, grad=grad)


def test_cli_train_shows_the_scale(capsys):
  import json as json_lib
  from avggrad import cli
  assert cli.main(["train", "--optimizer", "auto-adam", "--depth", "2", "--width", "8",
                   "--steps", "20", "--eval-every", "10", "--limit", "256",
                   "--no-progress"]) == 0
  out = json_lib.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["status"] == "ok" and out["scale"] > 0 and out["scale"] != 1.0
