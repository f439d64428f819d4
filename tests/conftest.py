"""Shared fixtures: float64 mode and small pure-JAX networks for independent checks."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def x64():
  """Runs a test with float64 enabled (exactness checks need more than float32 digits)."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


# Scripts run in their own processes by test_sharding.py: importing them (as doctest
# collection would) sets XLA_FLAGS and could give this process 8 forced host devices.
collect_ignore = ["sharding_check.py", "multihost_check.py"]
