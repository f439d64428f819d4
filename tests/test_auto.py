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


def test_a_step_whose_far_end_is_not_finite_is_not_applied(x64):
  """On L = -w - log(2 - w) from 0, SGD(10) proposes u = 5, past the pole at 2: no step is
  taken and the scale halves (max_cut 2) until the far end is finite (scale 1/4: w = 1.25);
  the curvature there is the local u^2 L''(0) = 6.25 (no finite far end), then the secant of
  the step to 1.25; that step is taken at the controller's next scale."""
  loss = lambda w: jnp.sum(-w - jnp.log(2.0 - w))
  tx = avggrad.auto(optax.sgd(10.0))
  w = jnp.zeros(1)
  state = tx.init(w)
  for expected_scale in (0.5, 0.25):
    updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    assert float(updates[0]) == 0.0
    np.testing.assert_allclose(state.scale, expected_scale, rtol=1e-7)
  assert int(state.count) == 2  # the slope and curvature at w were finite and averaged
  np.testing.assert_allclose(state.curvature / (1 - 0.9**2), 6.25, rtol=1e-6)
  updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
  f = lambda v: -v - np.log(2.0 - v)
  p, secant = 2.5, 2.0 * (f(1.25) - f(0.0) + 0.25 * 2.5) / 0.25**2
  c_bar = (0.081 * 6.25 + 0.09 * 6.25 + 0.1 * secant) / (1 - 0.9**3)
  scale = 0.25 * (p / c_bar / 2.0 / 0.25) ** 0.1  # gain 0.1 toward s*/kappa, kappa 2
  np.testing.assert_allclose(state.scale, scale, rtol=1e-6)
  np.testing.assert_allclose(updates, [5.0 * scale], rtol=1e-6)  # the cut applies at once
  assert float(loss(w + updates)) < float(loss(w))


def test_an_uphill_direction_is_cut():
  """SGD with a negative rate on sum(w^2) goes uphill (p = -8 < 0 at w = (1, 1)): the scale
  halves every step and each step is taken at the halved scale, w -> w (1 + 2 s): the loss
  goes 2 -> 8 -> 18 -> 28.125 (it went to 1458 with a frozen scale)."""
  loss = lambda w: jnp.sum(w**2)
  tx = avggrad.auto(optax.sgd(-1.0), decay=0.0)
  w = jnp.ones(2)
  state = tx.init(w)
  for scale in (0.5, 0.25, 0.125):
    updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    np.testing.assert_allclose(updates, 2.0 * scale * w, rtol=1e-6)
    np.testing.assert_allclose(state.scale, scale, rtol=1e-6)
    w = w + updates
  np.testing.assert_allclose(loss(w), 2 * 3.75**2, rtol=1e-6)
  # A zero direction measures nothing: the scale stays.
  tx = avggrad.auto(optax.sgd(1.0), decay=0.0)
  _, state = tx.update(jnp.zeros(2), tx.init(w), w, value_fn=lambda v: jnp.sum(v**0))
  assert float(state.scale) == 1.0


def test_a_cut_is_capped_at_max_cut(x64):
  """At lr = g'g / g'Ag the one-step minimum is at scale s* = 1; aiming at s*/10 with gain 1
  would cut the scale tenfold, max_cut 2 halves it, and the step is taken at the halved scale
  (no "rises" cut: s = 1 < 2 s*)."""
  w, a, loss = _quadratic()
  g = jax.grad(loss)(w)
  lr = float(g @ g / (g @ a @ g))
  tx = avggrad.auto(optax.sgd(lr), target_ratio=10.0, decay=0.0, gain=1.0, max_cut=2.0)
  updates, state = tx.update(g, tx.init(w), w, value_fn=loss)
  np.testing.assert_allclose(state.scale, 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates, -0.5 * lr * g, rtol=1e-6)


