"""The ``avggrad`` command: ``avggrad train`` runs one configuration, ``avggrad compare``
trains the same model with several optimizers and prints iterations and seconds to a target
loss.

With no options, ``avggrad compare`` is the main job: a 16-layer plain tanh MLP on the
Fashion-MNIST subset shipped with the package, same-core RMSProp (without and with momentum),
AvgGrad-RMSProp, same-core Adam, AvgGrad-Adam, NAdam and schedule-free AdamW, each at its best
learning rate from one grid, and the fastest in time to the target named under the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import types
from typing import Any, Optional, Sequence

from avggrad import data as data_lib
from avggrad import models, optimizers, protocol, tasks, training


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be positive, got {text}")
  return value


def _model_arg(text: str) -> str:
  if text in training.MODELS or ":" in text:
    return text
  raise argparse.ArgumentTypeError(
      f"invalid choice: {text!r} (choose from {', '.join(training.MODELS)}, or "
      "pkg.module:make_model for your own model)")


def import_path(path: str, option: str) -> Any:
  """The object ``pkg.module:name`` names (``name`` may be dotted); a ``ValueError`` naming
  ``option``, the path and why it failed."""
  module_name, sep, attribute = path.partition(":")
  if not sep or not module_name or not attribute:
    raise ValueError(f"{option} {path!r}: expected pkg.module:name.")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"{option} {path!r}: cannot import module {module_name!r} "
                     f"({type(e).__name__}: {e}); is its folder on PYTHONPATH?") from e
  except Exception as e:  # noqa: BLE001 (the module itself failed while importing)
    raise ValueError(f"{option} {path!r}: importing module {module_name!r} raised "
                     f"{type(e).__name__}: {e}") from e
  for part in attribute.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{option} {path!r}: module {module_name!r} has no attribute "
                       f"{attribute!r}.")
    obj = getattr(obj, part)
  return obj


def _per_model_help(defaults: dict[str, training.TrainConfig]) -> str:
  """The epilog listing each model's defaults: the settings
  :data:`avggrad.training.MODEL_DEFAULTS` gives it, and those every model uses."""
  lines = ["per-model defaults (an option given on the command line wins):"]
  common = ("depth", "activation", "init", "batch_size")
  for model, config in defaults.items():
    own = [k for k in training.MODEL_DEFAULTS[model] if k not in common]
    keys = ("depth", *own, "activation", "init", "batch_size")
    values = ", ".join(f"--{k.replace('_', '-')} {getattr(config, k)}" for k in keys)
    lines.append(f"  {model}: {values}")
  return "\n".join(lines)


def _add_model_arguments(parser: argparse.ArgumentParser, defaults: training.TrainConfig) -> None:
  d = defaults
  per_model = "default: per model, listed below"
  g = parser.add_argument_group("data and model")
  g.add_argument("--dataset", default=d.dataset, choices=data_lib.DATASETS,
                 help=f"dataset ({d.dataset} is shipped with the package)")
  g.add_argument("--data-dir", default=None,
                 help="folder with the original files (IDX .gz, aclImdb); unset: "
                      "$AVGGRAD_DATA_DIR, else TensorFlow Datasets")
  g.add_argument("--limit", type=_positive_int, default=None,
                 help="use only the first N training and test examples")
  g.add_argument("--model", default=d.model, type=_model_arg,
                 help="mlp, cnn and resnet for the image datasets; text-mlp, text-conv and "
                      "text-lm (a causal transformer language model) for imdb_reviews; "
                      "compare only: pkg.module:make_model, your own model (rngs -> "
                      "nnx.Module, or a Linen module), with --loss and --data")
  g.add_argument("--depth", type=_positive_int, help=f"hidden layers / convs / blocks "
                 f"({per_model})")
  g.add_argument("--width", type=_positive_int, help=f"units per layer ({per_model})")
  g.add_argument("--channels", type=_positive_int, help=f"CNN channels ({per_model})")
  g.add_argument("--kernel-size", type=_positive_int, default=d.kernel_size,
                 help="CNN / text-conv kernel size")
  g.add_argument("--pooling", default=d.pooling, choices=models.POOLINGS,
                 help="CNN downsampling")
  g.add_argument("--activation", choices=sorted(models.ACTIVATIONS),
                 help=f"hidden-layer activation ({per_model})")
  g.add_argument("--init",
                 help=f"weight initialiser: {', '.join(models.INITIALIZERS)} "
                      f"('normal:0.05' for a normal with std 0.05) ({per_model})")
  g.add_argument("--vocab-size", type=_positive_int, help=f"IMDb words ({per_model})")
  g.add_argument("--max-len", type=_positive_int, help=f"IMDb tokens ({per_model})")
  g.add_argument("--embed-dim", type=_positive_int, help=f"IMDb embedding ({per_model})")
  g.add_argument("--heads", type=_positive_int, help=f"text-lm attention heads ({per_model})")
  t = parser.add_argument_group("training")
  t.add_argument("--steps", type=_positive_int, default=d.steps, help="training steps")
  t.add_argument("--batch-size", type=_positive_int,
                 help=f"examples per minibatch ({per_model})")
  t.add_argument("--eval-every", type=_positive_int, default=d.eval_every,
                 help="evaluate the training loss/accuracy every N steps")
  t.add_argument("--eval-examples", type=_positive_int, default=d.eval_examples,
                 help="training examples used by the periodic evaluation")
  t.add_argument("--schedule", default=d.schedule, choices=training.SCHEDULES,
                 help="learning-rate schedule: constant, or linear warmup then cosine decay "
                      "to 0 at the last step, peaking at the learning rate")
  t.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction,
                 help="warmup_cosine: fraction of the steps spent warming up")
  t.add_argument("--divergence-factor", type=float, default=d.divergence_factor,
                 help="stop a run (status 'diverged') when its trailing mean loss exceeds this "
                      "multiple of its initial loss; 0 turns the guard off")
  t.add_argument("--devices", type=_positive_int, default=None,
                 help="data parallel over this many devices (unset: every device JAX sees; "
                      "the batch is sharded over them)")
  t.add_argument("--shard-params", action="store_true",
                 help="shard parameters and optimizer state over the devices (FSDP-style) "
                      "instead of replicating them")
  t.add_argument("--no-progress", action="store_true",
                 help="no progress output (default: a bar on a terminal, one line per "
                      "evaluation when stderr is redirected)")


def _optimizer_help() -> str:
  return (f"optimizer spec NAME[:key=value,...]; NAME one of {', '.join(optimizers.names())} "
          "(rmsprop/adam: avggrad's same-core baselines, eps outside the root; avg-*: fed the "
          f"average gradient); options: {', '.join(optimizers.OPTIONS)} (each optimizer takes "
          "those its factory accepts). Example: avg-adam:span=4")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="avggrad",
      description="Train deep plain networks with the average gradient and compare optimizers.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  sub = parser.add_subparsers(dest="command", metavar="{train,compare}")

  train_defaults = training.TrainConfig()
  p_train = sub.add_parser("train", help="train one configuration",
                           description="Train one model with one optimizer and learning rate.",
                           epilog=_per_model_help(_model_defaults("train")),
                           formatter_class=_HelpFormatter)
  _add_model_arguments(p_train, train_defaults)
  p_train.add_argument("--optimizer", default=TRAIN_OPTIMIZER, help=_optimizer_help())
  p_train.add_argument("--lr", type=_positive_float, default=train_defaults.lr,
                       help="learning rate (the peak, with a schedule)")
  p_train.add_argument("--seed", type=int, default=0,
                       help="initial weights and minibatch order")
  p_train.add_argument("--out", default=None,
                       help="folder for config.json and metrics.jsonl (JSON lines)")
  p_train.add_argument("--checkpoint-dir", default=None,
                       help="save checkpoints (Orbax) here; a rerun with the same folder "
                            "resumes from the latest")
  p_train.add_argument("--checkpoint-every", type=_positive_int, default=None,
                       help="steps between checkpoints (default with --checkpoint-dir: "
                            "--eval-every)")

  compare_defaults = training.TrainConfig(steps=COMPARE_STEPS, eval_every=50)
  p_cmp = sub.add_parser(
      "compare", help="compare optimizers (the main job with no options)",
      description="Train the same model with several optimizers, each at its best learning "
                  "rate from one grid, and report iterations and seconds to a target training "
                  "loss.",
      epilog=_per_model_help(_model_defaults("compare")),
      formatter_class=_HelpFormatter)
  _add_model_arguments(p_cmp, compare_defaults)
  p_cmp.add_argument("--optimizers", nargs="+",
                     default=list(MAIN_JOB_OPTIMIZERS),
                     metavar="SPEC", help="the first is the baseline that sets the target; "
                     + _optimizer_help())
  p_cmp.add_argument("--lrs", nargs="+", type=_positive_float, default=list(MAIN_JOB_LRS),
                     help="learning-rate grid shared by all optimizers")
  p_cmp.add_argument("--seeds", nargs="+", type=int, default=[0, 1],
                     help="seeds (initial weights and minibatch order), each run per lr")
  p_cmp.add_argument("--target", type=_positive_float, default=None,
                     help="target training loss (default: set by the baseline, see "
                          "--target-fraction)")
  p_cmp.add_argument("--target-fraction", type=float, default=0.8,
                     help="target = the baseline's smoothed loss after this fraction of the "
                          "budget, at its best learning rate")
  p_cmp.add_argument("--rule", choices=protocol.RULES, default="fastest",
                     help="how each optimizer's learning rate is picked: fastest (AlgoPerf: "
                          "the fewest median iterations to the target) or final-loss (the "
                          "lowest median final loss)")
  p_cmp.add_argument("--out", default="runs/compare",
                     help="folder for results.json, table.txt, loss_curves.png")
  own = p_cmp.add_argument_group(
      "your own model", "--model pkg.module:make_model with these two compares optimizers on "
      "your model, loss and data (avggrad.compare_on); the model options above are then unused")
  own.add_argument("--loss", default=None, metavar="PKG.MODULE:LOSS",
                   help="(outputs, targets) -> scalar mean loss")
  own.add_argument("--data", default=None, metavar="PKG.MODULE:LOAD",
                   help="load() -> (x, y), or ((x, y), (x_test, y_test))")
  return parser


COMPARE_STEPS = 300
TRAIN_OPTIMIZER = training.DEFAULT_OPTIMIZER
"""``avggrad train``'s default optimizer, :data:`avggrad.config.DEFAULT_OPTIMIZER` (the
recommended form, at its default rate 1e-3: trains every model at its defaults; the registry's
``avg-rmsprop`` carries momentum 0.9 and wants a 10x lower rate)."""
MAIN_JOB = types.MappingProxyType({"mlp": types.MappingProxyType({"width": 64})})
"""The main job's model (``avggrad compare`` with no options): the MLP's depth, width 64.
Read-only."""
MAIN_JOB_OPTIMIZERS = ("rmsprop", "rmsprop:momentum=0.9", "avg-rmsprop", "adam", "avg-adam",
                       "nadam", "schedule-free-adamw")
"""The main job's optimizers: the paper's RMSProp comparison, Adam and ``avggrad.adam``, and
the peers that are fastest on the README's benchmarks (NAdam, schedule-free AdamW). The
self-tuning ``auto-adam`` is not among them: it did not earn a place (README)."""
MAIN_JOB_LRS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
"""The main job's learning-rate grid, shared by every optimizer (factor ~3): wide enough that
every default optimizer's best rate is inside it (avg-rmsprop's near the bottom, schedule-free
AdamW's near the top)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
  """Defaults in the help, and the per-model epilog kept as written."""


