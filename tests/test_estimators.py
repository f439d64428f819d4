"""The estimators against closed forms, quadrature and their own error orders."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import avggrad
from tests import helpers

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "exp": jnp.exp,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "selu": jax.nn.selu,
    "log_cosh": lambda x: jnp.log(jnp.cosh(x)),
    "cube": lambda x: x**3,
    "inverse_square": lambda x: 1.0 / (1.0 + x**2),
    "sqrt": lambda x: jnp.sqrt(x * x + 1.0),
}


def _separable_problem(n: int, seed: int, dtype):
  rng = np.random.default_rng(seed)
  a = jnp.asarray(rng.normal(size=n) * 2, dtype)
  b = jnp.asarray(rng.normal(size=n), dtype)
  w = jnp.asarray(rng.normal(size=n), dtype)
  # steps from 1e-6 to 3, both signs, and some exact zeros
  d = rng.normal(size=n) * np.logspace(-6, 0.5, n)
  d[::17] = 0.0
  return a, b, w, jnp.asarray(d, dtype)


_SELU_SCALE, _SELU_ALPHA = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717
_ld_sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))

# The same functions in NumPy, evaluated in extended precision (np.longdouble) for references.
LONG_DOUBLE = {
    "tanh": np.tanh,
    "sin": np.sin,
    "exp": np.exp,
    "sigmoid": _ld_sigmoid,
    "softplus": lambda x: np.logaddexp(x, np.longdouble(0)),
    "relu": lambda x: np.maximum(x, 0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x * _ld_sigmoid(x),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(x)),
    "log_cosh": lambda x: np.log(np.cosh(x)),
    "cube": lambda x: x**3,
    "inverse_square": lambda x: 1 / (1 + x**2),
    "sqrt": lambda x: np.sqrt(x * x + 1),
}


def _separable_average(name, a, b, w, d):
  """Closed form (phi(w + d) - phi(w)) / d for phi(v) = sigma(a v + b), differenced in
  extended precision; phi'(w) from jax.grad where d == 0."""
  ld = lambda t: np.asarray(t, np.longdouble)
  sigma = LONG_DOUBLE[name]
  a_, b_, w_, d_ = ld(a), ld(b), ld(w), ld(d)
  with np.errstate(invalid="ignore", divide="ignore"):
    quotient = (sigma(a_ * (w_ + d_) + b_) - sigma(a_ * w_ + b_)) / d_
  derivative = jax.grad(lambda v: jnp.sum(ACTIVATIONS[name](a * v + b)))(w)
  return np.where(d_ == 0, np.asarray(derivative, np.longdouble), quotient).astype(np.float64)


@pytest.mark.parametrize("name", ["tanh", "sin", "exp", "sigmoid", "softplus", "cube"])
def test_quadrature_matches_closed_form_of_separable_loss(x64, name):
  sigma = ACTIVATIONS[name]
  a, b, w, d = _separable_problem(60, 0, jnp.float64)
  d = jnp.clip(d, -0.5, 0.5)  # 8 nodes are exact to 1e-5 on this range
  loss = lambda v: jnp.sum(sigma(a * v + b))
  _, g = avggrad.value_and_average_grad(loss, estimator="quadrature", num_points=8)(w, d)
  exact = _separable_average(name, a, b, w, d)
  np.testing.assert_allclose(g, exact, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_factorized_is_exact_on_separable_loss(x64, name):
  """sum_i sigma(a_i w_i + b_i) is one chain per coordinate: the secants multiply exactly."""
  sigma = ACTIVATIONS[name]
  a, b, w, d = _separable_problem(200, 1, jnp.float64)
  loss = lambda v: jnp.sum(sigma(a * v + b))
  value, g = jax.jit(avggrad.value_and_average_grad(loss))(w, d)
  exact = _separable_average(name, a, b, w, d)
  np.testing.assert_allclose(value, loss(w), rtol=1e-14)
  np.testing.assert_allclose(g, exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "exp", "softplus", "sqrt", "log_cosh"])
def test_factorized_float32_has_no_cancellation_at_tiny_steps(name):
  """With steps of 1e-7 the naive difference quotient loses every digit in float32."""
  sigma = ACTIVATIONS[name]
  w = jnp.linspace(-4.0, 4.0, 41, dtype=jnp.float32)
  d = jnp.full_like(w, 1e-7)
  loss = lambda v: jnp.sum(sigma(v))
  _, g = avggrad.value_and_average_grad(loss)(w, d)
  point = jax.vmap(jax.grad(sigma))(w)
  np.testing.assert_allclose(g, point, rtol=2e-5, atol=1e-7)
  naive = (sigma(w + d) - sigma(w)) / d
  assert np.max(np.abs(naive - point)) > 100 * np.max(np.abs(g - point))