def test_curvature_is_exact_where_a_loss_difference_is_rounding_noise():
  """In float32, L = 1000 + w'Aw/2 along a 1e-4 SGD step: the loss change (~1e-7) is below
  float32's resolution at 1000 (6e-5), yet the curvature c = lr^2 g'Ag (NumPy, float64)
  comes out to float32 precision (the second directional derivative); on a long step, whose
  loss change float32 resolves, the secant curvature of the step: on a quartic it differs
  from the local one, and matches its closed form."""
  w, a, quad = _quadratic()
  loss = lambda v: 1000.0 + quad(v)
  lr = 1e-4
  tx = avggrad.auto(optax.sgd(lr), decay=0.0)
  g = np.asarray(jax.grad(loss)(w), np.float64)
  _, state = tx.update(jnp.asarray(g, jnp.float32), tx.init(w), w, value_fn=loss)
  a64 = np.asarray(a, np.float64)
  np.testing.assert_allclose(state.curvature, lr**2 * g @ a64 @ g, rtol=1e-5)
  np.testing.assert_allclose(state.slope, lr * g @ g, rtol=1e-5)
  # L = w^4 / 4 at w = 1, SGD(0.5): u = -0.5; the local u^2 L'' = 0.75, the secant over the
  # step to 0.5: 2 (L(0.5) - L(1) - L'(1) u) = 2 (0.015625 - 0.25 + 0.5) = 0.53125.
  quartic = lambda v: jnp.sum(v**4) / 4.0
  tx = avggrad.auto(optax.sgd(0.5), decay=0.0)
  v = jnp.ones(1)
  _, state = tx.update(jax.grad(quartic)(v), tx.init(v), v, value_fn=quartic)
  np.testing.assert_allclose(state.curvature, 0.53125, rtol=1e-6)


def test_curvature_on_a_tanh_mlp_matches_float64():
  """At a 1e-5 rate on a tanh MLP, the float32 curvature of Adam's first step matches u'Hu
  computed in float64 by another route (forward over reverse: a Hessian-vector product)."""
  params, loss, batch = _mlp_problem()
  tx = avggrad.auto(avggrad.adam_baseline(1e-5), decay=0.0, far_batch_fraction=None)
  grad = jax.grad(loss)(params, batch)
  _, state = tx.update(grad, tx.init(params), params, value_fn=loss, batch=batch)
  inner = avggrad.adam_baseline(1e-5)
  u, _ = inner.update(grad, inner.init(params), params)
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), t)
    p64, u64, x64_ = to64(params), to64(u), jnp.asarray(np.asarray(batch[0], np.float64))
    f = lambda p: loss(p, (x64_, batch[1]))
    hu = jax.jvp(jax.grad(f), (p64,), (u64,))[1]
    expected = float(optax.tree.vdot(u64, hu))
  np.testing.assert_allclose(state.curvature, expected, rtol=1e-3)


def test_hyperparameters_are_checked():
  for kwargs, name in (({"decay": 1.0}, "decay"), ({"decay": -0.1}, "decay"),
                       ({"max_cut": 0.5}, "max_cut"), ({"max_growth": 0.9}, "max_growth"),
                       ({"target_ratio": 0.0}, "target_ratio"), ({"gain": 0.0}, "gain")):
    with pytest.raises(ValueError, match=f"{name} must be"):
      avggrad.auto(optax.sgd(1.0), **kwargs)
    with pytest.raises(ValueError, match=f"{name} must be"):
      avggrad.auto_adam(**kwargs)
  # Concrete values under inject_hyperparams are checked at init ...
  with pytest.raises(ValueError, match="decay must be"):
    optax.inject_hyperparams(avggrad.auto_adam)(decay=1.0).init(jnp.zeros(2))
  # ... and traced ones pass through (the same compiled step takes a new value).
  tx = optax.inject_hyperparams(avggrad.auto_adam)(decay=0.5, max_cut=2.0)
  loss = lambda w: jnp.sum((w - 1.0) ** 2)
  w = jnp.zeros(2)
  step = jax.jit(lambda s: tx.update(jax.grad(loss)(w), s, w, value_fn=loss))
  _, state = step(tx.init(w))
  assert np.isfinite(float(avggrad.current_scale(state)))


@pytest.mark.parametrize("wrap", ["masked", "multi_transform"])
def test_partial_parameters_are_refused_with_a_clear_error(wrap):
  params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  loss = lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)
  if wrap == "masked":
    tx = optax.masked(avggrad.auto_adam(), {"a": True, "b": False})
  else:
    tx = optax.multi_transform({"x": avggrad.auto_adam(), "y": optax.sgd(1.0)},
                               {"a": "x", "b": "y"})
  with pytest.raises(ValueError, match="avggrad.auto cannot run inside optax.masked"):
    tx.init(params)
  # update checks too (a state made elsewhere): before the chain check, which would blame
  # a transformation upstream.
  inner = avggrad.auto_adam()
  masked = {"a": params["a"], "b": optax.MaskedNode()}
  with pytest.raises(ValueError, match="avggrad.auto cannot run inside optax.masked"):
    inner.update(masked, inner.init({"a": params["a"]}), masked, value_fn=loss, grad=masked)


