"""Figures at the size a README needs: a small palette PNG.

The loss-curve figures are mostly noise-like minibatch curves and translucent bands, which a
full-colour PNG stores at 100-300 KB each; quantized to a small palette at screen resolution
they take a fifth of that and read the same.
"""

from __future__ import annotations

import io
from typing import Any

DPI = 80  # dots per inch of the saved figures (a figure 8 in wide is 640 pixels)
COLORS = 64  # colours of the palette


def save_png(fig: Any, path: str, *, dpi: int = DPI, colors: int = COLORS) -> None:
  """Saves a Matplotlib figure at ``path`` as a PNG of at most ``colors`` colours.

  Args:
    fig: the Matplotlib figure.
    path: where to write the PNG.
    dpi: the resolution, dots per inch of the figure's size.
    colors: the palette's size (quantized without dithering, which would add noise).
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  buffer.seek(0)
  image = Image.open(buffer).convert("RGB")
  image.quantize(colors=colors, dither=Image.Dither.NONE).save(path, optimize=True)
