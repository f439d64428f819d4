"""Loaders on tiny fixtures written here, the error cases, and the offline copies."""

from __future__ import annotations

import gzip
import io
import pathlib
import struct
import tarfile

import numpy as np
import pytest

from avggrad import data
from avggrad.data import idx, imdb

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_mnist_like(folder: pathlib.Path, n_train=20, n_test=10, gz=True) -> tuple:
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, stem, n in [("train", "train", n_train), ("test", "t10k", n_test)]:
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    idx.write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
    idx.write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)
    arrays[split] = (images, labels)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_what_was_written(tmp_path, gz):
  arrays = _write_mnist_like(tmp_path / "fashion_mnist", gz=gz)
  for split in ("train", "test"):
    ds = data.load("fashion_mnist", split, data_dir=str(tmp_path))
    images, labels = arrays[split]
    assert ds.x.shape == (len(labels), 28, 28, 1) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x[..., 0], images / 255.0)
    np.testing.assert_array_equal(ds.y, labels)
    assert ds.y.dtype == np.int32 and ds.num_classes == 10
  # the dataset's own folder works too, and limit keeps the first examples
  ds = data.load("fashion_mnist", "train", data_dir=str(tmp_path / "fashion_mnist"), limit=5)
  np.testing.assert_array_equal(ds.y, arrays["train"][1][:5])


def test_idx_bad_magic_and_size(tmp_path):
  path = tmp_path / "bad.gz"
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2, 28, 28) + b"\0" * 100)
  with pytest.raises(data.DataError, match=r"shape \(2, 28, 28\).*1568 bytes.*100 bytes"):
    idx.read_idx(path)
  path = tmp_path / "magic"
  path.write_bytes(b"\x12\x34\x56\x78" + b"\0" * 16)
  with pytest.raises(data.DataError, match="bad IDX magic number 0x12345678"):
    idx.read_idx(path)
  path = tmp_path / "notgzip.gz"
  path.write_bytes(b"plain bytes")
  with pytest.raises(data.DataError, match="cannot be read"):
    idx.read_idx(path)


def test_label_count_must_match_images(tmp_path):
  folder = tmp_path / "mnist"
  _write_mnist_like(folder)
  idx.write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
  with pytest.raises(data.DataError, match="19.*labels for 20 images"):
    data.load("mnist", "train", data_dir=str(tmp_path))


