"""Rule table of the factorized estimator: one averaged, transposed Jacobian per primitive.

The factorized estimator (:mod:`avggrad.estimators.factorized`) evaluates a loss at both ends
of a step, ``w`` and ``w + delta``, and then runs one backward pass in which every operation
contributes the *average* of its Jacobian over the step instead of its Jacobian at ``w``. A
rule is the transposed averaged Jacobian of one primitive: it maps the cotangents of the
primitive's outputs to cotangents of its inputs, given both ends' input and output values.

How each family of primitives is averaged (assuming its inputs move linearly between the two
ends, which is the factorization's approximation):

* linear operations (add, reshape, reductions by sum, ...): the Jacobian is constant, so
  ordinary reverse mode at either end is exact;
* multilinear operations (``mul``, ``dot_general``, convolutions) with several varying
  inputs: the Jacobian with respect to one input is the others, whose average over a linear
  path is their midpoint, so reverse mode at the midpoint of the inputs is exact;
* elementwise functions of one varying input: the secant slope
  :math:`(f(b) - f(a))/(b - a)`, in the closed forms of :mod:`avggrad.estimators.secants`
  (or from the derivative for any other function);
* ``max``/``min`` of two varying inputs: ``max(x, y) = y + relu(x - y)`` with the secant of
  ``relu``; ``div`` of two varying inputs: ``x / y = x * r`` with the secant of ``r = 1/y``;
* ``select_n`` whose predicate changes over the step: each branch weighted by the fraction of
  the two ends at which it is selected;
* piecewise-constant functions (``sign``, ``floor``, comparisons, ...): zero, as JAX defines;
* anything else: reverse mode at the midpoint of the inputs (second-order accurate for one
  operation, never a wrong first-order answer).

Each rule has the signature ``rule(node, cotangents) -> input_cotangents``, where ``node``
carries the equation and the two ends' values (see :class:`Node`). Supporting a new primitive
is one function registered in ``RULES``.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from avggrad.estimators import secants

Array = jax.Array


@dataclasses.dataclass(eq=False)
class Slot:
  """One value of the traced loss at both ends of the step.

  Attributes:
    v0: the value at ``params``.
    v1: the value at ``params + delta`` (the same object as ``v0`` when not ``varying``).
    varying: whether the value may differ between the two ends.
    ct: the cotangent accumulated in the backward pass (``None`` until one arrives).
    no_tangent: the value moves but carries no tangent (a ``stop_gradient`` output).
    shift: the value comes from a max or min reduction through shape-only and guard
      operations: a ``stop_gradient`` of it is a stability shift, held along the step.
  """

  v0: Any
  v1: Any
  varying: bool
  ct: Any = None
  no_tangent: bool = False
  shift: bool = False  # derived from a max/min reduction only (a stability shift)

  @property
  def differentiable(self) -> bool:
    """Whether the value varies with the parameters and can carry a cotangent."""
    return self.varying and not self.no_tangent and is_float(self.v0)

  @property
  def midpoint(self) -> Any:
    """The midpoint of the two ends for floating values, the first end otherwise."""
    if not (self.varying and is_float(self.v0)):
      return self.v0
    return self.v0 + 0.5 * (self.v1 - self.v0)


@dataclasses.dataclass(eq=False)
class Node:
  """One recorded operation: an equation and the slots of its inputs and outputs."""

  eqn: Any
  ins: list[Slot]
  outs: list[Slot]
  rule: Optional["Rule"] = None


Rule = Callable[[Node, list[Any]], list[Optional[Array]]]


def is_float(x: Any) -> bool:
  """Whether ``x`` is a real or complex floating-point value."""
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def bind(eqn: Any, values: Sequence[Any]) -> list[Any]:
  """Applies the primitive of ``eqn`` (with its parameters) to ``values``; a list of outputs."""
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  subfuns: Sequence[Any] = ()
  if isinstance(bind_params, tuple):  # JAX versions that return (subfuns, params)
    subfuns, bind_params = bind_params
  ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
  if ctx is not None:
    with ctx:
      out = eqn.primitive.bind(*subfuns, *values, **bind_params)
  else:
    out = eqn.primitive.bind(*subfuns, *values, **bind_params)
  return list(out) if eqn.primitive.multiple_results else [out]


def _zero_cotangent(x: Any) -> Any:
  """A zero cotangent for an output ``x`` (``float0`` for integer and boolean outputs)."""
  if is_float(x):
    return jnp.zeros(jnp.shape(x), jnp.result_type(x))
  return np.zeros(np.shape(x), dtype=jax.dtypes.float0)


def _vjp_at(
    node: Node, point: Sequence[Any], cotangents: Sequence[Any]
) -> list[Optional[Array]]:
  """Reverse mode of the node's primitive at ``point``, for its differentiable inputs."""
  which = [i for i, s in enumerate(node.ins) if s.differentiable]

  def apply(*xs: Any) -> list[Any]:
    values = list(point)
    for i, x in zip(which, xs):
      values[i] = x
    return bind(node.eqn, values)

  _, pullback = jax.vjp(apply, *[point[i] for i in which])
  cts = [
      ct if ct is not None else _zero_cotangent(s.v0)
      for ct, s in zip(cotangents, node.outs)
  ]
  cts = [
      ct if is_float(s.v0) else _zero_cotangent(s.v0) for ct, s in zip(cts, node.outs)
  ]
  in_cts = pullback(cts)
  result: list[Optional[Array]] = [None] * len(node.ins)
  for i, ct in zip(which, in_cts):
    result[i] = ct
  return result


