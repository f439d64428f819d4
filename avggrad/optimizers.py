"""The optimizer registry: every optimizer the command line, the training loop and the
benchmarks know by name, and the spec strings that configure them.

A spec is ``"name"`` or ``"name:key=value,key=value"`` (:func:`parse_optimizer`), e.g.
``"avg-adam:span=4"`` or ``"rmsprop:momentum=0.9,nesterov=true"``. :func:`make_optimizer`
builds it for a learning rate (a number, a traced value or a schedule).

Built in (:data:`BUILTIN`; :func:`names` lists every registered one): avggrad's optimizers and
their same-core baselines (``rmsprop``, ``avg-rmsprop``, ``adam``, ``avg-adam``:
:func:`avggrad.rmsprop_baseline`, :func:`avggrad.rmsprop`, :func:`avggrad.adam_baseline`,
:func:`avggrad.adam`), Optax's own
RMSProp and Adam, and the peers a user would pick instead (AdamW, NAdam, Lion, ADOPT, Muon,
Sophia, SAM, schedule-free AdamW), some of them also wrapped in
:func:`avggrad.average_gradient` with its defaults (``avg-adamw``, ``avg-nadam``, ``avg-lion``,
``avg-muon``, ``avg-schedule-free-adamw``). Research code registers more with
:func:`register_optimizer` (``benchmarks.experimental.register()``); registration is always an
explicit call, never a side effect of an import.
"""

from __future__ import annotations

import functools
import inspect
import re

from typing import Any, Callable

import jax
import optax

from avggrad import aliases, step_length, transforms

Factory = Callable[..., optax.GradientTransformation]


