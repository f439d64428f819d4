"""Scale-out through JAX's own sharding, on 8 forced host devices (in a subprocess)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys


def test_data_parallel_step_matches_one_device_and_keeps_shardings():
  script = pathlib.Path(__file__).with_name("sharding_check.py")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.count("shardings kept") == 7, result.stdout
