"""Conformance of the factorized estimator on models built only from Flax library layers.

Each model uses layers of ``flax.nnx`` or ``flax.linen`` as a user would (attention with and
without a causal mask, LayerNorm, RMSNorm, BatchNorm in inference mode, Embed, LSTM and GRU
through ``nn.RNN``, convolutions with average and max pooling, Dropout in deterministic mode,
gelu, silu, relu, softplus and elu). For a step ``delta`` in a random direction it measures,
in float64, the relative error of the factorized estimate and of the point gradient against
the exact average gradient, the order of the factorized error (how it falls when the step is
halved), whether the rule table claims exactness (:func:`avggrad.coverage`) and how far
:math:`\\hat g\\cdot\\Delta` is from :math:`L(w+\\Delta) - L(w)`.

The exact average is 16-node Gauss-Legendre quadrature for smooth models. Where a model has
kinks (relu, max pooling) the gradient jumps along the step wherever a unit crosses a kink,
and Gauss-Legendre converges only like ``1/K`` on such an integrand (16 nodes err by 3e-4 to
2e-3 here, as much as the estimator), so the reference is then a composite rule, 128 panels of
4 Gauss nodes (``docs/factorization.md``, "Kinks").

Usage::

  python -m benchmarks.conformance [--models NAME ...]

(``tests/test_conformance.py`` asserts on the same figures.)
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen, nnx

import avggrad

Loss = Callable[[Any], jax.Array]


@dataclasses.dataclass
class Case:
  """A model as a loss of its parameters, with whether it is smooth along a step."""

  params: Any
  loss: Loss
  smooth: bool
  float32_inside: bool = False  # the library computes part of it in float32


def _nnx_case(module: nnx.Module, x: jax.Array, y: jax.Array, smooth: bool,
              float32_inside: bool = False) -> Case:
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def loss(p: Any) -> jax.Array:
    logits = nnx.merge(graphdef, p, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return Case(params, loss, smooth, float32_inside)


def _linen_case(module: linen.Module, x: jax.Array, y: jax.Array, smooth: bool) -> Case:
  variables = module.init(jax.random.PRNGKey(0), x)
  params = variables["params"]
  others = {k: v for k, v in variables.items() if k != "params"}

  def loss(p: Any) -> jax.Array:
    logits = module.apply({"params": p, **others}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return Case(params, loss, smooth)


def _tokens(key: int = 0, shape: tuple[int, ...] = (4, 6), vocab: int = 11) -> jax.Array:
  return jax.random.randint(jax.random.PRNGKey(key), shape, 0, vocab)


def _labels(n: int, classes: int = 3) -> jax.Array:
  return jax.random.randint(jax.random.PRNGKey(7), (n,), 0, classes)


class _Attention(nnx.Module):
  """A pre-norm transformer block on embedded tokens (nnx), mean-pooled to 3 classes."""

  def __init__(self, causal: bool, rngs: nnx.Rngs):
    self.embed = nnx.Embed(11, 8, param_dtype=jnp.float64, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8,
                                            decode=False, rngs=rngs)
    self.mlp = nnx.Linear(8, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)
    self.causal = causal

  def __call__(self, tokens: jax.Array) -> jax.Array:
    h = self.embed(tokens)
    mask = nnx.make_causal_mask(tokens) if self.causal else None
    h = h + self.attention(self.norm(h), mask=mask)
    h = h + jax.nn.gelu(self.mlp(h))
    return self.head(h.mean(axis=1))


class _Norms(nnx.Module):
  """Dense layers with LayerNorm, RMSNorm and BatchNorm (inference mode), tanh (nnx)."""

  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(5, 8, rngs=rngs)
    self.ln = nnx.LayerNorm(8, rngs=rngs)
    self.l2 = nnx.Linear(8, 8, rngs=rngs)
    self.rms = nnx.RMSNorm(8, rngs=rngs)
    self.l3 = nnx.Linear(8, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.tanh(self.ln(self.l1(x)))
    h = jnp.tanh(self.rms(self.l2(h)))
    h = jnp.tanh(self.bn(self.l3(h)))
    return self.head(h)


class _Embed(nnx.Module):
  """Embed, mean over tokens, a softplus layer (nnx)."""

  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(11, 6, param_dtype=jnp.float64, rngs=rngs)
    self.hidden = nnx.Linear(6, 8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return self.head(jax.nn.softplus(self.hidden(self.embed(tokens).mean(axis=1))))


class _ConvPool(nnx.Module):
  """Two convolutions with a pooling between them, tanh (nnx)."""

  def __init__(self, pool: str, activation: Callable, rngs: nnx.Rngs):
    self.c1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.c2 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
    self.head = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)
    self.pool, self.activation = pool, activation

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.activation(self.c1(x))
    pool = nnx.max_pool if self.pool == "max" else nnx.avg_pool
    h = pool(h, (2, 2), (2, 2))
    h = self.activation(self.c2(h))
    return self.head(h.reshape(h.shape[0], -1))


class _Dropout(nnx.Module):
  """Dense, Dropout (deterministic), silu (nnx)."""

  def __init__(self, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(5, 8, rngs=rngs)
    self.drop = nnx.Dropout(0.5, deterministic=True, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.drop(jax.nn.silu(self.l1(x))))


class _LinenMLP(linen.Module):
  """Three Dense layers with a given activation (linen)."""

  activation: Callable

  @linen.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(3):
      x = self.activation(linen.Dense(8)(x))
    return linen.Dense(3)(x)


class _LinenRNN(linen.Module):
  """An LSTM or GRU over embedded tokens through ``nn.RNN`` (a scan), last state (linen)."""

  cell: str

  @linen.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    h = linen.Embed(11, 6, param_dtype=jnp.float64)(tokens)
    dtypes = dict(param_dtype=jnp.float64, dtype=jnp.float64)  # the carry matches the params
    cell = linen.LSTMCell(8, **dtypes) if self.cell == "lstm" else linen.GRUCell(8, **dtypes)
    h = linen.RNN(cell)(h)
    return linen.Dense(3)(h[:, -1])


class _LinenAttention(linen.Module):
  """``nn.MultiHeadDotProductAttention`` self-attention with a causal mask (linen)."""

  @linen.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    h = linen.Embed(11, 8, param_dtype=jnp.float64)(tokens)
    mask = linen.make_causal_mask(tokens)
    h = h + linen.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(
        linen.LayerNorm()(h), mask=mask)
    return linen.Dense(3)(h.mean(axis=1))


def _images(n: int = 6) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(3), (n, 8, 8, 1))


def _features(n: int = 16) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(3), (n, 5))


def cases() -> dict[str, Callable[[], Case]]:
  """Builders of every conformance model, by name (build under float64)."""
  rngs = lambda: nnx.Rngs(0)  # noqa: E731
  tokens, images, features = _tokens, _images, _features
  out: dict[str, Callable[[], Case]] = {
      # flax.nnx's attention computes its softmax in float32 whatever the inputs' dtype
      "nnx attention": lambda: _nnx_case(_Attention(False, rngs()), tokens(), _labels(4), True,
                                         float32_inside=True),
      "nnx attention, causal": lambda: _nnx_case(_Attention(True, rngs()), tokens(),
                                                 _labels(4), True, float32_inside=True),
      "linen attention, causal": lambda: _linen_case(_LinenAttention(), tokens(), _labels(4),
                                                     True),
      "nnx LayerNorm/RMSNorm/BatchNorm": lambda: _nnx_case(_Norms(rngs()), features(),
                                                            _labels(16), True),
      "nnx Embed, softplus": lambda: _nnx_case(_Embed(rngs()), tokens(), _labels(4), True),
      "linen LSTM (nn.RNN)": lambda: _linen_case(_LinenRNN("lstm"), tokens(), _labels(4), True),
      "linen GRU (nn.RNN)": lambda: _linen_case(_LinenRNN("gru"), tokens(), _labels(4), True),
      "nnx Conv, avg pool, tanh": lambda: _nnx_case(_ConvPool("avg", jnp.tanh, rngs()),
                                                     images(), _labels(6), True),
      "nnx Conv, max pool, tanh": lambda: _nnx_case(_ConvPool("max", jnp.tanh, rngs()),
                                                     images(), _labels(6), False),
      "nnx Conv, avg pool, relu": lambda: _nnx_case(_ConvPool("avg", jax.nn.relu, rngs()),
                                                     images(), _labels(6), False),
      "nnx Dropout (deterministic), silu": lambda: _nnx_case(_Dropout(rngs()), features(),
                                                              _labels(16), True),
  }
  for name in ("gelu", "silu", "relu", "softplus", "elu"):
    act = getattr(jax.nn, name)
    out[f"linen MLP, {name}"] = (lambda act=act, name=name: _linen_case(
        _LinenMLP(act), features(), _labels(16), name not in ("relu", "elu")))
  return out


def _rel(a: Any, b: Any) -> float:
  return float(optax.tree.norm(optax.tree.sub(a, b)) / optax.tree.norm(b))


def composite_average(loss: Loss, params: Any, delta: Any, panels: int = 128,
                      nodes: int = 4) -> Any:
  """The average gradient by composite Gauss-Legendre quadrature (``panels`` x ``nodes``
  gradients): converges on piecewise-smooth paths, where one Gauss rule stalls."""
  t, w = np.polynomial.legendre.leggauss(nodes)
  taus = ((np.arange(panels)[:, None] + (t[None] + 1) / 2) / panels).ravel()
  weights = np.tile(w / 2 / panels, panels)
  grad = jax.grad(loss)

  def at(tau: jax.Array) -> Any:
    return grad(jax.tree.map(lambda p, d: p + tau * d, params, delta))

  grads = jax.lax.map(at, jnp.asarray(taus), batch_size=64)
  return jax.tree.map(lambda g: jnp.tensordot(jnp.asarray(weights), g, axes=1), grads)


def reference(case: Case, delta: Any) -> Any:
  """The exact average gradient over ``delta`` (see the module docstring)."""
  if case.smooth:
    quadrature = avggrad.value_and_average_grad(case.loss, estimator="quadrature",
                                                num_points=16)
    return jax.jit(quadrature)(case.params, delta)[1]
  return jax.jit(lambda p, d: composite_average(case.loss, p, d))(case.params, delta)


def direction(params: Any, scale: float, seed: int = 1) -> Any:
  """A random step of RMS size ``scale`` per weight."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, l.shape, l.dtype)
                                      for k, l in zip(keys, leaves)])


