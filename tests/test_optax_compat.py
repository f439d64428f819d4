"""Drop-in for Optax users: optax's own alias-test protocol on every exported optimizer, and
the compositions a user of ``optax.chain`` writes on the first day (clipping, weight decay,
``value_fn`` conventions)."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import avggrad
from avggrad import optimizers as optimizers_lib
from tests import helpers

# Every exported optimizer, its Optax namesake, and the rate optax's alias_test.py uses for it.
ALIASES = {
    "adam": (avggrad.adam, optax.adam, 1e-1),
    "adam_baseline": (avggrad.adam_baseline, optax.adam, 1e-1),
    "rmsprop": (avggrad.rmsprop, optax.rmsprop, 5e-3),
    "rmsprop_baseline": (avggrad.rmsprop_baseline, optax.rmsprop, 5e-3),
}


def _parabola():
  final = jnp.array([1.0, -1.0, 1.0])
  return jnp.array([-1.0, 10.0, 1.0]), final, lambda p: jnp.sum(jnp.square(p - final))


def _rosenbrock():
  a, b = 1.0, 100.0
  return (jnp.zeros(2), jnp.array([a, a**2]),
          lambda p: jnp.square(a - p[0]) + b * jnp.square(p[1] - p[0] ** 2))


def _optimize(opt, problem, steps=10_000):
  """optax's alias_test loop: ``steps`` jitted steps (one compiled scan here)."""
  init, _, objective = problem()
  state = opt.init(init)

  def step(carry, _):
    params, state = carry
    value, grad = jax.value_and_grad(objective)(params)
    updates, state = opt.update(grad, state, params, value_fn=objective, value=value, grad=grad)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))((init, state))
  return params


@pytest.mark.parametrize("problem", [_parabola, _rosenbrock], ids=["parabola", "rosenbrock"])
@pytest.mark.parametrize("name", ALIASES)
def test_optax_alias_protocol(name, problem):
  """optax's alias_test: 10,000 steps at the namesake's test rate end within 3e-2 of the
  optimum, wherever the Optax namesake does."""
  ours, theirs, lr = ALIASES[name]
  _, final, _ = problem()
  optax_params = _optimize(theirs(lr), problem)
  assert np.allclose(optax_params, final, rtol=3e-2, atol=3e-2)  # the protocol itself holds
  np.testing.assert_allclose(_optimize(ours(lr), problem), final, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", ALIASES)
def test_alias_under_inject_hyperparams_lax_cond_and_multisteps(name):
  make, _, _ = ALIASES[name]
  init, final, objective = _parabola()
  for opt in (optax.inject_hyperparams(make)(learning_rate=0.05),
              optax.MultiSteps(make(0.05), every_k_schedule=2)):
    state = opt.init(init)

    @jax.jit
    def step(params, state, go):
      grad = jax.grad(objective)(params)
      def apply(state):
        return opt.update(grad, state, params, value_fn=objective)
      def skip(state):
        return jax.tree.map(jnp.zeros_like, grad), state
      updates, state = jax.lax.cond(go, apply, skip, state)
      return optax.apply_updates(params, updates), state

    params = init
    for i in range(400):
      params, state = step(params, state, i % 3 != 2)
    assert float(objective(params)) < 0.5 * float(objective(init))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", ALIASES)
def test_alias_preserves_parameter_dtypes(name, dtype):
  make, _, lr = ALIASES[name]
  params = {"a": jnp.ones(3, dtype), "b": jnp.ones(2, jnp.float32)}
  loss = lambda p: jnp.sum(jnp.square(p["a"].astype(jnp.float32))) + jnp.sum(p["b"] ** 2)
  opt = make(lr)
  updates, state = jax.jit(lambda p, s: opt.update(jax.grad(loss)(p), s, p, value_fn=loss))(
      params, opt.init(params))
  assert updates["a"].dtype == dtype and updates["b"].dtype == jnp.float32


@pytest.mark.parametrize("name", ALIASES)
def test_extra_arguments_leave_the_updates_unchanged(name):
  """Arguments an optimizer does not use (Optax's convention) change nothing."""
  make, _, lr = ALIASES[name]
  init, _, objective = _parabola()
  opt = make(lr)
  grad = jax.grad(objective)(init)
  plain, _ = opt.update(grad, opt.init(init), init, value_fn=objective)
  extra, _ = opt.update(grad, opt.init(init), init, value_fn=objective, anything=1,
                        value=objective(init), grad=grad)
  np.testing.assert_array_equal(plain, extra)


# --- clipping and weight decay: before the wrapper (refused) and inside it (honoured) -------


def _softmax_problem():
  """A 20x5 tanh softmax model whose raw gradient norm is about 1."""
  params = helpers.mlp_params(jax.random.PRNGKey(0), [20, 5], jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 20))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 5)
  apply = functools.partial(helpers.mlp_apply, act=jnp.tanh)
  return params, lambda p, batch: optax.softmax_cross_entropy_with_integer_labels(
      apply(p, batch[0]), batch[1]).mean(), (x, y)


