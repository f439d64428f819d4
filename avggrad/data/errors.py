"""Errors raised by the dataset loaders."""


class DataError(ValueError):
  """A dataset file exists but is malformed (bad magic number, wrong size, bad layout)."""
