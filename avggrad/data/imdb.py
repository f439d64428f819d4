"""The Large Movie Review Dataset (IMDb) from its original ``aclImdb`` layout.

The reviews are read from an extracted ``aclImdb/`` folder or straight from the ``.tar.gz``
(without extracting), tokenized (lowercase, ``<br />`` markup removed, words of letters, digits
and inner apostrophes), and encoded with a vocabulary of the ``vocab_size`` most frequent
training words: id 0 pads, id 1 is out of vocabulary, words start at 2. Every review is cut or
padded to ``max_len`` ids. The encoded arrays are cached on disk, keyed by the source file and
these settings, in a user cache directory (never next to the data).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import tarfile
from typing import Iterable, Iterator, Optional

import numpy as np

from avggrad.data.errors import DataError

PAD_ID, OOV_ID = 0, 1
TOKENIZER_VERSION = 1
_MEMBER = re.compile(r"(?:^|/)aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
  """Lowercases, removes ``<br />`` markup and splits into words.

  Example:
    >>> tokenize("A <br />great film, isn't it? 10/10")
    ['a', 'great', 'film', "isn't", 'it', '10', '10']
  """
  return _TOKEN.findall(text.lower().replace("<br />", " "))


def _folder_reviews(root: str) -> Iterator[tuple[str, str, int, str]]:
  for split in ("train", "test"):
    for label in ("neg", "pos"):
      folder = os.path.join(root, split, label)
      if not os.path.isdir(folder):
        continue
      for name in os.listdir(folder):
        match = _MEMBER.search(f"aclImdb/{split}/{label}/{name}")
        if match:
          with open(os.path.join(folder, name), encoding="utf-8") as f:
            yield split, label, int(match.group(3)), f.read()


def _tar_reviews(path: str) -> Iterator[tuple[str, str, int, str]]:
  try:
    with tarfile.open(path, "r:*") as archive:
      for member in archive:
        match = _MEMBER.search(member.name)
        if match and member.isfile():
          data = archive.extractfile(member).read()
          yield match.group(1), match.group(2), int(match.group(3)), data.decode("utf-8")
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(f"{path}: not a readable tar archive ({e}).") from e


def read_reviews(source: str) -> dict[str, tuple[list[str], np.ndarray]]:
  """Reads ``{split: (texts, labels)}`` from an ``aclImdb`` folder or archive.

  Labels are 1 for ``pos`` and 0 for ``neg``; reviews are ordered by split, label and id.

  Raises:
    DataError: if a split or a class is missing from the source.
  """
  reader = _folder_reviews if os.path.isdir(source) else _tar_reviews
  found: dict[str, list[tuple[int, int, str]]] = {"train": [], "test": []}
  for split, label, review_id, text in reader(source):
    found[split].append((int(label == "pos"), review_id, text))
  result = {}
  for split, rows in found.items():
    labels = {r[0] for r in rows}
    if labels != {0, 1}:
      raise DataError(
          f"{source}: expected aclImdb/{split}/pos and aclImdb/{split}/neg reviews named "
          f"<id>_<rating>.txt; found {len(rows)} reviews with labels {sorted(labels)}."
      )
    rows.sort(key=lambda r: (r[0], r[1]))
    result[split] = ([r[2] for r in rows], np.array([r[0] for r in rows], np.int32))
  return result


def build_vocab(token_lists: Iterable[list[str]], size: int) -> list[str]:
  """The ``size`` most frequent words (ties broken alphabetically)."""
  counts = collections.Counter()
  for tokens in token_lists:
    counts.update(tokens)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return [word for word, _ in ranked[:size]]


def encode(token_lists: list[list[str]], vocab: list[str], max_len: int) -> np.ndarray:
  """Token ids, cut or padded (with ``PAD_ID``) to ``max_len``; unknown words -> OOV."""
  index = {word: i + 2 for i, word in enumerate(vocab)}
  out = np.full((len(token_lists), max_len), PAD_ID, np.int32)
  for row, tokens in enumerate(token_lists):
    ids = [index.get(t, OOV_ID) for t in tokens[:max_len]]
    out[row, : len(ids)] = ids
  return out


def default_cache_dir() -> str:
  """``$AVGGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/avggrad``, else ``~/.cache/avggrad``."""
  if os.environ.get("AVGGRAD_CACHE_DIR"):
    return os.environ["AVGGRAD_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "avggrad")


def read_reviews_tfds() -> dict[str, tuple[list[str], np.ndarray]]:
  """Reads ``{split: (texts, labels)}`` of ``imdb_reviews`` through TensorFlow Datasets."""
  from avggrad.data.tfds import load_arrays

  result = {}
  for split in ("train", "test"):
    texts, labels = load_arrays("imdb_reviews", split)
    result[split] = ([str(t) for t in texts], labels.astype(np.int32))
  return result


def _source_fingerprint(source: str) -> dict:
  if source == "tfds":
    return {"kind": "tfds", "name": "imdb_reviews"}
  source = os.path.realpath(source)
  if os.path.isdir(source):
    stamp = [os.path.getmtime(os.path.join(source, s)) for s in ("train", "test")
             if os.path.exists(os.path.join(source, s))]
    return {"path": source, "kind": "folder", "mtime": max(stamp, default=0.0)}
  stat = os.stat(source)
  return {"path": source, "kind": "archive", "size": stat.st_size, "mtime": stat.st_mtime}


def load_encoded(
    source: str,
    *,
    vocab_size: int = 20000,
    max_len: int = 256,
    cache_dir: Optional[str] = None,
) -> dict[str, np.ndarray]:
  """Both splits encoded (``train_x``, ``train_y``, ``test_x``, ``test_y``, ``vocab``), cached.

  ``source`` is an ``aclImdb`` folder or archive, or ``"tfds"`` to read through TensorFlow
  Datasets. The first call tokenizes the 50,000 reviews (about a minute); later calls with the
  same source and settings read the cache.
  """
  if vocab_size < 1 or max_len < 1:
    raise ValueError(f"vocab_size and max_len must be positive, got {vocab_size}, {max_len}.")
  key = json.dumps(
      {"source": _source_fingerprint(source), "vocab_size": vocab_size, "max_len": max_len,
       "tokenizer": TOKENIZER_VERSION},
      sort_keys=True,
  )
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  cache_dir = cache_dir or default_cache_dir()
  cache_path = os.path.join(cache_dir, f"imdb-{digest}.npz")
  if os.path.exists(cache_path):
    with np.load(cache_path, allow_pickle=False) as cached:
      return {k: cached[k] for k in cached.files}
  reviews = read_reviews_tfds() if source == "tfds" else read_reviews(source)
  tokens = {split: [tokenize(t) for t in texts] for split, (texts, _) in reviews.items()}
  vocab = build_vocab(tokens["train"], vocab_size)
  arrays = {
      "train_x": encode(tokens["train"], vocab, max_len),
      "train_y": reviews["train"][1],
      "test_x": encode(tokens["test"], vocab, max_len),
      "test_y": reviews["test"][1],
      "vocab": np.array(vocab),
  }
  os.makedirs(cache_dir, exist_ok=True)
  tmp = cache_path + f".{os.getpid()}.tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, cache_path)
  return arrays
