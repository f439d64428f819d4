"""Data-parallel steps on 8 forced host devices against one device (run by test_sharding.py).

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


def hlo_collectives(compiled_text: str) -> dict[str, int]:
  """How many of each collective a compiled HLO module contains."""
  ops = ("collective-permute", "all-to-all", "all-gather", "all-reduce", "reduce-scatter")
  return {op: compiled_text.count(f" {op}(") + compiled_text.count(f" {op}-start(")
          for op in ops}


def far_end_moves_no_examples() -> None:
  """The default avggrad.adam step (far end on a quarter of the batch, batch=) on a batch
  sharded over 8 devices: no collective-permute or all-to-all; with replicated params no
  all-gather, with FSDP-sharded params no more all-gathers than the whole-batch far end (two
  full gradients) needs. And it matches one device, the same examples at the far end."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  params = helpers.mlp_params(jax.random.PRNGKey(0), [16, 64, 64, 64, 8])
  x = jax.random.normal(jax.random.PRNGKey(1), (256, 16))
  y = jax.random.randint(jax.random.PRNGKey(2), (256,), 0, 8)

  def value_fn(p, batch):
    logits = helpers.mlp_apply(p, batch[0], jnp.tanh)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  def make_step(tx):
    def step(p, s, xb, yb):
      grads = jax.grad(value_fn)(p, (xb, yb))
      updates, s = tx.update(grads, s, p, value_fn=value_fn, batch=(xb, yb))
      return optax.apply_updates(p, updates), s
    return jax.jit(step)

  batch = NamedSharding(mesh, P("data"))
  xb, yb = jax.device_put(x, batch), jax.device_put(y, batch)
  fsdp = [{"w": NamedSharding(mesh, P(None, "data")), "b": NamedSharding(mesh, P("data"))}
          for _ in params]
  layouts = {"replicated": jax.tree.map(lambda _: NamedSharding(mesh, P()), params),
             "fsdp": fsdp}
  for layout, shardings in layouts.items():
    counts = {}
    for name, tx in [("optax.adam", optax.adam(1e-3)), ("default", avggrad.adam(1e-3)),
                     ("whole", avggrad.adam(1e-3, far_batch_fraction=None))]:
      p0 = jax.device_put(params, shardings)
      s0 = jax.jit(tx.init)(p0)
      text = make_step(tx).lower(p0, s0, xb, yb).compile().as_text()
      counts[name] = hlo_collectives(text)
    print(f"collectives, params {layout}: {counts}")
    default = counts["default"]
    assert default["collective-permute"] == 0 and default["all-to-all"] == 0, (layout, counts)
    if layout == "replicated":
      assert default["all-gather"] == 0, counts
    else:
      assert default["all-gather"] <= counts["whole"]["all-gather"], counts
  tx = avggrad.adam(3e-3)
  step = make_step(tx)
  reference, sharded = params, jax.device_put(params, layouts["replicated"])
  s_ref, s_sh = tx.init(reference), tx.init(sharded)
  for _ in range(3):
    reference, s_ref = step(reference, s_ref, x, y)
    sharded, s_sh = step(sharded, s_sh, xb, yb)
  error = helpers.rel_error(sharded, reference)
  assert error < 1e-5, error
  print(f"far end on 1/4 of a sharded batch: rel. difference to one device {error:.1e}, "
        "no examples moved")


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


if __name__ == "__main__":
  main()
  far_end_moves_no_examples()
  training_matches_one_device()
