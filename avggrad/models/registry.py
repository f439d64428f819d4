"""Activations and initialisers by name, from ``jax.nn`` and ``jax.nn.initializers``."""

from __future__ import annotations

import types
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = types.MappingProxyType({
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "selu": jax.nn.selu,
})
"""The activations by name (read-only)."""

_INITIALIZERS: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform,
    "glorot_normal": jax.nn.initializers.glorot_normal,
    "he_normal": jax.nn.initializers.he_normal,
    "he_uniform": jax.nn.initializers.he_uniform,
    "lecun_normal": jax.nn.initializers.lecun_normal,
    "lecun_uniform": jax.nn.initializers.lecun_uniform,
    "orthogonal": jax.nn.initializers.orthogonal,
    "zeros": lambda: jax.nn.initializers.zeros,
}

INITIALIZERS: tuple[str, ...] = tuple(sorted([*_INITIALIZERS, "normal"]))


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The activation function called ``name`` (one of ``ACTIVATIONS``).

  Raises:
    ValueError: for an unknown name, listing the valid ones.
  """
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f"Unknown activation {name!r}; expected one of {', '.join(sorted(ACTIVATIONS))}."
    ) from None


def initializer(name: str, *, std: Optional[float] = None) -> Initializer:
  """The initialiser called ``name``; ``"normal"`` takes its standard deviation ``std``.

  ``"normal:0.05"`` is accepted as a short form of ``initializer("normal", std=0.05)``.

  Raises:
    ValueError: for an unknown name (listing the valid ones), or a missing or misplaced
      ``std``.
  """
  if name.startswith("normal:"):
    name, value = name.split(":", 1)
    try:
      std = float(value)
    except ValueError:
      raise ValueError(f"Bad standard deviation in 'normal:{value}'.") from None
  if name == "normal":
    if std is None or not std > 0:
      raise ValueError("The 'normal' initialiser needs a positive std (e.g. 'normal:0.05').")
    return jax.nn.initializers.normal(stddev=std)
  if std is not None:
    raise ValueError(f"std is only used by the 'normal' initialiser, not {name!r}.")
  try:
    return _INITIALIZERS[name]()
  except KeyError:
    raise ValueError(
        f"Unknown initialiser {name!r}; expected one of {', '.join(INITIALIZERS)} "
        "(normal takes a std: 'normal:0.05')."
    ) from None
