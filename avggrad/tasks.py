"""Tasks: what the loop trains, a model factory, a loss and data.

A :class:`Task` is the seam between a model and the harness: ``make_model(rngs)`` builds an
NNX module, ``loss(outputs, targets)`` is the scalar mean loss of its outputs on a batch, and
``train`` (and optionally ``test``) are ``(x, y)`` pairs of arrays (or pytrees of arrays) whose
leading axis is examples. The loop (:mod:`avggrad.loop`), the sweep (:mod:`avggrad.sweep`)
and the comparison (:mod:`avggrad.compare`) train a task; the built-in models are registered
tasks (:data:`BUILTIN`), built from a :class:`avggrad.config.TrainConfig` by :func:`for_config`,
as the optimizers are registered specs.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from avggrad import data as data_lib
from avggrad.config import TrainConfig
from avggrad.models import CNN, MLP, ResNet, TextModel, TransformerLM

def load_splits(config: TrainConfig) -> tuple[data_lib.Dataset, data_lib.Dataset]:
  """The training and test splits a configuration names. For ``text-lm`` the examples are
  next-token pairs: inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``."""
  kwargs = dict(data_dir=config.data_dir, limit=config.limit, vocab_size=config.vocab_size,
                max_len=config.max_len)
  splits = (data_lib.load(config.dataset, "train", **kwargs),
            data_lib.load(config.dataset, "test", **kwargs))
  if config.model == "text-lm":
    splits = tuple(dataclasses.replace(s, x=s.x[:, :-1], y=s.x[:, 1:].astype(np.int32),
                                       num_classes=s.vocab_size) for s in splits)
  return splits


def _common(config: TrainConfig, rngs: nnx.Rngs) -> dict[str, Any]:
  return dict(activation=config.activation, kernel_init=config.init, rngs=rngs)


def _mlp(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
  features = int(np.prod(train.x.shape[1:]))
  return MLP(features, train.num_classes, depth=config.depth, width=config.width,
             **_common(config, rngs))


def _cnn(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
  return CNN(train.x.shape[1:], train.num_classes, depth=config.depth,
             channels=config.channels, kernel_size=config.kernel_size,
             pooling=config.pooling, **_common(config, rngs))


def _resnet(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
  return ResNet(train.x.shape[1:], train.num_classes, depth=config.depth,
                channels=config.channels, **_common(config, rngs))


def _text_lm(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
  return TransformerLM(train.vocab_size, train.x.shape[1], dim=config.embed_dim,
                       depth=config.depth, heads=config.heads,
                       activation=config.activation, rngs=rngs)


def _text(kind: str) -> Callable[[TrainConfig, data_lib.Dataset, nnx.Rngs], nnx.Module]:
  def build(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
    return TextModel(train.vocab_size, train.num_classes, kind=kind,
                     embed_dim=config.embed_dim, depth=config.depth, width=config.width,
                     kernel_size=config.kernel_size, **_common(config, rngs))
  return build


BUILTIN: Mapping[str, Callable[[TrainConfig, data_lib.Dataset, nnx.Rngs], nnx.Module]] = (
    types.MappingProxyType({
        "mlp": _mlp, "cnn": _cnn, "resnet": _resnet, "text-mlp": _text("mlp"),
        "text-conv": _text("conv"), "text-lm": _text_lm,
    }))
"""The built-in models, by the name ``TrainConfig.model`` gives: each builds its model
from a configuration, the training split (for the input shape and the classes) and the
``nnx.Rngs``. Every one is a classification task (:func:`softmax_cross_entropy`,
:func:`classification_sums`). Read-only."""


def make_model(config: TrainConfig, train: data_lib.Dataset, rngs: nnx.Rngs) -> nnx.Module:
  """The model a configuration names (:data:`BUILTIN`), sized for the dataset."""
  try:
    build = BUILTIN[config.model]
  except KeyError:
    raise ValueError(f"Unknown model {config.model!r}; expected one of "
                     f"{', '.join(BUILTIN)}.") from None
  return build(config, train, rngs)





def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """The built-in tasks' loss: mean softmax cross-entropy of ``logits`` against integer
  ``labels`` (over examples, and tokens for a language model)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def classification_sums(logits: jax.Array, labels: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Summed cross-entropy, count of correct predictions and count of predictions (examples,
  or tokens for a language model) on a batch: the built-in tasks' evaluation."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()
  return loss, (jnp.argmax(logits, -1) == labels).sum(), jnp.asarray(labels.size, jnp.float32)


def cross_entropy(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of the model's logits."""
  return softmax_cross_entropy(model(x), y)


def num_examples(data: Any) -> int:
  """The length of the leading (examples) axis of an ``(x, y)`` pair of arrays or pytrees
  of arrays, a :class:`avggrad.data.Dataset` or a :class:`Task` (its training data); a
  ``ValueError`` when the leaves disagree."""
  if isinstance(data, Task):
    data = data.train
  if isinstance(data, data_lib.Dataset):
    return len(data)
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise ValueError("the data holds no arrays.")
  sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in leaves}
  if len(sizes) != 1 or -1 in sizes:
    raise ValueError("the arrays of the data must share their leading (examples) axis; got "
                     f"lengths {sorted(int(np.shape(a)[0]) if np.ndim(a) else 0 for a in leaves)}.")
  return sizes.pop()


def take(data: Any, index: Any) -> Any:
  """``data`` (a pytree of arrays) at ``index`` along the examples axis."""
  return jax.tree.map(lambda a: a[index], data)


@dataclasses.dataclass(frozen=True)
class Task:
  """What the loop trains: a model factory, a loss and data.

  Attributes:
    make_model: ``rngs -> nnx.Module`` (called with ``nnx.Rngs(seed)``: the same seed gives
      the same initial weights whatever the optimizer).
    loss: ``(outputs, targets) -> scalar``: the mean loss of the model's outputs
      ``model(x)`` on a batch with targets ``y``.
    train: the training data ``(x, y)``; ``x`` and ``y`` are arrays or pytrees (e.g. dicts)
      of arrays whose leading axis is examples.
    test: held-out data of the same form, or ``None`` (test metrics are then NaN).
    sums: ``(outputs, targets) -> (summed loss, correct, count)`` for evaluations (loss and
      accuracy over the whole evaluation set); ``None``: the loss times the batch's examples
      and no accuracy (NaN).
    name: what records and tables call the task.
  """

  make_model: Callable[[nnx.Rngs], nnx.Module]
  loss: Callable[[Any, Any], jax.Array]
  train: tuple[Any, Any]
  test: Optional[tuple[Any, Any]] = None
  sums: Optional[Callable[[Any, Any], tuple[jax.Array, jax.Array, jax.Array]]] = None
  name: str = "custom"

  def __len__(self) -> int:
    return num_examples(self.train)

  def value(self, model: nnx.Module, x: Any, y: Any) -> jax.Array:
    """The mean loss of ``model`` on the batch ``(x, y)``."""
    return self.loss(model(x), y)

  def eval_sums(self, model: nnx.Module, x: Any, y: Any
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed loss, correct predictions and count on ``(x, y)`` (``sums``)."""
    outputs = model(x)
    if self.sums is not None:
      return self.sums(outputs, y)
    n = num_examples((x, y))
    return self.loss(outputs, y) * n, jnp.asarray(jnp.nan), jnp.asarray(n, jnp.float32)


def for_config(config: TrainConfig, train_data: Optional[data_lib.Dataset] = None,
               test_data: Optional[data_lib.Dataset] = None) -> Task:
  """The built-in task a configuration names (:data:`BUILTIN`) on its dataset (loaded with
  :func:`load_splits` where ``train_data`` or ``test_data`` is not given)."""
  if train_data is None or test_data is None:
    loaded = load_splits(config)
    train_data = loaded[0] if train_data is None else train_data
    test_data = loaded[1] if test_data is None else test_data
  return Task(make_model=functools.partial(make_model, config, train_data),
              loss=softmax_cross_entropy, train=(train_data.x, train_data.y),
              test=(test_data.x, test_data.y), sums=classification_sums, name=config.model)


def as_task(config: TrainConfig, data: Any, test_data: Optional[data_lib.Dataset] = None
            ) -> Task:
  """``data`` if it is a :class:`Task`, else the built-in task of ``config`` on the splits
  given (``data`` a training :class:`avggrad.data.Dataset` or ``None``)."""
  if isinstance(data, Task):
    return data
  return for_config(config, data, test_data)
