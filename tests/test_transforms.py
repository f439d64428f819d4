"""The Optax transformations and aliases: semantics, conventions, errors and convergence."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import avggrad
from tests import helpers


def _problem(dtype=jnp.float32, depth=4, width=16, n=64, seed=0):
  params = helpers.mlp_params(jax.random.PRNGKey(seed), [5] + [width] * depth + [3], dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (n, 5), dtype)
  y = jax.random.randint(jax.random.PRNGKey(2), (n,), 0, 3)
  loss = helpers.classification_loss(functools.partial(helpers.mlp_apply, act=jnp.tanh), x, y)
  return params, loss


def _step(tx, params, state, loss):
  grads = jax.grad(loss)(params)
  updates, state = tx.update(grads, state, params, value_fn=loss)
  return optax.apply_updates(params, updates), updates, state


def _tree_close(a, b, rtol=1e-5):
  assert helpers.rel_error(a, b) < rtol


def test_scale_by_average_gradient_uses_the_previous_applied_update():
  params, loss = _problem()
  lr = 0.05
  tx = optax.chain(
      avggrad.scale_by_average_gradient(span=2.0, estimator="factorized", combine="replace"),
      optax.scale_by_rms(),
      optax.scale_by_learning_rate(lr),
  )
  plain = optax.chain(optax.scale_by_rms(), optax.scale_by_learning_rate(lr))
  state, plain_state = tx.init(params), plain.init(params)
  # First step: no previous update, the point gradient passes through.
  p1, u1, state = _step(tx, params, state, loss)
  _, plain_u1, plain_state = _step(plain, params, plain_state, loss)
  _tree_close(u1, plain_u1)
  # Second step: the average gradient over [p1, p1 + 2 (p1 - p0)], by the estimator itself.
  _, u2, state = _step(tx, p1, state, loss)
  delta = jax.tree.map(lambda a, b: 2.0 * (a - b), p1, params)
  _, avg = avggrad.value_and_average_grad(loss)(p1, delta)
  expected, _ = plain.update(avg, plain_state, p1)
  _tree_close(u2, expected)
  assert helpers.rel_error(u2, plain.update(jax.grad(loss)(p1), plain_state, p1)[0]) > 1e-4


@pytest.mark.parametrize("estimator", avggrad.ESTIMATORS)
def test_average_gradient_predicted_range_matches_manual_computation(estimator):
  params, loss = _problem()
  inner = avggrad.rmsprop_baseline(0.01)
  tx = avggrad.average_gradient(inner, estimator=estimator, span=3.0, combine="replace")
  state = tx.init(params)
  _, updates, state = _step(tx, params, state, loss)
  inner_state = inner.init(params)
  predicted, _ = inner.update(jax.grad(loss)(params), inner_state, params)
  delta = jax.tree.map(lambda d: 3.0 * d, predicted)
  _, avg = avggrad.value_and_average_grad(loss, estimator=estimator)(params, delta)
  expected, expected_state = inner.update(avg, inner_state, params)
  _tree_close(updates, expected)
  _tree_close(state.inner_state[0].nu, expected_state[0].nu)


def test_previous_range_in_the_alias_matches_the_chain():
  params, loss = _problem()
  tx = avggrad.rmsprop(0.01, momentum=None, update_range="previous", combine="replace",
                       span=1.0, accumulate="average", estimator="factorized")
  chain = optax.chain(avggrad.scale_by_average_gradient(estimator="factorized", combine="replace"),
                      avggrad.rmsprop_baseline(0.01))
  s1, s2 = tx.init(params), chain.init(params)
  p1, p2 = params, params
  for _ in range(3):
    p1, u1, s1 = _step(tx, p1, s1, loss)
    p2, u2, s2 = _step(chain, p2, s2, loss)
    _tree_close(u1, u2)


def test_accumulate_point_feeds_the_point_gradient_to_the_second_moment():
  params, loss = _problem()
  decay = 0.8
  for accumulate in avggrad.ACCUMULATORS:
    tx = avggrad.rmsprop(0.05, decay=decay, eps=1e-7, eps_in_sqrt=False, accumulate=accumulate,
                         estimator="trapezoid", combine="replace", span=1.0)
    state = tx.init(params)
    _, updates, state = _step(tx, params, state, loss)
    g = jax.grad(loss)(params)
    nu = state.inner_state[0].nu
    predicted = jax.tree.map(lambda t: -0.05 * t / (jnp.sqrt((1 - decay) * t**2) + 1e-7), g)
    _, avg = avggrad.value_and_average_grad(loss, estimator="trapezoid")(params, predicted)
    fed = g if accumulate == "point" else avg
    _tree_close(nu, jax.tree.map(lambda t: (1 - decay) * t**2, fed))
    expected = jax.tree.map(
        lambda a, n: -0.05 * a / (jnp.sqrt(n) + 1e-7), avg, nu
    )
    _tree_close(updates, expected, rtol=1e-4)


def test_adam_accumulate_point_keeps_the_first_moment_on_the_average():
  params, loss = _problem()
  tx = avggrad.adam(0.01, accumulate="point", estimator="trapezoid", combine="replace",
                    span=1.0)
  state = tx.init(params)
  _, _, state = _step(tx, params, state, loss)
  _, _, state = _step(tx, params, state, loss)  # the same params: the same g twice
  adam_state = state.inner_state[0]
  assert isinstance(adam_state, avggrad.ScaleByAdamState)
  g = jax.grad(loss)(params)
  nu_expected = jax.tree.map(lambda t: (1 - 0.999) * t**2 * (1 + 0.999), g)
  _tree_close(adam_state.nu, nu_expected)
  assert helpers.rel_error(adam_state.mu, jax.tree.map(lambda t: 0.19 * t, g)) > 1e-4


def test_accelerate_only_enlarges_steps():
  g = {"a": jnp.array([1.0, 1.0, -1.0, 2.0, -3.0])}
  gbar = {"a": jnp.array([2.0, 0.5, -4.0, -1.0, -3.5])}
  combined = avggrad.COMBINES["accelerate"](g, gbar)
  np.testing.assert_allclose(combined["a"], [2.0, 1.0, -4.0, 2.0, -3.5])
  assert avggrad.COMBINES["replace"](g, gbar) is gbar
  no_flip = avggrad.COMBINES["no_flip"](g, gbar)
  np.testing.assert_allclose(no_flip["a"], [2.0, 0.5, -4.0, 2.0, -3.5])


def test_accelerate_in_the_transform_never_shortens_a_coordinate():
  params, loss = _problem()
  tx = avggrad.average_gradient(optax.identity(), combine="accelerate", span=8.0)
  # The identity inner makes the predicted range the raw gradient: a long step.
  state = tx.init(params)
  g = jax.grad(loss)(params)
  combined, _ = tx.update(g, state, params, value_fn=loss)
  for c, p in zip(jax.tree.leaves(combined), jax.tree.leaves(g)):
    assert bool(jnp.all(jnp.abs(c) >= jnp.abs(p))) and bool(jnp.all(c * p >= 0))
  assert helpers.rel_error(combined, g) > 1e-3


def _assert_same_trajectory(ours, theirs, steps=3, rtol=1e-6):
  """Both optimizers make the same updates, step after step, from the same start."""
  params, loss = _problem()
  s1, s2 = ours.init(params), theirs.init(params)
  p1, p2 = params, params
  for _ in range(steps):
    p1, u1, s1 = _step(ours, p1, s1, loss)
    p2, u2, s2 = _step(theirs, p2, s2, loss)
    _tree_close(u1, u2, rtol=rtol)


def test_rmsprop_baseline_is_rmsprop_with_eps_outside_the_root():
  _assert_same_trajectory(avggrad.rmsprop_baseline(0.01, decay=0.9, eps=1e-7, eps_in_sqrt=False),
                          optax.rmsprop(0.01, decay=0.9, eps=1e-7, eps_in_sqrt=False))


@pytest.mark.parametrize("options", [{}, dict(centered=True), dict(bias_correction=True),
                                     dict(centered=True, bias_correction=True, momentum=0.9),
                                     dict(eps_in_sqrt=False, nesterov=True, momentum=0.5)])
def test_rmsprop_baseline_is_optax_rmsprop_with_its_arguments(options):
  # Optax's centered form divides by rsqrt: the same math, rounded differently.
  _assert_same_trajectory(avggrad.rmsprop_baseline(0.01, **options),
                          optax.rmsprop(0.01, **options),
                          rtol=1e-4 if options.get("centered") else 1e-6)


@pytest.mark.parametrize("options", [{}, dict(nesterov=True), dict(mu_dtype=jnp.bfloat16),
                                     dict(eps_root=1e-8, b1=0.8)])
def test_adam_baseline_is_optax_adam_with_its_arguments(options):
  ours, theirs = avggrad.adam_baseline(0.01, **options), optax.adam(0.01, **options)
  _assert_same_trajectory(ours, theirs)
  if "mu_dtype" in options:
    assert ours.init(jnp.ones(3)).__getitem__(0).mu.dtype == jnp.bfloat16


def test_eps_placement_matters_for_tiny_gradients():
  """optax.rmsprop's default puts eps under the root: an effective eps of sqrt(1e-7)."""
  g = jnp.full((3,), 1e-5)
  outside = avggrad.rmsprop_baseline(1.0, eps=1e-7, eps_in_sqrt=False)
  inside = avggrad.rmsprop_baseline(1.0, eps=1e-7)
  u_out, _ = outside.update(g, outside.init(g))
  u_in, _ = inside.update(g, inside.init(g))
  u_optax, _ = optax.rmsprop(1.0, eps=1e-7).update(g, optax.rmsprop(1.0, eps=1e-7).init(g))
  np.testing.assert_allclose(u_in, u_optax, rtol=1e-6)
  assert float(jnp.abs(u_out[0])) > 50 * float(jnp.abs(u_in[0]))


