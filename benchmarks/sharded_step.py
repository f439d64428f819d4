"""The data-parallel train step on forced host devices, under every common parameter layout:
collectives in the compiled HLO and time against ``optax.adam``.

  python -m benchmarks.sharded_step [--devices 8]

An 8-layer tanh MLP of width 256 (``avggrad.models.MLP``), batch 256 sharded over a ``data``
axis, the step :func:`avggrad.training.update_step`. Parameter layouts: replicated; FSDP on
the input axis of every weight; FSDP on the output axis (each weight ``P(None, "data")``,
each bias ``P("data")``); and a 2-D mesh (``data`` x ``model``, half the devices each way)
with every weight sharded on ``model`` along its output axis. Each layout is compiled twice:
with the models' activation constraint (:func:`avggrad.parallel.shard_examples`, the step
traced in :func:`avggrad.parallel.examples_on`, as :func:`avggrad.training.train` does) and
without it. Variants:
``optax.adam``, ``avggrad.adam`` with ``batch=`` (the far end on every 4th example, the
default) and with the whole batch. On forced host devices the time is that of one CPU shared
by all "devices": the collectives are the point, the times only a sanity check. Writes
``--out`` (default ``benchmarks/results/sharded_step.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os


def layouts(devices: int) -> dict[str, tuple[tuple[int, ...], tuple[str, ...], str]]:
  """name -> (mesh shape, mesh axes, the rule that shards a parameter)."""
  return {"replicated": ((devices,), ("data",), "replicated"),
          "fsdp-input-axis": ((devices,), ("data",), "input"),
          "fsdp-output-axis": ((devices,), ("data",), "output"),
          "2-D data x model": ((devices // 2, 2), ("data", "model"), "model")}


def param_spec(shape: tuple[int, ...], rule: str, mesh_shape: dict[str, int]):
  """The ``PartitionSpec`` of one parameter under ``rule`` (an axis that does not split
  evenly stays replicated)."""
  from jax.sharding import PartitionSpec as P

  if rule == "replicated" or not shape:
    return P()
  axis_name = "model" if rule == "model" else "data"
  axis = 0 if rule == "input" or len(shape) == 1 else len(shape) - 1
  if shape[axis] % mesh_shape[axis_name]:
    return P()
  return P(*([None] * axis), axis_name)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "sharded_step.json"))
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={args.devices}")
  import jax
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  import avggrad
  from avggrad import parallel, timing, training
  from avggrad.models import MLP

  model = MLP(784, 10, depth=8, width=256, activation="tanh", rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  key = jax.random.PRNGKey(0)
  x_host = jax.random.normal(key, (256, 784))
  y_host = jax.random.randint(key, (256,), 0, 10)
  variants = {"optax.adam": optax.adam(1e-4),
              "avggrad.adam, batch= (far end on every 4th example)": avggrad.adam(1e-4),
              "avggrad.adam, whole batch": avggrad.adam(1e-4, far_batch_fraction=None)}
  out = {"devices": args.devices, "model": "8 x 256 tanh MLP, batch 256", "layouts": {}}
  for layout, (shape, axes, rule) in layouts(args.devices).items():
    mesh = jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))
    place = lambda tree: jax.device_put(tree, jax.tree.map(
        lambda v: NamedSharding(mesh, param_spec(v.shape, rule, dict(mesh.shape))), tree))
    p, r = place(params), place(rest)
    x = jax.device_put(x_host, NamedSharding(mesh, P("data")))
    y = jax.device_put(y_host, NamedSharding(mesh, P("data")))
    for constrained in (True, False):
      name = f"{layout}, activations {'on data' if constrained else 'unconstrained'}"
      rows, calls = {}, []
      for label, tx in variants.items():
        state = place(jax.jit(tx.init)(p))

        def traced(p, s, x, y, tx=tx, constrained=constrained):
          context = (parallel.examples_on(mesh) if constrained  # as DataParallel.tracing
                     else contextlib.nullcontext())
          with context:
            p, s, _ = training.update_step(tx, graphdef, p, r, s, x, y)
          return p, s

        step = jax.jit(traced)
        rows[label] = {"collectives": parallel.hlo_collectives(
            step.lower(p, state, x, y).compile().as_text())}
        calls.append((step, (p, state, x, y)))
      seconds = timing.interleaved_seconds(calls, number=10, repeats=5)
      print(f"## {name}")
      for (label, row), s in zip(rows.items(), seconds):
        row |= {"seconds": s, "vs_optax_adam": s / seconds[0]}
        c = row["collectives"]
        print(f"{label}: all-reduce {c['all-reduce']}, all-gather {c['all-gather']}, "
              f"all-to-all {c['all-to-all']}, collective-permute {c['collective-permute']}; "
              f"{s / seconds[0]:.2f}x optax.adam ({1e3 * s:.1f} ms)")
      out["layouts"][name] = rows
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
