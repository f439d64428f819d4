"""Average derivatives (secant slopes) of elementwise functions, computed stably.

For an elementwise function :math:`f` whose input moves linearly from :math:`a` to
:math:`b`, the average of :math:`f'` over the move is the secant slope

.. math::

  \\bar f'(a, b) = \\int_0^1 f'(a + \\tau (b - a))\\, d\\tau = \\frac{f(b) - f(a)}{b - a}.

Evaluated as written, the difference :math:`f(b) - f(a)` cancels in floating point when
:math:`b - a` is small (and in the saturated tails of ``tanh`` and ``sigmoid`` even when it is
not). The functions here use closed forms without that cancellation, for example
:math:`\\tanh b - \\tanh a = \\tanh(b - a)(1 - \\tanh a \\tanh b)`, and reduce to the
ordinary derivative :math:`f'(a)` when :math:`a = b`. :func:`generic` handles any other
elementwise function from its derivative alone.

Every function takes the inputs ``a``, ``b`` and the outputs ``fa``, ``fb`` (already computed
by the forward passes at both ends of the step) and returns the average derivative.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Beyond this |b - a| the plain difference quotient has no cancellation worth avoiding, and
# some closed forms below would overflow (exp(20) is safe in float32 and float16 is promoted).
_LARGE_STEP = 20.0


def _safe(d: Array) -> Array:
  """``d`` with exact zeros replaced by one (for divisions guarded by a ``where``)."""
  return jnp.where(d == 0, jnp.ones_like(d), d)


def sinc(z: Array) -> Array:
  """:math:`\\sin(z) / z`, equal to one at zero (unnormalised, unlike ``jnp.sinc``)."""
  small = jnp.abs(z) < 1e-2
  z2 = z * z
  series = 1.0 - z2 / 6.0 + z2 * z2 / 120.0
  return jnp.where(small, series, jnp.sin(z) / _safe(z))


def log1pc(u: Array) -> Array:
  """:math:`\\log(1 + u) / u`, equal to one at zero."""
  small = jnp.abs(u) < 1e-3
  series = 1.0 - u / 2.0 + u * u / 3.0
  return jnp.where(small, series, jnp.log1p(u) / _safe(u))


def tanhc(z: Array) -> Array:
  """:math:`\\tanh(z) / z`, equal to one at zero."""
  small = jnp.abs(z) < 1e-2
  z2 = z * z
  series = 1.0 - z2 / 3.0 + 2.0 * z2 * z2 / 15.0
  return jnp.where(small, series, jnp.tanh(z) / _safe(z))


def expm1c(z: Array) -> Array:
  """:math:`(e^z - 1) / z`, equal to one at zero."""
  small = jnp.abs(z) < 1e-2
  series = 1.0 + z / 2.0 + z * z / 6.0 + z * z * z / 24.0
  return jnp.where(small, series, jnp.expm1(z) / _safe(z))


def tanh(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``tanh``: :math:`\\tanh(b - a)/(b - a) \\cdot (1 - \\tanh a \\tanh b)`.

  One transcendental per element. At :math:`a = b` it is :math:`1 - \\tanh^2 a`, JAX's own
  derivative, with the same (absolute) precision in the saturated tails.
  """
  d = b - a
  closed = tanhc(d) * (1.0 - fa * fb)
  return jnp.where(jnp.abs(d) < _LARGE_STEP, closed, (fb - fa) / _safe(d))


