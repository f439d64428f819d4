"""Progress reports: a bar on a terminal, a few plain lines when output goes to a file or pipe.

Redirected to a file, a progress bar writes hundreds of carriage-return frames. When the
stream is not a terminal, :class:`Progress` writes one line per report instead (the training
loops report once per evaluation), as pip and other command-line tools do.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class Progress:
  """Reports the progress of one job of ``total`` steps.

  Args:
    total: the number of steps of the job.
    desc: what the job is (printed at the start of every line or in front of the bar).
    enabled: ``False`` reports nothing at all (``--no-progress``).
    stream: where to write (default ``sys.stderr``).
    bar: force (``True``) or forbid (``False``) the progress bar; by default a bar is shown
      only when ``stream`` is a terminal.

  Example:
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(100, "adam lr=0.001", stream=out) as p:
    ...   p.update(50, loss=0.51234)
    ...   p.update(50, loss=0.31234)
    >>> print(out.getvalue().strip())  # doctest: +ELLIPSIS
    adam lr=0.001: step 50/100 loss=0.5123 (...s)
    adam lr=0.001: step 100/100 loss=0.3123 (...s)
  """

  def __init__(self, total: int, desc: str, *, enabled: bool = True,
               stream: Optional[TextIO] = None, bar: Optional[bool] = None):
    self.total, self.desc, self.enabled = total, desc, enabled
    self.stream = stream if stream is not None else sys.stderr
    self.done = 0
    self.start = time.perf_counter()
    self._bar = None
    if enabled and (bar if bar is not None else _is_terminal(self.stream)):
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, desc=desc, leave=False, file=self.stream)

  def update(self, steps: int, **postfix: Any) -> None:
    """Records ``steps`` more steps done, with values to show (floats get 4 decimals)."""
    self.done += steps
    if not self.enabled:
      return
    text = {k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in postfix.items()}
    if self._bar is not None:
      self._bar.update(steps)
      if text:
        self._bar.set_postfix(text)
      return
    fields = " ".join(f"{k}={v}" for k, v in text.items())
    elapsed = time.perf_counter() - self.start
    print(f"{self.desc}: step {self.done}/{self.total} {fields} ({elapsed:.0f}s)".replace(
        "  ", " "), file=self.stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _is_terminal(stream: TextIO) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False
