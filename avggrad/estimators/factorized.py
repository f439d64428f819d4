r"""The factorized estimator: a product of per-operation average Jacobians.

The gradient of a composed function is a product of per-operation Jacobians (the chain
rule), :math:`\nabla L = J_1^\top J_2^\top \cdots J_n^\top \partial\ell`. The factorized
estimator approximates the average of that product over the step by the product of the
averages,

.. math::

  \bar g = \int_0^1 \prod_i J_i(\tau)\, d\tau \;\approx\; \prod_i \int_0^1 J_i(\tau)\, d\tau ,

where each factor's average is known in closed form from the two ends of the step (see
:mod:`avggrad.estimators.rules`). The error is second order in the step: writing
:math:`J_i(\tau) = \bar J_i + (\tau - \tfrac12) J_i' + O(\|\Delta\|^2)`, the first-order terms
integrate to zero on both sides and the two differ by
:math:`\tfrac{1}{12}\sum_{i<k} \cdots J_i' \cdots J_k' \cdots = O(\|\Delta\|^2)`, whereas the
point gradient errs by :math:`\tfrac12 H\Delta = O(\|\Delta\|)`.

It works on any JAX-traceable loss: the loss is traced once to a jaxpr, the jaxpr is evaluated
at both ends of the step (two forward passes that record every intermediate value), and one
backward pass applies each primitive's averaged, transposed Jacobian from the rule table.
Nested jaxprs (``jit``, ``checkpoint``, ``closed_call``) are inlined. ``custom_jvp`` functions
that act elementwise on one input (``relu``, ``softplus``, ``elu``...) are averaged as one
elementwise function with their own derivative; other ``custom_jvp``/``custom_vjp`` calls and
control flow (``scan``, ``cond``) use the Jacobian at the midpoint of their inputs.
``stop_gradient`` values carry no tangent. A *stability shift*, the ``stop_gradient`` of a
max or min reduction (``logsumexp``, ``softmax`` and the cross-entropy losses built on them),
is held at its value at ``params`` along the whole step: the shift cancels mathematically, and
holding it keeps every later secant consistent, so the loss change is reproduced exactly; an
element that moves by more than ``hold_limit(dtype)`` over the step takes its own value at the
far end instead (holding a shift that far could overflow ``exp``). Any other ``stop_gradient``
value (a target, a scale, a detached statistic) moves with the step as JAX's gradient sees it
along the path: holding such a value would average the gradient of a different function, an
error of first order in the step.

Cost: two forward passes and one backward pass, about one forward pass more than
``jax.value_and_grad``; memory: the intermediates of both ends.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from avggrad.estimators import rules
from avggrad.estimators.rules import Node, Slot

def hold_limit(dtype: Any) -> float:
  """How far a ``stop_gradient`` value may move over the step and still be held at its value
  at ``params``: half the log of the dtype's largest number (44 in float32 and bfloat16, 5.5 in
  float16), so that ``exp`` of a held ``logsumexp`` shift cannot overflow at the far end."""
  return 0.5 * math.log(float(jnp.finfo(dtype).max))

# A stability shift starts at a max/min reduction and passes through these unchanged in kind
# (the -inf guard ``max(-inf, m)``, broadcasts and reshapes, ``where(isfinite(m), m, 0)``).
_SHIFT_SOURCES = frozenset({"reduce_max", "reduce_min"})
_SHIFT_CARRIERS = frozenset({
    "max", "min", "broadcast_in_dim", "reshape", "squeeze", "expand_dims", "select_n",
    "convert_element_type", "copy", "copy_p",
})

# Call-like primitives whose body is interpreted in place.
_INLINE_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "checkpoint": "jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "custom_jvp_call": "call_jaxpr",
}


def _inner_jaxpr(eqn: Any) -> tuple[Any, Sequence[Any]]:
  """The body of a call-like equation and its constants."""
  inner = eqn.params[_INLINE_CALLS[eqn.primitive.name]]
  if isinstance(inner, jcore.ClosedJaxpr):
    return inner.jaxpr, inner.consts
  return inner, ()


def _function_name(closed_jaxpr: Any) -> str:
  """The name of the Python function a ``custom_jvp`` call wraps (empty if unknown)."""
  info = getattr(getattr(closed_jaxpr, "jaxpr", closed_jaxpr), "debug_info", None)
  name = getattr(info, "func_name", None)
  if name:
    return str(name)
  src = getattr(info, "func_src_info", None) or ""
  return src.split(" ")[0]


def _elementwise_structure(jaxpr: Any, varying_in: Sequence[bool]) -> tuple[bool, bool]:
  """Whether ``jaxpr`` is elementwise in its varying inputs, and whether it is one chain.

  Returns ``(elementwise, single_path)``: ``elementwise`` when every operation touching a
  varying value is an elementwise primitive (or a call of such a body) whose varying operands
  have the output's shape; ``single_path`` when, in addition, no operation has more than one
  varying operand (a chain of one-input functions, whose secants multiply exactly).
  """
  varying: set[Any] = {v for v, m in zip(jaxpr.invars, varying_in) if m}
  single_path = True
  for eqn in jaxpr.eqns:
    moving = [
        v for v in eqn.invars if not isinstance(v, jcore.Literal) and v in varying
    ]
    if not moving:
      continue
    name = eqn.primitive.name
    if name == "stop_gradient":
      continue
    if name in _INLINE_CALLS:
      inner, _ = _inner_jaxpr(eqn)
      mask = [not isinstance(v, jcore.Literal) and v in varying for v in eqn.invars]
      ok, single = _elementwise_structure(inner, mask)
      if not ok:
        return False, False
      single_path = single_path and single
    elif name not in rules.ELEMENTWISE:
      return False, False
    shape = moving[0].aval.shape
    if any(v.aval.shape != shape for v in moving) or any(
        v.aval.shape != shape for v in eqn.outvars
    ):
      return False, False
    if len(moving) > 1:
      single_path = False
    varying.update(eqn.outvars)
  return True, single_path


class _Interpreter:
  """Evaluates a jaxpr at both ends of a step and records the nodes for the backward pass."""

  def __init__(self) -> None:
    self.tape: list[Node] = []

  def run(self, jaxpr: Any, consts: Sequence[Slot], args: Sequence[Slot]) -> list[Slot]:
    env: dict[Any, Slot] = {}

    def read(v: Any) -> Slot:
      if isinstance(v, jcore.Literal):
        return Slot(v.val, v.val, False)
      return env[v]

    for v, s in zip(jaxpr.constvars, consts):
      env[v] = s
    for v, s in zip(jaxpr.invars, args):
      env[v] = s
    for eqn in jaxpr.eqns:
      outs = self.process(eqn, [read(v) for v in eqn.invars])
      for v, s in zip(eqn.outvars, outs):
        env[v] = s  # a dropped output (DropVar) is stored and never read
    return [read(v) for v in jaxpr.outvars]

  def process(self, eqn: Any, ins: list[Slot]) -> list[Slot]:
    """Evaluates one equation at both ends and records how to average its Jacobian."""
    name = eqn.primitive.name
    if not any(s.varying for s in ins):
      # Constant along the step: evaluate once.
      return [Slot(o, o, False) for o in rules.bind(eqn, [s.v0 for s in ins])]
    if name == "stop_gradient":
      (x,) = ins
      if not x.differentiable:
        return [Slot(x.v0, x.v1, True)]  # an integer value: it has no tangent anyway
      if not x.shift:
        return [Slot(x.v0, x.v1, True, no_tangent=True)]
      limit = hold_limit(jnp.result_type(x.v0))
      held = jnp.where(jnp.abs(x.v1 - x.v0) <= limit, x.v0, x.v1)
      return [Slot(x.v0, held, True, no_tangent=True)]
    if name in _INLINE_CALLS:
      rule = self._call_rule(eqn, ins)
      if rule is None:
        inner, consts = _inner_jaxpr(eqn)
        const_slots = [Slot(c, c, False) for c in consts]
        return self.run(inner, const_slots, ins)
    else:
      rule = None
    outs0 = rules.bind(eqn, [s.v0 for s in ins])
    outs1 = rules.bind(eqn, [s.v1 for s in ins])
    shift = name in _SHIFT_SOURCES or (
        name in _SHIFT_CARRIERS and any(s.shift for s in ins if s.varying))
    outs = [Slot(a, b, True, shift=shift) for a, b in zip(outs0, outs1)]
    node = Node(eqn, ins, outs)
    node.rule = rule if rule is not None else rules.lookup(node)
    self.tape.append(node)
    return outs

  def _call_rule(self, eqn: Any, ins: list[Slot]) -> Optional[rules.Rule]:
    """How to treat a call: ``None`` to inline its body, else the rule for the whole call."""
    inner, _ = _inner_jaxpr(eqn)
    varying = [s.varying for s in ins]
    unary = (
        sum(varying) == 1
        and len(eqn.outvars) == 1
        and all(s.differentiable for s in ins if s.varying)
        and next(s for s in ins if s.varying).v0.shape == eqn.outvars[0].aval.shape
    )
    elementwise, single_path = (
        _elementwise_structure(inner, varying) if unary else (False, False)
    )
    is_custom = eqn.primitive.name == "custom_jvp_call"
    if elementwise and not single_path:
      if is_custom:
        factory = rules.CUSTOM_JVP_RULES.get(_function_name(eqn.params["call_jaxpr"]))
        if factory is not None:
          probe = Node(eqn, ins, [])
          custom = factory(probe)
          if custom is not None:
            return custom
      return rules.generic_unary
    if is_custom and not elementwise:
      return rules.midpoint  # keep the custom derivative; do not differentiate the body
    return None


def _backward(tape: list[Node], seed: Slot) -> None:
  """Propagates the cotangent of ``seed`` (one) through the averaged Jacobians of ``tape``."""
  seed.ct = jnp.ones_like(seed.v0)
  for node in reversed(tape):
    cts = [s.ct for s in node.outs]
    if all(ct is None for ct in cts):
      continue
    in_cts = node.rule(node, cts)
    for slot, ct in zip(node.ins, in_cts):
      if ct is None or not slot.differentiable:
        continue
      slot.ct = ct if slot.ct is None else slot.ct + ct


def _record(
    fun: Callable[..., Any], params: Any, delta: Any, args: Sequence[Any],
    kwargs: dict[str, Any],
) -> tuple[_Interpreter, list[Slot], list[Slot], Any, Any, list[Any]]:
  """Traces ``fun`` and evaluates it at both ends; the tape and the input/output slots."""
  leaves, treedef = jax.tree.flatten(params)
  delta_leaves = treedef.flatten_up_to(delta)

  def flat_fun(*xs: Any) -> Any:
    return fun(jax.tree.unflatten(treedef, xs), *args, **kwargs)

  closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(*leaves)
  out_tree = jax.tree.structure(out_shape)
  ends = [
      (p + d).astype(jnp.result_type(p)) for p, d in zip(leaves, delta_leaves)
  ]
  interpreter = _Interpreter()
  in_slots = [Slot(p0, p1, True) for p0, p1 in zip(leaves, ends)]
  const_slots = [Slot(c, c, False) for c in closed.consts]
  out_slots = interpreter.run(closed.jaxpr, const_slots, in_slots)
  return interpreter, in_slots, out_slots, out_tree, treedef, leaves


def value_and_average_grad(
    fun: Callable[..., Any],
    params: Any,
    delta: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    has_aux: bool,
) -> tuple[Any, Any]:
  """Factorized average gradient of ``fun`` over ``[params, params + delta]``.

  Args:
    fun: the loss, called as ``fun(params, *args, **kwargs)``.
    params: the start of the step (a pytree of floating arrays).
    delta: the step, a pytree like ``params``.
    args: further positional arguments of ``fun`` (held fixed).
    kwargs: keyword arguments of ``fun`` (held fixed).
    has_aux: whether ``fun`` returns ``(value, aux)``.

  Returns:
    ``(output, average_grad)`` where ``output`` is ``fun(params, ...)``.
  """
  del has_aux  # the loss is the first output either way
  interpreter, in_slots, out_slots, out_tree, treedef, leaves = _record(
      fun, params, delta, args, kwargs)
  output = jax.tree.unflatten(out_tree, [s.v0 for s in out_slots])
  _backward(interpreter.tape, out_slots[0])
  grads = [
      jnp.zeros_like(p) if s.ct is None else s.ct.astype(jnp.result_type(p))
      for s, p in zip(in_slots, leaves)
  ]
  return output, jax.tree.unflatten(treedef, grads)


@dataclasses.dataclass
class Coverage:
  """Which rule of the factorized estimator handled each primitive of a loss.

  Attributes:
    rows: ``(primitive, rule, count, exact)`` for every pair of primitive and rule met, in
      the order first met (see :func:`avggrad.estimators.rules.describe`).
  """

  rows: list[tuple[str, str, int, bool]]

  @property
  def fallbacks(self) -> list[str]:
    """Primitives averaged by an approximate rule (the midpoint fallback and the others
    :func:`~avggrad.estimators.rules.describe` marks inexact)."""
    return sorted({p for p, _, _, exact in self.rows if not exact})

  @property
  def exact(self) -> bool:
    r"""Whether every rule is exact (then :math:`\hat g\cdot\Delta = L(w+\Delta) - L(w)`)."""
    return all(exact for *_, exact in self.rows)

  def __str__(self) -> str:
    width = max([len(p) for p, *_ in self.rows] + [9])
    lines = [f"{'primitive':<{width}}  {'count':>5}  rule"]
    for primitive, rule, count, exact in self.rows:
      lines.append(f"{primitive:<{width}}  {count:>5}  {rule}{'' if exact else '  (approximate)'}")
    verdict = ("every rule is exact: the estimate reproduces the loss change"
               if self.exact else f"approximate rules for: {', '.join(self.fallbacks)}")
    return "\n".join(lines + [verdict])


def _on_gradient_path(tape: list[Node], seed: Slot) -> list[Node]:
  """The recorded nodes that pass a cotangent from ``seed`` back to the parameters (in tape
  order), as :func:`_backward` would visit them."""
  needed = {id(seed)}
  path = []
  for node in reversed(tape):
    if not any(id(s) in needed for s in node.outs):
      continue
    path.append(node)
    needed.update(id(s) for s in node.ins if s.differentiable)
  return path[::-1]


def coverage(fun: Callable[..., Any], params: Any, delta: Any, *args: Any,
             **kwargs: Any) -> Coverage:
  """Lists, for a loss and a step, which rule averaged each primitive and which fell back.

  Runs the factorized estimator's forward recording of ``fun(params, *args, **kwargs)`` at
  ``params`` and ``params + delta`` (no backward pass) and groups the recorded operations by
  primitive and rule. Only operations on the gradient's path are listed: those whose inputs
  do not change along the step are evaluated once, and those that only feed a
  ``stop_gradient`` (the max-shift of ``logsumexp`` and ``softmax``) carry no cotangent.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from avggrad.estimators import coverage
    >>> x = jnp.ones((4, 3))
    >>> f = lambda w: jnp.sum(jnp.tanh(x @ w) ** 2)
    >>> report = coverage(f, jnp.ones((3, 2)), 0.1 * jnp.ones((3, 2)))
    >>> report.exact, report.fallbacks
    (True, [])
    >>> [row[:2] for row in report.rows]
    [('dot_general', 'linear'), ('tanh', 'secant (tanh)'), ('integer_pow', 'secant (integer_pow)'), ('reduce_sum', 'linear')]
  """
  interpreter, _, out_slots, *_ = _record(fun, params, delta, args, kwargs)
  counts: dict[tuple[str, str, bool], int] = {}
  for node in _on_gradient_path(interpreter.tape, out_slots[0]):
    label, exact = rules.describe(node)
    key = (node.eqn.primitive.name, label, exact)
    counts[key] = counts.get(key, 0) + 1
  return Coverage([(p, label, n, exact) for (p, label, exact), n in counts.items()])
