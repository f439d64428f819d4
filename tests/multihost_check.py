"""Multi-host training with jax.distributed, on one machine: 2 processes x 2 CPU devices
(collectives through gloo, coordinator on 127.0.0.1) against 1 process x 4 devices.

The multi-process run follows the README's recipe ("Scaling out"): ``jax.distributed
.initialize()``, a global mesh over every process's devices, parameters replicated, and each
process feeding its own half of every global batch with
``jax.make_array_from_process_local_data``. It trains ``avggrad.adam`` (default: the far end
on a quarter of the batch, every 4th example) for a few steps.

  python tests/multihost_check.py single OUT.npz      # 1 process, 4 devices
  python tests/multihost_check.py launch OUT.npz      # starts 2 workers, 2 devices each
  python tests/multihost_check.py compare A.npz B.npz
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

STEPS, BATCH = 5, 64


def _devices(n: int) -> None:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={n}")


def train(out: str) -> None:
  """The recipe; in a single process it runs as one host."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding, PartitionSpec as P

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import avggrad
  from tests import helpers

  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  params = jax.device_put(helpers.mlp_params(jax.random.PRNGKey(0), [12, 32, 32, 32, 5]),
                          replicated)
  rng = np.random.default_rng(0)
  data_x = rng.normal(size=(STEPS, BATCH, 12)).astype(np.float32)
  data_y = rng.integers(0, 5, size=(STEPS, BATCH)).astype(np.int32)

  def value_fn(p, batch):
    logits = helpers.mlp_apply(p, batch[0], jnp.tanh)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

  tx = avggrad.adam(3e-3)
  opt_state = jax.jit(tx.init)(params)

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(value_fn)(p, (x, y))
    updates, s = tx.update(grads, s, p, value_fn=value_fn, batch=(x, y))
    return optax.apply_updates(p, updates), s, loss

  # Each process holds the examples of its own devices: a contiguous share of the batch.
  share = BATCH // jax.process_count()
  mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
  losses = []
  for t in range(STEPS):
    x = jax.make_array_from_process_local_data(batch_sharding, data_x[t, mine])
    y = jax.make_array_from_process_local_data(batch_sharding, data_y[t, mine])
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(float(loss))  # replicated: every process can read it
  if jax.process_index() == 0:
    leaves = [np.asarray(leaf.addressable_data(0)) for leaf in jax.tree.leaves(params)]
    np.savez(out, losses=np.asarray(losses), **{f"p{i}": v for i, v in enumerate(leaves)})
  print(f"process {jax.process_index()}/{jax.process_count()}: losses {losses}")


def worker(index: int, port: int, out: str) -> None:
  _devices(2)
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=index)
  train(out)
  jax.distributed.shutdown()


def launch(out: str) -> None:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, __file__, "worker", str(i), str(port), out])
           for i in range(2)]
  codes = [p.wait(timeout=240) for p in procs]
  if any(codes):
    raise SystemExit(f"workers exited with {codes}")


def compare(a: str, b: str) -> None:
  import numpy as np

  one, two = np.load(a), np.load(b)
  assert sorted(one.files) == sorted(two.files), (one.files, two.files)
  for name in one.files:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-6, atol=1e-7, err_msg=name)
  print(f"losses {one['losses'].tolist()}")
  print("2 processes x 2 devices match 1 process x 4 devices")


if __name__ == "__main__":
  mode = sys.argv[1]
  if mode == "single":
    _devices(4)
    train(sys.argv[2])
  elif mode == "worker":
    worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  elif mode == "launch":
    launch(sys.argv[2])
  else:
    compare(sys.argv[2], sys.argv[3])
