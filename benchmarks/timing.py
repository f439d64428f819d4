"""Timing and memory measurements shared by the benchmark scripts (see :mod:`avggrad.timing`)."""

from avggrad.timing import interleaved_seconds, peak_bytes, step_seconds

__all__ = ["interleaved_seconds", "peak_bytes", "step_seconds"]
