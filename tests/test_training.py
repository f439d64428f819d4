"""Training loop, optimizer specs, metrics and the command line, end to end on tiny runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from avggrad import cli, data, metrics, optimizers, training

TINY = dict(depth=2, width=16, steps=40, batch_size=32, eval_every=20, eval_examples=200,
            limit=300)


@pytest.fixture(scope="module")
def splits():
  return (data.load("fashion_mnist_small", "train", limit=300),
          data.load("fashion_mnist_small", "test", limit=100))


def test_train_reduces_the_loss_and_logs(tmp_path, splits):
  config = training.TrainConfig(optimizer="avg-rmsprop", lr=3e-3, **TINY)
  result = training.train(config, train_data=splits[0], test_data=splits[1],
                          out_dir=str(tmp_path), progress=False)
  assert result.status == "ok" and len(result.losses) == 40
  assert [e["step"] for e in result.evals] == [0, 20, 40]
  assert result.evals[-1]["train_loss"] < 0.8 * result.evals[0]["train_loss"]
  assert 0.0 <= result.test_accuracy <= 1.0 and result.seconds_per_step > 0
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["event"] == "end" and len(lines[-1]["losses"]) == 40
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"] == "avg-rmsprop"


def test_same_seed_same_run_and_same_batches(splits):
  config = training.TrainConfig(optimizer="rmsprop", lr=1e-3, **TINY)
  a = training.train(config, train_data=splits[0], test_data=splits[1], progress=False)
  b = training.train(config, train_data=splits[0], test_data=splits[1], progress=False)
  assert a.losses == b.losses
  other = training.TrainConfig(optimizer="adam", lr=1e-3, **TINY)
  c = training.train(other, train_data=splits[0], test_data=splits[1], progress=False)
  assert c.losses[0] == a.losses[0]  # same initial weights, same first minibatch
  idx = training.batch_indices(300, 32, 40, seed=0)
  assert idx.shape == (40, 32) and len(set(idx[:9].ravel())) == 9 * 32  # an epoch of 9 batches


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path, splits):
  config = training.TrainConfig(optimizer="sgd", lr=1e30, activation="relu", init="he_normal",
                                **TINY)
  result = training.train(config, train_data=splits[0], test_data=splits[1],
                          out_dir=str(tmp_path), progress=False)
  assert result.status.startswith("diverged at step") and math.isnan(result.test_loss)
  assert not math.isfinite(result.losses[-1])
  end = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert end["status"] == result.status
  with pytest.raises(training.NonFiniteLossError, match="non-finite.*diverged at step"):
    training.train(config, train_data=splits[0], test_data=splits[1], progress=False,
                   raise_on_nonfinite=True)


def test_optimizer_specs():
  assert optimizers.parse_optimizer("avg-rmsprop:update_range=previous,accumulate=point") == (
      "avg-rmsprop", {"update_range": "previous", "accumulate": "point"})
  with pytest.raises(ValueError, match="Unknown optimizer 'lamb'"):
    optimizers.parse_optimizer("lamb")
  with pytest.raises(ValueError, match="Unknown optimizer option 'spam'"):
    optimizers.parse_optimizer("avg-adam:spam=1")
  with pytest.raises(ValueError, match="Bad value 'x'"):
    optimizers.parse_optimizer("avg-adam:span=x")
  with pytest.raises(ValueError, match="does not take"):
    optimizers.make_optimizer("rmsprop:span=2", 1e-3)


def test_config_validation():
  with pytest.raises(ValueError, match="does not fit dataset"):
    training.TrainConfig(dataset="imdb_reviews", model="mlp").validate()
  with pytest.raises(ValueError, match="lr must be"):
    training.TrainConfig(lr=-1.0).validate()


def test_iterations_to_target_with_smoothing():
  noisy = [5.0 - 0.01 * i + (0.5 if i % 2 else -0.5) for i in range(300)]
  # unsmoothed, a single low point would count; the centered average removes the noise
  assert metrics.iterations_to_target(noisy, 4.0, window=1) == 50  # a lucky minibatch
  # the trend reaches 4.0 at step 100; the 11-step average is within +-0.05 of it
  assert 95 <= metrics.iterations_to_target(noisy, 4.0, window=11) <= 105
  assert metrics.iterations_to_target([1.0, float("nan"), 0.1], 0.5, window=1) is None
  np.testing.assert_allclose(metrics.smooth(np.ones(10), 5), np.ones(10))


def test_cli_train_end_to_end(tmp_path, capsys):
  out = tmp_path / "run"
  code = cli.main(["train", "--dataset", "fashion_mnist_small", "--limit", "300", "--depth",
                   "2", "--width", "16", "--steps", "30", "--eval-every", "10", "--batch-size",
                   "32", "--optimizer", "avg-adam:span=4,combine=accelerate", "--lr", "1e-3",
                   "--out", str(out), "--no-progress"])
  assert code == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["status"] == "ok" and summary["train_loss"] > 0
  assert (out / "metrics.jsonl").exists()


def test_cli_compare_end_to_end(tmp_path, capsys):
  out = tmp_path / "cmp"
  code = cli.main(["compare", "--limit", "300", "--depth", "2", "--width", "16", "--steps",
                   "40", "--eval-every", "20", "--batch-size", "32", "--lrs", "1e-3", "3e-3",
                   "--seeds", "0", "--optimizers", "rmsprop", "avg-rmsprop", "--out", str(out),
                   "--no-progress"])
  assert code == 0
  text = capsys.readouterr().out
  assert "iters to target" in text and "avg-rmsprop" in text and "s to target" in text
  for name in ("results.json", "table.txt", "loss_curves.png"):
    assert (out / name).stat().st_size > 0
  results = json.loads((out / "results.json").read_text())
  assert len(results["runs"]) == 4 and results["summaries"][0]["optimizer"] == "rmsprop"
  for s in results["summaries"]:
    # seconds to target = median iterations x the interleaved time per step
    assert s["seconds_per_step"] > 0
    if s["median_iterations"] is not None and math.isfinite(s["median_iterations"]):
      assert s["seconds_to_target"] == pytest.approx(s["median_iterations"]
                                                     * s["seconds_per_step"])
  # the table prints the same seconds and their ratio to the baseline
  base, other = results["summaries"]
  row = next(l for l in text.splitlines() if l.startswith("avg-rmsprop "))
  if math.isfinite(base["seconds_to_target"]) and math.isfinite(other["seconds_to_target"]):
    assert f"{other['seconds_to_target'] / base['seconds_to_target']:.2f}" in row.split()
  # the line under the table names the fastest in time to target, from the same figures
  reached = [s for s in results["summaries"] if math.isfinite(s["seconds_to_target"])]
  fastest = next(l for l in text.splitlines() if l.startswith("fastest in time to target"))
  if reached:
    best = min(reached, key=lambda s: s["seconds_to_target"])
    assert f"fastest in time to target: {best['optimizer']} (" in fastest
  else:
    assert fastest.endswith("none reached it")
  # two panels: loss against iterations and against seconds
  from matplotlib import image
  height, width = image.imread(str(out / "loss_curves.png")).shape[:2]
  assert width > 2 * height


def test_redirected_progress_is_a_few_plain_lines(tmp_path):
  argv = [sys.executable, "-m", "avggrad", "train", "--limit", "300", "--depth", "2", "--width",
          "16", "--steps", "30", "--eval-every", "10", "--batch-size", "32", "--optimizer",
          "adam", "--lr", "1e-3"]
  result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "\r" not in result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith("adam lr=0.001: step")]
  assert [l.split()[3] for l in lines] == ["10/30", "20/30", "30/30"]
  quiet = subprocess.run(argv + ["--no-progress"], capture_output=True, text=True, timeout=300)
  assert "step" not in quiet.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["train", "--lr", "-1"], "must be positive"),
        (["train", "--steps", "0"], "must be a positive integer"),
        (["train", "--optimizer", "lamb"], "Unknown optimizer 'lamb'"),
        (["train", "--init", "kaiming"], "Unknown initialiser 'kaiming'"),
        (["train", "--dataset", "imdb_reviews", "--model", "mlp"], "does not fit dataset"),
        (["compare", "--optimizers", "rmsprop", "avg-rmsprop:span=x"], "Bad value 'x'"),
    ],
)
def test_cli_bad_input_gets_argparse_style_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_python_dash_m_help():
  result = subprocess.run([sys.executable, "-m", "avggrad", "compare", "--help"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "--target-fraction" in result.stdout


LR_FREE = {"prodigy", "dadapt-adamw", "mechanic-adam", "dog", "cocob"}


@pytest.mark.parametrize("spec", sorted(optimizers.BUILTIN - {"optax-rmsprop", "optax-adam", "rmsprop",
                                                         "adam", "avg-rmsprop", "avg-adam"}))
def test_every_registered_optimizer_trains_in_a_sweep(spec, splits):
  """Each built-in optimizer (peers included) trains a tiny model with its learning rate as a
  traced, vmapped value (tests/test_sweep.py checks that sweeps equal single runs)."""
  from avggrad import sweep

  config = training.TrainConfig(optimizer=spec, depth=2, width=8, steps=6, batch_size=16,
                                eval_every=3, eval_examples=64)
  # The learning-rate-free peers take the rate as a multiplier of their own step (default 1).
  low, high = (0.5, 1.0) if spec in LR_FREE else (1e-3, 3e-3)
  runs = sweep.sweep(config, [low, high], [0], train_data=splits[0], test_data=splits[1],
                     progress=False)
  for result in runs.values():
    assert result.status == "ok" and all(math.isfinite(v) for v in result.losses)
  assert runs[(low, 0)].losses[0] == runs[(high, 0)].losses[0]  # same start
  if spec != "cocob":  # optax's COCOB scales the gradient before a scale-free bet: no effect
    assert runs[(low, 0)].losses[-1] != runs[(high, 0)].losses[-1]  # different rates


def test_cli_compare_text_lm_pairs_tokens_with_next_tokens(tmp_path, monkeypatch, capsys):
  """The command line loads data through load_splits, so the language model is trained on
  next-token targets (per-token logits against class labels would not even run)."""
  from tests.test_data import _write_acl_folder

  _write_acl_folder(tmp_path / "imdb")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("AVGGRAD_CACHE_DIR", str(tmp_path / "cache"))
  out = tmp_path / "cmp"
  code = cli.main(["compare", "--dataset", "imdb_reviews", "--data-dir", str(tmp_path / "imdb"),
                   "--model", "text-lm", "--depth", "1", "--vocab-size", "3", "--max-len", "6",
                   "--embed-dim", "8", "--steps", "6", "--eval-every", "3", "--batch-size", "2",
                   "--lrs", "1e-3", "--seeds", "0", "--optimizers", "adam", "avg-adam",
                   "--out", str(out), "--no-progress"])
  assert code == 0, capsys.readouterr()
  results = json.loads((out / "results.json").read_text())
  splits = training.load_splits(training.TrainConfig(
      dataset="imdb_reviews", model="text-lm", data_dir=str(tmp_path / "imdb"), vocab_size=3,
      max_len=6))
  assert splits[0].y.shape == splits[0].x.shape  # targets are tokens, one per input token
  for run in results["runs"]:
    assert run["status"] == "ok" and all(math.isfinite(v) for v in run["losses"])
    # the loss starts near log(vocabulary), the uniform next-token predictor's
    assert abs(run["losses"][0] - math.log(splits[0].num_classes)) < 0.5


def test_cli_per_model_defaults_and_the_slow_estimate(capsys):
  from avggrad import cli, data as data_lib
  parser = cli.build_parser()
  args = parser.parse_args(["train", "--model", "text-lm", "--dataset", "imdb_reviews"])
  config = cli._config(args)
  assert (config.vocab_size, config.max_len, config.depth, config.batch_size,
          config.activation) == (1000, 33, 2, 32, "gelu")
  args = parser.parse_args(["train", "--model", "text-lm", "--dataset", "imdb_reviews",
                            "--max-len", "65"])
  assert cli._config(args).max_len == 65  # the command line wins
  assert "text-lm: --depth 2, --vocab-size 1000, --max-len 33" in parser._subparsers._group_actions[
      0].choices["train"].format_help()
  # A configuration of about 1.6 TFLOP a step is announced before it starts; a small one is not.
  train = data_lib.load("fashion_mnist_small", "train", limit=64)
  big = training.TrainConfig(depth=16, width=4096, batch_size=1024, steps=100)
  assert training.warn_if_slow(big, train) > training.SLOW_STEP_SECONDS
  assert "will be slow" in capsys.readouterr().err
  small = training.TrainConfig(depth=2, width=16, batch_size=32)
  assert training.warn_if_slow(small, train) < training.SLOW_STEP_SECONDS
  assert capsys.readouterr().err == ""


def test_schedule_free_is_evaluated_at_its_averaged_point():
  import jax
  import jax.numpy as jnp
  import optax
  params = {"w": jnp.array([1.0, -2.0])}
  loss = lambda p: jnp.sum((p["w"] - 3.0) ** 2)
  for tx in (optax.contrib.schedule_free_adamw(0.1),
             optax.inject_hyperparams(optax.contrib.schedule_free_adamw)(learning_rate=0.1)):
    state, p = tx.init(params), params
    for _ in range(5):
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      p = optax.apply_updates(p, updates)
    sf = next(s for s in jax.tree.leaves(
        state, is_leaf=lambda s: isinstance(s, optax.contrib.ScheduleFreeState))
        if isinstance(s, optax.contrib.ScheduleFreeState))
    x = jax.tree.map(lambda y, z: (y - (1 - sf.b1) * z) / sf.b1, p, sf.z)  # y = b1 x + (1-b1) z
    np.testing.assert_allclose(training.eval_params(p, state)["w"], x["w"], rtol=1e-6)
    assert float(jnp.abs(x["w"] - p["w"]).max()) > 1e-3  # the two points differ
  adam = optax.adam(0.1)
  assert training.eval_params(params, adam.init(params)) is params
