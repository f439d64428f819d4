"""Training: the configuration, the tasks and the loop, under the names they always had.

The code lives in three modules split along its own lines: :mod:`avggrad.config` (what
defines a run: :class:`avggrad.config.TrainConfig`, :class:`avggrad.config.RunResult`, the
optimizer and schedule),
:mod:`avggrad.tasks` (what is trained: :class:`avggrad.tasks.Task`, a model factory, a loss
and data; the built-in models as registered tasks) and :mod:`avggrad.loop` (how: one step, the
chunked loop, the record, checkpoints and :func:`avggrad.loop.train`). This module re-exports their public
names, so ``avggrad.training.train`` (:func:`avggrad.loop.train`), ``training.TrainConfig``
and the rest keep working.
"""

from avggrad.config import (
    DEFAULT_OPTIMIZER,
    MODEL_DEFAULTS,
    MODELS,
    SCHEDULES,
    NonFiniteLossError,
    RunResult,
    TrainConfig,
    learning_rate,
    make_tx,
)
from avggrad.loop import (
    SLOW_STEP_SECONDS,
    SLOWEST_FLOPS_PER_SECOND,
    Compiled,
    LoopResult,
    MetricsLog,
    Program,
    batch_indices,
    check_data,
    chunk_advance,
    compile_step,
    data_order,
    decode_record,
    encode_record,
    estimated_step_seconds,
    eval_params,
    eval_split,
    eval_sums,
    evaluate_in_batches,
    loss_fn,
    machine_flops_per_second,
    place_data,
    place_eval,
    run_loop,
    single_program,
    step_flops,
    held_out,
    train,
    update_step,
    warn_if_slow,
)
from avggrad.progress import Progress
from avggrad.tasks import Task, cross_entropy, load_splits, make_model

