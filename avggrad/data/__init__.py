"""Datasets: MNIST, Fashion-MNIST and IMDb from their original files or TFDS, and a small
embedded Fashion-MNIST subset that ships with the package.

:func:`load` reads the standard files from ``data_dir`` (or ``$AVGGRAD_DATA_DIR``): the IDX
``.gz`` files of the two image sets, and the original ``aclImdb`` layout (an extracted folder or
the ``.tar.gz``, read without extracting) for IMDb. Without a data directory it uses TensorFlow
Datasets, which downloads them on machines with internet access.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from typing import Optional

import numpy as np

from avggrad.data import idx, imdb
from avggrad.data.errors import DataError

DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist", "imdb_reviews", "fashion_mnist_small")
NUM_CLASSES: dict[str, int] = {"mnist": 10, "fashion_mnist": 10, "imdb_reviews": 2,
                               "fashion_mnist_small": 10}
SPLITS: tuple[str, ...] = ("train", "test")
EMBEDDED = "fashion_mnist_small"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FOLDERS = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
    "imdb_reviews": ("imdb", "imdb_reviews", "aclImdb"),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split of a dataset as NumPy arrays.

  Attributes:
    name: the dataset name.
    split: ``"train"`` or ``"test"``.
    x: images as float32 in [0, 1] of shape (N, 28, 28, 1), or int32 token ids (N, max_len).
    y: int32 labels of shape (N,).
    num_classes: number of classes.
    vocab: for IMDb, the words of ids 2, 3, ... (0 pads, 1 is out of vocabulary).
  """

  name: str
  split: str
  x: np.ndarray
  y: np.ndarray
  num_classes: int
  vocab: Optional[tuple[str, ...]] = None

  def __len__(self) -> int:
    return len(self.y)

  @property
  def vocab_size(self) -> int:
    """Number of token ids (words plus padding and out-of-vocabulary), for embeddings."""
    return 0 if self.vocab is None else len(self.vocab) + 2


def _images(raw: np.ndarray, path: str) -> np.ndarray:
  if raw.ndim != 3 or raw.shape[1:] != (28, 28):
    raise DataError(f"{path}: expected images of shape (N, 28, 28), got {raw.shape}.")
  return (raw.astype(np.float32) / 255.0)[..., None]


def _find_idx(name: str, split: str, data_dir: str) -> tuple[str, str]:
  folders = [os.path.join(data_dir, f) for f in _FOLDERS[name]] + [data_dir]
  for folder in folders:
    paths = []
    for stem in _IDX_FILES[split]:
      for candidate in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(folder, candidate)):
          paths.append(os.path.join(folder, candidate))
          break
    if len(paths) == 2:
      return paths[0], paths[1]
  raise FileNotFoundError(
      f"No {name} {split} files ({' and '.join(s + '[.gz]' for s in _IDX_FILES[split])}) in "
      f"{', '.join(folders)}. Point data_dir (--data-dir, $AVGGRAD_DATA_DIR) at a folder holding "
      "the original IDX files, or leave it unset to download through TensorFlow Datasets."
  )


def _find_imdb(data_dir: str) -> str:
  folders = [os.path.join(data_dir, f) for f in _FOLDERS["imdb_reviews"]] + [data_dir]
  for folder in folders:
    if os.path.isdir(os.path.join(folder, "aclImdb", "train")):
      return os.path.join(folder, "aclImdb")
    if os.path.basename(folder) == "aclImdb" and os.path.isdir(os.path.join(folder, "train")):
      return folder
    if os.path.isdir(folder):
      archives = sorted(
          f for f in os.listdir(folder) if f.endswith((".tar.gz", ".tgz", ".tar"))
      )
      if archives:
        return os.path.join(folder, archives[0])
  raise FileNotFoundError(
      f"No IMDb reviews (an aclImdb/ folder or an aclImdb .tar.gz) in {', '.join(folders)}. "
      "Point data_dir (--data-dir, $AVGGRAD_DATA_DIR) at the Large Movie Review Dataset, or "
      "leave it unset to download through TensorFlow Datasets."
  )


