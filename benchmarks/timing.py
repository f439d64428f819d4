"""Timing and memory measurements shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import jax


def peak_bytes(fn: Callable[..., Any], *args: Any) -> int:
  """Bytes XLA allocates for one call of ``jax.jit(fn)``: arguments, outputs and temporaries."""
  compiled = jax.jit(fn).lower(*args).compile()
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
