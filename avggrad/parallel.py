"""Data parallelism as JAX users write it: a ``Mesh`` with a ``data`` axis, the batch sharded
over it, the parameters replicated (or sharded, FSDP-style).

:class:`DataParallel` is what :func:`avggrad.loop.train`, :func:`avggrad.sweep.sweep`,
``avggrad train``/``compare`` and the benchmark runner use to place their arrays. By default it
takes every device JAX sees (all hosts' devices after ``jax.distributed.initialize()``); on one
device it places nothing, so single-device runs are exactly what they were.

The average gradient's far end on a sub-batch (``far_batch_fraction``) takes every k-th
example of the batch (:func:`avggrad.transforms.select_far_examples`): with the batch sharded
over ``data`` in contiguous blocks, each device keeps every k-th of its own examples, so the
far end moves no examples between devices (``tests/sharding_check.py`` counts the
collectives in the compiled step). With sharded parameters, :func:`shard_examples` keeps
the models' activations on the ``data`` axis in the training loop's step, so neither gradient
moves activations with all-to-alls (:meth:`DataParallel.tracing`, :func:`examples_on`: the
context the loop traces in); in a user's own code the models add no constraint.

Example:
  >>> import jax.numpy as jnp
  >>> dp = DataParallel.create()
  >>> dp.size >= 1
  True
  >>> x = dp.place_data(jnp.zeros((8, 3)))
  >>> x.shape
  (8, 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
"""The mesh axis the batch is sharded over."""

COLLECTIVES = ("collective-permute", "all-to-all", "all-gather", "all-reduce", "reduce-scatter")
"""The collectives :func:`hlo_collectives` counts."""


def hlo_collectives(compiled_text: str) -> dict[str, int]:
  """How many of each collective (:data:`COLLECTIVES`) a compiled HLO module contains.

  Args:
    compiled_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    ``{name: count}``, asynchronous ``-start`` forms included.
  """
  return {op: compiled_text.count(f" {op}(") + compiled_text.count(f" {op}-start(")
          for op in COLLECTIVES}


_EXAMPLES_MESH = jax.make_user_context(default_value=None)
# The mesh :func:`shard_examples` pins activations to, set by :func:`examples_on`. A JAX user
# context: part of jit's cache key, so a function traced inside the context and the same
# function traced outside it are two traces, never one reused for the other.


@contextlib.contextmanager
def examples_on(mesh: Mesh) -> Iterator[None]:
  """The context in which :func:`shard_examples` pins activations' examples to ``mesh``'s
  ``data`` axis (and that sets ``mesh`` as the abstract mesh, as ``jax.set_mesh`` would for
  tracing). :meth:`DataParallel.tracing` is this context over the loop's mesh.

  Args:
    mesh: a ``Mesh`` with a :data:`DATA_AXIS` axis (other axes, such as ``model``, are left to
      the partitioner). Pinning applies where that axis is ``Auto``; with an ``Explicit``
      axis the batch's sharding is in the types already and nothing is added.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> pinned = lambda x: shard_examples(jnp.tanh(x))
    >>> "sharding_constraint" in str(jax.make_jaxpr(pinned)(jnp.ones((4, 3))))
    False
    >>> with examples_on(mesh):
    ...   "sharding_constraint" in str(jax.make_jaxpr(pinned)(jnp.ones((4, 3))))
    True
  """
  if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"examples_on needs a jax.sharding.Mesh with a {DATA_AXIS!r} axis, got "
                     f"{mesh!r}.")
  with _EXAMPLES_MESH(mesh), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    yield


def _axis_is_auto(mesh: Any, axis: str) -> bool:
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  return types.get(axis) == jax.sharding.AxisType.Auto


def shard_examples(x: jax.Array) -> jax.Array:
  """``x`` with its leading (example) axis pinned to the ``data`` axis, inside the training
  loop's step only (:func:`examples_on`, :meth:`DataParallel.tracing`); ``x`` unchanged
  anywhere else.

  In the loop's step an activation's examples stay sharded as the batch is, and its other axes
  are left to the partitioner (``P.UNCONSTRAINED``). FSDP codebases constrain activations so:
  with sharded weights and few examples per device, XLA's partitioner may otherwise lay
  activations out along the features and move them with all-to-alls (for ``optax.adam`` at a
  small batch as for the average gradient's far end on every 4th example; README, "Scaling
  out"). The models of ``avggrad.models`` call it on every hidden activation.

  Why the loop's context and not the ambient mesh: the pinning is a choice of the loop (it
  is what keeps the loop's FSDP step free of all-to-alls), so a model called in a user's code
  does nothing: no mesh, ``jax.set_mesh`` with ``Auto`` or ``Explicit`` axes (where
  ``P.UNCONSTRAINED`` is an error), inside ``jax.shard_map``, or with a user's own
  activation shardings, the models are plain Flax modules. Reading the ambient mesh acted in
  the user's code (and raised under ``Explicit`` axes and in ``shard_map``); constraining only
  where the axis is ``Auto`` would still add constraints a user did not ask for; Flax's
  logical-axis constraints keep their rules outside jit's cache key and would act again in
  any user code whose rules bind the name. :func:`examples_on` is a JAX user context, so jit
  retraces when it changes. Inside it, nothing is added where the ``data`` axis is not
  ``Auto`` in the current abstract mesh (``Manual`` in a ``shard_map``, ``Explicit``), or
  when the examples do not split evenly over it.

  Args:
    x: an activation whose leading axis indexes examples.

  Returns:
    ``x``, constrained inside :func:`examples_on`.
  """
  mesh = _EXAMPLES_MESH.value
  if mesh is None or not x.ndim or x.shape[0] % mesh.shape[DATA_AXIS]:
    return x
  if not _axis_is_auto(mesh, DATA_AXIS):
    return x
  current = jax.sharding.get_abstract_mesh()
  if DATA_AXIS in current.axis_names and not _axis_is_auto(current, DATA_AXIS):
    return x
  spec = P(DATA_AXIS, *[P.UNCONSTRAINED] * (x.ndim - 1))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def lookup_sharding(ids: jax.Array) -> Optional[NamedSharding]:
  """The ``out_sharding`` of an embedding lookup of ``ids`` (``nnx.Embed(ids, out_sharding=)``).

  Under ``Explicit`` mesh axes (sharding in types: ``jax.set_mesh``, or ids placed on such a
  mesh), a lookup of ids sharded over the batch has no unambiguous output sharding and JAX
  refuses it; the output is sharded as ``ids`` are, its feature axis whole. ``None`` (JAX's
  own choice) wherever the ids' type carries no sharding: no mesh, ``Auto`` axes, inside
  ``jax.shard_map``.

  Args:
    ids: integer ids.

  Returns:
    ``NamedSharding(ids_mesh, P(*ids_spec, None))`` when ``ids`` are sharded in their type,
    else ``None``.
  """
  sharding = jax.typeof(ids).sharding
  spec = tuple(sharding.spec)
  if all(s is None for s in spec):
    return None
  return NamedSharding(sharding.mesh, P(*spec, *[None] * (ids.ndim - len(spec)), None))



def typed_shards(x: jax.Array) -> Optional[int]:
  """How many shards the leading axis of ``x`` has in its type (``Explicit`` mesh axes, as
  :func:`lookup_sharding` reads them); ``None`` where its type carries no sharding there (no
  mesh, ``Auto`` axes, inside ``jax.shard_map``, replicated)."""
  try:
    sharding = jax.typeof(x).sharding
    spec, mesh = tuple(sharding.spec), sharding.mesh
  except (AttributeError, TypeError):
    return None
  if not spec or spec[0] is None:
    return None
  names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
  return math.prod(mesh.shape[name] for name in names)

def data_mesh(devices: Union[None, int, Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis ``Mesh`` named :data:`DATA_AXIS` over ``devices``: all devices JAX sees
  (``None``), the first ``n`` of them (an int), or the given devices."""
  available = jax.devices()
  if devices is None:
    chosen = available
  elif isinstance(devices, int):
    if not 1 <= devices <= len(available):
      raise ValueError(f"devices must be between 1 and {len(available)} (the devices JAX "
                       f"sees: {available[0].platform}), got {devices}.")
    chosen = available[:devices]
  else:
    chosen = list(devices)
  return Mesh(np.asarray(chosen), (DATA_AXIS,),
              axis_types=(jax.sharding.AxisType.Auto,))


def fsdp_spec(shape: Sequence[int], size: int, skip_leading: bool = False) -> P:
  """FSDP-style: shard the largest axis whose length ``size`` divides (replicate a leaf that
  has none), skipping the leading axis when it indexes runs."""
  axes = range(1 if skip_leading else 0, len(shape))
  fits = [a for a in axes if shape[a] >= size and shape[a] % size == 0]
  if not fits:
    return P()
  axis = max(fits, key=lambda a: (shape[a], -a))
  return P(*([None] * axis), DATA_AXIS)


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """Where a training loop puts its arrays.

  Attributes:
    mesh: the ``data`` mesh, or ``None`` on one device (nothing is placed).
    shard_params: shard parameters and optimizer state FSDP-style (:func:`fsdp_spec`)
      instead of replicating them.
  """

  mesh: Optional[Mesh]
  shard_params: bool = False

  @classmethod
  def create(cls, devices: Union[None, int, Sequence[jax.Device]] = None,
             shard_params: bool = False) -> "DataParallel":
    """Over all devices by default (see :func:`data_mesh`); ``mesh=None`` on one."""
    mesh = data_mesh(devices)
    return cls(mesh if mesh.size > 1 else None, shard_params)

  @property
  def size(self) -> int:
    """Devices along the ``data`` axis."""
    return 1 if self.mesh is None else self.mesh.size

  def check_batch(self, batch_size: int) -> None:
    """Raises unless ``batch_size`` splits evenly over the devices."""
    if batch_size % self.size:
      raise ValueError(
          f"batch_size {batch_size} does not split over the {self.size} devices of the data "
          "axis; use a multiple of the device count or fewer devices (devices=..., "
          "--devices).")

  def _sharding(self, spec: P) -> Optional[NamedSharding]:
    return None if self.mesh is None else NamedSharding(self.mesh, spec)

  def place_data(self, x: Any) -> Any:
    """The dataset (or any array every device reads), replicated."""
    if self.mesh is None:
      return jax.numpy.asarray(x)
    return jax.device_put(x, self._sharding(P()))

  def batch_spec(self, ndim: int, batch_axis: int) -> P:
    """The ``PartitionSpec`` of an array whose axis ``batch_axis`` is the batch."""
    return P(*([None] * batch_axis), DATA_AXIS, *([None] * (ndim - batch_axis - 1)))

  def place_batch(self, x: Any, batch_axis: int = 0) -> Any:
    """An array whose axis ``batch_axis`` is the batch, sharded over ``data``."""
    if self.mesh is None:
      return jax.numpy.asarray(x)
    return jax.device_put(x, self._sharding(self.batch_spec(np.ndim(x), batch_axis)))

  def tracing(self) -> Any:
    """The context to trace a step in: :func:`examples_on` this mesh, so that the models
    keep activations sharded over ``data`` (:func:`shard_examples`); nothing on one device."""
    if self.mesh is None:
      return contextlib.nullcontext()
    return examples_on(self.mesh)

  def constrain_batch(self, tree: Any, batch_axis: int = 0) -> Any:
    """Inside a jitted function: every leaf sharded over ``data`` along ``batch_axis``."""
    if self.mesh is None:
      return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x, self._sharding(self.batch_spec(x.ndim, batch_axis))), tree)

  def state_sharding(self, tree: Any, runs_axis: bool = False) -> Any:
    """The shardings of parameters and optimizer state: replicated, or FSDP-style."""
    def one(x: Any) -> Any:
      if not self.shard_params:
        return self._sharding(P())
      return self._sharding(fsdp_spec(np.shape(x), self.size, skip_leading=runs_axis))
    return jax.tree.map(one, tree)

  def place_state(self, tree: Any, runs_axis: bool = False) -> Any:
    """Parameters and optimizer state, placed (see :meth:`state_sharding`)."""
    if self.mesh is None:
      return tree
    return jax.device_put(tree, self.state_sharding(tree, runs_axis))