@pytest.mark.parametrize(
    "alias, baseline, options",
    [
        (avggrad.rmsprop, avggrad.rmsprop_baseline,
         dict(estimator="trapezoid", update_range="predicted", span=8.0, accumulate="point",
              combine="accelerate")),
        (avggrad.adam, avggrad.adam_baseline,
         dict(estimator="trapezoid", update_range="predicted", span=8.0, accumulate="average",
              combine="accelerate", far_batch_fraction="auto")),
    ],
)
def test_alias_defaults_are_the_documented_ones(alias, baseline, options):
  """The defaults the benchmarks chose (see the aliases' docstrings) are what the aliases do."""
  _assert_same_trajectory(alias(0.01), avggrad.average_gradient(baseline(0.01), **options))


def test_rmsprop_momentum_zero_is_the_momentum_free_form():
  """Grid specs pin the momentum-free form as ``momentum=0`` (the registry's default is 0.9)."""
  _assert_same_trajectory(avggrad.rmsprop(0.01, momentum=0.0), avggrad.rmsprop(0.01, momentum=None))


def test_adam_baseline_matches_optax_adam():
  _assert_same_trajectory(avggrad.adam_baseline(0.01), optax.adam(0.01))


@pytest.mark.parametrize(
    "make",
    [
        lambda: avggrad.rmsprop(3e-3),
        lambda: avggrad.rmsprop(3e-3, combine="replace", span=1.0, accumulate="average",
                                estimator="factorized"),
        lambda: avggrad.adam(3e-3),
        lambda: avggrad.rmsprop(3e-3, update_range="previous", accumulate="point"),
        lambda: avggrad.adam(3e-3, combine="accelerate", span=4.0),
        lambda: avggrad.rmsprop(3e-3, estimator="quadrature", num_points=2),
    ],
)
def test_jit_train_step_and_convergence_on_a_deep_tanh_mlp(make):
  params, loss = _problem(depth=6, width=16, n=128)
  for tx in (make(), avggrad.rmsprop_baseline(3e-3)):
    state = tx.init(params)

    @jax.jit
    def train_step(p, s):
      value, grads = jax.value_and_grad(loss)(p)
      updates, s = tx.update(grads, s, p, value_fn=loss)
      return optax.apply_updates(p, updates), s, value

    p = params
    initial = float(loss(params))
    for _ in range(150):
      p, state, _ = train_step(p, state)
    assert float(loss(p)) < 0.6 * initial