UPSTREAM = {
    "clip_by_global_norm": lambda: optax.clip_by_global_norm(1e-3),
    "clip": lambda: optax.clip(1e-4),
    "add_decayed_weights": lambda: optax.add_decayed_weights(1e-2),
}


def _update_with_grad(tx, state, params, loss, batch, mode):
  """``tx.update(g, state, params, ..., grad=g)`` with the raw gradient ``g`` of ``loss``, as a
  training step passes it: ``"eager"`` (no jit), ``"jit"`` (the gradient computed inside the
  jitted step) or ``"jit_args"`` (the same array passed to the jitted step twice)."""
  def update(g, state, params, raw):
    return tx.update(g, state, params, value_fn=loss, batch=batch, grad=raw)

  if mode == "eager":
    g = jax.grad(loss)(params, batch)
    return update(g, state, params, g)
  if mode == "jit":
    def step(state, params):
      g = jax.grad(loss)(params, batch)
      return update(g, state, params, g)
    return jax.jit(step)(state, params)
  g = jax.grad(loss)(params, batch)
  return jax.jit(update)(g, state, params, g)


MODES = ("eager", "jit", "jit_args")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("upstream", UPSTREAM)
@pytest.mark.parametrize("wrapper", ["average_gradient", "adam", "scale_by_average_gradient"])
def test_a_transformation_before_the_wrapper_is_refused_with_the_right_order(upstream, wrapper,
                                                                            mode):
  params, loss, batch = _softmax_problem()
  inner = {"average_gradient": lambda: avggrad.average_gradient(optax.sgd(1.0),
                                                                far_batch_fraction=None),
           "adam": lambda: avggrad.adam(1e-2),
           "scale_by_average_gradient": avggrad.scale_by_average_gradient}[wrapper]()
  tx = optax.chain(UPSTREAM[upstream](), inner)
  with pytest.raises(ValueError, match=r"before it in the chain.*average_gradient\(optax.chain"):
    _update_with_grad(tx, tx.init(params), params, loss, batch, mode)
  # The same wrapper first in the chain (or alone) accepts the raw gradient.
  alone = optax.chain(inner)
  _update_with_grad(alone, alone.init(params), params, loss, batch, mode)


def _documented_compositions(params):
  """The compositions docs/guide.md lists as working (``optax.masked`` and
  ``optax.multi_transform`` inside the wrapper), and an identity before it."""
  lr = 1e-2
  mask = jax.tree.map(lambda x: x.ndim == 2, params)
  labels = jax.tree.map(lambda x: "adam" if x.ndim == 2 else "sgd", params)
  return {
      "MultiSteps": optax.MultiSteps(avggrad.adam(lr), every_k_schedule=2),
      "inject_hyperparams": optax.inject_hyperparams(avggrad.adam)(learning_rate=lr, span=8.0),
      "apply_if_finite": optax.apply_if_finite(avggrad.adam(lr), max_consecutive_errors=3),
      "masked": avggrad.average_gradient(optax.chain(
          avggrad.scale_by_adam(), optax.masked(optax.add_decayed_weights(1e-2), mask),
          optax.scale_by_learning_rate(lr))),
      "multi_transform": avggrad.average_gradient(optax.multi_transform(
          {"adam": optax.chain(avggrad.scale_by_adam(), optax.scale_by_learning_rate(lr)),
           "sgd": optax.sgd(lr)}, labels)),
      "chain_identity_first": optax.chain(optax.identity(), avggrad.adam(lr)),
  }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["MultiSteps", "inject_hyperparams", "apply_if_finite", "masked",
                                  "multi_transform", "chain_identity_first"])
