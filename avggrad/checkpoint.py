"""Checkpoints of a training run with Orbax: the parameters, the optimizer state, the step,
what regenerates the data order (its position and a hash to check it on resume) and the
record so far, so that a rerun resumes where the last one stopped. A checkpoint's size does
not grow with the step (:func:`avggrad.loop.encode_record`).

:func:`avggrad.loop.train` (``checkpoint_dir=..., checkpoint_every=K``; ``avggrad train
--checkpoint-dir DIR --checkpoint-every K``) saves every ``K`` steps with an
``orbax.checkpoint.CheckpointManager`` and, when the folder already holds a checkpoint of the
same configuration, restores the latest one first. Arrays are restored into the shardings of
the run that reads them, so a checkpoint written on 8 devices resumes on 1 and vice versa.

Safety: the folder must be empty, new, or one that this module wrote (it holds
``avggrad_run.json``); anything else is refused rather than written into. A checkpoint of
another configuration, or one that cannot be read, raises :class:`CheckpointError` naming the
problem; nothing is deleted then.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np

MARKER = "avggrad_run.json"
"""The file that marks a folder as an avggrad run's checkpoints (it holds the config)."""


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be used: foreign files, another configuration, or a
  checkpoint that cannot be read."""


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of a pytree of arrays: the target to restore into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpointer:
  """Saves and restores one run's state in ``directory``.

  Args:
    directory: the folder (created if missing).
    config: the run's configuration as a JSON-able dict; a folder holding another
      configuration's checkpoints is refused.
    max_to_keep: checkpoints kept (older ones of this run are deleted).
  """

  def __init__(self, directory: str, config: dict[str, Any], *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp

    self.directory = os.path.abspath(directory)
    self.config = config
    marker = os.path.join(self.directory, MARKER)
    if os.path.isdir(self.directory) and os.listdir(self.directory):
      if not os.path.exists(marker):
        raise CheckpointError(
            f"{self.directory} is not empty and holds no avggrad checkpoints ({MARKER} is "
            "missing); refusing to write into it. Give an empty or new folder.")
      try:
        with open(marker) as f:
          saved = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{marker} cannot be read ({e}); the checkpoint folder is "
                              "corrupt.") from e
      different = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
      if different:
        raise CheckpointError(
            f"{self.directory} holds checkpoints of another configuration (differing: "
            + ", ".join(f"{k}={saved.get(k)!r} there, {config.get(k)!r} here"
                        for k in different) + "); use another folder.")
    else:
      os.makedirs(self.directory, exist_ok=True)
      if jax.process_index() == 0:
        with open(marker, "w") as f:
          json.dump(config, f, indent=2, sort_keys=True)
    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=("state", "record"))

  def latest_step(self) -> Optional[int]:
    """The step of the newest checkpoint, ``None`` if there is none."""
    return self.manager.latest_step()

  def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Writes the state (a pytree of arrays) and the record (JSON-able) at ``step``."""
    args = self._ocp.args
    self.manager.save(step, args=args.Composite(state=args.StandardSave(state),
                                                record=args.JsonSave(record)))
    self.manager.wait_until_finished()

  def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """The state (into the shapes, dtypes and shardings of ``like``) and the record."""
    args = self._ocp.args
    try:
      out = self.manager.restore(step, args=args.Composite(
          state=args.StandardRestore(_abstract(like)), record=args.JsonRestore()))
    except Exception as e:  # orbax raises many kinds for a damaged or foreign checkpoint
      raise CheckpointError(
          f"the checkpoint at step {step} in {self.directory} cannot be restored: "
          f"{type(e).__name__}: {e}") from e
    state, record = out["state"], out["record"]
    got = jax.tree.map(np.shape, state)
    want = jax.tree.map(np.shape, like)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
      raise CheckpointError(f"the checkpoint at step {step} in {self.directory} does not "
                            "match this model and optimizer.")
    return state, record

  def close(self) -> None:
    self.manager.close()