def test_learning_rate_schedule():
  params, loss = _problem()
  schedule = optax.linear_schedule(0.1, 0.0, transition_steps=2)
  # Without momentum (which would carry the earlier steps past the schedule's zero).
  tx = avggrad.rmsprop(schedule, update_range="previous", momentum=None)
  state = tx.init(params)
  p, u0, state = _step(tx, params, state, loss)
  p, u1, state = _step(tx, p, state, loss)
  _, u2, state = _step(tx, p, state, loss)
  assert float(optax.tree.norm(u2)) == 0.0  # the schedule reached zero at step 2
  assert float(optax.tree.norm(u0)) > 0.0 and float(optax.tree.norm(u1)) > 0.0


def test_inject_hyperparams():
  params, loss = _problem()
  tx = optax.inject_hyperparams(avggrad.rmsprop)(learning_rate=0.01, span=2.0)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))

  def direct(**kwargs):  # compiled too: eager float32 reassociation would blur the check
    opt = avggrad.rmsprop(**kwargs)
    return jax.jit(lambda p: opt.update(jax.grad(loss)(p), opt.init(p), p,
                                        value_fn=loss)[0])(params)

  u_a, _ = step(params, state)
  _tree_close(u_a, direct(learning_rate=0.01, span=2.0))
  state.hyperparams["learning_rate"] = jnp.asarray(0.02)
  state.hyperparams["span"] = jnp.asarray(4.0)
  u_b, _ = step(params, state)  # the same compiled step, new hyperparameters
  _tree_close(u_b, direct(learning_rate=0.02, span=4.0))
  assert helpers.rel_error(u_b, u_a) > 1e-2
  # The quadrature's node count is structural: it must be declared static.
  quad = optax.inject_hyperparams(avggrad.rmsprop, static_args=("num_points",))(
      learning_rate=0.01, estimator="quadrature", num_points=2
  )
  qs = quad.init(params)
  jax.jit(lambda p, s: quad.update(jax.grad(loss)(p), s, p, value_fn=loss))(params, qs)
  bad = optax.inject_hyperparams(avggrad.rmsprop)(
      learning_rate=0.01, estimator="quadrature", num_points=2
  )
  bs = bad.init(params)
  with pytest.raises(TypeError, match="static_args"):
    jax.jit(lambda p, s: bad.update(jax.grad(loss)(p), s, p, value_fn=loss))(params, bs)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("update_range", avggrad.RANGES)
