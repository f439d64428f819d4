"""Time per training step and memory, measured as the benchmarks and ``avggrad compare`` do.

Wall-clock comparisons between optimizers use the time of one training step of each, measured
in one process and *interleaved* (each optimizer's steps in turn, repeated, medians), so drift
of the machine's speed hits all alike. :func:`step_seconds` does this for the training steps of
:mod:`avggrad.training`; :func:`interleaved_seconds` for any functions; :func:`peak_bytes`
reads XLA's allocation for one call.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def peak_bytes(fn: Callable[..., Any], *args: Any) -> int:
  """Bytes XLA allocates for one call of ``jax.jit(fn)``: arguments, outputs and temporaries."""
  return allocated_bytes(jax.jit(fn).lower(*args).compile())


def allocated_bytes(compiled: Any) -> int:
  """Bytes XLA allocates for one call of a compiled executable (-1 if it does not say)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return -1
  return int(
      stats.argument_size_in_bytes
      + stats.output_size_in_bytes
      + stats.temp_size_in_bytes
      - stats.alias_size_in_bytes
  )


def interleaved_seconds(
    calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
    *,
    number: int = 20,
    repeats: int = 7,
) -> list[float]:
  """Median seconds per call of each ``(fn, args)``, timed in turns so drift hits all alike.

  Every function is compiled and run once before timing; each repeat runs each function
  ``number`` times back to back and waits for the results.
  """
  for fn, args in calls:
    jax.block_until_ready(fn(*args))
  samples: list[list[float]] = [[] for _ in calls]
  for _ in range(repeats):
    for i, (fn, args) in enumerate(calls):
      start = time.perf_counter()
      out = None
      for _ in range(number):
        out = fn(*args)
      jax.block_until_ready(out)
      samples[i].append((time.perf_counter() - start) / number)
  return [statistics.median(s) for s in samples]


class _Stepper:
  """Runs ``len(idx)`` steps of a compiled, state-donating step, feeding its state back."""

  def __init__(self, compiled: Any, state: Any, x: jax.Array, y: jax.Array, idx: jax.Array):
    self.compiled, self.state, self.x, self.y, self.idx = compiled, state, x, y, idx

  def __call__(self) -> list[jax.Array]:
    losses = []
    for row in self.idx:
      self.state, loss = self.compiled(self.state, self.x, self.y, row)
      losses.append(loss)
    return losses


def step_seconds(config: Any, specs: Sequence[str], train_data: Any, *, lr: float = 1e-4,
                 chunk: int = 10, number: int = 3, repeats: int = 5,
                 memory: bool = False, dp: Any = None) -> dict[str, dict[str, float]]:
  """Seconds per training step of each optimizer spec on ``config``'s model, interleaved.

  Each optimizer runs ``chunk`` steps of :func:`avggrad.loop.update_step` (compiled as
  :func:`avggrad.loop.train` compiles it, :func:`avggrad.loop.compile_step`) per call,
  in turns with the others, ``number`` calls per turn and ``repeats`` turns; the median per
  step is reported. A small learning rate keeps every optimizer in its ordinary regime while
  it is timed. ``dp`` (an :class:`avggrad.parallel.DataParallel`) times the data-parallel
  step; one device by default.

  Returns:
    ``{spec: {"seconds_per_step": ..., "bytes": ...}}`` (``bytes``, XLA's allocation for one
    step without the dataset, only with ``memory=True``).
  """
  import dataclasses

  from avggrad import parallel, training

  dp = dp or parallel.DataParallel(None)
  idx = [dp.place_batch(row) for row in np.arange(chunk * config.batch_size).reshape(
      chunk, config.batch_size).astype(np.int32) % len(train_data)]
  steppers, sizes = [], {}
  for spec in specs:
    run = dataclasses.replace(config, optimizer=spec, lr=lr, seed=0)
    program, _ = training.compile_step(run, train_data, dp)
    x_all, y_all = program.data
    steppers.append(_Stepper(program.compiled[0], program.carry, x_all, y_all, idx))
    if memory:
      batch = np.arange(config.batch_size, dtype=np.int32)  # the step without the dataset
      first = lambda data: jax.tree.map(lambda a: a[: config.batch_size], data)  # dicts too
      sizes[spec] = allocated_bytes(program.compiled[0].compile(
          program.carry, first(x_all), first(y_all), dp.place_batch(batch)))
  seconds = interleaved_seconds([(s, ()) for s in steppers], number=number, repeats=repeats)
  return {spec: {"seconds_per_step": t / chunk} | ({"bytes": sizes[spec]} if memory else {})
          for spec, t in zip(specs, seconds)}