def test_every_documented_composition_accepts_grad(name, mode):
  """``grad=`` passed to a documented composition raises nothing and changes nothing: two
  steps give the updates the same steps give without it."""
  params, loss, batch = _softmax_problem()
  tx = _documented_compositions(params)[name]
  with_grad, without = (tx.init(params), params), (tx.init(params), params)
  for _ in range(2):
    state, p = with_grad
    updates, state = _update_with_grad(tx, state, p, loss, batch, mode)
    with_grad = (state, optax.apply_updates(p, updates))
    state, p = without
    plain, state = tx.update(jax.grad(loss)(p, batch), state, p, value_fn=loss, batch=batch)
    without = (state, optax.apply_updates(p, plain))
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(updates)[0],
                               jax.flatten_util.ravel_pytree(plain)[0], rtol=1e-5, atol=1e-8)
  assert float(optax.tree.norm(plain)) > 0  # the last step moved (MultiSteps: the 2nd)


def test_grad_in_a_flax_nnx_optimizer_loop():
  """``nnx.Optimizer.update(model, grads, grad=grads, ...)`` (as docs/guide.md's step, with
  ``grad=``) trains as without it; a clip before the wrapper is still refused there."""
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(20, 16, rngs=rngs)
      self.head = nnx.Linear(16, 5, rngs=rngs)

    def __call__(self, x):
      return self.head(jnp.tanh(self.hidden(x)))

  _, _, (x, y) = _softmax_problem()

  def train(tx, pass_grad):
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
      graphdef, params, rest = nnx.split(model, nnx.Param, ...)

      def value_fn(p, batch):
        logits = nnx.merge(graphdef, p, rest)(batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

      loss, grads = jax.value_and_grad(value_fn)(params, (x, y))
      extra = {"grad": grads} if pass_grad else {}
      optimizer.update(model, grads, value_fn=value_fn, batch=(x, y), **extra)
      return loss

    return [float(step(model, optimizer)) for _ in range(5)]

  losses = train(avggrad.adam(1e-2), pass_grad=True)
  np.testing.assert_allclose(losses, train(avggrad.adam(1e-2), pass_grad=False), rtol=1e-6)
  assert losses[-1] < losses[0]
  with pytest.raises(ValueError, match="before it in the chain"):
    train(optax.chain(optax.clip_by_global_norm(1e-3), avggrad.adam(1e-2)), pass_grad=True)


@pytest.mark.parametrize("clip, bound", [
    (lambda c: optax.clip_by_global_norm(c), lambda u, c: float(optax.tree.norm(u)) <= c * 1.0001),
    (lambda c: optax.clip(c), lambda u, c: max(float(jnp.max(jnp.abs(x)))
                                               for x in jax.tree.leaves(u)) <= c * 1.0001),
], ids=["global_norm", "per_element"])
@pytest.mark.parametrize("c", [1e-3, 3e-2])
def test_clipping_inside_the_wrapper_bounds_every_update(clip, bound, c):
  """``average_gradient(optax.chain(clip, sgd(1)))``: the clip acts on the average gradient,
  so every update keeps to what it promises, whatever the far end (raw norm ~1)."""
  params, loss, batch = _softmax_problem()
  assert not bound(jax.grad(loss)(params, batch), c)  # the clip is active
  for combine in ("accelerate", "replace"):
    tx = avggrad.average_gradient(optax.chain(clip(c), optax.sgd(1.0)), combine=combine,
                                  far_batch_fraction=None)
    state, p = tx.init(params), params
    for _ in range(5):
      grad = jax.grad(loss)(p, batch)
      updates, state = tx.update(grad, state, p, value_fn=loss, batch=batch, grad=grad)
      assert bound(updates, c)
      p = optax.apply_updates(p, updates)


def test_clipping_inside_adam_keeps_the_first_moment_bounded():
  """The case the issue measured: Adam after a 1e-3 clip, its first moment stays below the
  clip (it reached 0.23 with the clip upstream and unseen by the far end)."""
  params, loss, batch = _softmax_problem()
  tx = avggrad.average_gradient(optax.chain(optax.clip_by_global_norm(1e-3),
                                            avggrad.adam_baseline(1e-2)))
  state, p = tx.init(params), params
  for _ in range(3):
    grad = jax.grad(loss)(p, batch)
    updates, state = tx.update(grad, state, p, value_fn=loss, batch=batch, grad=grad)
    p = optax.apply_updates(p, updates)
  adam_state = state.inner_state[1][0]
  assert isinstance(adam_state, avggrad.ScaleByAdamState)
  assert float(optax.tree.norm(adam_state.mu)) <= 1e-3 * 1.0001


def test_weight_decay_inside_the_wrapper_acts_in_full():
  """Weight decay inside acts on the average gradient whole: with a zero loss the update is
  exactly the decay (it was halved when placed upstream)."""
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  zero = lambda p: 0.0 * jnp.sum(p["w"])
  tx = avggrad.average_gradient(optax.chain(optax.add_decayed_weights(0.1), optax.sgd(1.0)),
                                combine="replace")
  grad = jax.grad(zero)(params)
  updates, _ = tx.update(grad, tx.init(params), params, value_fn=zero, grad=grad)
  np.testing.assert_allclose(updates["w"], -0.1 * params["w"], rtol=1e-6)


# --- value_fn conventions ---------------------------------------------------------------


def _batch_loss():
  params = {"w": jnp.ones((4, 2))}
  x = jnp.arange(32.0).reshape(8, 4) / 32

  def loss(p, batch):
    return jnp.mean(jnp.square(batch @ p["w"]))

  return params, x, loss


def named_b(p, b):
  return jnp.mean(jnp.square(b @ p["w"]))


@pytest.mark.parametrize("value_fn", [lambda p, b: jnp.mean(jnp.square(b @ p["w"])), named_b],
                         ids=["lambda", "def"])
@pytest.mark.parametrize("fraction", [None, 0.25, "auto"])
def test_a_value_fn_whose_batch_argument_has_another_name_is_a_clear_error(value_fn, fraction):
  params, x, _ = _batch_loss()
  tx = avggrad.adam(1e-2, far_batch_fraction=fraction)
  grad = jax.grad(value_fn)(params, x)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no misleading far-end warning before the error
    with pytest.raises(ValueError, match=r"no parameter named `batch`.*name that argument "
                                         r"`batch`.*close over the batch"):
      tx.update(grad, tx.init(params), params, value_fn=value_fn, batch=x)


def test_a_value_fn_needing_a_batch_that_is_not_passed_is_a_clear_error():
  params, x, loss = _batch_loss()
  tx = avggrad.adam(1e-2)
  with pytest.raises(ValueError, match=r"cannot fill value_fn's parameter\(s\) \['batch'\]"):
    tx.update(jax.grad(loss)(params, x), tx.init(params), params, value_fn=loss)
  # Closing over the batch, with no batch=, works.
  closed = lambda p: loss(p, x)
  tx.update(jax.grad(closed)(params), tx.init(params), params, value_fn=closed)


def test_muon_split_sends_embeddings_and_head_to_adamw():
  """The registry's muon-split: the hidden matrix gets Muon's Newton-Schulz update (what
  plain muon gives it), the head and the embedding get Muon's AdamW part (optax.adamw at the
  same rate, Nesterov as Muon's default, no weight decay), the bias too."""
  from avggrad import optimizers

  key = jax.random.PRNGKey(0)
  ks = jax.random.split(key, 8)
  params = {"embed": {"embedding": jax.random.normal(ks[0], (5, 4))},
            "hidden": [{"kernel": jax.random.normal(ks[1], (4, 4)),
                        "bias": jax.random.normal(ks[2], (4,))}],
            "head": {"kernel": jax.random.normal(ks[3], (4, 3))}}
  grads = jax.tree.map(lambda p, k: jax.random.normal(k, p.shape), params,
                       jax.tree.unflatten(jax.tree.structure(params), list(ks[4:8])))
  split = optimizers.make_optimizer("muon-split", 1e-2)
  updates, _ = split.update(grads, split.init(params), params)
  plain = optimizers.make_optimizer("muon", 1e-2)
  muon_updates, _ = plain.update(grads, plain.init(params), params)
  adamw = optax.adamw(1e-2, weight_decay=0.0, nesterov=True)  # muon's default nesterov=True
  adam_updates, _ = adamw.update(grads, adamw.init(params), params)
  np.testing.assert_allclose(updates["hidden"][0]["kernel"], muon_updates["hidden"][0]["kernel"],
                             rtol=1e-5)
  for part in (("embed", "embedding"), ("head", "kernel")):
    np.testing.assert_allclose(updates[part[0]][part[1]], adam_updates[part[0]][part[1]],
                               rtol=1e-5)
    assert not np.allclose(updates[part[0]][part[1]], muon_updates[part[0]][part[1]])
  np.testing.assert_allclose(updates["hidden"][0]["bias"], adam_updates["hidden"][0]["bias"],
                             rtol=1e-5)


def test_muon_split_orthogonalises_convolution_and_attention_kernels_as_matrices():
  """muon-split treats a convolution kernel (*window, in, out) as the (window*in, out) matrix
  and nnx.MultiHeadAttention's kernels as the (in, heads*head_dim) and (heads*head_dim, out)
  matrices they apply: each update equals plain Muon's on the reshaped matrix. The attention's
  2-D bias (heads, head_dim) and a norm scale take Muon's AdamW part."""
  from avggrad import optimizers

  ks = jax.random.split(jax.random.PRNGKey(1), 14)
  shapes = {"conv": {"kernel": (3, 3, 4, 8), "bias": (8,)},
            "attention": {"query": {"kernel": (8, 2, 4), "bias": (2, 4)},
                          "out": {"kernel": (2, 4, 8), "bias": (8,)}},
            "norm": {"scale": (8,)}}
  leaves, tree = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  params = jax.tree.unflatten(tree, [jax.random.normal(k, s) for k, s in zip(ks, leaves)])
  grads = jax.tree.unflatten(tree, [jax.random.normal(k, s)
                                    for k, s in zip(ks[len(leaves):], leaves)])
  split = optimizers.make_optimizer("muon-split", 1e-2)
  updates, _ = split.update(grads, split.init(params), params)
  matrices = {"conv": (36, 8), "query": (8, 8), "out": (8, 8)}
  picked = {"conv": lambda t: t["conv"]["kernel"],
            "query": lambda t: t["attention"]["query"]["kernel"],
            "out": lambda t: t["attention"]["out"]["kernel"]}
  plain = optimizers.make_optimizer("muon", 1e-2)
  for name, shape in matrices.items():
    g = {"w": picked[name](grads).reshape(shape)}
    p = {"w": picked[name](params).reshape(shape)}
    expected, _ = plain.update(g, plain.init(p), p)
    got = picked[name](updates)
    np.testing.assert_allclose(got.reshape(shape), expected["w"], rtol=1e-4, atol=1e-7)
    # Orthogonalised as one matrix: not the AdamW part's update.
    assert np.linalg.matrix_rank(np.asarray(got.reshape(shape)), tol=1e-6) == min(shape)
  adamw = optax.adamw(1e-2, weight_decay=0.0, nesterov=True)
  adam_updates, _ = adamw.update(grads, adamw.init(params), params)
  for get in (lambda t: t["attention"]["query"]["bias"], lambda t: t["norm"]["scale"],
              lambda t: t["conv"]["bias"]):
    np.testing.assert_allclose(get(updates), get(adam_updates), rtol=1e-5)


def test_muon_split_on_an_nnx_attention_state_orthogonalises_each_projection_as_one_matrix():
  """On an ``nnx.State`` (leaves are Variables, paths end in ``.value``) of
  nnx.MultiHeadAttention: query, key and value kernels (in, heads, head_dim) are each the
  (in, heads*head_dim) matrix (the value projection too: its module is named ``value``), the
  out kernel the (heads*head_dim, out) matrix; the 2-D biases take the AdamW part."""
  from flax import nnx

  from avggrad import optimizers

  attention = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False,
                                     rngs=nnx.Rngs(0))
  params = nnx.state(attention, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
  grads = jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])
  split = optimizers.make_optimizer("muon-split", 1e-2)
  updates, _ = split.update(grads, split.init(params), params)
  plain = optimizers.make_optimizer("muon", 1e-2)
  adamw = optax.adamw(1e-2, weight_decay=0.0, nesterov=True)
  adam_updates, _ = adamw.update(grads, adamw.init(params), params)
  for name in ("query", "key", "value", "out"):
    shape = (8, 8)
    g = {"w": grads[name]["kernel"].value.reshape(shape)}
    p = {"w": params[name]["kernel"].value.reshape(shape)}
    expected, _ = plain.update(g, plain.init(p), p)
    np.testing.assert_allclose(updates[name]["kernel"].value.reshape(shape), expected["w"],
                               rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(updates[name]["bias"].value, adam_updates[name]["bias"].value,
                               rtol=1e-5, err_msg=name)


def test_an_eager_clip_that_changes_the_gradient_by_half_a_percent_is_refused():
  """The eager comparison is exact: a clip that scales the gradient by 0.995 (inside any
  ``allclose`` tolerance one might be tempted to use) still changed it, and is refused."""
  params = {"w": jnp.array([0.3, -0.7, 1.1])}
  loss = lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2)
  grad = jax.grad(loss)(params)
  norm = float(optax.global_norm(grad))
  tx = optax.chain(optax.clip_by_global_norm(0.995 * norm), avggrad.adam(1e-2))
  state = tx.init(params)
  with pytest.raises(ValueError, match="a transformation before it in the chain changed"):
    tx.update(grad, state, params, value_fn=loss, grad=grad)
  # The same chain without the clip, fed the same arrays, is accepted.
  plain = avggrad.adam(1e-2)
  plain.update(grad, plain.init(params), params, value_fn=loss, grad=grad)


