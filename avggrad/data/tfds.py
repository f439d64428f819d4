"""Loading through TensorFlow Datasets, for users whose machines can reach its downloads."""

from __future__ import annotations

from typing import Optional

import numpy as np


def load_arrays(name: str, split: str, *, data_dir: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, labels)`` of a TFDS dataset split as NumPy arrays (images as uint8).

  Raises:
    ImportError: if ``tensorflow-datasets`` is not installed, saying how to install it or how
      to read local files instead.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
        f"Loading {name!r} without a data directory uses TensorFlow Datasets, which is not "
        "installed: pip install 'avggrad[data]' (and tensorflow), or pass data_dir / "
        "--data-dir / AVGGRAD_DATA_DIR pointing at the dataset's original files."
    ) from e
  dataset = tfds.load(name, split=split, batch_size=-1, as_supervised=True, data_dir=data_dir)
  inputs, labels = tfds.as_numpy(dataset)
  return np.asarray(inputs), np.asarray(labels)