def logistic(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of the logistic sigmoid :math:`\\sigma`.

  With :math:`p = \\sigma(x)`,
  :math:`\\sigma(b) - \\sigma(a) = \\tanh(d/2)\\,(p_a(1 - p_b) + (1 - p_a)p_b)`, a sum of
  positive terms (no cancellation); at :math:`a = b` it is :math:`p(1 - p)`, JAX's derivative.
  """
  d = b - a
  closed = 0.5 * tanhc(0.5 * d) * (fa * (1.0 - fb) + (1.0 - fa) * fb)
  return jnp.where(jnp.abs(d) < _LARGE_STEP, closed, (fb - fa) / _safe(d))


def exp(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``exp``: :math:`e^a (e^{d} - 1)/d`."""
  d = b - a
  closed = fa * expm1c(d)
  return jnp.where(jnp.abs(d) < _LARGE_STEP, closed, (fb - fa) / _safe(d))


def expm1(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``expm1`` (the same as ``exp``'s): :math:`e^a (e^{d} - 1)/d`."""
  d = b - a
  closed = jnp.exp(a) * expm1c(d)
  return jnp.where(jnp.abs(d) < _LARGE_STEP, closed, (fb - fa) / _safe(d))


def exp2(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of :math:`2^x`: :math:`\\ln 2 \\cdot 2^a (e^{d \\ln 2} - 1)/(d \\ln 2)`."""
  ln2 = np.log(2.0)
  return ln2 * exp(ln2 * a, ln2 * b, fa, fb)


def log(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``log``: :math:`\\log(1 + u)/u \\cdot 1/a` with :math:`u = (b - a)/a`.

  For :math:`|u| \\ge 1/2` the difference quotient has no cancellation (and ``u`` computed
  as :math:`(b - a)/a` would lose ``b`` when :math:`b \\ll a`), so it is used there.
  """
  d = b - a
  u = d / a
  near = jnp.abs(u) < 0.5
  return jnp.where(near, log1pc(jnp.where(near, u, 0.0)) / a, (fb - fa) / _safe(d))


def log1p(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``log1p``: the secant of ``log`` at :math:`1 + a, 1 + b`."""
  return log(1.0 + a, 1.0 + b, fa, fb)


def sin(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``sin``: :math:`\\cos(m)\\,\\mathrm{sinc}(d/2)`."""
  del fa, fb
  d = b - a
  return jnp.cos(a + 0.5 * d) * sinc(0.5 * d)


def cos(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``cos``: :math:`-\\sin(m)\\,\\mathrm{sinc}(d/2)`."""
  del fa, fb
  d = b - a
  return -jnp.sin(a + 0.5 * d) * sinc(0.5 * d)


def sqrt(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of ``sqrt``: :math:`1 / (\\sqrt a + \\sqrt b)`."""
  del a, b
  return 1.0 / (fa + fb)


def rsqrt(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of :math:`x^{-1/2}`: :math:`-r_a^2 r_b^2 / (r_a + r_b)` with :math:`r = x^{-1/2}`."""
  del a, b
  return -(fa * fa) * (fb * fb) / (fa + fb)


def square(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of :math:`x^2`: :math:`a + b`."""
  del fa, fb
  return a + b


def _power_sum(a: Array, b: Array, n: int) -> Array:
  """:math:`\\sum_{k=0}^{n-1} a^k b^{n-1-k}`, the secant of :math:`x^n` (``n >= 1``)."""
  total = jnp.zeros_like(a)
  for k in range(n):
    total = total + a**k * b ** (n - 1 - k)
  return total


def integer_pow(n: int) -> Callable[[Array, Array, Array, Array], Array]:
  """Secant of :math:`x^n` for an integer ``n``, exact (a polynomial in ``a`` and ``b``)."""

  def secant(a: Array, b: Array, fa: Array, fb: Array) -> Array:
    del fa, fb
    if n == 0:
      return jnp.zeros_like(a)
    if n > 0:
      return _power_sum(a, b, n)
    m = -n
    return -_power_sum(a, b, m) / (a**m * b**m)

  return secant


def softplus(a: Array, b: Array, fa: Array, fb: Array) -> Array:
  """Secant of :math:`\\log(1 + e^x)`.

  With :math:`\\ell = \\min(a, b)` and :math:`d = |b - a|`,
  :math:`\\mathrm{softplus}(\\ell + d) - \\mathrm{softplus}(\\ell) =
  \\log(1 + (e^d - 1)\\sigma(\\ell))`, free of cancellation for small :math:`d`.
  """
  lo = jnp.minimum(a, b)
  d = jnp.abs(b - a)
  small = d < 4 * _LARGE_STEP
  d_small = jnp.where(small, d, 0.0)
  closed = jnp.log1p(jnp.expm1(d_small) * jax.nn.sigmoid(lo)) / _safe(d_small)
  closed = jnp.where(d == 0, jax.nn.sigmoid(a), closed)
  return jnp.where(small, closed, (fb - fa) / _safe(b - a))


def generic(
    derivative: Callable[[Array], Array],
    a: Array,
    b: Array,
    fa: Array,
    fb: Array,
) -> Array:
  """Secant of any elementwise function, from its values and its derivative.

  Two estimates of the average derivative are formed: the difference quotient
  :math:`(f(b) - f(a))/(b - a)`, whose rounding error is about
  :math:`\\epsilon (|f(a)| + |f(b)|) / |b - a|`, and Simpson's rule on the derivative,
  :math:`(f'(a) + 4 f'(m) + f'(b))/6`. Simpson's error is estimated from how far the
  trapezoid and midpoint values of :math:`f'` disagree, :math:`e = |T - M|^2 / (|T| + |M|)`:
  tiny for a smooth :math:`f` over a short step, of the order of :math:`f'` itself across a
  kink. Each element takes the estimate with the smaller error bound, so kinks get the
  difference quotient and smooth functions over short steps get the quadrature. At
  :math:`a = b` the result is :math:`f'(a)` exactly.

  Args:
    derivative: elementwise derivative :math:`x \\mapsto f'(x)`.
    a: input at the start of the step.
    b: input at the end of the step.
    fa: :math:`f(a)`.
    fb: :math:`f(b)`.

  Returns:
    The average derivative, elementwise.
  """
  d = b - a
  ga, gm, gb = derivative(a), derivative(a + 0.5 * d), derivative(b)
  simpson = (ga + 4.0 * gm + gb) / 6.0
  trapezoid = 0.5 * (ga + gb)
  finfo = jnp.finfo(jnp.result_type(fa))
  quad_error = (trapezoid - gm) ** 2 / (jnp.abs(trapezoid) + jnp.abs(gm) + finfo.tiny)
  quotient = (fb - fa) / _safe(d)
  quotient_error = finfo.eps * (jnp.abs(fa) + jnp.abs(fb)) / jnp.abs(_safe(d))
  use_quotient = (d != 0) & (quotient_error <= quad_error)
  return jnp.where(use_quotient, quotient, simpson)


def piecewise_linear(
    derivative: Callable[[Array], Array],
    a: Array,
    b: Array,
    fa: Array,
    fb: Array,
) -> Array:
  """Secant of a piecewise-linear function (``max``/``min``/``clamp`` against constants).

  The difference quotient of such a function has no cancellation: on one piece it is the
  piece's slope exactly (the same rounded ``b - a`` above and below), across a kink the
  numerator is not small. At :math:`a = b` it is the derivative JAX defines at ``a``.
  """
  d = b - a
  return jnp.where(d != 0, (fb - fa) / _safe(d), derivative(a))


def relu(u0: Array, u1: Array) -> Array:
  """Secant of :math:`\\max(u, 0)`; ``1/2`` at a tie, as JAX's ``max`` derivative."""
  d = u1 - u0
  point = jnp.where(u0 > 0, 1.0, jnp.where(u0 == 0, 0.5, 0.0)).astype(d.dtype)
  quotient = (jnp.maximum(u1, 0) - jnp.maximum(u0, 0)) / _safe(d)
  return jnp.where(d != 0, quotient, point)
