"""Data-parallel steps on 8 forced host devices against one device (run by test_sharding.py);
``python tests/sharding_check.py models``: every model under the meshes users set.

Run as a script in its own process: XLA_FLAGS must be set before JAX starts.
"""

from __future__ import annotations

import functools
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import avggrad  # noqa: E402
from avggrad import parallel  # noqa: E402
from tests import helpers  # noqa: E402


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  params = helpers.mlp_params(jax.random.PRNGKey(0), [8, 16, 16, 16, 8])
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 8))
  y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, 8)

  def loss(p, xb, yb):
    logits = helpers.mlp_apply(p, xb, jnp.tanh)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  optimizers = {
      "rmsprop-predicted": avggrad.rmsprop(0.001),
      "rmsprop-previous": avggrad.rmsprop(0.001, update_range="previous"),
      "rmsprop-momentum": avggrad.rmsprop(0.001, momentum=0.9),
      # The self-tuning scale: its slope and curvature are global scalars (one all-reduce).
      "auto-adam": avggrad.auto_adam(),
      "adam-accelerate": avggrad.adam(0.01, combine="accelerate", span=4.0),
  }
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P("data"))
  sharded_params = [
      {"b": NamedSharding(mesh, P("data")), "w": NamedSharding(mesh, P(None, "data"))}
      for _ in params
  ]
  for name, tx in optimizers.items():

    @jax.jit
    def step(p, s, xb, yb):
      value_fn = functools.partial(loss, xb=xb, yb=yb)
      grads = jax.grad(value_fn)(p)
      updates, s = tx.update(grads, s, p, value_fn=value_fn)
      return optax.apply_updates(p, updates), s

    def run(p, xb, yb):
      s = tx.init(p)
      for _ in range(3):
        p, s = step(p, s, xb, yb)
      return p, s

    reference, _ = run(params, x, y)
    for layout, param_sharding in [
        ("replicated", jax.tree.map(lambda _: replicated, params)),
        ("sharded", sharded_params),
    ]:
      p0 = jax.device_put(params, param_sharding)
      out, state = run(p0, jax.device_put(x, batch), jax.device_put(y, batch))
      error = helpers.rel_error(out, reference)
      assert error < 1e-5, (name, layout, error)
      for leaf, want in zip(jax.tree.leaves(out), jax.tree.leaves(param_sharding)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (
            name, layout, leaf.sharding, want
        )
      print(f"{name} {layout}: rel. difference {error:.1e}, shardings kept")

  # Sharding in types (explicit axes, jax.set_mesh): replicated params, sharded batch.
  explicit = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  tx = optimizers["rmsprop-predicted"]

  @jax.jit
  def explicit_step(p, s, xb, yb):
    value_fn = functools.partial(loss, xb=xb, yb=yb)
    updates, s = tx.update(jax.grad(value_fn)(p), s, p, value_fn=value_fn)
    return optax.apply_updates(p, updates), s

  reference, _ = explicit_step(params, tx.init(params), x, y)
  with jax.set_mesh(explicit):
    rep = NamedSharding(explicit, P())
    p0 = jax.device_put(params, rep)
    xb = jax.device_put(x, NamedSharding(explicit, P("data")))
    yb = jax.device_put(y, NamedSharding(explicit, P("data")))
    out, _ = explicit_step(p0, tx.init(p0), xb, yb)
    for leaf in jax.tree.leaves(out):
      assert leaf.sharding.is_equivalent_to(rep, leaf.ndim), leaf.sharding
    error = helpers.rel_error(out, reference)
  # Relative, as above: one weight's absolute difference can reach 1e-4 where the accelerate
  # rule's per-coordinate ratio amplifies float32 reassociation of the sharded reductions.
  assert error < 1e-5, error
  print(f"rmsprop-predicted explicit-axes: rel. difference {error:.1e}, shardings kept")


def far_end_moves_no_examples() -> None:
  """The default avggrad.adam step (far end on a quarter of the batch, batch=) on a batch
  sharded over ``data``, under every common parameter layout: replicated, FSDP on the input
  axis and on the output axis of every weight (biases on ``data``), and a 2-D mesh (data 4 x
  model 2) with every weight sharded on ``model``. With activations kept on ``data``
  (``avggrad.parallel.shard_examples``, the step traced in ``examples_on(mesh)``): no
  collective-permute or all-to-all, at most twice ``optax.adam``'s all-gathers (two
  gradients) and none with replicated params; and the step matches one device."""
  params = helpers.mlp_params(jax.random.PRNGKey(0), [16, 64, 64, 64, 8])
  x = jax.random.normal(jax.random.PRNGKey(1), (256, 16))
  y = jax.random.randint(jax.random.PRNGKey(2), (256,), 0, 8)

  def value_fn(p, batch):
    h = batch[0]
    for layer in p[:-1]:
      h = parallel.shard_examples(jnp.tanh(h @ layer["w"] + layer["b"]))
    logits = h @ p[-1]["w"] + p[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  def make_step(tx, mesh):
    def step(p, s, xb, yb):
      with parallel.examples_on(mesh):  # the loop's context (DataParallel.tracing)
        grads = jax.grad(value_fn)(p, (xb, yb))
        updates, s = tx.update(grads, s, p, value_fn=value_fn, batch=(xb, yb))
      return optax.apply_updates(p, updates), s
    return jax.jit(step)

  auto = jax.sharding.AxisType.Auto
  one_axis = jax.make_mesh((8,), ("data",), axis_types=(auto,))
  two_axes = jax.make_mesh((4, 2), ("data", "model"), axis_types=(auto, auto))
  layouts = {
      "replicated": (one_axis, P(), P()),
      "fsdp-output-axis": (one_axis, P(None, "data"), P("data")),
      "fsdp-input-axis": (one_axis, P("data", None), P("data")),
      "2-D data x model": (two_axes, P(None, "model"), P("model")),
  }
  tx = avggrad.adam(3e-3)
  reference, s_ref = params, tx.init(params)
  reference_step = make_step(tx, one_axis)
  for _ in range(3):
    reference, s_ref = reference_step(reference, s_ref, x, y)
  for layout, (mesh, w_spec, b_spec) in layouts.items():
    shardings = [{"w": NamedSharding(mesh, w_spec), "b": NamedSharding(mesh, b_spec)}
                 for _ in params]
    batch = NamedSharding(mesh, P("data"))
    xb, yb = jax.device_put(x, batch), jax.device_put(y, batch)
    counts = {}
    for name, opt in [("optax.adam", optax.adam(1e-3)), ("default", avggrad.adam(1e-3))]:
      p0 = jax.device_put(params, shardings)
      s0 = jax.jit(opt.init)(p0)
      text = make_step(opt, mesh).lower(p0, s0, xb, yb).compile().as_text()
      counts[name] = parallel.hlo_collectives(text)
    print(f"collectives, params {layout}: {counts}")
    default = counts["default"]
    assert default["collective-permute"] == 0 and default["all-to-all"] == 0, (layout, counts)
    assert default["all-gather"] <= 2 * counts["optax.adam"]["all-gather"], (layout, counts)
    if layout == "replicated":
      assert default["all-gather"] == 0, counts
    sharded = jax.device_put(params, shardings)
    s_sh = tx.init(sharded)
    step = make_step(tx, mesh)
    for _ in range(3):
      sharded, s_sh = step(sharded, s_sh, xb, yb)
    error = helpers.rel_error(sharded, reference)
    assert error < 1e-5, (layout, error)
    print(f"far end on 1/4 of a sharded batch, params {layout}: rel. difference to one "
          f"device {error:.1e}, no examples moved")


def training_matches_one_device() -> None:
  """avggrad.training.train and avggrad.sweep.sweep on 8 devices (replicated and FSDP
  params) against the same runs on one device; a checkpoint written on 8 devices, the run
  interrupted, resumes on one."""
  import tempfile

  from avggrad import data, sweep, training

  train_data = data.load("fashion_mnist_small", "train", limit=512)
  test_data = data.load("fashion_mnist_small", "test", limit=128)
  config = training.TrainConfig(optimizer="avg-adam", lr=3e-3, depth=3, width=32, steps=12,
                                batch_size=64, eval_every=4, eval_examples=128, limit=512)
  kwargs = dict(train_data=train_data, test_data=test_data, progress=False)
  one = training.train(config, devices=1, **kwargs)
  for shard in (False, True):
    eight = training.train(config, devices=8, shard_params=shard, **kwargs)
    np.testing.assert_allclose(eight.losses, one.losses, rtol=2e-5)
    print(f"train on 8 devices (shard_params={shard}) matches one device: max rel. "
          f"difference {np.max(np.abs(np.subtract(eight.losses, one.losses)) / np.abs(one.losses)):.1e}")
  # The loop's own step with FSDP params: the models keep activations on the data axis
  # (shard_examples under DataParallel.tracing), so the far end on 16 of the 64 examples (2
  # per device) moves nothing between devices.
  program, _ = training.compile_step(config, train_data, parallel.DataParallel.create(
      8, shard_params=True))
  idx = parallel.DataParallel.create(8).place_batch(np.zeros((64,), np.int32))
  counts = parallel.hlo_collectives(
      program.compiled[0].compile(program.carry, *program.data, idx).as_text())
  assert counts["all-to-all"] == 0 and counts["collective-permute"] == 0, counts
  print(f"train's step, FSDP params: {counts}")
  runs1 = sweep.sweep(config, [1e-3, 3e-3], [0, 1], devices=1, **kwargs)
  runs8 = sweep.sweep(config, [1e-3, 3e-3], [0, 1], devices=8, **kwargs)
  for key in runs1:
    np.testing.assert_allclose(runs8[key].losses, runs1[key].losses, rtol=2e-5)
  print("sweep on 8 devices matches one device")

  class Interrupt(Exception):
    pass

  calls = {"n": 0}
  original = training.Progress.update

  def interrupting(self, steps, **postfix):
    calls["n"] += 1
    if calls["n"] == 2:  # after the checkpoint at step 4
      raise Interrupt()
    return original(self, steps, **postfix)

  with tempfile.TemporaryDirectory() as folder:
    training.Progress.update = interrupting
    try:
      training.train(config, devices=8, checkpoint_dir=folder, checkpoint_every=4, **kwargs)
      raise AssertionError("the run was not interrupted")
    except Interrupt:
      pass
    finally:
      training.Progress.update = original
    resumed = training.train(config, devices=1, checkpoint_dir=folder, checkpoint_every=4,
                             **kwargs)
  np.testing.assert_allclose(resumed.losses, one.losses, rtol=2e-5)
  assert len(resumed.losses) == config.steps
  print("checkpoint written on 8 devices resumes on one")


def models_under_user_meshes() -> None:
  """Every model of avggrad.models on 8 devices, called as users call it (issue 32): no
  mesh, ``jax.set_mesh`` with Auto and Explicit axes, inside ``jax.shard_map`` over ``data``:
  the no-mesh output and no sharding constraint; in the loop's context
  (``parallel.examples_on``, Auto axis) one constraint per hidden activation, the same output."""
  from tests.test_models import MODEL_CASES, model_setups

  for name, (make, inputs, hidden) in sorted(MODEL_CASES.items()):
    model, x = make(), inputs(16)
    rows = model_setups(model, x, devices=8)
    reference = rows[0][1]
    worst = 0.0
    for setup, out, count in rows:
      np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5, err_msg=setup)
      worst = max(worst, float(np.max(np.abs(np.asarray(out) - np.asarray(reference)))))
      expected = hidden if setup == "loop context Auto" else 0
      assert count == expected, (name, setup, count, expected)
    print(f"model {name} on 8 devices: {len(rows)} setups, max abs. difference to no mesh "
          f"{worst:.1e}, constraints only in the loop's context, plain under user meshes")


if __name__ == "__main__":
  if sys.argv[1:] == ["models"]:  # a process of its own (test_sharding.py)
    models_under_user_meshes()
  else:
    main()
    far_end_moves_no_examples()
    training_matches_one_device()
