"""The data-parallel train step on forced host devices: collectives in the compiled HLO and
time against ``optax.adam``.

  python -m benchmarks.sharded_step [--devices 8]

An 8-layer tanh MLP of width 256, batch 256 sharded over a ``data`` axis of ``--devices``
forced CPU devices, parameters replicated; ``avggrad.adam`` with ``batch=`` (the far end on
every 4th example, the default) and with the whole batch, against ``optax.adam``. On forced
host devices the time is that of one CPU shared by all "devices": the collectives are the
point, the times only a sanity check. Writes ``benchmarks/results/sharded_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={args.devices}")
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import avggrad
  from avggrad import parallel, timing, training
  from avggrad.models import MLP
  from tests.sharding_check import hlo_collectives

  dp = parallel.DataParallel.create(args.devices)
  model = MLP(784, 10, depth=8, width=256, activation="tanh", rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  key = jax.random.PRNGKey(0)
  x = dp.place_batch(jax.random.normal(key, (256, 784)))
  y = dp.place_batch(jax.random.randint(key, (256,), 0, 10))
  params, rest = dp.place_state(params), dp.place_state(rest)
  variants = {"optax.adam": optax.adam(1e-4),
              "avggrad.adam, batch= (far end on every 4th example)": avggrad.adam(1e-4),
              "avggrad.adam, whole batch": avggrad.adam(1e-4, far_batch_fraction=None)}
  calls, out = [], {"devices": args.devices, "model": "8 x 256 tanh MLP, batch 256",
                    "variants": {}}
  for name, tx in variants.items():
    state = dp.place_state(jax.jit(tx.init)(params))

    @jax.jit
    def step(p, s, x, y, tx=tx):
      p, s, loss = training.update_step(tx, graphdef, p, rest, s, x, y)
      return p, s

    counts = hlo_collectives(step.lower(params, state, x, y).compile().as_text())
    out["variants"][name] = {"collectives": counts}
    calls.append((step, (params, state, x, y)))
  seconds = timing.interleaved_seconds(calls, number=10, repeats=5)
  for name, s in zip(variants, seconds):
    out["variants"][name] |= {"seconds": s, "vs_optax_adam": s / seconds[0]}
    c = out["variants"][name]["collectives"]
    print(f"{name}: all-reduce {c['all-reduce']}, collective-permute "
          f"{c['collective-permute']}, all-to-all {c['all-to-all']}, all-gather "
          f"{c['all-gather']}; {s / seconds[0]:.2f}x optax.adam ({1e3 * s:.1f} ms)")
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      "sharded_step.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