def test_missing_files_say_where_and_how(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No mnist train files.*AVGGRAD_DATA_DIR"):
    data.load("mnist", "train", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load("mnist", "train", data_dir=str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="No IMDb reviews"):
    data.load("imdb_reviews", "train", data_dir=str(tmp_path))


def test_unknown_names():
  with pytest.raises(ValueError, match="Unknown dataset 'cifar10'.*fashion_mnist"):
    data.load("cifar10")
  with pytest.raises(ValueError, match="Unknown split 'validation'"):
    data.load("mnist", "validation")


REVIEWS = {
    ("train", "pos", 0, 9): "A great film.<br />Great acting!",
    ("train", "pos", 1, 8): "great great fun",
    ("train", "neg", 0, 2): "A dull film, isn't it?",
    ("train", "neg", 1, 1): "dull dull dull",
    ("test", "pos", 0, 10): "great",
    ("test", "neg", 0, 3): "unseen words only",
}


def _write_acl_folder(root: pathlib.Path) -> None:
  for (split, label, rid, rating), text in REVIEWS.items():
    folder = root / "aclImdb" / split / label
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{rid}_{rating}.txt").write_text(text)


def _write_acl_tar(path: pathlib.Path) -> None:
  with tarfile.open(path, "w:gz") as archive:
    for (split, label, rid, rating), text in REVIEWS.items():
      payload = text.encode()
      info = tarfile.TarInfo(f"aclImdb/{split}/{label}/{rid}_{rating}.txt")
      info.size = len(payload)
      archive.addfile(info, io.BytesIO(payload))


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_imdb_loader_encodes_and_caches(tmp_path, layout, monkeypatch):
  source = tmp_path / "imdb"
  source.mkdir()
  if layout == "folder":
    _write_acl_folder(source)
  else:
    _write_acl_tar(source / "aclImdb_v1.tar.gz")
  cache = tmp_path / "cache"
  train = data.load("imdb_reviews", "train", data_dir=str(tmp_path), vocab_size=3, max_len=6,
                    cache_dir=str(cache))
  # vocabulary: the 3 most frequent training words (ties alphabetical): dull 4, great 4, a 2
  assert train.vocab == ("dull", "great", "a")
  assert train.vocab_size == 5 and train.num_classes == 2
  # ids: 0 pads, 1 out of vocabulary, then dull=2, great=3, a=4
  encoded = {tuple(x): int(y) for x, y in zip(train.x.tolist(), train.y.tolist())}
  assert encoded == {
      (4, 3, 1, 3, 1, 0): 1,  # a great film <br /> great acting
      (3, 3, 1, 0, 0, 0): 1,  # great great fun
      (4, 2, 1, 1, 1, 0): 0,  # a dull film isn't it
      (2, 2, 2, 0, 0, 0): 0,  # dull dull dull
  }
  test = data.load("imdb_reviews", "test", data_dir=str(tmp_path), vocab_size=3, max_len=6,
                   cache_dir=str(cache))
  assert {tuple(x): int(y) for x, y in zip(test.x.tolist(), test.y.tolist())} == {
      (3, 0, 0, 0, 0, 0): 1,
      (1, 1, 1, 0, 0, 0): 0,
  }
  cached = list(cache.iterdir())
  assert len(cached) == 1 and cached[0].suffix == ".npz"

  def no_reading(*args, **kwargs):
    raise AssertionError("the reviews were read again instead of the cache")

  monkeypatch.setattr(imdb, "read_reviews", no_reading)
  again = data.load("imdb_reviews", "train", data_dir=str(tmp_path), vocab_size=3, max_len=6,
                    cache_dir=str(cache))
  np.testing.assert_array_equal(again.x, train.x)
  with pytest.raises(AssertionError, match="read again"):  # other settings, another entry
    data.load("imdb_reviews", "train", data_dir=str(tmp_path), vocab_size=4, max_len=6,
              cache_dir=str(cache))


def test_imdb_truncates_to_max_len(tmp_path):
  _write_acl_folder(tmp_path / "imdb")
  ds = data.load("imdb_reviews", "train", data_dir=str(tmp_path), vocab_size=10, max_len=2,
                 cache_dir=str(tmp_path / "cache"))
  assert ds.x.shape == (4, 2)


def test_imdb_missing_class_is_an_error(tmp_path):
  _write_acl_folder(tmp_path / "imdb")
  for f in (tmp_path / "imdb" / "aclImdb" / "test" / "neg").iterdir():
    f.unlink()
  with pytest.raises(data.DataError, match="aclImdb/test/pos and aclImdb/test/neg"):
    data.load("imdb_reviews", "train", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_tokenizer():
  assert imdb.tokenize("Don't<br />STOP--now!") == ["don't", "stop", "now"]


def test_embedded_dataset():
  train = data.load("fashion_mnist_small", "train")
  test = data.load("fashion_mnist_small", "test")
  assert train.x.shape == (3000, 28, 28, 1) and test.x.shape == (1000, 28, 28, 1)
  assert np.bincount(train.y).tolist() == [300] * 10
  assert 0.0 <= train.x.min() and train.x.max() <= 1.0


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"offline dataset copies not found at {SHARED}")
def test_offline_copies():
  fashion = data.load("fashion_mnist", "train", data_dir=str(SHARED))
  assert fashion.x.shape == (60000, 28, 28, 1) and np.bincount(fashion.y).tolist() == [6000] * 10
  mnist = data.load("mnist", "test", data_dir=str(SHARED))
  assert mnist.x.shape == (10000, 28, 28, 1)
  mnist_train = data.load("mnist", "train", data_dir=str(SHARED))
  assert mnist_train.x.shape == (10000, 28, 28, 1)  # the 10k-digit subset
  imdb_test = data.load("imdb_reviews", "test", data_dir=str(SHARED), limit=500)
  assert imdb_test.x.shape == (500, 256) and imdb_test.vocab_size == 20002
  assert 100 < imdb_test.y.sum() < 400  # shuffled, not ordered by label

