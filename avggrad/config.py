"""Training configuration: :class:`TrainConfig` (one run's settings), :class:`RunResult` (what a
run produced), the built-in models' defaults and the optimizer a configuration names
(:func:`make_tx`, with its learning-rate schedule :func:`learning_rate`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Mapping, Optional

import optax

from avggrad import data as data_lib
from avggrad import metrics, optimizers

MODELS: tuple[str, ...] = ("mlp", "cnn", "resnet", "text-mlp", "text-conv", "text-lm")
"""``mlp``, ``cnn``, ``text-mlp``, ``text-conv``: the plain deep networks of the paper's kind;
``resnet`` (residual CNN with GroupNorm) and ``text-lm`` (a causal transformer language model
on the IMDb text: next-token prediction) are of the kind users train today."""

SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine")

MODEL_DEFAULTS: Mapping[str, Mapping[str, Any]] = types.MappingProxyType({
    model: types.MappingProxyType(defaults) for model, defaults in {
        "mlp": {"depth": 16, "width": 128},
        "cnn": {"depth": 8, "channels": 32},
        "resnet": {"depth": 4, "channels": 16, "activation": "relu", "init": "he_normal"},
        "text-mlp": {"depth": 8, "width": 128, "vocab_size": 20000, "max_len": 128,
                     "embed_dim": 32},
        "text-conv": {"depth": 4, "width": 128, "vocab_size": 20000, "max_len": 128,
                      "embed_dim": 32},
        "text-lm": {"depth": 2, "vocab_size": 1000, "max_len": 33, "embed_dim": 64,
                    "heads": 4, "activation": "gelu", "batch_size": 32},
    }.items()})
"""Each model's defaults where they differ from :class:`TrainConfig`'s, sized to train at
interactive speed on a 2-core CPU (the sizes the benchmarks use; ``text-lm``: 32-token
windows of a 1,000-word vocabulary). The command line and :meth:`TrainConfig.for_model` apply
them; the dataclass's own defaults stay those of the MLP. Read-only (a
``types.MappingProxyType`` of them)."""

DEFAULT_OPTIMIZER = "avg-adam"
"""The one default optimizer, of :class:`TrainConfig` and ``avggrad train``: the recommended
form, at the default rate 1e-3 it trains every built-in model (the registry's ``avg-rmsprop``
carries momentum 0.9 and wants a 10x lower rate)."""


class NonFiniteLossError(FloatingPointError):
  """Raised by :func:`avggrad.loop.train` with ``raise_on_nonfinite=True`` when the loss
  diverges."""


@dataclasses.dataclass
class TrainConfig:
  """Everything that defines one training run.

  ``schedule`` is ``"constant"`` (the learning rate ``lr`` throughout) or
  ``"warmup_cosine"`` (linear warmup from 0 over ``warmup_fraction`` of the budget, then
  cosine decay to 0 at the last step, peaking at ``lr``). ``divergence_factor`` stops a run
  whose trailing mean loss exceeds that multiple of its initial loss (0: only a non-finite
  loss stops it).
  """

  dataset: str = data_lib.EMBEDDED
  model: str = "mlp"
  depth: int = 16
  width: int = 128
  channels: int = 32
  kernel_size: int = 3
  pooling: str = "stride"
  activation: str = "tanh"
  init: str = "glorot_uniform"
  optimizer: str = DEFAULT_OPTIMIZER
  lr: float = 1e-3
  steps: int = 2000
  batch_size: int = 128
  seed: int = 0
  eval_every: int = 50
  eval_examples: int = 2000
  data_dir: Optional[str] = None
  limit: Optional[int] = None
  vocab_size: int = 20000
  max_len: int = 256
  embed_dim: int = 64
  heads: int = 4
  schedule: str = "constant"
  warmup_fraction: float = 0.05
  divergence_factor: float = metrics.DEFAULT_DIVERGENCE_FACTOR

  @classmethod
  def for_model(cls, model: str, **settings: Any) -> "TrainConfig":
    """A configuration of ``model`` with its :data:`avggrad.config.MODEL_DEFAULTS`, then
    ``settings``."""
    if model not in MODELS:
      raise ValueError(f"Unknown model {model!r}; expected one of {', '.join(MODELS)}.")
    return cls(model=model, **(MODEL_DEFAULTS[model] | settings))

  def validate(self, builtin: bool = True) -> None:
    """Raises ``ValueError`` for settings that cannot work together; ``builtin=False`` (a
    task of the user's, :class:`avggrad.tasks.Task`) leaves out the model and dataset."""
    if builtin:
      self._validate_model()
    self._validate_training()

  def _validate_model(self) -> None:
    if self.model not in MODELS:
      raise ValueError(f"Unknown model {self.model!r}; expected one of {', '.join(MODELS)}.")
    if self.dataset not in data_lib.DATASETS:
      raise ValueError(
          f"Unknown dataset {self.dataset!r}; expected one of {', '.join(data_lib.DATASETS)}."
      )
    is_text = self.dataset == "imdb_reviews"
    if is_text != self.model.startswith("text-"):
      raise ValueError(
          f"Model {self.model!r} does not fit dataset {self.dataset!r}: IMDb takes "
          f"{', '.join(m for m in MODELS if m.startswith('text-'))}, the image datasets take "
          f"{', '.join(m for m in MODELS if not m.startswith('text-'))}."
      )

  def _validate_training(self) -> None:
    for name in ("steps", "batch_size", "eval_every", "eval_examples", "width", "channels"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
    if not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"lr must be a positive number, got {self.lr}.")
    if self.schedule not in SCHEDULES:
      raise ValueError(
          f"Unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}."
      )
    if not 0 <= self.warmup_fraction < 1:
      raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
    if not (self.divergence_factor >= 0 and math.isfinite(self.divergence_factor)):
      raise ValueError(
          f"divergence_factor must be 0 (off) or positive, got {self.divergence_factor}."
      )
    optimizers.parse_optimizer(self.optimizer)


@dataclasses.dataclass
class RunResult:
  """What one run produced.

  Attributes:
    config: the configuration, as a dict.
    losses: minibatch training loss at every step, measured before that step's update.
    evals: periodic evaluations ``{"step", "train_loss", "train_accuracy"}`` on the first
      ``eval_examples`` training examples.
    status: ``"ok"`` or ``"diverged at step N"`` (a non-finite loss, or a trailing mean loss
      above ``divergence_factor`` times the initial loss; the run stopped there).
    test_loss: the loss on the test split at the end (NaN if diverged).
    test_accuracy: the accuracy on the test split at the end (NaN if diverged).
    seconds_per_step: wall-clock per step, excluding compilation and the first
      ``eval_every`` steps (warm-up). For runs trained together by :mod:`avggrad.sweep`, the
      sweep's time per step divided by ``batched_runs`` (an amortised figure, not the time
      of one run's step: time steps one at a time, as :mod:`avggrad.timing` does, for
      wall-clock comparisons).
    compile_seconds: time to compile the training step.
    batched_runs: how many runs were trained together in one compiled program.
    scale: the final step scale of a self-tuning optimizer (:func:`avggrad.auto`), else
      ``None``.
  """

  config: dict[str, Any]
  losses: list[float]
  evals: list[dict[str, float]]
  status: str
  test_loss: float
  test_accuracy: float
  seconds_per_step: float
  compile_seconds: float
  batched_runs: int = 1
  scale: Optional[float] = None

  @property
  def diverged(self) -> bool:
    return self.status != "ok"

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)



def learning_rate(config: TrainConfig, lr: Any = None) -> optax.ScalarOrSchedule:
  """The learning rate or schedule of a configuration, peaking at ``lr`` (default
  ``config.lr``; may be a traced value, as in :mod:`avggrad.sweep`)."""
  lr = config.lr if lr is None else lr
  if config.schedule == "constant":
    return lr
  warmup = int(round(config.warmup_fraction * config.steps))
  unit = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=1.0, warmup_steps=warmup, decay_steps=config.steps,
      end_value=0.0)
  return lambda count: lr * unit(count)



def make_tx(config: TrainConfig, lr: Any = None) -> optax.GradientTransformationExtraArgs:
  """The optimizer of a configuration (:func:`avggrad.optimizers.make_optimizer`) with its
  learning rate or schedule peaking at ``lr`` (default ``config.lr``; may be traced)."""
  return optimizers.make_optimizer(config.optimizer, learning_rate(config, lr))


