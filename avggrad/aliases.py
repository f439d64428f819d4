r"""Ready-made optimizers: AvgGrad-RMSProp, AvgGrad-Adam and their same-core baselines.

Each average-gradient optimizer is :func:`avggrad.average_gradient` around exactly the chain
its baseline is made of, so a comparison between the two differs in nothing but the gradient
that the chain is fed.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import optax

from avggrad import transforms


_WRAPPER_OPTIONS = ("estimator", "num_points", "span", "update_range", "accumulate", "combine",
                    "far_batch_fraction", "far_dtype", "max_gain")


def _wrap(inner: optax.GradientTransformation,
          options: dict) -> optax.GradientTransformationExtraArgs:
  """:func:`avggrad.average_gradient` around ``inner`` with an alias's wrapper options."""
  return transforms.average_gradient(inner, **{k: options[k] for k in _WRAPPER_OPTIONS})


def _rms_inner(learning_rate, decay, eps, initial_scale, eps_in_sqrt, centered, momentum,
               nesterov, bias_correction) -> optax.GradientTransformationExtraArgs:
  """``optax.rmsprop``'s chain, with :func:`avggrad.scale_by_rms` as the scaling."""
  return optax.with_extra_args_support(
      optax.chain(
          transforms.scale_by_rms(
              decay=decay, eps=0.0 if eps_in_sqrt else eps, eps_root=eps if eps_in_sqrt else 0.0,
              initial_scale=initial_scale, centered=centered, bias_correction=bias_correction),
          optax.scale_by_learning_rate(learning_rate),
          optax.trace(decay=momentum, nesterov=nesterov)
          if momentum is not None
          else optax.identity(),
      )
  )