@pytest.mark.parametrize("name", sorted(set(optimizers_lib.BUILTIN) - {"adopt"}))
def test_every_registry_optimizer_works_under_inject_hyperparams(name):
  """optax.inject_hyperparams binds a factory's signature: the registry's factories that
  forward ``**options`` (Muon, muon-split, SAM, Sophia, Mechanic, the avg-* wrappers of Optax
  optimizers) show their named parameters, so the injected form builds and takes the same
  three steps as the plain one. (``adopt`` is left out: Optax's own ``optax.contrib.adopt``
  fails under inject_hyperparams.)"""
  from avggrad import optimizers

  factory = optimizers._REGISTRY[name]
  params = {"w": jnp.full((3, 3), 0.3), "b": jnp.arange(3.0)}
  loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(jnp.sin(p["b"]))
  finals = []
  for tx in (optax.inject_hyperparams(factory)(learning_rate=1e-2), factory(1e-2)):

    @jax.jit  # as users train: an injected integer that shapes the state would fail here
    def step(p, state):
      value, grad = jax.value_and_grad(loss)(p)
      updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=loss)
      return optax.apply_updates(p, updates), state

    state, p = tx.init(params), params
    for _ in range(3):
      p, state = step(p, state)
    finals.append(p)
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_muon_split_head_names_and_non_attention_kernels_under_attention_names():
  """The head test is case-insensitive and takes the usual spellings (heads, head0, Head_0,
  lm_head, lmhead) but not an attention module named ``multihead``; the query/key/value rule is
  for 3-D kernels only (a 1x1 convolution named ``query`` is still the matrix (in, out))."""
  from avggrad import optimizers

  k2 = jnp.zeros((4, 3))
  for name in ("head", "heads", "head0", "head_0", "Head_0", "lm_head", "lmhead", "LMHead"):
    assert optimizers._hidden_matrices({name: {"kernel": k2}})[name]["kernel"] is None, name
  for name in ("multihead", "hidden", "ahead"):
    dims = optimizers._hidden_matrices({name: {"kernel": k2}})[name]["kernel"]
    assert dims == optax.contrib.MuonDimensionNumbers(0, 1), name
  conv = optimizers._hidden_matrices({"query": {"kernel": jnp.zeros((1, 1, 8, 2))}})
  assert conv["query"]["kernel"] == optax.contrib.MuonDimensionNumbers((0, 1, 2), 3)