def _load_embedded(split: str) -> tuple[np.ndarray, np.ndarray]:
  with resources.files("avggrad.data").joinpath("embedded", "fashion_mnist_small.npz").open(
      "rb"
  ) as f:
    with np.load(f) as arrays:
      return arrays[f"{split}_x"], arrays[f"{split}_y"]


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: Optional[str] = None,
    limit: Optional[int] = None,
    vocab_size: int = 20000,
    max_len: int = 256,
    cache_dir: Optional[str] = None,
) -> Dataset:
  """Loads one split of a dataset as NumPy arrays.

  Args:
    name: ``"mnist"``, ``"fashion_mnist"``, ``"imdb_reviews"`` or ``"fashion_mnist_small"``
      (3,000 training and 1,000 test images of Fashion-MNIST shipped with the package).
    split: ``"train"`` or ``"test"``.
    data_dir: a folder with the original files (the dataset's own folder or a parent holding
      ``mnist/``, ``fashion_mnist/``, ``imdb/``); defaults to ``$AVGGRAD_DATA_DIR``; without
      either, TensorFlow Datasets is used.
    limit: keep only the first ``limit`` examples (IMDb is shuffled with a fixed seed first,
      since its files are ordered by label).
    vocab_size: IMDb only: number of most frequent training words in the vocabulary.
    max_len: IMDb only: token ids per review (cut or padded).
    cache_dir: IMDb only: where to cache the encoded arrays (default
      :func:`avggrad.data.imdb.default_cache_dir`).

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: for an unknown dataset or split name, or a bad ``limit``.
    FileNotFoundError: when the files are not in ``data_dir`` (the message lists where it
      looked and how to supply them).
    DataError: when a file is malformed.

  Example:
    >>> from avggrad import data
    >>> train = data.load("fashion_mnist_small", "train")
    >>> train.x.shape, train.x.dtype, train.num_classes
    ((3000, 28, 28, 1), dtype('float32'), 10)
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; expected one of {', '.join(DATASETS)}.")
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
  if limit is not None and limit < 1:
    raise ValueError(f"limit must be positive, got {limit}.")
  data_dir = data_dir or os.environ.get("AVGGRAD_DATA_DIR") or None
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(f"Data directory {data_dir!r} does not exist.")
  vocab = None
  if name == EMBEDDED:
    raw, labels = _load_embedded(split)
    x = _images(raw, "embedded fashion_mnist_small")
  elif name == "imdb_reviews":
    source = _find_imdb(data_dir) if data_dir else "tfds"
    arrays = imdb.load_encoded(source, vocab_size=vocab_size, max_len=max_len,
                               cache_dir=cache_dir)
    order = np.random.default_rng(0).permutation(len(arrays[f"{split}_y"]))
    x, labels = arrays[f"{split}_x"][order], arrays[f"{split}_y"][order]
    vocab = tuple(str(w) for w in arrays["vocab"])
  elif data_dir:
    images_path, labels_path = _find_idx(name, split, data_dir)
    x = _images(idx.read_idx(images_path), images_path)
    labels = idx.read_idx(labels_path)
    if labels.ndim != 1 or len(labels) != len(x):
      raise DataError(
          f"{labels_path}: {labels.shape} labels for {len(x)} images in {images_path}."
      )
  else:
    from avggrad.data.tfds import load_arrays

    raw, labels = load_arrays(name, split)
    x = _images(raw.reshape(raw.shape[0], 28, 28), f"tfds {name}")
  labels = np.asarray(labels, np.int32)
  if limit is not None:
    x, labels = x[:limit], labels[:limit]
  return Dataset(name=name, split=split, x=x, y=labels, num_classes=NUM_CLASSES[name],
                 vocab=vocab)


__all__ = ["DATASETS", "DataError", "Dataset", "SPLITS", "load"]