@pytest.mark.parametrize("num_points", [1, 2, 3, 5])
def test_quadrature_exact_for_polynomials_up_to_degree_2k(x64, num_points):
  rng = np.random.default_rng(num_points)
  w = jnp.asarray(rng.normal(size=5))
  d = jnp.asarray(rng.normal(size=5))
  c = jnp.asarray(rng.normal(size=5))
  fn = avggrad.value_and_average_grad(
      lambda v, p: jnp.sum(c * v**p), estimator="quadrature", num_points=num_points
  )
  for degree in range(1, 2 * num_points + 2):
    _, g = fn(w, d, degree)
    exact = c * ((w + d) ** degree - w**degree) / d
    error = float(jnp.max(jnp.abs(g - exact) / jnp.abs(exact)))
    if degree <= 2 * num_points:
      assert error < 1e-12, (degree, error)
    else:  # one degree more and the rule is no longer exact
      assert error > 1e-9, (degree, error)


def test_trapezoid_exact_for_quadratics_only(x64):
  rng = np.random.default_rng(0)
  m = rng.normal(size=(6, 6))
  a = jnp.asarray(m @ m.T)
  b = jnp.asarray(rng.normal(size=6))
  w = jnp.asarray(rng.normal(size=6))
  d = jnp.asarray(rng.normal(size=6))
  quadratic = lambda v: 0.5 * v @ a @ v + b @ v
  _, g = avggrad.value_and_average_grad(quadratic, estimator="trapezoid")(w, d)
  np.testing.assert_allclose(g, a @ (w + 0.5 * d) + b, rtol=1e-12)
  cubic = lambda v: jnp.sum(v**3)
  _, g = avggrad.value_and_average_grad(cubic, estimator="trapezoid")(w, d)
  exact = ((w + d) ** 3 - w**3) / d
  assert float(jnp.max(jnp.abs(g - exact))) > 1e-3


def _mlp_problem(act, dtype=jnp.float64, depth=3, width=12):
  key = jax.random.PRNGKey(0)
  params = helpers.mlp_params(key, [6] + [width] * depth + [4], dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6), dtype)
  y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 4)
  loss = helpers.classification_loss(functools.partial(helpers.mlp_apply, act=act), x, y)
  return params, loss


def _cnn_problem(dtype=jnp.float64, pool="max"):
  params = helpers.cnn_params(jax.random.PRNGKey(0), dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 8, 1), dtype)
  y = jax.random.randint(jax.random.PRNGKey(2), (8,), 0, 3)
  apply = functools.partial(helpers.cnn_apply, pool=pool)
  return params, helpers.classification_loss(apply, x, y)


@pytest.mark.parametrize("estimator", avggrad.ESTIMATORS)
@pytest.mark.parametrize("act", ["tanh", "relu", "elu", "sigmoid", "gelu"])
def test_zero_step_gives_the_point_gradient(estimator, act):
  params, loss = _mlp_problem(ACTIVATIONS[act], jnp.float32)
  zero = jax.tree.map(jnp.zeros_like, params)
  value, g = avggrad.value_and_average_grad(loss, estimator=estimator)(params, zero)
  ref_value, ref_g = jax.value_and_grad(loss)(params)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_zero_step_cnn(x64):
  params, loss = _cnn_problem()
  zero = jax.tree.map(jnp.zeros_like, params)
  for estimator in avggrad.ESTIMATORS:
    _, g = avggrad.value_and_average_grad(loss, estimator=estimator)(params, zero)
    assert helpers.rel_error(g, jax.grad(loss)(params)) < 1e-12