@dataclasses.dataclass
class Row:
  model: str
  smooth: bool
  factorized_error: float  # at the step
  point_error: float
  order: float  # log2(error at step / error at half the step)
  exact: bool  # the rule table claims g.delta = L(w + delta) - L(w)
  loss_change_error: float  # |g.delta - (L(w + delta) - L(w))| / |L(w + delta) - L(w)|
  fallbacks: list[str]
  zero_step_error: float  # factorized at delta = 0 vs jax.value_and_grad
  float32_inside: bool


def measure(name: str, build: Callable[[], Case], scale: float = 0.02) -> Row:
  """The conformance figures of one model (call with float64 enabled)."""
  case = build()
  case = dataclasses.replace(
      case, params=jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), case.params))
  estimate = jax.jit(avggrad.value_and_average_grad(case.loss))
  zero = jax.tree.map(jnp.zeros_like, case.params)
  value0, g0 = estimate(case.params, zero)
  value, grad = jax.jit(jax.value_and_grad(case.loss))(case.params)
  zero_error = max(_rel(g0, grad), abs(float(value0 - value)) / abs(float(value)))
  errors = []
  for s in (scale, scale / 2):
    delta = direction(case.params, s)
    exact = reference(case, delta)
    errors.append(_rel(estimate(case.params, delta)[1], exact))
    if s == scale:
      point_error = _rel(grad, exact)
      g = estimate(case.params, delta)[1]
      change = float(case.loss(jax.tree.map(jnp.add, case.params, delta)) - value)
      predicted = float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g),
                                                           jax.tree.leaves(delta))))
      change_error = abs(predicted - change) / abs(change)
      report = avggrad.coverage(case.loss, case.params, delta)
  return Row(name, case.smooth, errors[0], point_error, float(np.log2(errors[0] / errors[1])),
             report.exact, change_error, report.fallbacks, zero_error, case.float32_inside)


def main(argv: Optional[list[str]] = None) -> list[Row]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", nargs="*", default=None)
  parser.add_argument("--scale", type=float, default=0.02)
  args = parser.parse_args(argv)
  jax.config.update("jax_enable_x64", True)
  rows = []
  print(f"step: RMS {args.scale} per weight, random direction; float64\n")
  print("| model | factorized error | point-gradient error | order | exact claim | "
        "loss-change error | approximate rules |")
  print("|---|---|---|---|---|---|---|")
  for name, build in cases().items():
    if args.models and name not in args.models:
      continue
    r = measure(name, build, args.scale)
    rows.append(r)
    print(f"| {r.model}{'' if r.smooth else ' (kinks)'} | {r.factorized_error:.1e} | "
          f"{r.point_error:.1e} | {r.order:.1f} | {'yes' if r.exact else 'no'} | "
          f"{r.loss_change_error:.1e} | {', '.join(r.fallbacks) or '-'} |", flush=True)
  return rows


if __name__ == "__main__":
  main()
