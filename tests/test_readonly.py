"""The public tables are read-only, as ``COMBINES`` and ``PAPER_FORM`` are: a mutation raises
instead of changing every later run in the process."""

from __future__ import annotations

import pytest

from avggrad import cli, config, models, training
from avggrad.estimators import rules
from avggrad.models import registry


@pytest.mark.parametrize("table, key", [
    (training.MODEL_DEFAULTS, "mlp"),
    (cli.MAIN_JOB, "mlp"),
    (rules.RULES, "tanh"),
    (registry.ACTIVATIONS, "tanh"),
    (models.ACTIVATIONS, "relu"),
])
def test_public_tables_refuse_mutation(table, key):
  before = dict(table)
  with pytest.raises(TypeError):
    table[key] = None
  with pytest.raises(TypeError):
    table["new"] = before[key]
  with pytest.raises(TypeError):
    del table[key]
  assert dict(table) == before


@pytest.mark.parametrize("table", [training.MODEL_DEFAULTS, cli.MAIN_JOB])
def test_nested_defaults_refuse_mutation(table):
  with pytest.raises(TypeError):
    table["mlp"]["width"] = 1


def test_one_default_optimizer():
  """``TrainConfig`` and ``avggrad train`` share one default optimizer."""
  assert config.TrainConfig().optimizer == config.DEFAULT_OPTIMIZER == "avg-adam"
  args = cli.build_parser().parse_args(["train"])
  assert args.optimizer == config.TrainConfig().optimizer
  assert training.TrainConfig.for_model("cnn").optimizer == config.DEFAULT_OPTIMIZER