@pytest.mark.parametrize("problem", ["mlp", "cnn"])
def test_factorized_error_is_second_order(x64, problem):
  """Halving the step cuts the factorized error ~4x and the point gradient's ~2x.

  (Smooth networks: with max-pooling or relu the few units that switch over a short step
  make the error ratios jumpy, though still far below the point gradient's.)
  """
  if problem == "mlp":
    params, loss = _mlp_problem(jnp.tanh)
  else:
    params, loss = _cnn_problem(pool="avg")
  direction = helpers.random_like(jax.random.PRNGKey(3), params)
  exact_fn = jax.jit(avggrad.value_and_average_grad(loss, estimator="quadrature", num_points=16))
  fact_fn = jax.jit(avggrad.value_and_average_grad(loss))
  point = jax.grad(loss)(params)
  fact_errors, point_errors = [], []
  for scale in [0.04, 0.02, 0.01]:
    delta = jax.tree.map(lambda d: scale * d, direction)
    _, exact = exact_fn(params, delta)
    _, fact = fact_fn(params, delta)
    fact_errors.append(helpers.rel_error(fact, exact))
    point_errors.append(helpers.rel_error(point, exact))
  fact_ratios = np.array(fact_errors[:-1]) / np.array(fact_errors[1:])
  point_ratios = np.array(point_errors[:-1]) / np.array(point_errors[1:])
  assert np.all(fact_ratios > 3.0) and np.all(fact_ratios < 5.0), fact_errors
  assert np.all(point_ratios > 1.6) and np.all(point_ratios < 2.4), point_errors
  assert fact_errors[-1] < point_errors[-1] / 10


@pytest.mark.parametrize("act", ["tanh", "relu", "elu", "sigmoid", "softplus"])
def test_factorized_reproduces_the_actual_loss_change(x64, act):
  """Every averaged factor maps its input change to its output change exactly, so
  avg_grad . delta = L(w + delta) - L(w), as for the exact average, even for long steps."""
  params, loss = _mlp_problem(ACTIVATIONS[act])
  delta = helpers.random_like(jax.random.PRNGKey(4), params, scale=0.5)
  value, g = avggrad.value_and_average_grad(loss)(params, delta)
  change = loss(optax.apply_updates(params, delta)) - value
  predicted = optax.tree.vdot(g, delta)
  np.testing.assert_allclose(predicted, change, rtol=1e-9)
  first_order = optax.tree.vdot(jax.grad(loss)(params), delta)
  assert abs(first_order - change) > 1e-3 * abs(change)


def test_factorized_beats_trapezoid_on_deep_tanh_mlp(x64):
  params, loss = _mlp_problem(jnp.tanh, depth=6, width=16)
  delta = jax.tree.map(lambda p: 0.02 * jnp.sign(p), params)
  _, exact = avggrad.value_and_average_grad(loss, estimator="quadrature", num_points=16)(
      params, delta
  )
  _, fact = avggrad.value_and_average_grad(loss)(params, delta)
  _, trap = avggrad.value_and_average_grad(loss, estimator="trapezoid")(params, delta)
  assert helpers.rel_error(fact, exact) < helpers.rel_error(trap, exact)


def test_has_aux_returns_aux_at_params():
  params, loss = _mlp_problem(jnp.tanh, jnp.float32)

  def with_aux(p):
    value = loss(p)
    return value, {"double": 2 * value}

  delta = helpers.random_like(jax.random.PRNGKey(5), params, scale=0.01)
  for estimator in avggrad.ESTIMATORS:
    (value, aux), g = avggrad.value_and_average_grad(
        with_aux, estimator=estimator, has_aux=True
    )(params, delta)
    _, g_plain = avggrad.value_and_average_grad(loss, estimator=estimator)(params, delta)
    np.testing.assert_allclose(aux["double"], 2 * loss(params), rtol=1e-6)
    assert helpers.rel_error(g, g_plain) < 1e-6


def test_extra_arguments_are_held_fixed_and_vmap_over_examples():
  params, _ = _mlp_problem(jnp.tanh, jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6))
  y = jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 4)

  def loss(p, xb, yb, *, scale=1.0):
    logits = helpers.mlp_apply(p, xb, jnp.tanh)
    return scale * optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  delta = helpers.random_like(jax.random.PRNGKey(5), params, scale=0.05)
  fn = avggrad.value_and_average_grad(loss)
  per_example = jax.jit(jax.vmap(fn, in_axes=(None, None, 0, 0)))(
      params, delta, x[:, None], y[:, None]
  )
  for i in [0, 7, 15]:
    value, g = fn(params, delta, x[i : i + 1], y[i : i + 1])
    np.testing.assert_allclose(per_example[0][i], value, rtol=1e-5)
    assert helpers.rel_error(jax.tree.map(lambda t: t[i], per_example[1]), g) < 1e-5
  mean_of_examples = jax.tree.map(lambda t: t.mean(0), per_example[1])
  _, batch = fn(params, delta, x, y)
  assert helpers.rel_error(mean_of_examples, batch) < 1e-5
  _, scaled = fn(params, delta, x, y, scale=3.0)
  assert helpers.rel_error(scaled, jax.tree.map(lambda t: 3 * t, batch)) < 1e-5