def rmsprop_baseline(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Optional[jax.typing.ArrayLike] = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""RMSProp, as the chain that :func:`rmsprop` feeds with the average gradient.

  .. math::

    \nu_t = \beta \nu_{t-1} + (1 - \beta) g_t^2, \qquad
    \Delta_t = -\eta_t \frac{g_t}{\sqrt{\nu_t + \epsilon}}
    \quad\text{or, with ``eps_in_sqrt=False``,}\quad
    -\eta_t \frac{g_t}{\sqrt{\nu_t} + \epsilon}

  The arguments and defaults of ``optax.rmsprop``, with which it agrees numerically.
  ``eps_in_sqrt=False`` puts ``eps`` outside the root, as Keras and PyTorch do (the form the
  benchmarks measured, with ``eps=1e-7``: the registry's ``rmsprop``).

  Args:
    learning_rate: :math:`\eta`, a scalar or a schedule.
    decay: :math:`\beta`.
    eps: :math:`\epsilon`.
    initial_scale: initial value of the accumulator :math:`\nu`.
    eps_in_sqrt: add ``eps`` inside the root (Optax) or outside (Keras, PyTorch).
    centered: divide by the standard deviation instead (subtract the squared mean).
    bias_correction: divide the accumulators by :math:`1 - \beta^t`.
    momentum: optional heavy-ball momentum applied after the scaling (``None``: none).
    nesterov: use Nesterov momentum.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra arguments such as ``value_fn`` are
    accepted and ignored).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = avggrad.rmsprop_baseline(0.1)
    >>> w = jnp.zeros(3)
    >>> state = tx.init(w)
    >>> for _ in range(20):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(loss(w) < 0.1)
    True

  References:
    T. Tieleman and G. Hinton, Lecture 6.5 - RMSProp, COURSERA (2012).
  """
  return _rms_inner(learning_rate, decay, eps, initial_scale, eps_in_sqrt, centered, momentum,
                    nesterov, bias_correction)


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Optional[jax.typing.ArrayLike] = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    estimator: str = "trapezoid",
    num_points: int = 3,
    update_range: str = "predicted",
    span: jax.typing.ArrayLike = 8.0,
    accumulate: str = "point",
    combine: str = "accelerate",
    far_batch_fraction: Optional[float] = None,
    far_dtype: Optional[str] = None,
    max_gain: Optional[jax.typing.ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AvgGrad-RMSProp: RMSProp fed the average gradient over its own update.

  .. math::

    \hat\Delta_t = \mathrm{RMSProp}_\mu(g_t), \qquad
    \bar g_t = \int_0^1 \nabla L(w_t + \tau s \hat\Delta_t)\, d\tau, \qquad
    \Delta_t = \mathrm{RMSProp}_\mu(\bar g_t),

  where :math:`\mathrm{RMSProp}_\mu(v)` is ``optax.rmsprop``'s step (optionally followed by
  heavy-ball momentum, :math:`m_t = \mu m_{t-1} + \eta_t v / \sqrt{\nu_t + \epsilon}`)
  (:func:`avggrad.average_gradient` around :func:`rmsprop_baseline`).

  **A drop-in for** ``optax.rmsprop``: the same arguments and defaults (``eps`` inside the
  root, no momentum), so ``optax.rmsprop(lr)`` becomes ``avggrad.rmsprop(lr)`` at the same
  learning rate. The wrapper's options follow, keyword-only.

  **The recommended form** is one argument away: ``avggrad.rmsprop(lr / 10, momentum=0.9)``.
  With heavy-ball momentum 0.9 (and ``eps_in_sqrt=False, eps=1e-7``, the Keras placement the
  benchmarks used) it needed fewer iterations than the best of RMSProp, RMSProp with the
  same momentum and Adam on the median deep task of the fine grid (figures: the README's
  Results); momentum 0.9 multiplies the step by about 10, hence the 10x lower rate. Without
  momentum it rarely beats Adam. The wrapper's defaults: accelerate-only over 8 predicted
  steps, the accumulator fed the point gradient, the trapezoid estimator. The paper's
  algorithm as we reconstruct it is
  ``avggrad.rmsprop(lr, eps=1e-7, eps_in_sqrt=False, **avggrad.PAPER_FORM)``
  (:data:`avggrad.transforms.PAPER_FORM`: ``combine="replace", span=1.0,
  accumulate="average", estimator="factorized"``); it never reached the best baseline's
  target on a deep network we tried. For training, prefer :func:`adam`.

  Args:
    learning_rate: :math:`\eta`, a scalar or a schedule.
    decay: :math:`\beta`, the decay of the squared-gradient average.
    eps: :math:`\epsilon`.
    initial_scale: initial value of the accumulator.
    eps_in_sqrt: ``eps`` inside the root (Optax) or outside (Keras, PyTorch).
    centered: divide by the standard deviation (subtract the squared mean).
    momentum: heavy-ball momentum after the scaling (``None``: none, as ``optax.rmsprop``).
    nesterov: use Nesterov momentum.
    bias_correction: divide the accumulators by :math:`1 - \beta^t`.
    estimator: ``"factorized"``, ``"quadrature"`` or ``"trapezoid"``.
    num_points: Gauss-Legendre nodes of the ``"quadrature"`` estimator.
    update_range: ``"predicted"`` (this step's RMSProp update, predicted from the point
      gradient) or ``"previous"`` (the update applied at the previous step).
    span: average over ``span`` times the range (the step itself is not scaled).
    accumulate: ``"average"`` (the accumulator sees :math:`\bar g^2`) or ``"point"``
      (it sees :math:`g^2`).
    combine: ``"accelerate"`` (use :math:`\bar g_i` only where it lengthens the step) or
      ``"replace"`` (see :func:`avggrad.average_gradient`).
    far_batch_fraction: take the far-end gradient on this fraction of the minibatch
      (trapezoid estimator; see :func:`avggrad.average_gradient`).
    far_dtype: compute the far-end gradient in this dtype (trapezoid estimator).
    max_gain: bound :math:`|\bar g_i| \le \text{max\_gain}\,|g_i|` (accelerate only).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and the
    keyword argument ``value_fn`` (the loss on the current batch).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum(jnp.tanh(w - 1.0) ** 2)
    >>> tx = avggrad.rmsprop(0.1)
    >>> w = jnp.zeros(3)
    >>> state = tx.init(w)
    >>> for _ in range(20):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(loss(w) < 0.1)
    True

  References:
    R. Wolniak and B. Kostek, Neural Computation (DOI 10.1162/neco.a.1514).
  """
  inner = _rms_inner(learning_rate, decay, eps, initial_scale, eps_in_sqrt, centered, momentum,
                     nesterov, bias_correction)
  return _wrap(inner, locals())


def adam_baseline(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Optional[Any] = None,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Adam, as the chain that :func:`adam` feeds with the average gradient.

  .. math::

    \Delta_t = -\eta_t \frac{\hat m_t}{\sqrt{\hat \nu_t + \epsilon_{\text{root}}} + \epsilon}

  Numerically the same as ``optax.adam``, with its arguments and defaults.

  Args:
    learning_rate: :math:`\eta`, a scalar or a schedule.
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added outside the root.
    eps_root: added inside the root.
    mu_dtype: the dtype of the first moment.
    nesterov: Nesterov momentum (NAdam).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra arguments are ignored).

  Example:
    >>> import jax.numpy as jnp
    >>> import avggrad
    >>> tx = avggrad.adam_baseline(0.5, eps=0.0)
    >>> u, _ = tx.update(jnp.array([3.0, -4.0]), tx.init(jnp.zeros(2)))
    >>> [round(x, 4) for x in u.tolist()]
    [-0.5, 0.5]

  References:
    D. P. Kingma and J. Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
  """
  return optax.with_extra_args_support(
      optax.chain(
          transforms.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                                   mu_dtype=mu_dtype, nesterov=nesterov),
          optax.scale_by_learning_rate(learning_rate),
      )
  )


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    eps_root: jax.typing.ArrayLike = 0.0,
    mu_dtype: Optional[Any] = None,
    *,
    nesterov: bool = False,
    estimator: str = "trapezoid",
    num_points: int = 3,
    update_range: str = "predicted",
    span: jax.typing.ArrayLike = 8.0,
    accumulate: str = "average",
    combine: str = "accelerate",
    far_batch_fraction: Optional[float | str] = "auto",
    far_dtype: Optional[str] = None,
    max_gain: Optional[jax.typing.ArrayLike] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AvgGrad-Adam: Adam fed the average gradient over its own update.

  .. math::

    \hat\Delta_t = \mathrm{Adam}(g_t), \qquad
    \bar g_t = \int_0^1 \nabla L(w_t + \tau s \hat\Delta_t)\, d\tau, \qquad
    \Delta_t = \mathrm{Adam}(\mathrm{combine}(g_t, \bar g_t))

  Beyond the paper, which uses RMSProp; later work of the same line reports gains with Adam.
  With ``accumulate="point"`` the second moment sees :math:`g_t` and the first
  :math:`\bar g_t`.

  Why accelerate-only over a long span: on a quadratic with Hessian :math:`H`, Adam's
  diagonal preconditioner :math:`P` and the predicted step :math:`\hat\Delta = -\eta P g`,
  the average gradient is :math:`\bar g = (I - \tfrac{s}{2} \eta H P) g`. Along directions
  where the loss curves up it shortens (or, for long steps, reverses) the step, which Adam's
  normalisation already sized; along directions where it curves down (plateaus, saddles:
  negative curvature) it lengthens it. ``combine="accelerate"`` keeps only the lengthening
  (:math:`\bar g_i` where it has the sign of :math:`g_i` and a larger magnitude), and a span
  :math:`s > 1` lets the average see curvature over several steps' distance.

  **Defaults, from the benchmarks** (figures: the README's Results, which regenerate from
  ``benchmarks/``): ``combine="accelerate", span=8`` with the trapezoid estimator (the point
  gradient and one gradient at the far end of 8 predicted steps) needed fewer iterations than
  Adam on nearly every deep task; the factorized estimator broke down inside accelerate-only
  (it keeps exactly the coordinates an estimator inflates, and a product of averaged
  Jacobians can exceed every gradient on the path); ``accumulate="point"`` helped on one task
  and lost elsewhere. A step costs about two gradients, so ``far_batch_fraction="auto"``
  evaluates the far end on every 4th example of the minibatch when ``update`` receives
  ``batch`` (and ``value_fn`` takes it), which keeps most of the gain in iterations at a
  fraction of the extra cost; without ``batch`` the whole minibatch is used.

  Args:
    learning_rate: :math:`\eta`, a scalar or a schedule.
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added outside the root.
    eps_root: added inside the root.
    mu_dtype: the dtype of the first moment.
    nesterov: Nesterov momentum (NAdam's first moment).
    estimator: ``"factorized"``, ``"quadrature"`` or ``"trapezoid"``.
    num_points: Gauss-Legendre nodes of the ``"quadrature"`` estimator.
    update_range: ``"predicted"`` or ``"previous"``.
    span: average over ``span`` times the range (the step itself is not scaled).
    accumulate: ``"average"`` or ``"point"``.
    combine: ``"accelerate"`` or ``"replace"`` (see :func:`avggrad.average_gradient`).
    far_batch_fraction: take the far-end gradient on this fraction of the minibatch
      (trapezoid estimator; needs ``batch=`` in ``update``, see
      :func:`avggrad.average_gradient`). ``"auto"``: a quarter when ``update`` receives
      ``batch``, else the whole minibatch; ``None``: always the whole minibatch.
    far_dtype: compute the far-end gradient in this dtype (trapezoid estimator).
    max_gain: bound :math:`|\bar g_i| \le \text{max\_gain}\,|g_i|` (accelerate only).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and
    ``value_fn``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import avggrad
    >>> loss = lambda w: jnp.sum(jnp.tanh(w - 1.0) ** 2)
    >>> tx = avggrad.adam(0.1)  # accelerate-only over 8 predicted steps, trapezoid
    >>> w = jnp.zeros(3)
    >>> state = tx.init(w)
    >>> for _ in range(20):
    ...   updates, state = tx.update(jax.grad(loss)(w), state, w, value_fn=loss)
    ...   w = optax.apply_updates(w, updates)
    >>> bool(loss(w) < 0.1)
    True

  References:
    R. Wolniak and B. Kostek, Neural Computation (DOI 10.1162/neco.a.1514);
    D. P. Kingma and J. Ba, ICLR 2015.
  """
  inner = adam_baseline(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)
  return _wrap(inner, locals())