def test_dtypes_are_preserved(dtype, update_range):
  params, loss = _problem(dtype=dtype)
  for tx in (
      avggrad.rmsprop(0.01, update_range=update_range),
      avggrad.adam(0.01, update_range=update_range, combine="accelerate"),
  ):
    state = tx.init(params)
    p, updates, state = _step(tx, params, state, loss)
    p, updates, state = _step(tx, p, state, loss)
    for leaf in jax.tree.leaves((p, updates)):
      assert leaf.dtype == dtype
    for leaf in jax.tree.leaves(state):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == dtype


def test_value_fn_receives_matching_extra_args_and_others_are_ignored():
  params, _ = _problem()
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 5))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 3)

  def loss(p, batch):
    xb, yb = batch
    logits = helpers.mlp_apply(p, xb, jnp.tanh)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  tx = avggrad.rmsprop(0.01)
  state = tx.init(params)
  grads = jax.grad(loss)(params, (x, y))
  u1, _ = tx.update(grads, state, params, value_fn=loss, batch=(x, y), unrelated=123)
  closed = lambda p: loss(p, (x, y))
  u2, _ = tx.update(grads, state, params, value_fn=closed)
  _tree_close(u1, u2, rtol=1e-6)


class TestErrors:

  @pytest.mark.parametrize(
      "tx",
      [
          lambda: avggrad.scale_by_average_gradient(),
          lambda: avggrad.rmsprop(0.1),
          lambda: avggrad.adam(0.1, update_range="previous"),
      ],
  )
  def test_missing_value_fn_and_params(self, tx):
    tx = tx()
    params = jnp.ones(3)
    state = tx.init(params)
    with pytest.raises(TypeError, match="value_fn"):
      tx.update(params, state, params)
    with pytest.raises(ValueError, match="params"):
      tx.update(params, state, value_fn=jnp.sum)

  def test_unknown_choices(self):
    with pytest.raises(ValueError, match="Unknown update_range 'next'"):
      avggrad.rmsprop(0.1, update_range="next")
    with pytest.raises(ValueError, match="Unknown accumulate"):
      avggrad.rmsprop(0.1, accumulate="both")
    with pytest.raises(ValueError, match="Unknown combine"):
      avggrad.adam(0.1, combine="max")
    with pytest.raises(ValueError, match="Unknown estimator"):
      avggrad.scale_by_average_gradient(estimator="midpoint")
    with pytest.raises(ValueError, match="num_points"):
      avggrad.rmsprop(0.1, estimator="quadrature", num_points=0)

  def test_accumulate_point_needs_a_moment_that_accepts_it(self):
    tx = avggrad.average_gradient(
        optax.chain(optax.scale_by_rms(), optax.scale_by_learning_rate(0.1)),
        accumulate="point",
    )
    with pytest.raises(ValueError, match="second_moment_updates"):
      tx.init(jnp.ones(3))

  def test_extra_args_are_ignored_by_baselines(self):
    params = jnp.array([1.0, -2.0, 3.0])
    grads = jnp.array([0.5, 0.1, -0.3])
    for tx in (avggrad.rmsprop_baseline(0.1), avggrad.adam_baseline(0.1)):
      plain, _ = tx.update(grads, tx.init(params), params)
      extra, _ = tx.update(grads, tx.init(params), params, value_fn=jnp.sum, anything=1)
      np.testing.assert_array_equal(plain, extra)
      assert float(jnp.abs(plain).min()) > 0  # a real update, not zeros on both sides

  def test_max_gain_below_one_is_refused(self):
    with pytest.raises(ValueError, match="max_gain must be at least 1"):
      avggrad.adam(0.1, max_gain=0.5)

  def test_combine_tables_are_read_only_and_combine_takes_a_callable(self):
    with pytest.raises(TypeError):
      avggrad.COMBINES["mine"] = lambda g, a: a
    with pytest.raises(TypeError):
      avggrad.PAPER_FORM["span"] = 2.0
    seen = []
    params, loss = _problem()
    tx = avggrad.adam(0.01, combine=lambda g, a: seen.append(1) or a)
    replace = avggrad.adam(0.01, combine="replace")
    u1, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, value_fn=loss)
    u2, _ = replace.update(jax.grad(loss)(params), replace.init(params), params, value_fn=loss)
    assert seen and helpers.rel_error(u1, u2) < 1e-6