def _scan_mlp_loss(stack, x):
  def body(h, w):
    return jnp.tanh(h @ w), None

  h, _ = jax.lax.scan(body, x, stack)
  return jnp.sum(h**2)


@jax.custom_vjp
def _custom_sin(x):
  return jnp.sin(x)


_custom_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))


@pytest.mark.parametrize("kind", ["jit", "checkpoint", "scan", "custom_vjp", "cond"])
def test_nested_and_control_flow(x64, kind):
  """Inlined calls keep second-order accuracy; opaque ones fall back to the midpoint."""
  w = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8)) / np.sqrt(8)
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
  if kind == "jit":
    loss = jax.jit(lambda s: jnp.sum(jnp.tanh(jnp.tanh(x @ s[0]) @ s[1]) ** 2))
  elif kind == "checkpoint":
    loss = lambda s: jnp.sum(jax.checkpoint(lambda t: jnp.tanh(x @ t[0]) @ t[1])(s) ** 2)
  elif kind == "scan":
    loss = lambda s: _scan_mlp_loss(s, x)
  elif kind == "custom_vjp":
    loss = lambda s: jnp.sum(_custom_sin(x @ s[0]) ** 2)
  else:
    loss = lambda s: jax.lax.cond(
        s[0, 0, 0] > -10, lambda t: jnp.sum(jnp.tanh(x @ t[0])), lambda t: 0.0, s
    )
  delta = 0.05 * jax.random.normal(jax.random.PRNGKey(3), w.shape)
  _, exact = avggrad.value_and_average_grad(loss, estimator="quadrature", num_points=16)(
      w, delta
  )
  _, fact = jax.jit(avggrad.value_and_average_grad(loss))(w, delta)
  point = jax.grad(loss)(w)
  assert helpers.rel_error(fact, exact) < helpers.rel_error(point, exact) / 5


def test_max_of_two_varying_inputs_is_exact(x64):
  """max/min of linearly moving inputs are piecewise linear; their averages are known."""
  w = jnp.array([1.0, -1.0, 0.5, 2.0])
  d = jnp.array([-3.0, 2.0, 0.25, -1.0])
  loss = lambda p: jnp.sum(jnp.maximum(p[:2], p[2:]) + jnp.minimum(p[:2], 2 * p[2:]))
  _, g = avggrad.value_and_average_grad(loss)(w, d)
  # max(p0, p2): p0 - p2 goes 0.5 -> -2.75, so p0 leads for tau < 2/13; min(p0, 2 p2) = p0
  # throughout. max(p1, p3) = p3 and min(p1, 2 p3) = p1 throughout.
  np.testing.assert_allclose(g, [1 + 2 / 13, 1.0, 11 / 13, 1.0], rtol=1e-12)
  np.testing.assert_allclose(g @ d, loss(w + d) - loss(w), rtol=1e-12)


def test_max_pool_switch_is_split_at_the_crossing(x64):
  w = jnp.array([[1.0, 0.0, 3.0, 2.0]])
  d = jnp.array([[-2.0, 2.0, 0.0, 0.0]])  # first window: the leader changes at tau = 1/4
  pool = lambda p: jax.lax.reduce_window(p, -jnp.inf, jax.lax.max, (1, 2), (1, 2), "VALID")
  weights = jnp.array([[5.0, 7.0]])
  _, g = avggrad.value_and_average_grad(lambda p: jnp.sum(weights * pool(p)))(w, d)
  np.testing.assert_allclose(g, [[5.0 / 4, 5.0 * 3 / 4, 7.0, 0.0]], rtol=1e-12)
  squared = lambda p: jnp.sum(pool(p) ** 2)
  _, g = avggrad.value_and_average_grad(squared)(w, d)
  np.testing.assert_allclose(jnp.vdot(g, d), squared(w + d) - squared(w), rtol=1e-12)


def test_select_with_a_switching_predicate_weighs_both_branches():
  w = jnp.array([1.0, -1.0])
  d = jnp.array([-2.0, -1.0])  # the first coordinate crosses zero, the second does not
  loss = lambda p: jnp.sum(jnp.where(p > 0, 3.0 * p, -p))
  _, g = avggrad.value_and_average_grad(loss)(w, d)
  np.testing.assert_allclose(g, [0.5 * 3.0 + 0.5 * -1.0, -1.0])


