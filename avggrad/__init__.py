"""avggrad: train deep networks with the average gradient over each weight update.

The average gradient :math:`\\bar g = \\int_0^1 \\nabla L(w + \\tau\\Delta)\\,d\\tau` sees the loss
change a step really causes. This package provides its estimators
(:func:`value_and_average_grad`), Optax transformations that feed it to RMSProp and Adam
(:func:`average_gradient`, :func:`scale_by_average_gradient`, :func:`rmsprop`,
:func:`adam`), and same-core baselines (:func:`rmsprop_baseline`, :func:`adam_baseline`).
"""

from avggrad.step_length import AUTO_DEFAULTS, ScaleByAutoState, auto, auto_adam, current_scale
from avggrad.aliases import adam, adam_baseline, rmsprop, rmsprop_baseline
from avggrad.estimators import ESTIMATORS, coverage, value_and_average_grad
from avggrad.transforms import (
    PAPER_FORM,
    ACCUMULATORS,
    COMBINES,
    RANGES,
    AverageGradientState,
    ScaleByAdamState,
    ScaleByAverageGradientState,
    ScaleByRmsState,
    average_gradient,
    scale_by_adam,
    scale_by_average_gradient,
    scale_by_rms,
)

__version__ = "0.1.0"


def __getattr__(name: str):
  # compare_on imports the training harness (Flax, the data loaders): only when asked for.
  if name == "compare_on":
    from avggrad.custom import compare_on

    return compare_on
  raise AttributeError(f"module 'avggrad' has no attribute {name!r}")

__all__ = [
    "ACCUMULATORS",
    "AUTO_DEFAULTS",
    "COMBINES",
    "ESTIMATORS",
    "PAPER_FORM",
    "RANGES",
    "AverageGradientState",
    "ScaleByAutoState",
    "ScaleByAdamState",
    "ScaleByAverageGradientState",
    "ScaleByRmsState",
    "adam",
    "adam_baseline",
    "auto",
    "auto_adam",
    "average_gradient",
    "compare_on",
    "coverage",
    "current_scale",
    "rmsprop",
    "rmsprop_baseline",
    "scale_by_adam",
    "scale_by_average_gradient",
    "scale_by_rms",
    "value_and_average_grad",
]
