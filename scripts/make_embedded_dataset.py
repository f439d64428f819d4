"""Builds avggrad/data/embedded/fashion_mnist_small.npz from the original Fashion-MNIST files.

Takes, for each of the 10 classes, the first 300 training images and the first 100 test
images in file order (3,000 + 1,000, uint8). Usage::

  python scripts/make_embedded_dataset.py /path/to/fashion_mnist
"""

from __future__ import annotations

import os
import sys

import numpy as np

from avggrad.data import idx


def first_per_class(images: np.ndarray, labels: np.ndarray, per_class: int):
  keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
  keep.sort()
  return images[keep], labels[keep].astype(np.uint8)


def main(folder: str) -> None:
  arrays = {}
  for split, stem, per_class in [("train", "train", 300), ("test", "t10k", 100)]:
    images = idx.read_idx(os.path.join(folder, f"{stem}-images-idx3-ubyte.gz"))
    labels = idx.read_idx(os.path.join(folder, f"{stem}-labels-idx1-ubyte.gz"))
    arrays[f"{split}_x"], arrays[f"{split}_y"] = first_per_class(images, labels, per_class)
  out = os.path.join(os.path.dirname(__file__), "..", "avggrad", "data", "embedded",
                     "fashion_mnist_small.npz")
  np.savez_compressed(out, **arrays)
  print(out, {k: v.shape for k, v in arrays.items()}, os.path.getsize(out), "bytes")


if __name__ == "__main__":
  main(sys.argv[1])
