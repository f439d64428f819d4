"""The TensorFlow Datasets path of avggrad.data.load, offline through tfds.testing.mock_data.

Users with internet (Colab) load without a data directory, through TFDS. These tests run that
path on TFDS's mock data and check it against the original-files path: the same shapes,
dtypes, value ranges and labels, and for IMDb the same tokenizer and cache.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from avggrad import data
from avggrad.data import imdb

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"

tfds = pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def no_data_dir(monkeypatch):
  """Without a data directory, data.load goes through TFDS."""
  monkeypatch.delenv("AVGGRAD_DATA_DIR", raising=False)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_images_have_the_idx_paths_shapes_dtypes_ranges_and_labels(name, no_data_dir):
  with tfds.testing.mock_data(num_examples=24):
    train = data.load(name, "train")
    test = data.load(name, "test", limit=10)
    raw = [tfds.data_source(name, split="train")[i] for i in range(24)]
  local = data.load(name, "test", data_dir=str(SHARED), limit=50) if SHARED.is_dir() else None
  for split in (train, test):
    assert split.x.dtype == np.float32 and split.x.shape[1:] == (28, 28, 1)
    assert split.y.dtype == np.int32 and split.num_classes == 10
    assert 0.0 <= split.x.min() and split.x.max() <= 1.0
    assert set(split.y.tolist()) <= set(range(10))
    if local is not None:
      assert (split.x.dtype, split.x.shape[1:], split.y.dtype) == (
          local.x.dtype, local.x.shape[1:], local.y.dtype)
  assert train.x.shape[0] == 24 and len(test) == 10
  # the pixels and labels are the source's, scaled to [0, 1]
  np.testing.assert_array_equal(train.x * 255.0, np.stack([r["image"] for r in raw]))
  np.testing.assert_array_equal(train.y, [int(r["label"]) for r in raw])


def test_tfds_imdb_text_goes_through_the_same_tokenizer_and_cache(no_data_dir, tmp_path,
                                                                   monkeypatch):
  with tfds.testing.mock_data(num_examples=30):
    arrays = data.load("imdb_reviews", "train", vocab_size=40, max_len=12,
                       cache_dir=str(tmp_path))
    texts = {s: [r["text"] for r in (tfds.data_source("imdb_reviews", split=s)[i]
                                      for i in range(30))] for s in ("train", "test")}
    labels = [int(tfds.data_source("imdb_reviews", split="train")[i]["label"])
              for i in range(30)]
  # text may come as bytes or str: both decode to the same tokens
  texts = {s: [t.decode() if isinstance(t, bytes) else t for t in ts] for s, ts in texts.items()}
  tokens = {s: [imdb.tokenize(t) for t in ts] for s, ts in texts.items()}
  vocab = imdb.build_vocab(tokens["train"], 40)
  expected = imdb.encode(tokens["train"], vocab, 12)
  order = np.random.default_rng(0).permutation(30)  # data.load's fixed shuffle
  assert arrays.x.dtype == np.int32 and arrays.x.shape == (30, 12)
  np.testing.assert_array_equal(arrays.x, expected[order])
  np.testing.assert_array_equal(arrays.y, np.asarray(labels)[order])
  assert arrays.vocab == tuple(vocab) and set(arrays.y.tolist()) <= {0, 1}
  assert arrays.num_classes == 2
  # the encoded arrays are cached in the given directory: a second load reads them back
  assert len(list(tmp_path.glob("imdb-*.npz"))) == 1
  monkeypatch.setattr(imdb, "read_reviews_tfds", lambda: pytest.fail("cache not used"))
  again = data.load("imdb_reviews", "train", vocab_size=40, max_len=12, cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again.x, arrays.x)


def test_tfds_missing_names_the_extra(no_data_dir, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match=r"avggrad\[data\]"):
    data.load("mnist", "train")


def test_tfds_preparation_without_tensorflow_names_the_extra(no_data_dir, monkeypatch):
  def data_source(*args, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'")

  monkeypatch.setattr(tfds, "data_source", data_source)
  with pytest.raises(ImportError, match=r"needs TensorFlow.*avggrad\[data\]"):
    data.load("fashion_mnist", "train")