@pytest.mark.parametrize("update_range", avggrad.RANGES)
def test_train_step_can_donate_params_and_state(update_range):
  """The state holds no buffer shared with params (donating both must work)."""
  params, loss = _problem()
  tx = avggrad.adam(0.01, update_range=update_range)
  state = tx.init(params)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(p, s):
    updates, s = tx.update(jax.grad(loss)(p), s, p, value_fn=loss)
    return optax.apply_updates(p, updates), s

  for _ in range(2):
    params, state = step(params, state)
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))


def test_non_finite_average_falls_back_to_the_point_gradient():
  loss = lambda w: jnp.sum(jnp.exp(60.0 * w))  # overflows float32 for w > ~1.5
  w = jnp.array([0.0, 0.0])
  g = jax.grad(loss)(w)
  tx = avggrad.average_gradient(optax.scale(2.0))  # predicted range: 2 g = [120, 120]
  updates, _ = tx.update(g, tx.init(w), w, value_fn=loss)
  np.testing.assert_allclose(updates, 2.0 * g)
  tx = avggrad.scale_by_average_gradient()
  state = avggrad.ScaleByAverageGradientState(prev_params=jnp.array([-3.0, 0.0]))
  updates, _ = tx.update(g, state, w, value_fn=loss)  # previous update [3, 0]: w + 3 overflows
  assert bool(jnp.all(jnp.isfinite(updates)))
  np.testing.assert_allclose(updates[0], g[0])
  np.testing.assert_allclose(updates[1], g[1])  # a zero step: the average is the gradient


def _batch_problem(n=48, seed=0):
  """A tanh MLP whose loss takes the minibatch: ``loss(params, batch)``."""
  params = helpers.mlp_params(jax.random.PRNGKey(seed), [5, 16, 16, 3])
  x = jax.random.normal(jax.random.PRNGKey(1), (n, 5))
  y = jax.random.randint(jax.random.PRNGKey(2), (n,), 0, 3)

  def loss(p, batch):
    xb, yb = batch
    logits = helpers.mlp_apply(p, xb, jnp.tanh)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  return params, loss, (x, y)