def _model_defaults(command: str) -> dict[str, training.TrainConfig]:
  """Each model's default configuration for ``command``."""
  extra = MAIN_JOB if command == "compare" else {}
  return {m: training.TrainConfig.for_model(m, **extra.get(m, {})) for m in training.MODELS}


def _config(args: argparse.Namespace, **extra) -> training.TrainConfig:
  """The configuration the arguments name: each per-model setting not given on the command
  line takes the model's default (:data:`avggrad.training.MODEL_DEFAULTS`)."""
  fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
  base = _model_defaults(args.command)[args.model]
  values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
  return dataclasses.replace(base, **(values | extra))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 2
  try:
    if args.command == "train":
      if ":" in args.model:
        parser.error("avggrad train takes a built-in model; compare optimizers on your own "
                     "with avggrad compare --model pkg.module:make_model --loss ... --data ...")
      config = _config(args)
      config.validate()
      train_data, test_data = training.load_splits(config)
      training.warn_if_slow(config, train_data)
      every = args.checkpoint_every or (config.eval_every if args.checkpoint_dir else 0)
      result = training.train(config, train_data=train_data, test_data=test_data,
                              out_dir=args.out, progress=not args.no_progress,
                              devices=args.devices, shard_params=args.shard_params,
                              checkpoint_dir=args.checkpoint_dir, checkpoint_every=every)
      last = result.evals[-1] if result.evals else {}
      print(json.dumps({
          "status": result.status,
          "train_loss": last.get("train_loss"),
          "train_accuracy": last.get("train_accuracy"),
          "test_loss": result.test_loss,
          "test_accuracy": result.test_accuracy,
          "ms_per_step": 1e3 * result.seconds_per_step,
      } | ({"scale": result.scale} if result.scale is not None else {})))
      if result.diverged:
        print(f"error: the training loss became non-finite or exceeded "
              f"{config.divergence_factor:g}x its initial loss ({result.status}); "
              f"{'the log is in ' + args.out if args.out else 'no log (--out not set)'}",
              file=sys.stderr)
        return 1
      return 0
    from avggrad import compare as compare_lib

    if not 0 < args.target_fraction <= 1:
      parser.error("--target-fraction must be in (0, 1]")
    if ":" in args.model or args.loss or args.data:
      return _compare_own(parser, args)
    for spec in args.optimizers:
      optimizers.parse_optimizer(spec)
    config = _config(args)
    config.validate()
    task = tasks.for_config(config)
    training.warn_if_slow(config, task, runs=len(args.optimizers) * len(args.lrs)
                          * len(args.seeds))
    comparison = compare_lib.compare(
        config, args.optimizers, args.lrs, args.seeds, target=args.target,
        target_fraction=args.target_fraction, task=task,
        progress=not args.no_progress, devices=args.devices, shard_params=args.shard_params,
        rule=args.rule)
    print(f"{config.dataset}: {config.model}, depth {config.depth}, width {config.width}, "
          f"{config.activation}, {config.init}, batch {config.batch_size}")
    print(comparison.table())
    paths = compare_lib.save(comparison, args.out)
    print(f"\nwrote {paths['table.txt']}, {paths['results.json']}, {paths['loss_curves.png']}")
    return 0
  except (ValueError, FileNotFoundError, ImportError, MemoryError) as e:  # CheckpointError too
    parser.exit(2, f"avggrad: error: {e}\n")