def _with_objective(tx: optax.GradientTransformation, name: str) -> optax.GradientTransformation:
  """Adapts an Optax transformation that needs the loss under another name: ``obj_fn``
  (params -> loss, Sophia) or ``grad_fn`` ((params, i) -> gradient, SAM's opaque mode), built
  from the ``value_fn`` and ``batch`` every optimizer receives in :mod:`avggrad.training`."""

  def update_fn(updates: Any, state: Any, params: Any = None, *, value_fn: Any = None,
                batch: Any = None, **extra_args: Any) -> Any:
    del extra_args
    if value_fn is None:
      raise TypeError(f"{name} needs value_fn (and batch) in update.")
    loss = (lambda p: value_fn(p, batch)) if batch is not None else value_fn
    if name == "sophia":
      return tx.update(updates, state, params, obj_fn=loss)
    return tx.update(updates, state, params, grad_fn=lambda p, _: jax.grad(loss)(p))

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _signed(*sources: Callable[..., Any], drop: tuple[str, ...] = (),
            **defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Gives a factory that forwards ``**options`` the named parameters of ``sources`` (the
  functions it forwards to; ``learning_rate`` first, ``drop`` left out, ``defaults`` in place
  of theirs) as its signature, so that ``optax.inject_hyperparams`` can bind it: it binds a
  factory's signature, and a ``**options`` catch-all reaches the factory as one keyword named
  ``options``."""

  def sign(factory: Callable[..., Any]) -> Callable[..., Any]:
    params: dict[str, inspect.Parameter] = {}
    for source in sources:
      for p in inspect.signature(source).parameters.values():
        if (p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in drop
            or p.name in params):
          continue
        kind = p.POSITIONAL_OR_KEYWORD if p.name == "learning_rate" else p.KEYWORD_ONLY
        params[p.name] = p.replace(kind=kind, default=defaults.get(p.name, p.default))
    first = [params.pop("learning_rate")] if "learning_rate" in params else []
    factory.__signature__ = inspect.Signature(first + list(params.values()))
    return factory

  return sign


@_signed(optax.contrib.sophia)
def sophia(learning_rate: optax.ScalarOrSchedule, **options: Any) -> optax.GradientTransformation:
  """Optax's Sophia, fed the loss on the current batch."""
  return _with_objective(optax.contrib.sophia(learning_rate, **options), "sophia")


@_signed(lambda learning_rate, rho=0.05: None, optax.adam)
def sam(learning_rate: optax.ScalarOrSchedule, rho: float = 0.05,
        **options: Any) -> optax.GradientTransformation:
  """SAM (opaque mode) around Adam: one adversarial step of size ``rho`` along the normalised
  gradient, then Adam on the gradient there; two gradients a step, as the average gradient."""
  adversary = optax.chain(optax.contrib.normalize(), optax.sgd(rho))
  return _with_objective(
      optax.contrib.sam(optax.adam(learning_rate, **options), adversary, opaque_mode=True),
      "sam")


@_signed(optax.contrib.muon, consistent_rms=0.2)
def muon(learning_rate: optax.ScalarOrSchedule, **options: Any) -> optax.GradientTransformation:
  """Optax's Muon with ``consistent_rms=0.2``: updates sized like AdamW's, so one learning
  rate serves its Newton-Schulz (matrices) and Adam (vectors) parts."""
  return optax.contrib.muon(learning_rate, **({"consistent_rms": 0.2} | options))


_ATTENTION_INPUTS = ("query", "key", "value")
# head, heads, head0, head_0, Head_0, lm_head, lmhead, LMHead; not multihead or a heads count.
_HEAD = re.compile(r"(^|_)(lm_?)?heads?\d*($|_)", re.IGNORECASE)


def _path_names(path: Any) -> list[str]:
  """The names along a pytree path (dict keys, attributes, indices), without the trailing
  ``.value`` attribute of an ``nnx.Variable`` leaf (a module named ``value``, the attention's
  value projection, stays)."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    path = path[:-1]
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def _hidden_matrices(params: Any) -> Any:
  """Muon's dimension numbers for the hidden weight matrices of ``params``; ``None`` (Muon's
  AdamW part) for embeddings, the output head (a path naming ``embed`` or ``head``), biases and
  norm scales (named ``bias`` or ``scale``) and every parameter of fewer than 2 axes.

  A kernel is the matrix its layer applies: a 2-D kernel maps axis 0 to axis 1; an N-D kernel
  maps its leading axes to its last (Flax's convolutions, ``(*window, in, out)``, and
  ``nnx.MultiHeadAttention``'s output projection, ``(heads, head_dim, out)``), except the
  attention's ``query``/``key``/``value`` projections, ``(in, heads, head_dim)`` (3-D kernels
  under those names), which map axis 0 to the heads and their features together.

  Shapes alone cannot tell every layout apart: a ``LinearGeneral`` with several output axes
  under another name, or layers stacked by ``nnx.vmap``/``nnx.scan`` (a leading layer axis),
  read as a convolution here. Pass ``muon_weight_dimension_numbers`` to :func:`muon_split` for
  those."""

  def one(path: Any, x: Any) -> Any:
    names = _path_names(path)
    ndim = jax.numpy.ndim(x)
    if (ndim < 2 or any("embed" in n or _HEAD.search(n) for n in names)
        or names[-1:] and names[-1] in ("bias", "scale")):
      return None
    if ndim == 2:
      return optax.contrib.MuonDimensionNumbers(reduction_axis=0, output_axis=1)
    if ndim == 3 and len(names) >= 2 and names[-2] in _ATTENTION_INPUTS:
      return optax.contrib.MuonDimensionNumbers(reduction_axis=0,
                                                output_axis=tuple(range(1, ndim)))
    return optax.contrib.MuonDimensionNumbers(reduction_axis=tuple(range(ndim - 1)),
                                              output_axis=ndim - 1)

  return jax.tree_util.tree_map_with_path(one, params)


@_signed(optax.contrib.muon, drop=("muon_weight_dimension_numbers",),
         consistent_rms=0.2)
def muon_split(learning_rate: optax.ScalarOrSchedule, **options: Any
               ) -> optax.GradientTransformation:
  """Muon as it is normally used: Newton-Schulz orthogonalisation on the hidden weight
  matrices only (convolution and attention kernels as the matrices they apply); embeddings,
  the output head, biases and other non-matrix parameters take Muon's AdamW part (Optax's
  ``muon_weight_dimension_numbers``). Otherwise :func:`muon`."""
  return muon(learning_rate, **({"muon_weight_dimension_numbers": _hidden_matrices} | options))


# num_betas sets the state's shape: a structural choice, not a hyperparameter to inject (under
# inject_hyperparams it would become a traced array and fail under jit); the plain factory takes it.
@_signed(lambda learning_rate: None, optax.contrib.mechanize, drop=("base_optimizer", "num_betas"))
def _mechanic_adam(learning_rate: optax.ScalarOrSchedule, **options: Any
                   ) -> optax.GradientTransformation:
  """Mechanic's learned scale on Adam at ``learning_rate`` (Optax's ``mechanize``)."""
  return optax.contrib.mechanize(optax.adam(learning_rate), **options)


def averaged(inner: Factory, **defaults: Any) -> Factory:
  """A factory of ``inner`` wrapped in :func:`avggrad.average_gradient` with its defaults
  (the recommended form), or with ``defaults`` for the wrapper where given; wrapper options
  (``span``, ``far_batch_fraction``, ``estimator``, ...) go to the wrapper, all others to
  ``inner``."""
  wrapper_options = {"estimator", "num_points", "span", "update_range", "accumulate", "combine",
                     "far_batch_fraction", "far_dtype", "max_gain"}
  unknown = set(defaults) - wrapper_options
  if unknown:
    raise ValueError(f"averaged: {sorted(unknown)} are not average_gradient options.")

  @_signed(inner, transforms.average_gradient, drop=("inner",), **defaults)
  def factory(learning_rate: optax.ScalarOrSchedule, **options: Any) -> Any:
    options = {**defaults, **options}
    outer = {k: v for k, v in options.items() if k in wrapper_options}
    rest = {k: v for k, v in options.items() if k not in wrapper_options}
    return transforms.average_gradient(inner(learning_rate, **rest), **outer)

  return factory


# The benchmarks measured RMSProp with ``eps`` outside the root (Keras, PyTorch) and ``avggrad
# .rmsprop`` with momentum 0.9: the registry keeps those forms, so every grid's spec means what
# it meant when it ran; the library's aliases take ``optax.rmsprop``'s defaults instead.
_KERAS_RMS = {"eps": 1e-7, "eps_in_sqrt": False}

_BUILTIN_FACTORIES: dict[str, Factory] = {
    "rmsprop": functools.partial(aliases.rmsprop_baseline, **_KERAS_RMS),
    "avg-rmsprop": functools.partial(aliases.rmsprop, momentum=0.9, **_KERAS_RMS),
    "adam": aliases.adam_baseline,
    "avg-adam": aliases.adam,
    # No learning rate to tune: the rate is only the initial step (avggrad.auto).
    "auto-adam": step_length.auto_adam,
    "optax-rmsprop": optax.rmsprop,
    "optax-adam": optax.adam,
    "sgd": optax.sgd,
    # Peers users would pick instead (Optax's own implementations):
    "adamw": optax.adamw,
    "nadam": optax.nadam,
    "lion": optax.lion,
    "adopt": optax.contrib.adopt,
    "muon": muon,
    "muon-split": muon_split,
    "sophia": sophia,
    "sam": sam,
    "schedule-free-adamw": optax.contrib.schedule_free_adamw,
    # Learning-rate-free peers (Optax's own; the rate is a multiplier, 1 by default):
    "prodigy": optax.contrib.prodigy,
    "dadapt-adamw": optax.contrib.dadapt_adamw,
    "mechanic-adam": _mechanic_adam,
    "dog": optax.contrib.dog,
    "cocob": optax.contrib.cocob,
    "momo-adam": optax.contrib.momo_adam,
    # ... and some of them fed the average gradient:
    "avg-adamw": averaged(optax.adamw),
    "avg-nadam": averaged(optax.nadam),
    "avg-lion": averaged(optax.lion),
    # Muon's Newton-Schulz once a step: the range is the previous applied step (the predicted
    # range runs Muon's update twice). Same iterations at Muon's fast rates on two deep MLPs,
    # 0.6x the wall-clock (benchmarks/NOTES.md, "Newton-Schulz once a step").
    "avg-muon": averaged(muon, update_range="previous"),
    "avg-schedule-free-adamw": averaged(optax.contrib.schedule_free_adamw),
}
BUILTIN: frozenset[str] = frozenset(_BUILTIN_FACTORIES)
"""The names of the built-in optimizers (which :func:`register_optimizer` cannot replace)."""
_REGISTRY: dict[str, Factory] = dict(_BUILTIN_FACTORIES)

FLOAT_OPTIONS: frozenset[str] = frozenset({
    "span", "decay", "eps", "eps_root", "b1", "b2", "momentum", "initial_scale",
    "far_batch_fraction", "max_gain", "weight_decay", "rho", "gamma", "warmup_steps",
    "target_ratio", "gain", "max_growth", "max_cut"})
INT_OPTIONS: frozenset[str] = frozenset({"num_points", "probes", "ns_steps"})
# (schedule-free's ``warmup_steps`` is a float option: the factory takes it as given.)
STR_OPTIONS: frozenset[str] = frozenset({
    "estimator", "update_range", "accumulate", "combine", "far_dtype"})
BOOL_OPTIONS: frozenset[str] = frozenset({"nesterov", "eps_in_sqrt", "centered",
                                          "bias_correction"})
OPTIONS: tuple[str, ...] = tuple(sorted(FLOAT_OPTIONS | INT_OPTIONS | STR_OPTIONS | BOOL_OPTIONS))
"""Every option key a spec may carry (each optimizer takes the subset its factory accepts)."""


def names() -> tuple[str, ...]:
  """The registered optimizer names, built-in first, in registration order."""
  return tuple(_REGISTRY)


def register_optimizer(name: str, factory: Factory, *, replace: bool = False) -> None:
  """Makes ``factory(learning_rate, **options)`` available to specs as ``name``.

  Built-in names cannot be replaced; registering a name twice raises unless ``replace``
  (or the factory is the same object, which makes repeated registration harmless).
  """
  if name in BUILTIN:
    raise ValueError(f"{name!r} is a built-in optimizer.")
  if ":" in name or "," in name or not name:
    raise ValueError(f"Optimizer names cannot be empty or contain ':' or ','; got {name!r}.")
  if name in _REGISTRY and _REGISTRY[name] is not factory and not replace:
    raise ValueError(f"{name!r} is already registered (pass replace=True to replace it).")
  _REGISTRY[name] = factory


def factory(name: str) -> Factory:
  """The factory registered as ``name`` (``factory(learning_rate, **options)``)."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of {', '.join(names())}.")
  return _REGISTRY[name]