def test_far_batch_fraction_takes_the_far_end_on_every_kth_example():
  params, loss, batch = _batch_problem()
  lr, span = 0.05, 4.0
  inner = optax.sgd(lr)
  tx = avggrad.average_gradient(inner, estimator="trapezoid", span=span, combine="replace",
                                far_batch_fraction=0.25)
  g = jax.grad(loss)(params, batch)
  updates, _ = tx.update(g, tx.init(params), params, value_fn=loss, batch=batch)
  # Independently: the far end w - span lr g, on examples 0, 4, 8, ..., 44 of the 48.
  end = jax.tree.map(lambda p, d: p - span * lr * d, params, g)
  sub = jax.tree.map(lambda a: a[np.arange(0, 48, 4)], batch)
  far = jax.grad(loss)(end, sub)
  expected = jax.tree.map(lambda a, b: -lr * 0.5 * (a + b), g, far)
  _tree_close(updates, expected, rtol=1e-6)
  # The full-batch far end differs: the sub-batch is really used.
  full = jax.grad(loss)(end, batch)
  assert helpers.rel_error(far, full) > 1e-2
  # With the whole batch (fraction 1) it is the ordinary trapezoid rule.
  tx1 = avggrad.average_gradient(inner, estimator="trapezoid", span=span, combine="replace",
                                 far_batch_fraction=1)
  updates1, _ = tx1.update(g, tx1.init(params), params, value_fn=loss, batch=batch)
  _tree_close(updates1, jax.tree.map(lambda a, b: -lr * 0.5 * (a + b), g, full))


def test_far_batch_fraction_without_the_batch_warns_and_uses_the_full_loss():
  params, loss, batch = _batch_problem()
  closed = lambda p: loss(p, batch)  # the plain call: value_fn(params) only
  tx = avggrad.adam(1e-2, far_batch_fraction=0.25)
  full = avggrad.adam(1e-2)
  g = jax.grad(closed)(params)
  with pytest.warns(UserWarning, match="far_batch_fraction < 1 needs the minibatch"):
    updates, _ = tx.update(g, tx.init(params), params, value_fn=closed)
  expected, _ = full.update(g, full.init(params), params, value_fn=closed)
  _tree_close(updates, expected, rtol=1e-5)


def test_far_dtype_computes_the_far_end_in_lower_precision():
  params, loss, batch = _batch_problem()
  g = jax.grad(loss)(params, batch)
  low = avggrad.adam(1e-2, far_dtype="bfloat16")
  ref = avggrad.adam(1e-2)
  u_low, _ = low.update(g, low.init(params), params, value_fn=loss, batch=batch)
  u_ref, _ = ref.update(g, ref.init(params), params, value_fn=loss, batch=batch)
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(u_low))
  err = helpers.rel_error(u_low, u_ref)
  assert 0 < err < 0.05  # bfloat16 rounding, not a different algorithm


