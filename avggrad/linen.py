"""Flax Linen support: a ``TrainState`` whose ``apply_gradients`` passes the loss to ``tx``.

``flax.training.train_state.TrainState.apply_gradients(grads=...)`` calls
``tx.update(grads, opt_state, params)`` with no extra arguments, so it cannot hand an
average-gradient optimizer the ``value_fn`` it needs. :class:`TrainState` is the same class
with ``apply_gradients(grads=..., value_fn=..., extra_args=...)``; every other field and method
is Flax's.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import optax
from flax.training import train_state

OVERWRITE_WITH_GRADIENT = "_overwrite_with_gradient"


class TrainState(train_state.TrainState):
  r"""A Flax ``TrainState`` that passes ``value_fn`` (and other extra arguments) to ``tx``.

  .. math::

    (u, s') = \mathrm{tx.update}(g, s, w;\ \text{value\_fn}), \qquad w' = w + u

  Use it exactly like ``flax.training.train_state.TrainState``; ``apply_gradients`` also
  takes the loss on the current batch as a function of the parameters.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import flax.linen as nn
    >>> import avggrad
    >>> from avggrad.linen import TrainState
    >>> x = jnp.ones((8, 4)); y = jnp.zeros(8, jnp.int32)
    >>> net = nn.Dense(3)
    >>> state = TrainState.create(apply_fn=net.apply,
    ...                           params=net.init(jax.random.PRNGKey(0), x)["params"],
    ...                           tx=avggrad.adam(1e-2))
    >>> def value_fn(p):
    ...   logits = state.apply_fn({"params": p}, x)
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    >>> loss, grads = jax.value_and_grad(value_fn)(state.params)
    >>> state = state.apply_gradients(grads=grads, value_fn=value_fn)
    >>> int(state.step), bool(value_fn(state.params) < loss)
    (1, True)

  References:
    Flax, ``flax.training.train_state.TrainState``.
  """

  def apply_gradients(self, *, grads: Any, value_fn: Optional[Callable[..., Any]] = None,
                      extra_args: Optional[dict[str, Any]] = None,
                      **kwargs: Any) -> "TrainState":
    """Updates ``step``, ``params`` and ``opt_state`` (and replaces ``**kwargs`` fields).

    Args:
      grads: gradients shaped like ``params``.
      value_fn: the loss on the current batch as a function of the parameters (what
        average-gradient optimizers need; others ignore it). With the
        ``_overwrite_with_gradient`` collection, a function of ``params["params"]``.
      extra_args: further keyword arguments for ``tx.update`` (e.g. ``batch`` for a
        sub-batch far end).
      **kwargs: other dataclass fields to replace, as in Flax.

    Returns:
      The updated state.
    """
    if OVERWRITE_WITH_GRADIENT in grads:
      grads_with_opt, params_with_opt = grads["params"], self.params["params"]
    else:
      grads_with_opt, params_with_opt = grads, self.params
    tx = optax.with_extra_args_support(self.tx)
    extra = dict(extra_args or {})
    if value_fn is not None:
      extra["value_fn"] = value_fn
    updates, new_opt_state = tx.update(grads_with_opt, self.opt_state, params_with_opt,
                                       **extra)
    new_params_with_opt = optax.apply_updates(params_with_opt, updates)
    if OVERWRITE_WITH_GRADIENT in grads:
      new_params = {"params": new_params_with_opt,
                    OVERWRITE_WITH_GRADIENT: grads[OVERWRITE_WITH_GRADIENT]}
    else:
      new_params = new_params_with_opt
    return self.replace(step=self.step + 1, params=new_params, opt_state=new_opt_state,
                        **kwargs)


def nnx_model(module: Any, example_x: Any) -> Callable[[Any], Any]:
  """A Linen module as an NNX model factory ``rngs -> nnx.Module``, the form
  :func:`avggrad.custom.compare_on` and :class:`avggrad.tasks.Task` take.

  Each call wraps ``module`` in ``flax.nnx.bridge.ToNNX`` and initialises it on
  ``example_x`` (a batch of inputs; its values do not matter) with the given ``rngs``; the
  Linen ``params`` become ``nnx.Param``. The model is then applied without random streams
  (dropout and other stochastic layers are not supported).

  Example:
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from flax import nnx
    >>> from avggrad.linen import nnx_model
    >>> make = nnx_model(nn.Dense(3), jnp.ones((1, 4)))
    >>> make(nnx.Rngs(0))(jnp.ones((2, 4))).shape
    (2, 3)
  """
  from flax import nnx

  def make(rngs: Any) -> Any:
    model = nnx.bridge.ToNNX(module, rngs=rngs)
    nnx.bridge.lazy_init(model, example_x)
    model.to_nnx__rngs = None  # applied without random streams (deterministic layers)
    return model

  make.__name__ = type(module).__name__
  return make