def _parse_value(key: str, value: str) -> Any:
  value = value.strip()
  if key == "far_batch_fraction" and value == "auto":
    return "auto"
  if key in FLOAT_OPTIONS:
    return float(value)
  if key in INT_OPTIONS:
    return int(value)
  if key in BOOL_OPTIONS:
    if value.lower() not in ("true", "false", "1", "0"):
      raise ValueError(value)
    return value.lower() in ("true", "1")
  return value


def parse_optimizer(spec: str) -> tuple[str, dict[str, Any]]:
  """Splits ``"name:key=value,key=value"`` into the name and typed options.

  Raises:
    ValueError: for an unknown name or option, or a value of the wrong type.

  Example:
    >>> parse_optimizer("avg-adam:span=8,combine=accelerate")
    ('avg-adam', {'span': 8.0, 'combine': 'accelerate'})
    >>> parse_optimizer("rmsprop:momentum=0.9,nesterov=true")
    ('rmsprop', {'momentum': 0.9, 'nesterov': True})
  """
  name, _, rest = spec.partition(":")
  if name not in _REGISTRY:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of {', '.join(names())}.")
  options: dict[str, Any] = {}
  for item in filter(None, rest.split(",")):
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
      raise ValueError(f"Optimizer option {item!r} in {spec!r} is not of the form key=value.")
    if key not in OPTIONS:
      raise ValueError(
          f"Unknown optimizer option {key!r} in {spec!r}; expected one of {', '.join(OPTIONS)}.")
    try:
      options[key] = _parse_value(key, value)
    except ValueError as e:
      raise ValueError(f"Bad value {value!r} for optimizer option {key!r} in {spec!r}.") from e
  return name, options


def make_optimizer(spec: str, learning_rate: optax.ScalarOrSchedule
                   ) -> optax.GradientTransformationExtraArgs:
  """Builds the optimizer a spec names (see :func:`parse_optimizer`).

  ``rmsprop`` and ``adam`` are avggrad's same-core baselines (``rmsprop`` and
  ``avg-rmsprop`` with ``eps=1e-7`` outside the root, as the benchmarks measured them, and
  ``avg-rmsprop`` with momentum 0.9: ``momentum=0`` for none); ``optax-rmsprop`` and
  ``optax-adam`` are Optax's own.

  Example:
    >>> tx = make_optimizer("avg-adam:span=4", 1e-3)
    >>> type(tx).__name__
    'GradientTransformationExtraArgs'
  """
  name, options = parse_optimizer(spec)
  factory = _REGISTRY[name]
  try:
    inspect.signature(factory).bind(learning_rate, **options)
  except TypeError as e:
    raise ValueError(f"Optimizer {name!r} does not take the options {sorted(options)}: {e}") from e
  return optax.with_extra_args_support(factory(learning_rate, **options))