def test_max_gain_bounds_the_acceleration():
  g = jnp.array([1.0, -1.0, 1.0, 2.0])
  gbar = jnp.array([5.0, -1.5, -3.0, 1.0])
  from avggrad import transforms
  np.testing.assert_allclose(transforms._accelerate(g, gbar), [5.0, -1.5, 1.0, 2.0])
  np.testing.assert_allclose(transforms._accelerate(g, gbar, max_gain=2.0), [2.0, -1.5, 1.0, 2.0])
  # A traced bound below 1 (inject_hyperparams cannot be checked at build time) acts as 1:
  # accelerate still never shortens a step.
  np.testing.assert_allclose(jax.jit(transforms._accelerate)(g, gbar, jnp.asarray(0.5)),
                             [1.0, -1.0, 1.0, 2.0])
  # inside the optimizer, under inject_hyperparams
  tx = optax.inject_hyperparams(avggrad.adam)(learning_rate=1e-2, max_gain=2.0)
  params, loss = _problem()
  _, updates, _ = _step(tx, params, tx.init(params), loss)
  assert all(jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("options,message", [
    (dict(far_batch_fraction=0.5, estimator="factorized"), "need estimator='trapezoid'"),
    (dict(far_batch_fraction=0.5, update_range="previous"), "update_range='predicted'"),
    (dict(far_batch_fraction=0.0), r"must be in \(0, 1\]"),
    (dict(far_batch_fraction=1.5), r"must be in \(0, 1\]"),
    (dict(far_dtype="int8"), "must be a floating dtype"),
    (dict(max_gain=2.0, combine="replace"), "max_gain bounds combine='accelerate'"),
])
def test_far_end_and_gain_options_reject_bad_combinations(options, message):
  with pytest.raises(ValueError, match=message):
    avggrad.adam(1e-3, **options)


@pytest.mark.parametrize("wrap", [
    lambda tx: optax.masked(tx, {"w": True, "b": False}),
    lambda tx: optax.multi_transform({"a": tx, "b": optax.sgd(1e-3)}, {"w": "a", "b": "b"}),
])
@pytest.mark.parametrize("make", [lambda: avggrad.adam(1e-3), lambda: avggrad.rmsprop(1e-3),
                                  lambda: optax.chain(avggrad.scale_by_average_gradient(),
                                                      optax.scale_by_adam())])
def test_inside_out_compositions_fail_at_init_naming_the_working_one(wrap, make):
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
  with pytest.raises(ValueError, match=r"Wrap the other way round: avggrad.average_gradient"):
    wrap(make()).init(params)


def test_auto_far_batch_is_a_quarter_with_the_batch_and_the_whole_loss_without():
  params, loss, batch = _batch_problem()
  g = jax.grad(loss)(params, batch)

  def update(tx, **kwargs):
    return tx.update(g, tx.init(params), params, **kwargs)[0]

  with_batch = update(avggrad.adam(1e-2), value_fn=loss, batch=batch)
  quarter = update(avggrad.adam(1e-2, far_batch_fraction=0.25), value_fn=loss, batch=batch)
  _tree_close(with_batch, quarter, rtol=1e-6)
  closed = lambda p: loss(p, batch)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the default warns about nothing
    without = update(avggrad.adam(1e-2), value_fn=closed)
  whole = update(avggrad.adam(1e-2, far_batch_fraction=None), value_fn=closed)
  _tree_close(without, whole, rtol=1e-6)
  assert helpers.rel_error(with_batch, without) > 1e-6  # (a first Adam step is ~ lr sign(g))
  # with an estimator that evaluates the whole range, "auto" is simply the whole batch
  fact = update(avggrad.adam(1e-2, estimator="factorized"), value_fn=loss, batch=batch)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(fact))


def test_trapezoid_averages_the_incoming_updates_after_a_clip():
  """One far-end path: the trapezoid rule averages the updates it receives (here clipped by
  an earlier transform) with the gradient at the far end, on the whole batch or a part."""
  params, loss, batch = _batch_problem()
  lr, span = 0.05, 2.0
  g = jax.grad(loss)(params, batch)
  clipped = jax.tree.map(lambda x: jnp.clip(x, -1e-3, 1e-3), g)
  for fraction, sub in [(1, slice(None)), (0.5, np.arange(0, 48, 2))]:
    tx = avggrad.average_gradient(optax.sgd(lr), span=span, combine="replace",
                                  far_batch_fraction=fraction)
    updates, _ = tx.update(clipped, tx.init(params), params, value_fn=loss, batch=batch)
    end = jax.tree.map(lambda p, d: p - span * lr * d, params, clipped)
    far = jax.grad(loss)(end, jax.tree.map(lambda a: a[sub], batch))
    _tree_close(updates, jax.tree.map(lambda a, b: -lr * 0.5 * (a + b), clipped, far),
                rtol=1e-6)


def test_wrapper_defaults_are_the_recommended_form_and_the_paper_is_one_argument_away():
  params, loss, batch = _batch_problem()
  g = jax.grad(loss)(params, batch)
  wrapped = avggrad.average_gradient(avggrad.adam_baseline(1e-2))
  alias = avggrad.adam(1e-2)
  u1, _ = wrapped.update(g, wrapped.init(params), params, value_fn=loss, batch=batch)
  u2, _ = alias.update(g, alias.init(params), params, value_fn=loss, batch=batch)
  _tree_close(u1, u2, rtol=1e-7)
  inner = avggrad.rmsprop_baseline(1e-2)
  paper = avggrad.average_gradient(inner, **avggrad.PAPER_FORM)
  spelled = avggrad.average_gradient(inner, estimator="factorized", span=1.0,
                                     combine="replace", accumulate="average")
  u3, _ = paper.update(g, paper.init(params), params, value_fn=loss, batch=batch)
  u4, _ = spelled.update(g, spelled.init(params), params, value_fn=loss, batch=batch)
  _tree_close(u3, u4, rtol=1e-7)
  assert helpers.rel_error(u3, u1) > 1e-3


def test_far_batch_fraction_must_be_one_over_a_whole_number():
  with pytest.raises(ValueError, match="1/k for a whole number k"):
    avggrad.adam(1e-3, far_batch_fraction=0.3)


