"""avggrad.compare_on and ``avggrad compare --model pkg.module:make_model``: models, losses and
data that are not the package's, trained by the package's one loop, sweep and protocol."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import avggrad
from avggrad import cli, custom, loop, parallel, sweep, tasks, training
from avggrad.linen import nnx_model

STEPS, BATCH = 30, 16


def _regression(n=128, features=4, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, features)).astype(np.float32)
  y = np.tanh(x @ rng.normal(size=features).astype(np.float32))
  return x, y


def _mlp(rngs):
  return nnx.Sequential(nnx.Linear(4, 8, rngs=rngs), nnx.tanh, nnx.Linear(8, 1, rngs=rngs))


def mse(out, y):
  return ((out[:, 0] - y) ** 2).mean()


def _reference_losses(make_model, loss, x, y, tx, seed):
  """A hand-written jitted loop: the same initial weights (``make_model(nnx.Rngs(seed))``)
  and minibatch order (the harness's shuffled epochs), Optax's own update."""
  graphdef, params, rest = nnx.split(make_model(nnx.Rngs(seed)), nnx.Param, ...)
  state = tx.init(params)

  @jax.jit
  def step(params, state, xb, yb):
    value, grads = jax.value_and_grad(
        lambda p: loss(nnx.merge(graphdef, p, rest)(xb), yb))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  losses = []
  for row in loop.batch_indices(len(jax.tree.leaves(y)[0]), BATCH, STEPS, seed):
    params, state, value = step(params, state, tasks.take(x, row), tasks.take(y, row))
    losses.append(float(value))
  return np.asarray(losses)


def test_nnx_regression_with_mse_trains_as_a_hand_written_loop():
  x, y = _regression()
  sgd = lambda lr: optax.sgd(lr, momentum=0.9)  # noqa: E731 (a user's own optimizer)
  result = avggrad.compare_on(_mlp, mse, (x, y), optimizers=["adam", ("my-sgd", sgd)],
                              steps=STEPS, batch_size=BATCH, lrs=[1e-2, 3e-2], seeds=(0, 1),
                              progress=False)
  assert set(result.summaries) == {"adam", "my-sgd"}
  for lr in (1e-2, 3e-2):
    for seed in (0, 1):
      got = result.comparison.runs[("my-sgd", lr, seed)].losses
      want = _reference_losses(_mlp, mse, x, y, optax.sgd(lr, momentum=0.9), seed)
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  adam = result.summaries["adam"]
  assert adam.best_lr in (1e-2, 3e-2) and len(adam.iterations) == 2
  assert result.fastest is None or result.fastest.split(": ")[-1].split(", ")[0] in (
      "adam", "my-sgd")
  assert "my-sgd" in result.table()


class SmallCNN(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 4, (3, 3), strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(4 * 4 * 4, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.conv(x)).reshape(x.shape[0], -1))


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_small_nnx_cnn_classifier_with_test_data(tmp_path):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 160).astype(np.int32)
  images = (rng.normal(size=(160, 8, 8, 1)) * 0.3 + labels[:, None, None, None]).astype(
      np.float32)
  result = avggrad.compare_on(SmallCNN, cross_entropy, (images[:128], labels[:128]),
                              optimizers=["adam", "avg-adam"], steps=STEPS, batch_size=BATCH,
                              lrs=[1e-2], seeds=(0,), test=(images[128:], labels[128:]),
                              progress=False)
  for run in result.comparison.runs.values():
    assert run.status == "ok" and np.isfinite(run.test_loss)
    assert np.mean(run.losses[-5:]) < np.mean(run.losses[:5])
  paths = result.save(str(tmp_path / "out"))
  saved = json.load(open(paths["results.json"]))
  assert [s["optimizer"] for s in saved["summaries"]] == ["adam", "avg-adam"]
  assert os.path.getsize(paths["loss_curves.png"]) > 0


class LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))


def test_linen_module_trains_as_a_hand_written_loop():
  x, y = _regression()
  result = avggrad.compare_on(LinenMLP(), mse, (x, y), optimizers=[("plain-sgd", optax.sgd)],
                              steps=STEPS, batch_size=BATCH, lrs=[3e-2], seeds=(0,),
                              progress=False)
  got = result.comparison.runs[("plain-sgd", 3e-2, 0)].losses
  want = _reference_losses(nnx_model(LinenMLP(), x[:1]), mse, x, y, optax.sgd(3e-2), 0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


class DictModel(nnx.Module):

  def __init__(self, rngs):
    self.a = nnx.Linear(3, 1, rngs=rngs)
    self.b = nnx.Linear(2, 1, rngs=rngs)

  def __call__(self, batch):
    return (self.a(batch["a"]) + self.b(batch["b"]))[:, 0]


def weighted_mse(out, targets):
  return (targets["weight"] * (out - targets["value"]) ** 2).mean()


def test_dict_inputs_and_a_loss_taking_a_dict_batch():
  rng = np.random.default_rng(2)
  x = {"a": rng.normal(size=(96, 3)).astype(np.float32),
       "b": rng.normal(size=(96, 2)).astype(np.float32)}
  y = {"value": (x["a"].sum(1) - x["b"][:, 0]).astype(np.float32),
       "weight": rng.uniform(0.5, 1.5, 96).astype(np.float32)}
  result = avggrad.compare_on(DictModel, weighted_mse, (x, y),
                              optimizers=[("plain-sgd", optax.sgd)], steps=STEPS,
                              batch_size=BATCH, lrs=[1e-2], seeds=(0,), progress=False)
  got = result.comparison.runs[("plain-sgd", 1e-2, 0)].losses
  want = _reference_losses(DictModel, weighted_mse, x, y, optax.sgd(1e-2), 0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
  assert got[-1] < got[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(data=(np.zeros((10, 4)), np.zeros(9))), "same number of examples.*x 10, y 9"),
    (dict(loss=lambda out, y: (out[:, 0] - y) ** 2), "must return a scalar.*shape \\(2,\\)"),
    (dict(make_model=lambda: None), "make_model must take one argument, the nnx.Rngs"),
    (dict(make_model=lambda rngs, width: None), "make_model must take one argument"),
    (dict(optimizers=["adam", "adamm"]), "Unknown optimizer 'adamm'"),
    (dict(batch_size=200), "batch_size 200 is larger than the training data \\(128"),
    (dict(data=np.zeros((10, 4))), "pair \\(x, y\\)"),
    (dict(make_model=lambda rngs: "model"), "must return an nnx.Module"),
    (dict(optimizers="adam"), "optimizers must be a list of optimizers; got 'adam'"),
    (dict(seeds=(0, 0)), "seeds must be distinct"),
    (dict(eval_every=0), "eval_every must be a positive number of steps"),
    (dict(optimizers=["adam", ("boom", lambda lr: 1 / 0)]),
     "optimizers\\[1\\] \\('boom'\\): the factory failed at lr=1e-3: ZeroDivisionError"),
])
def test_bad_inputs_get_clear_messages(kwargs, message):
  args = dict(make_model=_mlp, loss=mse, data=_regression(), optimizers=["adam"],
              steps=STEPS, batch_size=BATCH, lrs=[1e-2], seeds=(0,), progress=False)
  with pytest.raises(ValueError, match=message):
    avggrad.compare_on(**(args | kwargs))


def test_sweep_splits_runs_into_chunks_that_fit_and_says_so(capsys):
  x, y = _regression()
  task = custom.make_task(_mlp, mse, (x, y))
  config = training.TrainConfig(model="mlp-user", dataset="user", optimizer="adam",
                                steps=STEPS, batch_size=BATCH, eval_every=10)
  per_run, shared = sweep.run_bytes(config, task, parallel.DataParallel(None))
  assert per_run > 0 and shared == x.nbytes + y.nbytes
  lrs, seeds = [1e-3, 1e-2, 3e-2], [0, 1]
  whole = sweep.sweep(config, lrs, seeds, task=task, progress=False)
  assert "chunks" not in capsys.readouterr().err
  fits_two = (shared + 2.5 * per_run) / sweep.MEMORY_FRACTION
  parts = sweep.sweep(config, lrs, seeds, task=task, progress=False, memory_bytes=fits_two)
  assert "training them in 3 chunks of up to 2 runs" in capsys.readouterr().err
  assert list(parts) == list(whole)
  for key in whole:
    assert parts[key].batched_runs == 2 and whole[key].batched_runs == 6
    np.testing.assert_allclose(parts[key].losses, whole[key].losses, rtol=1e-5)
  fits_one_seed = (shared + 1.5 * per_run) / sweep.MEMORY_FRACTION
  assert sweep.plan_chunks(config, task, parallel.DataParallel(None), lrs, seeds,
                           fits_one_seed) == [([lr], [s]) for lr in lrs for s in seeds]
  with pytest.raises(MemoryError, match="one run of adam on this model needs about"):
    sweep.sweep(config, lrs, seeds, task=task, progress=False,
                memory_bytes=(shared + 0.5 * per_run) / sweep.MEMORY_FRACTION)


def test_memory_estimate_is_xla_s_figure_for_the_vmapped_runs():
  """The estimate for n runs is within a factor of XLA's own analysis of the vmapped
  program of n runs (the per-run figure comes from one run's step)."""
  x, y = _regression(n=512, features=4)
  task = custom.make_task(_mlp, mse, (x, y))
  config = training.TrainConfig(model="u", dataset="u", optimizer="avg-adam", steps=STEPS,
                                batch_size=64, eval_every=10)
  dp = parallel.DataParallel(None)
  per_run, shared = sweep.run_bytes(config, task, dp)
  program, _ = sweep.sweep_program(config, task, [1e-3] * 4, [0, 1], dp, scan=False)
  idx = jnp.zeros((8, 64), jnp.int32)
  stats = program.compiled[0].compile(program.carry, *program.data, idx).memory_analysis()
  xla = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
         + stats.temp_size_in_bytes)
  estimate = shared + 8 * per_run
  assert 0.5 * xla <= estimate <= 2 * xla, (estimate, xla)


MODULE = textwrap.dedent('''
    import numpy as np
    from flax import nnx

    def make_model(rngs):
      return nnx.Linear(4, 1, rngs=rngs)

    def loss(out, y):
      return ((out[:, 0] - y) ** 2).mean()

    def load():
      x = np.random.default_rng(0).normal(size=(96, 4)).astype(np.float32)
      y = x.sum(1)
      return (x[:64], y[:64]), (x[64:], y[64:])

    def broken():
      raise OSError("no such file: data.npz")
''')


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
  (tmp_path / "usermod_d.py").write_text(MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield "usermod_d"
  sys.modules.pop("usermod_d", None)


def test_cli_compares_on_a_module_of_the_user_s(user_module, tmp_path, capsys):
  argv = ["compare", "--model", f"{user_module}:make_model", "--loss", f"{user_module}:loss",
          "--data", f"{user_module}:load", "--optimizers", "adam", "avg-adam", "--steps",
          str(STEPS), "--batch-size", str(BATCH), "--lrs", "1e-2", "3e-2", "--seeds", "0",
          "--eval-every", "10", "--no-progress", "--out", str(tmp_path / "out")]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "avg-adam" in out and "target training loss" in out
  saved = json.load(open(tmp_path / "out" / "results.json"))
  assert all(np.isfinite(r["test_loss"]) for r in saved["runs"])  # the test pair was used


@pytest.mark.parametrize("change, message", [
    ({"--model": "nosuchmodule_d:make_model"}, "--model 'nosuchmodule_d:make_model': cannot "
                                                "import module 'nosuchmodule_d'"),
    ({"--loss": "{m}:los"}, "--loss '{m}:los': module '{m}' has no attribute 'los'"),
    ({"--data": "{m}:broken"}, "--data '{m}:broken': load\\(\\) raised OSError: no such file"),
    ({"--data": "{m}"}, "--data '{m}': expected pkg.module:name"),
])
def test_cli_errors_name_the_path_that_failed_and_why(user_module, tmp_path, capsys, change,
                                                      message):
  values = {"--model": f"{user_module}:make_model", "--loss": f"{user_module}:loss",
            "--data": f"{user_module}:load"}
  values |= {k: v.format(m=user_module) for k, v in change.items()}
  argv = ["compare", *[a for kv in values.items() for a in kv], "--steps", "5",
          "--no-progress", "--out", str(tmp_path / "out")]
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  import re
  assert re.search(message.format(m=user_module), capsys.readouterr().err)


def test_a_target_reached_at_iteration_0_is_a_tie_not_a_crash():
  """A target so loose that every run reaches it at once: 0 s to target for all; the table and
  ``fastest`` must still answer (a tie), not divide by zero."""
  result = avggrad.compare_on(_mlp, mse, _regression(), optimizers=["adam", "sgd"],
                              steps=STEPS, batch_size=BATCH, lrs=[1e-2], seeds=(0,),
                              target=1e9, progress=False)
  assert [s.iterations for s in result.comparison.summaries] == [[0], [0]]
  assert result.fastest == "tie: adam, sgd"
  assert "1.00x ahead of the next; within 10%, a tie" in result.table()


def test_step_memory_of_a_model_with_dict_inputs():
  """timing.step_seconds(memory=True) compiles the step on the first batch of dict data (it
  sliced the inputs as one array before) and reports its allocation."""
  from avggrad import timing
  rng = np.random.default_rng(3)
  x = {"a": rng.normal(size=(64, 3)).astype(np.float32),
       "b": rng.normal(size=(64, 2)).astype(np.float32)}
  y = {"value": x["a"].sum(1).astype(np.float32), "weight": np.ones(64, np.float32)}
  task = custom.make_task(DictModel, weighted_mse, (x, y))
  config = training.TrainConfig(model="dict-user", dataset="user", optimizer="adam",
                                steps=STEPS, batch_size=BATCH, eval_every=10)
  out = timing.step_seconds(config, ["adam"], task, chunk=2, number=1, repeats=1, memory=True)
  assert out["adam"]["seconds_per_step"] > 0 and out["adam"]["bytes"] > 0