def test_softmax_cross_entropy_head_is_second_order(x64):
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  labels = jnp.arange(6) % 5
  loss = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).sum()
  direction = jax.random.normal(jax.random.PRNGKey(1), logits.shape)
  errors = []
  for scale in [0.2, 0.1]:
    d = scale * direction
    _, exact = avggrad.value_and_average_grad(loss, estimator="quadrature", num_points=16)(
        logits, d
    )
    _, fact = avggrad.value_and_average_grad(loss)(logits, d)
    errors.append(float(jnp.linalg.norm(fact - exact) / jnp.linalg.norm(exact)))
  assert 3.0 < errors[0] / errors[1] < 5.0, errors


def test_bfloat16_params_keep_their_dtype():
  params, loss = _mlp_problem(jnp.tanh, jnp.bfloat16)
  delta = jax.tree.map(lambda p: (0.01 * jnp.sign(p)).astype(p.dtype), params)
  for estimator in avggrad.ESTIMATORS:
    _, g = avggrad.value_and_average_grad(loss, estimator=estimator)(params, delta)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(g))
    point = jax.grad(loss)(params)
    assert helpers.rel_error(
        jax.tree.map(lambda t: t.astype(jnp.float32), g),
        jax.tree.map(lambda t: t.astype(jnp.float32), point),
    ) < 0.2


class TestErrors:

  def test_unknown_estimator(self):
    with pytest.raises(ValueError, match="Unknown estimator 'simpson'"):
      avggrad.value_and_average_grad(jnp.sum, estimator="simpson")

  @pytest.mark.parametrize("num_points", [0, -2])
  def test_num_points_must_be_positive(self, num_points):
    with pytest.raises(ValueError, match="num_points must be at least 1"):
      avggrad.value_and_average_grad(jnp.sum, estimator="quadrature", num_points=num_points)

  def test_num_points_must_be_an_integer(self):
    with pytest.raises(TypeError, match="num_points must be an integer"):
      avggrad.value_and_average_grad(jnp.sum, estimator="quadrature", num_points=2.5)

  def test_delta_tree_mismatch(self):
    fn = avggrad.value_and_average_grad(lambda p: jnp.sum(p["a"]))
    with pytest.raises(ValueError, match="same tree structure"):
      fn({"a": jnp.ones(3)}, {"b": jnp.ones(3)})

  def test_delta_shape_mismatch_names_the_leaf(self):
    fn = avggrad.value_and_average_grad(lambda p: jnp.sum(p["a"]))
    with pytest.raises(ValueError, match=r"delta\['a'\] has shape \(4,\).*\(3,\)"):
      fn({"a": jnp.ones(3)}, {"a": jnp.ones(4)})

  def test_non_scalar_loss(self):
    for estimator in avggrad.ESTIMATORS:
      fn = avggrad.value_and_average_grad(jnp.tanh, estimator=estimator)
      with pytest.raises(TypeError, match="scalar"):
        fn(jnp.ones(3), jnp.ones(3))

  def test_integer_params(self):
    fn = avggrad.value_and_average_grad(jnp.sum)
    with pytest.raises(TypeError, match="int32"):
      fn(jnp.ones(3, jnp.int32), jnp.ones(3, jnp.int32))

  def test_has_aux_needs_a_pair(self):
    fn = avggrad.value_and_average_grad(jnp.sum, has_aux=True)
    with pytest.raises(TypeError, match="pair"):
      fn(jnp.ones(3), jnp.ones(3))


def test_log_secant_with_ends_far_apart():
  """log of an input that falls from ~1 to ~1e-12 over the step (as inside logsumexp when
  the logits fall far over a long step): log(exp(w)) = w must have average derivative 1."""
  w = jnp.array([0.00098, 0.5, -3.0], jnp.float32)
  d = jnp.array([-27.16, 16.7, 1e-6], jnp.float32)
  _, g = avggrad.value_and_average_grad(lambda v: jnp.sum(jnp.log(jnp.exp(v))))(w, d)
  np.testing.assert_allclose(g, [1.0, 1.0, 1.0], rtol=1e-4)
  # log1p(expm1(w)) = w for w > 0; the input of log1p goes from ~1e-3 to ~2e7
  w = jnp.array([0.001, 17.0], jnp.float32)
  d = jnp.array([16.0, -16.999], jnp.float32)
  _, g = avggrad.value_and_average_grad(lambda v: jnp.sum(jnp.log1p(jnp.expm1(v))))(w, d)
  np.testing.assert_allclose(g, [1.0, 1.0], rtol=1e-3)
