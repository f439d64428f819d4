"""Models: shapes, parameter counts, no skip connections, initialiser variances, errors, and
plain Flax modules under any mesh a user sets (the activation pinning only in the loop's
context)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax.sharding import NamedSharding, PartitionSpec as P

from avggrad import models, parallel
from avggrad.models import CNN, MLP, ResNet, TextModel, TransformerLM


def _num_params(model) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_mlp_shapes_and_parameter_count():
  model = MLP(784, 10, depth=3, width=32, rngs=nnx.Rngs(0))
  assert model(jnp.zeros((5, 28, 28, 1))).shape == (5, 10)
  assert _num_params(model) == (784 * 32 + 32) + 2 * (32 * 32 + 32) + (32 * 10 + 10)
  shallow = MLP(784, 10, depth=1, width=32, rngs=nnx.Rngs(0))
  assert _num_params(shallow) == (784 * 32 + 32) + (32 * 10 + 10)


def test_cnn_shapes_and_parameter_count():
  model = CNN((28, 28, 1), 10, depth=4, channels=8, kernel_size=3, pooling="stride",
             downsample_every=2, rngs=nnx.Rngs(0))
  assert model(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
  convs = (3 * 3 * 1 * 8 + 8) + 3 * (3 * 3 * 8 * 8 + 8)
  head = 7 * 7 * 8 * 10 + 10  # two stride-2 convs: 28 -> 14 -> 7
  assert _num_params(model) == convs + head
  for pooling in ("max", "avg", "none"):
    m = CNN((28, 28, 1), 10, depth=3, channels=4, pooling=pooling, rngs=nnx.Rngs(0))
    assert m(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_text_model_shapes(kind):
  model = TextModel(100, 2, kind=kind, embed_dim=8, depth=3, width=16, rngs=nnx.Rngs(0))
  tokens = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0], [9, 9, 9, 9, 9, 9, 9, 9]], jnp.int32)
  assert model(tokens).shape == (2, 2)
  if kind == "mlp":
    # padding ids do not change the pooled embedding
    extended = jnp.concatenate([tokens, jnp.zeros((2, 4), jnp.int32)], axis=1)
    np.testing.assert_allclose(model(tokens), model(extended), rtol=1e-6)


def _hidden_kernels(model):
  if isinstance(model, MLP):
    return [layer.kernel for layer in model.hidden]
  if isinstance(model, CNN):
    return [conv.kernel for conv in model.convs]
  if model.kind == "mlp":
    return [layer.kernel for layer in model.body.hidden]
  return [conv.kernel for conv in model.convs]


@pytest.mark.parametrize("which", ["mlp", "cnn", "text-mlp", "text-conv"])
def test_no_skip_connections(which):
  """Zeroing any one hidden layer's weights cuts the input off from the output."""
  rngs = nnx.Rngs(0)
  if which == "mlp":
    make = lambda: MLP(12, 3, depth=4, width=8, activation="tanh", rngs=nnx.Rngs(0))
    inputs = jax.random.normal(jax.random.PRNGKey(1), (2, 12))
  elif which == "cnn":
    make = lambda: CNN((8, 8, 1), 3, depth=4, channels=4, activation="tanh", rngs=nnx.Rngs(0))
    inputs = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  else:
    kind = which.split("-")[1]
    make = lambda: TextModel(50, 2, kind=kind, embed_dim=8, depth=4, width=8,
                             activation="tanh", rngs=nnx.Rngs(0))
    inputs = jnp.array([[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])
  del rngs
  reference = make()
  out = reference(inputs)
  assert not np.allclose(out[0], out[1])  # the intact model sees its input
  for k in range(len(_hidden_kernels(reference))):
    model = make()
    kernel = _hidden_kernels(model)[k]
    kernel[...] = jnp.zeros_like(kernel[...])
    cut = model(inputs)
    assert not np.allclose(cut, out), k  # zeroing the layer changes the output...
    np.testing.assert_allclose(cut[0], cut[1], rtol=1e-6, atol=1e-7)  # ...and cuts the input off


@pytest.mark.parametrize(
    "name,expected",
    [
        ("glorot_uniform", 2 / (400 + 300)),
        ("glorot_normal", 2 / (400 + 300)),
        ("he_normal", 2 / 400),
        ("he_uniform", 2 / 400),
        ("lecun_normal", 1 / 400),
        ("lecun_uniform", 1 / 400),
        ("orthogonal", 1 / 400),  # orthonormal rows of length 1 over 400 inputs
        ("normal:0.05", 0.05**2),
    ],
)
def test_initialiser_variances(name, expected):
  init = models.initializer(name)
  w = np.asarray(init(jax.random.PRNGKey(0), (400, 300), jnp.float32))
  assert abs(w.mean()) < 0.05 * np.sqrt(expected)
  np.testing.assert_allclose(w.var(), expected, rtol=0.03)


def test_unknown_names_list_the_valid_ones():
  with pytest.raises(ValueError, match="expected one of .*tanh"):
    models.activation("swish")
  with pytest.raises(ValueError, match="expected one of .*he_normal"):
    models.initializer("kaiming")
  with pytest.raises(ValueError, match="positive std"):
    models.initializer("normal")
  with pytest.raises(ValueError, match="Unknown activation"):
    MLP(4, 2, depth=1, width=4, activation="cube", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Unknown pooling"):
    CNN((8, 8, 1), 2, depth=1, pooling="sum", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="expects 12 input features"):
    MLP(12, 2, depth=1, width=4, rngs=nnx.Rngs(0))(jnp.zeros((1, 13)))


# Every model of avggrad.models, small: name -> (make, inputs for n examples, hidden
# activations (each one avggrad.parallel.shard_examples call in the loop's context)).
# tests/sharding_check.py runs the same cases on 8 devices.
MODEL_CASES = {
    "mlp": (lambda: MLP(12, 3, depth=3, width=8, rngs=nnx.Rngs(0)),
            lambda n: jax.random.normal(jax.random.PRNGKey(1), (n, 12)), 3),
    "cnn": (lambda: CNN((8, 8, 1), 3, depth=3, channels=4, rngs=nnx.Rngs(0)),
            lambda n: jax.random.normal(jax.random.PRNGKey(1), (n, 8, 8, 1)), 3),
    "resnet": (lambda: ResNet((8, 8, 1), 3, depth=2, channels=8, rngs=nnx.Rngs(0)),
               lambda n: jax.random.normal(jax.random.PRNGKey(1), (n, 8, 8, 1)), 2),
    "text-mlp": (lambda: TextModel(50, 2, kind="mlp", embed_dim=8, depth=2, width=8,
                                   rngs=nnx.Rngs(0)),
                 lambda n: jax.random.randint(jax.random.PRNGKey(1), (n, 8), 0, 50), 2),
    "text-conv": (lambda: TextModel(50, 2, kind="conv", embed_dim=8, depth=2, width=8,
                                    rngs=nnx.Rngs(0)),
                  lambda n: jax.random.randint(jax.random.PRNGKey(1), (n, 8), 0, 50), 2),
    "transformer": (lambda: TransformerLM(50, 8, dim=16, depth=2, heads=2, rngs=nnx.Rngs(0)),
                    lambda n: jax.random.randint(jax.random.PRNGKey(1), (n, 8), 0, 50), 2),
}


def constraints(fn, x) -> int:
  """How many sharding constraints ``fn(x)`` traces to."""
  return str(jax.make_jaxpr(fn)(x)).count("sharding_constraint")


def model_setups(model, x, devices: int):
  """``(setup, output, constraints)`` for a model called as users call it: no mesh; the batch
  sharded over ``data`` of an Auto or Explicit mesh, without and with ``jax.set_mesh``; inside
  ``jax.shard_map`` over ``data``; and, for contrast, inside the training loop's context
  (:func:`avggrad.parallel.examples_on`, Auto and Explicit), alone and around a shard_map."""
  apply = jax.jit(lambda x: model(x))
  rows = [("no mesh", apply(x), constraints(lambda x: model(x), x))]
  for kind in ("Auto", "Explicit"):
    mesh = jax.make_mesh((devices,), ("data",), axis_types=(getattr(jax.sharding.AxisType, kind),))
    xb = jax.device_put(x, NamedSharding(mesh, P("data")))
    mapped = jax.shard_map(lambda x: model(x), mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    rows.append((f"input on the {kind} mesh, no set_mesh", apply(xb),
                 constraints(lambda x: model(x), xb)))
    with jax.set_mesh(mesh):
      rows.append((f"set_mesh {kind}", apply(xb), constraints(lambda x: model(x), xb)))
    rows.append((f"shard_map ({kind} mesh)", jax.jit(mapped)(xb), constraints(mapped, xb)))
    with parallel.examples_on(mesh):
      rows.append((f"loop context {kind}", apply(xb), constraints(lambda x: model(x), xb)))
      rows.append((f"loop context {kind}, shard_map", jax.jit(mapped)(xb),
                   constraints(mapped, xb)))
  return rows


@pytest.mark.parametrize("name", sorted(MODEL_CASES))
def test_models_are_plain_flax_modules_under_any_mesh(name):
  """Issue 32: under jax.set_mesh with Explicit axes and inside jax.shard_map the models
  raised (``P.UNCONSTRAINED`` ... no mesh axis_types are Auto). In user code every model adds
  no constraint and gives the no-mesh output; only in the loop's context (Auto data axis)
  does it pin each hidden activation (one constraint per hidden layer). One device here;
  tests/sharding_check.py does the same on 8."""
  make, inputs, hidden = MODEL_CASES[name]
  model, x = make(), inputs(4)
  rows = model_setups(model, x, devices=1)
  reference = rows[0][1]
  for setup, out, count in rows:
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6, err_msg=setup)
    expected = hidden if setup == "loop context Auto" else 0
    assert count == expected, (setup, count, expected)


def test_examples_on_needs_a_data_axis():
  with pytest.raises(ValueError, match="'data' axis"):
    with parallel.examples_on(jax.make_mesh((1,), ("model",))):
      pass
  with pytest.raises(ValueError, match="jax.sharding.Mesh"):
    with parallel.examples_on(None):
      pass