def _compare_own(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  """``avggrad compare --model pkg.module:make_model --loss ... --data ...``."""
  from avggrad import custom

  if ":" not in args.model or not args.loss or not args.data:
    parser.error("your own model needs all three: --model pkg.module:make_model, --loss "
                 "pkg.module:loss and --data pkg.module:load")
  make_model = import_path(args.model, "--model")
  loss = import_path(args.loss, "--loss")
  load = import_path(args.data, "--data")
  if not callable(load):
    raise ValueError(f"--data {args.data!r}: {type(load).__name__} is not a function load().")
  try:
    loaded = load()
  except Exception as e:  # noqa: BLE001 (the user's loader failed: say where)
    raise ValueError(f"--data {args.data!r}: load() raised {type(e).__name__}: {e}") from e
  pair = lambda v: isinstance(v, (tuple, list)) and len(v) == 2  # noqa: E731
  if not pair(loaded):
    raise ValueError(f"--data {args.data!r}: load() must return (x, y) or ((x, y), "
                     f"(x_test, y_test)); it returned {type(loaded).__name__}.")
  train, test = (loaded[0], loaded[1]) if all(map(pair, loaded)) else (loaded, None)
  result = custom.compare_on(
      make_model, loss, train, optimizers=args.optimizers, steps=args.steps,
      batch_size=args.batch_size or 64, lrs=args.lrs, seeds=args.seeds, target=args.target,
      test=test, rule=getattr(args, "rule", "fastest"), target_fraction=args.target_fraction,
      eval_every=args.eval_every, eval_examples=args.eval_examples, schedule=args.schedule,
      progress=not args.no_progress, devices=args.devices, shard_params=args.shard_params,
      name=args.model.partition(":")[2])
  print(f"{args.model}, {args.loss}, {args.data}: batch {args.batch_size or 64}")
  print(result.table())
  paths = result.save(args.out)
  print(f"\nwrote {paths['table.txt']}, {paths['results.json']}, {paths['loss_curves.png']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