def test_current_scale():
  tx = avggrad.auto_adam()
  w = jnp.zeros(2)
  loss = lambda v: jnp.sum((v - 1.0) ** 2)
  _, state = tx.update(jax.grad(loss)(w), tx.init(w), w, value_fn=loss)
  assert avggrad.current_scale(state) == float(state.scale) != 1.0
  chained = optax.chain(optax.identity(), optax.inject_hyperparams(avggrad.auto_adam)())
  assert avggrad.current_scale(chained.init(w)) == 1.0
  assert avggrad.current_scale(optax.adam(1e-3).init(w)) is None


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


def test_the_loop_records_the_scale_at_every_evaluation():
  """training.train and sweep.sweep record auto's scale at each evaluation (a sweep: each
  run's own, the same as that run trained alone) and at the end; other optimizers: none."""
  import dataclasses
  from avggrad import data, sweep, training
  train_data = data.load("fashion_mnist_small", "train", limit=400)
  config = training.TrainConfig(optimizer="auto-adam", depth=2, width=16, steps=20,
                                eval_every=10, batch_size=32, eval_examples=100)
  single = training.train(config, train_data=train_data, progress=False)
  assert [e["step"] for e in single.evals] == [0, 10, 20]
  assert single.evals[0]["scale"] == 1.0 and single.evals[1]["scale"] != 1.0
  assert single.evals[-1]["scale"] == single.scale
  runs = sweep.sweep(config, [1e-3, 1e-2], [0], train_data=train_data, progress=False)
  finals = {lr: run.evals[-1]["scale"] for (lr, _), run in runs.items()}
  assert finals[1e-3] != finals[1e-2]
  np.testing.assert_allclose(finals[1e-3], single.scale, rtol=1e-3)
  plain = training.train(dataclasses.replace(config, optimizer="adam"), train_data=train_data,
                         progress=False)
  assert plain.scale is None and all("scale" not in e for e in plain.evals)


def _one_step(inner, loss, w0, **options):
  tx = avggrad.auto(inner, decay=0.0, **options)
  params = jnp.asarray(w0, jnp.float32)
  state = tx.init(params)
  updates, state = tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
  return float(updates), state


def test_a_scale_past_twice_the_parabola_minimum_is_cut_to_the_aim_at_once():
  """On 0.5 w^2 from w = 1, SGD at rate 4 gives the direction u = -4: slope p = 4 and
  curvature c = 16 per unit scale, so the minimum is at s* = 0.25 and the aim at s*/2 = 0.125.
  The scale 1 lies past 2 s* (the step raises the loss), so the scale drops to the aim at once
  (not by the rate-limited move, 0.812) and this step is taken at it: w moves by 0.125 x -4."""
  update, state = _one_step(optax.sgd(4.0), lambda w: 0.5 * w ** 2, 1.0)
  np.testing.assert_allclose(float(state.scale), 0.125, rtol=1e-5)
  np.testing.assert_allclose(update, -0.5, rtol=1e-5)


def test_without_curvature_a_descent_direction_grows_by_max_growth():
  """On the linear loss -w (slope 1, curvature 0 along SGD's direction) nothing bounds the
  step: the scale grows by max_growth (1.2 by default) and this step is taken at the old
  scale."""
  update, state = _one_step(optax.sgd(1.0), lambda w: -w, 0.0)
  np.testing.assert_allclose(float(state.scale), 1.2, rtol=1e-6)
  np.testing.assert_allclose(update, 1.0, rtol=1e-6)
  _, state = _one_step(optax.sgd(1.0), lambda w: -w, 0.0, max_growth=1.5)
  np.testing.assert_allclose(float(state.scale), 1.5, rtol=1e-6)


def test_a_step_that_measured_nothing_is_not_counted():
  """``count`` counts measured steps (it sets the averages' bias correction): a loss that is
  NaN at the point gives no measurement, no step, and no count."""
  update, state = _one_step(optax.sgd(1.0), lambda w: jnp.sqrt(w), -1.0)
  assert int(state.count) == 0
  assert update == 0.0
  _, state = _one_step(optax.sgd(1.0), lambda w: (w - 3.0) ** 2, 1.0)
  assert int(state.count) == 1