def _counting(inner, calls):
  """``inner`` whose ``update`` counts its calls in ``calls["n"]`` (at trace time under jit)."""
  inner = optax.with_extra_args_support(inner)

  def update(updates, state, params=None, **extra_args):
    calls["n"] += 1
    return inner.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(inner.init, update)


@pytest.mark.parametrize("make_inner", [lambda: optax.contrib.muon(1e-2),
                                        lambda: avggrad.adam_baseline(1e-2)],
                         ids=["muon", "adam"])
@pytest.mark.parametrize("update_range, per_step", [("predicted", 2), ("previous", 1)])
def test_inner_update_runs_once_for_the_step_and_once_for_a_predicted_range(
    make_inner, update_range, per_step):
  """Issue 31, item 4: ``inner``'s update (Muon's Newton-Schulz) runs once for the step, and
  once more only to predict the range (``update_range="predicted"``): no other call, in a
  jitted step or eager, whatever the estimator; the prediction's state is discarded."""
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (6, 4)) / 3, "b": jnp.zeros(4)}
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
  loss = lambda p: jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)
  for estimator in ("trapezoid", "factorized"):
    calls = {"n": 0}
    tx = avggrad.average_gradient(_counting(make_inner(), calls), estimator=estimator,
                                  update_range=update_range)
    state = tx.init(params)
    step = jax.jit(lambda s, p: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))
    _, state = step(state, params)
    assert calls["n"] == per_step
    _, state = step(state, params)  # compiled: no new trace
    assert calls["n"] == per_step
    tx.update(jax.grad(loss)(params), state, params, value_fn=loss)
    assert calls["n"] == 2 * per_step
    # The prediction's state is discarded: every step counter of inner moved once a step.
    counts = optax.tree.get_all_with_path(state.inner_state, "count")
    assert counts and all(int(c) == 2 for _, c in counts)


def test_registry_avg_muon_newton_schulz_calls_per_step(monkeypatch):
  """Issue 31, item 4: the registry's ``avg-muon`` (the previous range, its default) calls
  Muon's update once a step, hence Newton-Schulz once per matrix, as plain ``muon``; with
  ``update_range=predicted`` twice (benchmarks/NOTES.md, "Newton-Schulz once a step"). Its
  updates are ``average_gradient(muon, update_range="previous")``'s."""
  from avggrad import optimizers
  from optax.contrib import _muon
  calls, orthogonalised = {"n": 0}, {"n": 0}
  real_muon, real_ns = optax.contrib.muon, _muon.orthogonalize_via_newton_schulz

  def ns(*args, **kwargs):
    orthogonalised["n"] += 1
    return real_ns(*args, **kwargs)

  monkeypatch.setattr(optax.contrib, "muon", lambda *a, **k: _counting(real_muon(*a, **k), calls))
  monkeypatch.setattr(_muon, "orthogonalize_via_newton_schulz", ns)
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (6, 4)) / 3, "b": jnp.zeros(4)}
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
  loss = lambda p: jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)
  per_step = {}
  for spec in ("muon", "avg-muon", "avg-muon:update_range=predicted"):
    calls["n"] = orthogonalised["n"] = 0
    tx = optimizers.make_optimizer(spec, 1e-2)
    state = tx.init(params)
    step = jax.jit(lambda s, p, tx=tx: tx.update(jax.grad(loss)(p), s, p, value_fn=loss))
    _, state = step(state, params)
    per_step[spec] = (calls["n"], orthogonalised["n"])
  # (inner update calls, Newton-Schulz calls) in one step; one matrix, "w".
  assert per_step == {"muon": (1, 1), "avg-muon": (1, 1), "avg-muon:update_range=predicted": (2, 2)}
  monkeypatch.undo()
  registry = optimizers.make_optimizer("avg-muon", 1e-2)
  by_hand = avggrad.average_gradient(optax.contrib.muon(1e-2, consistent_rms=0.2),
                                     update_range="previous")
  s1, s2, p1, p2 = registry.init(params), by_hand.init(params), params, params
  for _ in range(3):
    u1, s1 = registry.update(jax.grad(loss)(p1), s1, p1, value_fn=loss)
    u2, s2 = by_hand.update(jax.grad(loss)(p2), s2, p2, value_fn=loss)
    _tree_close(u1, u2, rtol=1e-6)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
