"""Loading through TensorFlow Datasets, for users whose machines can reach its downloads.

The examples are read with ``tfds.data_source`` (random access to the prepared ``array_record``
files), so *reading* needs no TensorFlow. *Preparing* a dataset the first time (TFDS's
download and conversion) runs TFDS's own builders, which read the downloaded files with
TensorFlow: the ``avggrad[data]`` extra installs it. Without TensorFlow, a dataset that is
not prepared yet fails with an error that says so.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

_EXTRA = (
    "pip install 'avggrad[data]' (tensorflow-datasets and the TensorFlow its dataset builders "
    "need), or pass data_dir / --data-dir / AVGGRAD_DATA_DIR pointing at the dataset's "
    "original files"
)


def _import_tfds() -> Any:
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(
        "Loading a dataset without a data directory uses TensorFlow Datasets, which is not "
        f"installed: {_EXTRA}."
    ) from e
  return tfds


def _records(source: Any) -> list[dict[str, Any]]:
  """Every example of a data source, in order (batched reads where the source has them)."""
  count = len(source)
  try:
    return list(source.__getitems__(list(range(count))))
  except (AttributeError, TypeError):
    return [source[i] for i in range(count)]


def load_arrays(
    name: str, split: str, *, data_dir: Optional[str] = None
) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, labels)`` of a TFDS dataset split as NumPy arrays.

  Images come as ``uint8`` arrays ``(N, 28, 28, 1)``; IMDb reviews as an object array of
  ``str`` (TFDS text features may arrive as ``bytes``; they are decoded as UTF-8). Labels are
  ``int64``.

  Raises:
    ImportError: if ``tensorflow-datasets`` is not installed, or if preparing the dataset
      needs TensorFlow and it is not installed; the message says which extra to install or
      how to read local files instead.
  """
  tfds = _import_tfds()
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir,
                              builder_kwargs={"file_format": "array_record"})
  except ModuleNotFoundError as e:
    if "tensorflow" not in str(e):
      raise
    raise ImportError(
        f"Preparing {name!r} through TensorFlow Datasets needs TensorFlow ({e}): {_EXTRA}."
    ) from e
  except NotImplementedError:
    # Prepared earlier in TFRecord format (e.g. by tfds.load), which has no random access:
    # read it the TensorFlow way (TensorFlow is there, it wrote those files).
    return _load_tfrecord(tfds, name, split, data_dir)
  records = _records(source)
  labels = np.asarray([int(r["label"]) for r in records], np.int64)
  if "image" in (records[0] if records else {}):
    inputs = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  else:
    inputs = np.asarray(
        [t.decode("utf-8") if isinstance(t, bytes) else str(t)
         for t in (r["text"] for r in records)], dtype=object)
  return inputs, labels


def _load_tfrecord(tfds: Any, name: str, split: str,
                   data_dir: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
  dataset = tfds.load(name, split=split, batch_size=-1, as_supervised=True, data_dir=data_dir)
  inputs, labels = tfds.as_numpy(dataset)
  inputs = np.asarray(inputs)
  if inputs.dtype.kind in "SO":
    inputs = np.asarray([t.decode("utf-8") if isinstance(t, bytes) else str(t)
                         for t in inputs], dtype=object)
  return inputs, np.asarray(labels, np.int64)