def linear(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """Operations linear in their varying inputs: reverse mode at ``params`` (exact)."""
  return _vjp_at(node, [s.v0 for s in node.ins], cotangents)


def midpoint(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """Reverse mode at the midpoint of the inputs: exact for multilinear operations."""
  return _vjp_at(node, [s.midpoint for s in node.ins], cotangents)


def zero(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """Piecewise-constant operations: no cotangent (JAX's derivative is zero)."""
  del cotangents
  return [None] * len(node.ins)


def _single_varying(node: Node) -> int:
  """Index of the one varying input of an elementwise node."""
  (index,) = [i for i, s in enumerate(node.ins) if s.varying]
  return index


def _sum_to_shape(x: Array, shape: tuple[int, ...]) -> Array:
  """Sums a broadcast cotangent back to an operand's shape.

  The operand was broadcast to the output's shape: by rank (a scalar, or leading axes added)
  or, as jaxprs allow for elementwise operations of equal rank, along axes where the operand
  has size 1 (``x - max(x, axis=-1, keepdims=True)`` in a softmax). The cotangent is summed
  over exactly those axes.
  """
  shape = tuple(shape)
  if x.shape == shape:
    return x
  lead = x.ndim - len(shape)
  if lead < 0:
    raise ValueError(f"cannot sum a cotangent of shape {x.shape} to the larger {shape}.")
  if lead:
    x = jnp.sum(x, axis=tuple(range(lead)))
  axes = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1)
  if axes:
    x = jnp.sum(x, axis=axes, keepdims=True)
  if x.shape != shape:
    raise ValueError(f"cannot sum a cotangent of shape {x.shape} to {shape}.")
  return x


def _derivative_fn(node: Node, index: int) -> Callable[[Array], Array]:
  """Elementwise derivative of the node's primitive with respect to input ``index``."""
  values = [s.v0 for s in node.ins]

  def f(x: Array) -> Array:
    args = list(values)
    args[index] = x
    return bind(node.eqn, args)[0]

  def derivative(x: Array) -> Array:
    return jax.jvp(f, (x,), (jnp.ones_like(x),))[1]

  return derivative


def _apply_secant(
    node: Node,
    cotangents: list[Any],
    secant: Callable[..., Array],
    index: int,
    *,
    with_derivative: bool = False,
) -> list[Optional[Array]]:
  """Cotangent of an elementwise function of one input: the secant times the cotangent."""
  ct = cotangents[0]
  x = node.ins[index]
  y = node.outs[0]
  dtype = jnp.result_type(x.v0)
  compute = jnp.promote_types(dtype, jnp.float32)
  a, b = jnp.asarray(x.v0, compute), jnp.asarray(x.v1, compute)
  fa, fb = jnp.asarray(y.v0, compute), jnp.asarray(y.v1, compute)
  if with_derivative:
    derivative = _derivative_fn(node, index)
    slope = secant(lambda z: jnp.asarray(derivative(z.astype(dtype)), compute), a, b, fa, fb)
  else:
    slope = secant(a, b, fa, fb)
  result: list[Optional[Array]] = [None] * len(node.ins)
  result[index] = _sum_to_shape((ct * slope).astype(dtype), jnp.shape(x.v0))
  return result


def unary(secant: Callable[[Array, Array, Array, Array], Array]) -> Rule:
  """A rule from a closed-form secant ``secant(a, b, f(a), f(b))``."""

  def rule(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
    return _apply_secant(node, cotangents, secant, _single_varying(node))

  rule.__name__ = f"unary_{secant.__name__}"
  return rule


def generic_unary(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """Any elementwise function of one varying input: :func:`avggrad.estimators.secants.generic`."""
  return _apply_secant(
      node, cotangents, secants.generic, _single_varying(node), with_derivative=True
  )


def _integer_pow(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  return _apply_secant(node, cotangents, secants.integer_pow(int(node.eqn.params["y"])), 0)


def _abs(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """``abs``: the secant of a piecewise-linear function (exact, kink included)."""
  return _apply_secant(node, cotangents, secants.piecewise_linear, 0, with_derivative=True)


def _max_min(is_max: bool) -> Rule:
  """``max``/``min``: piecewise-linear secant against a constant, relu split otherwise."""

  def rule(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
    x, y = node.ins
    if not (x.varying and y.varying):
      index = 0 if x.differentiable else 1
      return _apply_secant(
          node, cotangents, secants.piecewise_linear, index, with_derivative=True
      )
    ct = cotangents[0]
    dtype = jnp.result_type(x.v0)
    compute = jnp.promote_types(dtype, jnp.float32)
    u0 = jnp.asarray(x.v0, compute) - jnp.asarray(y.v0, compute)
    u1 = jnp.asarray(x.v1, compute) - jnp.asarray(y.v1, compute)
    s = secants.relu(u0, u1)  # average of d relu(x - y)
    weight_x = s if is_max else 1.0 - s
    ct_x = (ct * weight_x).astype(dtype)
    ct_y = (ct * (1.0 - weight_x)).astype(dtype)
    return [_sum_to_shape(ct_x, jnp.shape(x.v0)) if x.differentiable else None,
            _sum_to_shape(ct_y, jnp.shape(y.v0)) if y.differentiable else None]

  rule.__name__ = "max" if is_max else "min"
  return rule


def _clamp(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """``clamp(lo, x, hi)`` with constant bounds is piecewise linear in ``x``."""
  lo, x, hi = node.ins
  if x.differentiable and not (lo.varying or hi.varying):
    return _apply_secant(node, cotangents, secants.piecewise_linear, 1, with_derivative=True)
  return midpoint(node, cotangents)


def _div(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """``x / y = x * r`` with ``r = 1/y``: midpoint rule for the product, secant for ``r``.

  The secant of :math:`1/y` is :math:`-r_0 r_1`, so the cotangents are
  :math:`\\bar r\\,c` for ``x`` and :math:`-\\bar x r_0 r_1 c` for ``y``. Applied to the
  actual changes this reproduces the actual change of ``x / y`` exactly.
  """
  x, y = node.ins
  ct = cotangents[0]
  r0, r1 = 1.0 / y.v0, 1.0 / y.v1
  result: list[Optional[Array]] = [None, None]
  if x.differentiable:
    ct_x = ct * (0.5 * (r0 + r1))
    result[0] = _sum_to_shape(ct_x.astype(jnp.result_type(x.v0)), jnp.shape(x.v0))
  if y.differentiable:
    ct_y = -ct * x.midpoint * (r0 * r1)
    result[1] = _sum_to_shape(ct_y.astype(jnp.result_type(y.v0)), jnp.shape(y.v0))
  return result


def _select_n(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """``select_n(which, *cases)``: a case's weight is the fraction of ends that select it."""
  which = node.ins[0]
  if not which.varying:
    return linear(node, cotangents)
  ct = cotangents[0]
  w0 = jnp.asarray(which.v0).astype(jnp.int32)
  w1 = jnp.asarray(which.v1).astype(jnp.int32)
  result: list[Optional[Array]] = [None]
  for k, case in enumerate(node.ins[1:]):
    if not case.differentiable:
      result.append(None)
      continue
    weight = 0.5 * ((w0 == k).astype(ct.dtype) + (w1 == k).astype(ct.dtype))
    result.append(_sum_to_shape(ct * weight, jnp.shape(case.v0)))
  return result


def _selection(node: Node, cotangents: list[Any]) -> list[Optional[Array]]:
  """Max/min reductions and pooling: the winner's cotangent split at the switch time.

  Each output is the largest (smallest) of its inputs. Let ``i`` win at ``params`` and ``j``
  at ``params + delta``. Along a linear path their difference :math:`u = x_i - x_j` moves from
  :math:`u_0 \\ge 0` to :math:`u_1 \\le 0`, so ``i`` leads for the fraction
  :math:`\\tau^* = u_0 / (u_0 - u_1)` of the step and ``j`` for the rest: the average Jacobian
  sends :math:`\\tau^*` of the cotangent to ``i`` and :math:`1 - \\tau^*` to ``j`` (exact when
  no third input takes the lead in between). The values of the other end's winner come from
  forward mode of the same primitive, which gathers the tangent at the winner.
  """
  (x,) = node.ins
  (y,) = node.outs
  ct = cotangents[0]

  def f(z: Array) -> Array:
    return bind(node.eqn, [z])[0]

  _, x0_at_j = jax.jvp(f, (x.v1,), (x.v0,))  # end-0 value of the end-1 winner
  _, x1_at_i = jax.jvp(f, (x.v0,), (x.v1,))  # end-1 value of the end-0 winner
  u0 = y.v0 - x0_at_j
  u1 = x1_at_i - y.v1
  gap = u0 - u1
  tau = jnp.where(gap != 0, u0 / jnp.where(gap != 0, gap, 1.0), 0.5)
  _, pull0 = jax.vjp(f, x.v0)
  _, pull1 = jax.vjp(f, x.v1)
  (ct0,) = pull0(ct * tau)
  (ct1,) = pull1(ct * (1.0 - tau))
  return [ct0 + ct1]


# Primitives that are linear in their inputs (jointly, for those with several).
LINEAR = frozenset({
    "add", "add_any", "sub", "neg", "reduce_sum", "reshape", "broadcast_in_dim",
    "transpose", "squeeze", "expand_dims", "convert_element_type", "slice", "pad",
    "concatenate", "gather", "dynamic_slice", "dynamic_update_slice", "scatter-add",
    "scatter_add", "scatter", "copy", "copy_p", "reduce_window_sum", "cumsum", "rev",
    "real", "imag", "complex", "conj", "reduce_precision", "psum", "sharding_constraint",
    "device_put", "split", "select_and_scatter_add", "mesh_cast", "reshard",
})

# Primitives that are linear in each input separately.
MULTILINEAR = frozenset({"mul", "dot_general", "conv_general_dilated", "ragged_dot"})

# Primitives whose derivative JAX defines as zero.
ZERO = frozenset({
    "sign", "floor", "ceil", "round", "is_finite", "stop_gradient", "nextafter",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "argmax", "argmin",
    "population_count", "clz", "shift_left", "shift_right_logical",
    "shift_right_arithmetic", "random_bits", "random_seed", "random_wrap", "random_unwrap",
    "iota",
})

# Elementwise primitives (output element i depends on input elements i only).
ELEMENTWISE = frozenset({
    "neg", "sign", "floor", "ceil", "round", "is_finite", "exp", "exp2", "log", "log1p",
    "expm1", "tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
    "asinh", "acosh", "atanh", "lgamma", "digamma", "erf", "erfc", "erf_inv", "sqrt",
    "rsqrt", "cbrt", "integer_pow", "square", "abs", "add", "add_any", "sub", "mul", "div",
    "rem", "pow", "max", "min", "atan2", "nextafter", "select_n", "clamp", "eq", "ne", "lt",
    "le", "gt", "ge", "and", "or", "not", "xor", "convert_element_type", "copy", "copy_p",
    "reduce_precision", "real", "imag", "conj", "stop_gradient", "polygamma", "igamma",
    "igammac", "bessel_i0e", "bessel_i1e", "regularized_incomplete_beta", "zeta",
})

# Closed-form or special rules by primitive name (read-only).
RULES: Mapping[str, Rule] = types.MappingProxyType({
    "tanh": unary(secants.tanh),
    "logistic": unary(secants.logistic),
    "exp": unary(secants.exp),
    "expm1": unary(secants.expm1),
    "exp2": unary(secants.exp2),
    "log": unary(secants.log),
    "log1p": unary(secants.log1p),
    "sin": unary(secants.sin),
    "cos": unary(secants.cos),
    "sqrt": unary(secants.sqrt),
    "rsqrt": unary(secants.rsqrt),
    "square": unary(secants.square),
    "integer_pow": _integer_pow,
    "abs": _abs,
    "max": _max_min(is_max=True),
    "min": _max_min(is_max=False),
    "clamp": _clamp,
    "div": _div,
    "select_n": _select_n,
    "reduce_max": _selection,
    "reduce_min": _selection,
    "reduce_window_max": _selection,
    "reduce_window_min": _selection,
})

# Rules for elementwise custom-JVP functions of one input, by the function's name.
CUSTOM_JVP_RULES: dict[str, Callable[[Node], Optional[Rule]]] = {}


def _logaddexp(node: Node) -> Optional[Rule]:
  """``logaddexp(x, c)`` with a constant ``c`` is ``c + softplus(x - c)``."""
  index = _single_varying(node)
  other = node.ins[1 - index].v0

  def secant(a: Array, b: Array, fa: Array, fb: Array) -> Array:
    return secants.softplus(a - other, b - other, fa, fb)

  secant.__name__ = "softplus"
  return lambda n, cts: _apply_secant(n, cts, secant, index)


CUSTOM_JVP_RULES["logaddexp"] = _logaddexp


def lookup(node: Node) -> Rule:
  """The rule for a recorded node (see the module docstring for the order of precedence)."""
  name = node.eqn.primitive.name
  if name in ZERO:
    return zero
  if name in RULES:
    return RULES[name]
  if name in LINEAR:
    return linear
  varying = [s for s in node.ins if s.varying]
  if name in MULTILINEAR:
    # several moving factors (a stop_gradient value moves too): the midpoint is exact
    return linear if len([s for s in varying if is_float(s.v0)]) <= 1 else midpoint
  if (
      name in ELEMENTWISE
      and len(varying) == 1
      and varying[0].differentiable
      and len(node.outs) == 1
      and jnp.shape(varying[0].v0) == jnp.shape(node.outs[0].v0)
  ):
    return generic_unary
  return midpoint


def describe(node: Node) -> tuple[str, bool]:
  r"""How a recorded node is averaged: ``(rule name, exact)``.

  ``exact`` is whether the rule's averaged Jacobian, applied to the node's actual input
  change, gives its actual output change (linear and multilinear operations, secants,
  piecewise-linear splits, zero-derivative operations). When every node of a loss is exact,
  the factorized estimate reproduces the loss change, :math:`\hat g\cdot\Delta =
  L(w + \Delta) - L(w)`. The approximate ones: the midpoint fallback for other operations
  (control flow, custom derivatives, unregistered primitives), ``select_n`` with a predicate
  that changes over the step, and max/min selections whose winner changes (exact only when
  no third input takes the lead).
  """
  rule = node.rule
  name = node.eqn.primitive.name
  if rule is zero:
    return "zero derivative", True
  if rule is linear:
    return "linear", True
  if rule is midpoint:
    if name in MULTILINEAR:
      return "midpoint (multilinear)", True
    return "midpoint fallback", False
  if rule is _select_n:
    return ("select by fraction", False) if node.ins[0].varying else ("linear", True)
  if rule is _selection:
    return "switch time", False
  if rule is _clamp and (node.ins[0].varying or node.ins[2].varying):
    return "midpoint fallback", False
  label = getattr(rule, "__name__", "custom")
  label = label.removeprefix("unary_").lstrip("_")
  return f"secant ({label})", True
