"""Scale-out through JAX's own sharding, on 8 forced host devices (in a subprocess), and
across two processes (jax.distributed, CPU collectives through gloo)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent


def test_data_parallel_step_matches_one_device_and_keeps_shardings():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, str(HERE / "sharding_check.py")],
                          capture_output=True, text=True, env=env, timeout=600)
  out = result.stdout
  assert result.returncode == 0, out + result.stderr
  assert out.count("shardings kept") == 11, out
  assert out.count("no examples moved") == 4, out
  assert out.count("matches one device") == 3, out
  assert "checkpoint written on 8 devices resumes on one" in out, out


def test_models_under_user_meshes_on_eight_devices():
  """Issue 32: every model of avggrad.models on 8 devices under no mesh, jax.set_mesh with
  Auto and Explicit axes and inside jax.shard_map over data gives the no-mesh output and adds
  no constraint; only the loop's context pins activations (one constraint per hidden layer)."""
  from tests.test_models import MODEL_CASES

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, str(HERE / "sharding_check.py"), "models"],
                          capture_output=True, text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count("plain under user meshes") == len(MODEL_CASES), result.stdout


def test_two_processes_train_as_one(tmp_path):
  """2 processes x 2 devices, each feeding its half of every batch, give the losses and final
  parameters of one process with 4 devices."""
  script = str(HERE / "multihost_check.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  single = subprocess.run([sys.executable, script, "single", str(tmp_path / "single.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
  assert single.returncode == 0, single.stdout + single.stderr
  result = subprocess.run([sys.executable, script, "launch", str(tmp_path / "multi.npz")],
                          capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  compare = subprocess.run([sys.executable, script, "compare", str(tmp_path / "single.npz"),
                            str(tmp_path / "multi.npz")], capture_output=True, text=True,
                           env=env, timeout=120)
  assert compare.returncode == 0, compare.stdout + compare.stderr
  assert "2 processes x 2 devices match 1 process x 4 devices" in compare.stdout


_EXPLICIT_FAR_END = r"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np, optax, avggrad
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
loss = lambda w, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2)
for n in (8, 32, 36):  # 2, 8, 9 examples a device: the stride 4 splits only the middle one
  x = jnp.asarray(np.random.default_rng(n).normal(size=(n, 3)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(n + 1).normal(size=n), jnp.float32)
  for name, tx in [("adam", avggrad.adam(1e-2)), ("auto", avggrad.auto_adam())]:
    def step(w, x, y, tx=tx):
      g = jax.grad(loss)(w, (x, y))
      return tx.update(g, tx.init(w), w, value_fn=loss, batch=(x, y))[0]
    alone = jax.jit(step)(jnp.full(3, 0.1), x, y)
    with jax.set_mesh(mesh):
      xs = jax.device_put(x, NamedSharding(mesh, P("data")))
      ys = jax.device_put(y, NamedSharding(mesh, P("data")))
      sharded = jax.jit(step)(jnp.full(3, 0.1), xs, ys)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(alone), rtol=1e-5, atol=1e-7)
    print(name, n, "explicit far end matches one device")
"""


def test_the_far_end_sub_batch_under_explicit_mesh_axes(tmp_path):
  """The far end on a quarter of a batch sharded over Explicit ``data`` axes (the sharding in
  the type): every batch size works, whether or not each device's share splits by the stride,
  and gives the one-device update (it raised ShardingTypeError on an uneven split)."""
  script = tmp_path / "explicit_far_end.py"
  script.write_text(_EXPLICIT_FAR_END)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(HERE.parent))
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count("explicit far end matches one device") == 6, result.stdout