def test_injected_muon_split_keeps_its_split():
  """Under optax.inject_hyperparams, muon-split still sends the embedding to Muon's AdamW
  part (its dimension numbers are not a hyperparameter that injection could reset to plain
  Muon's default)."""
  from avggrad import optimizers

  ks = jax.random.split(jax.random.PRNGKey(1), 4)
  params = {"embed": {"embedding": jax.random.normal(ks[0], (5, 4))},
            "hidden": {"kernel": jax.random.normal(ks[1], (4, 4))}}
  grads = {"embed": {"embedding": jax.random.normal(ks[2], (5, 4))},
           "hidden": {"kernel": jax.random.normal(ks[3], (4, 4))}}
  outs = {}
  for name in ("muon-split", "muon"):
    for injected in (True, False):
      factory = optimizers._REGISTRY[name]
      tx = optax.inject_hyperparams(factory)(learning_rate=1e-2) if injected else factory(1e-2)
      outs[name, injected] = tx.update(grads, tx.init(params), params)[0]
  np.testing.assert_allclose(outs["muon-split", True]["embed"]["embedding"],
                             outs["muon-split", False]["embed"]["embedding"], rtol=1e-5)
  assert not np.allclose(outs["muon-split", True]["embed"]["embedding"],
                         outs["muon", True]["embed"]["embedding"])
