"""`fit(recipe)`: the paper's training protocol (Sec. 3.1) in a resumable run directory.

The flow: plan (strategy, precision, run directory: `plan_fit`) -> data
(`training.data`) -> model and initialisation (`training.setup`) -> SGD -> `model.fit`
with one callback (`training.callbacks.RunKeeper`) that keeps the schedule, the
checkpoint and the logs in the run directory (`keras_vgg.runs`).

Running the same command again after a kill resumes from `state.npz`; the data pipeline
is seeded by (seed, epoch, position), so the resumed run sees the batches an uninterrupted
run would. A state saved within an epoch (`run.checkpoint_every`) is resumed at its step:
one `model.fit` call runs the rest of that epoch, from a pipeline that leaves out its first
steps, and a second one the epochs after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_vgg import distribute, runs
from keras_vgg import recipe as recipe_lib
from keras_vgg.augment import attach_device_input
from keras_vgg.data import sources
from keras_vgg.progress import is_terminal
from keras_vgg.record import ModelRecord
from keras_vgg.training.callbacks import RunKeeper
from keras_vgg.training.data import TrainingData, open_sources, recipe_data
from keras_vgg.training.progress import TrainingProgress
from keras_vgg.training.schedule import Plateau
from keras_vgg.training.setup import (
    build_for_fit,
    build_model,
    check_init_source,
    compile_model,
    initialize,
    make_optimizer,
    multi_worker_workarounds,
    open_init_source,
    run_record,
)

__all__ = ["INTERRUPT_GRACE", "FitPlan", "FitResult", "TrainingDiverged", "fit", "plan_fit"]

#: Seconds an interrupted `fit` (Ctrl-C) waits for the files of the epoch that just ended
#: before it gives up on them (they are written atomically: the previous epoch's stay).
INTERRUPT_GRACE = 3.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """Everything `fit` will do, decided before it starts (printed by `--dry-run`).

    `action` is "start", "resume" (after `resume_epoch` epochs and `resume_step` steps of
    the next one), "overwrite" or "finished" (a finished run, refused without
    `overwrite`). `problem` is the one-line error the run would stop on before its first
    step (a missing folder or file, a label out of range, a finished run, a missing initial
    model), or None when every check passed.
    """

    recipe: recipe_lib.Recipe
    distribution: distribute.DistributionPlan
    precision: distribute.PrecisionChoice
    run_dir: str
    action: str
    resume_epoch: int
    init_source: str | None
    num_train_images: int | None
    steps_per_epoch: int | None
    problem: str | None = None
    resume_step: int = 0

    def describe(self) -> str:
        """The plan as the lines `kvgg fit --dry-run` prints."""
        d = self.distribution
        r = self.recipe
        steps = self.steps_per_epoch
        lines = [
            f"run directory:      {self.run_dir} ({self._action_text()})",
            f"strategy:           {d.describe()}",
            f"replicas:           {d.replicas}",
            f"global batch:       {d.global_batch}",
            f"per-replica batch:  {d.per_replica_batch}",
            "steps per epoch:    "
            + (
                f"{steps} ({self.num_train_images} training images)"
                if steps is not None
                else f"unknown until {r.data.root} exists"
            ),
            f"epochs:             at most {r.schedule.epochs}",
            f"precision:          {self.precision.policy} ({self.precision.reason})",
            "input threads:      "
            + (
                f"{r.data.threads} (data.threads)"
                if r.data.threads is not None
                else f"one per CPU core ({os.cpu_count()})"
            ),
            f"initialisation:     {self._init_text()}",
            f"checks:             {self.problem or 'passed'}",
        ]
        return "\n".join(lines)

    def _action_text(self) -> str:
        return {
            "start": "new run",
            "resume": f"resume after epoch {self.resume_epoch}"
            + (f", step {self.resume_step}" if self.resume_step else ""),
            "overwrite": "overwrite (--overwrite)",
            "finished": "finished: refused without --overwrite",
        }[self.action]

    def _init_text(self) -> str:
        r = self.recipe
        source = self.init_source
        if source is None:
            return {"normal": "random normal, std 1e-2, biases zero", "glorot": "Glorot uniform"}[
                r.model.init
            ]
        missing = source.endswith((".keras", ".h5")) and not os.path.isfile(source)
        return f"{r.init.mode} from {source}" + (" (NOT THERE YET)" if missing else "")


def _init_source(recipe: recipe_lib.Recipe) -> str | None:
    if recipe.model.weights is not None:
        return recipe.model.weights
    if recipe.init.from_run is None:
        return None
    run = recipe.init.from_run
    run_dir = run if os.sep in run or os.path.isdir(run) else os.path.join(recipe.run.runs_dir, run)
    return os.path.join(run_dir, runs.BEST_MODEL)


def plan_fit(
    recipe: recipe_lib.Recipe,
    *,
    devices: Sequence[str] | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> FitPlan:
    """Decides strategy, precision and what happens to the run directory, creating nothing.

    Args:
        recipe: The recipe.
        devices: Local devices (default: every GPU, else the CPU).
        overwrite: Whether a finished run may be replaced.
        check: Make every check the run makes before its first step (`--dry-run`): the
            data (`training.data.open_sources`: folders, files, labels, statistics; it
            counts the training images), the run directory and the initial model. The first
            failure is the plan's `problem`.

    Returns:
        A `FitPlan`.

    Raises:
        ValueError: if the global batch does not split over the replicas, or the run
            directory's `state.npz` is unreadable.
    """
    dist = distribute.plan_distribution(recipe.run.batch_size, devices=devices)
    precision = distribute.resolve_precision(recipe.run.precision)
    run_dir = recipe.run_dir
    action, epoch = runs.run_status(run_dir, overwrite)
    step = (
        runs.read_state_meta(os.path.join(run_dir, runs.STATE))["step"]
        if action == "resume" and os.path.isfile(os.path.join(run_dir, runs.STATE))
        else 0
    )
    count, steps, problem = None, recipe.run.steps_per_epoch, None
    plan = FitPlan(
        recipe,
        dist,
        precision,
        run_dir,
        action,
        epoch,
        _init_source(recipe),
        count,
        steps,
        resume_step=step,
    )
    if check:
        try:
            _check_run_dir(plan)
            if action != "resume":
                check_init_source(recipe, plan.init_source)
            opened = open_sources(recipe, num_workers=dist.num_workers)
            steps = opened.steps_per_epoch
            count = len(opened.train) if isinstance(opened.train, sources.ImageSource) else None
            # A local source (a pretrained name is fetched by the run, not by a dry run).
            local = plan.init_source is not None and os.path.exists(plan.init_source)
            if action != "resume" and local:
                # The source against the run's model, as `initialize` will check it.
                names = getattr(opened.train, "class_names", None)
                classes = recipe.model.classes or (len(names) if names else None)
                if classes:
                    record = ModelRecord(
                        crop_size=recipe.data.crop_size,
                        class_names=tuple(names) if names else None,
                    )
                    model = build_model(recipe, classes, "float32", record=record)
                    open_init_source(recipe, plan.init_source, model)
        except ValueError as exc:
            problem = str(exc).strip().splitlines()[0]
    return dataclasses.replace(plan, num_train_images=count, steps_per_epoch=steps, problem=problem)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What a finished `fit` returns."""

    run_dir: str
    model: keras.Model
    history: list[dict]
    metrics: dict


def _check_run_dir(plan: FitPlan) -> None:
    r = plan.recipe
    if plan.action == "finished":
        raise ValueError(
            f"{plan.run_dir}: this run has finished ({runs.METRICS}); pass --overwrite to train "
            f"it again, or --set run.name=NEW for a new run"
        )
    saved = runs.saved_recipe(plan.run_dir) if plan.action == "resume" else None
    if saved is not None:
        if _compared(saved) != _compared(r):
            diff = _first_difference(_compared(saved), _compared(r))
            raise ValueError(
                f"{plan.run_dir}: holds a run of a different recipe ({diff}); pass --overwrite "
                f"to start again, or --set run.name=NEW"
            )


def _compared(recipe: recipe_lib.Recipe) -> dict:
    """The recipe as a resumed run must match it: all but `recipe.OBSERVATION_KEYS`."""
    values = recipe_lib.recipe_to_dict(recipe)
    for key in recipe_lib.OBSERVATION_KEYS:
        section, name = key.split(".")
        values[section].pop(name, None)
    return values


def _first_difference(a: dict, b: dict) -> str:
    for section in a:
        for key in sorted(set(a[section]) | set(b.get(section, {}))):
            if a[section].get(key) != b.get(section, {}).get(key):
                return (
                    f"{section}.{key}: {a[section].get(key)!r} there, "
                    f"{b.get(section, {}).get(key)!r} here"
                )
    return "?"


def fit(
    recipe: recipe_lib.Recipe,
    *,
    data: TrainingData | None = None,
    devices: Sequence[str] | None = None,
    overwrite: bool = False,
    verbose: int | str = "auto",
    print_fn: Callable[[str], None] = print,
) -> FitResult:
    """Trains a recipe to the end, resuming its run directory if it holds a killed run.

    Sec. 3.1: SGD with momentum 0.9, weight decay 5e-4 (an L2 penalty), dropout 0.5, learning
    rate 1e-2 divided by 10 at each validation top-1 plateau, stop at the plateau after
    the third reduction or at 74 epochs. Sec. 3.3: synchronous data parallelism over all
    GPUs (`MirroredStrategy`) or machines (`MultiWorkerMirroredStrategy`, TF_CONFIG).

    Args:
        recipe: The recipe (`recipe.load_recipe`).
        data: The data; default: the recipe's folders through `keras_vgg.data.pipelines`.
            Tests and benchmarks pass in-memory datasets here; the rest is the same path.
        devices: Local devices to replicate over (default: every GPU, else the CPU).
        overwrite: Replace a finished run, or one with another recipe.
        verbose: Keras progress bar: "auto" (a bar on a terminal; elsewhere a line every
            `run.log_every` seconds, `training.progress.TrainingProgress`), 0, 1 or 2.
        print_fn: Where the one-line epoch summaries, progress lines and notices go.

    Returns:
        A `FitResult`.

    Raises:
        ValueError: for a recipe that cannot run (missing folders, a missing initial run,
            a finished run without `overwrite`), naming the key or the run directory.
        RunInUse: if another live process holds the run directory (`runs.lock_run`; the
            chief takes it before it reads the directory, other workers only read).
        TrainingDiverged: when the loss becomes NaN; the previous epoch's checkpoint is kept.
        KeyboardInterrupt: at the first step boundary after Ctrl-C, once the files of the
            last finished epoch are written (waiting at most `INTERRUPT_GRACE` seconds).
        CheckpointError: when an epoch's files cannot be written; the previous ones are kept.
        WriteError: (an `OSError`) naming the file, when another file cannot be written.
    """
    chief = distribute.plan_distribution(recipe.run.batch_size, devices=devices).is_chief
    with runs.lock_run(recipe.run_dir) if chief else contextlib.nullcontext():
        return _fit(recipe, data, devices, overwrite, verbose, print_fn)


def _fit(recipe, data, devices, overwrite, verbose, print_fn) -> FitResult:
    plan = plan_fit(recipe, devices=devices, overwrite=overwrite, check=False)
    _check_run_dir(plan)
    if plan.action != "resume":
        check_init_source(recipe, plan.init_source)
    dist = plan.distribution
    run_dir = plan.run_dir
    if dist.is_chief:
        if plan.action == "overwrite" and os.path.isdir(run_dir):
            runs.clear_run(run_dir)
        os.makedirs(run_dir, exist_ok=True)
    strategy = distribute.make_strategy(dist)
    print_fn(
        f"strategy: {dist.describe()}; precision: {plan.precision.policy} ({plan.precision.reason})"
    )

    if data is None:
        data = recipe_data(
            recipe,
            bad_files_path=os.path.join(run_dir, runs.BAD_FILES) if dist.is_chief else None,
            num_workers=dist.num_workers,
        )
    classes = recipe.model.classes or len(data.class_names)
    if recipe.model.classes is not None and data.class_names and classes != len(data.class_names):
        raise ValueError(
            f"{recipe.path}: model.classes: {classes}, but {recipe.data.root} has "
            f"{len(data.class_names)} classes"
        )

    state_path = os.path.join(run_dir, runs.STATE)
    resuming = plan.action == "resume" and os.path.isfile(state_path)
    keras.utils.set_random_seed(recipe.run.seed)
    with strategy.scope():
        model = build_model(recipe, classes, plan.precision.policy, record=run_record(recipe, data))
        # A resumed run takes every weight from its own state: the run it started from may
        # have been moved or deleted since.
        copied = [] if resuming else initialize(model, recipe, plan.init_source, data.mean)
        compile_model(model, make_optimizer(recipe, plan.precision.policy), classes)
        model.optimizer.build(model.trainable_variables)
        # The pipelines hand over uint8 crops (and each one's flip and colour shift); the
        # model's own steps finish them on the device. The saved model is the plain VGG.
        build_for_fit(model, recipe.data.crop_size)
        attach_device_input(model)
        if dist.kind == "multi_worker":
            multi_worker_workarounds(model)

    meta = {
        "epoch": 0,
        "lr": recipe.optimizer.lr,
        "plateau": dataclasses.asdict(Plateau()),
        "history": [],
        "stop_reason": None,
        "best_epoch": None,
    }
    resumed_metrics = None
    if resuming:
        meta = runs.load_state(state_path, model)
        model.optimizer.learning_rate.assign(meta["lr"])
        step = meta["step"]
        if step >= data.steps_per_epoch:
            raise ValueError(
                f"{state_path}: saved after step {step} of epoch {meta['epoch'] + 1}, but an "
                f"epoch now has {data.steps_per_epoch} steps (did {recipe.data.root} change?); "
                "pass --overwrite to start again"
            )
        if step:
            resumed_metrics = [np.array(v.numpy()) for v in model.metrics_variables]
        print_fn(
            f"resuming {run_dir} after epoch {meta['epoch']}"
            + (f", step {step} of {data.steps_per_epoch}" if step else "")
            + f" (lr {meta['lr']:.1e}, {meta['plateau']['reductions']} reductions)"
        )
    elif copied:
        print_fn(f"initialised {len(copied)} layers from {plan.init_source}: {', '.join(copied)}")

    if dist.is_chief:
        runs.start_bad_files(run_dir)
        runs.write_recipe(run_dir, recipe)
        runs.write_model_info(run_dir, model)

    epoch, step = meta["epoch"], meta.get("step", 0)
    keeper = RunKeeper(
        recipe,
        run_dir,
        meta,
        dist.is_chief,
        print_fn,
        steps_per_epoch=data.steps_per_epoch,
        resumed_metrics=resumed_metrics,
        within_epochs=dist.kind != "multi_worker",
    )
    if recipe.run.checkpoint_every is not None and dist.kind == "multi_worker":
        print_fn(
            "run.checkpoint_every: not used with several workers; the state is written at "
            "the end of each epoch"
        )
    try:
        if epoch < recipe.schedule.epochs and not meta.get("stop_reason"):
            val = data.val() if callable(data.val) else data.val
            if val is not None and dist.kind == "multi_worker":
                options = tf.data.Options()
                options.experimental_distribute.auto_shard_policy = (
                    tf.data.experimental.AutoShardPolicy.DATA
                )
                val = val.with_options(options)
            callbacks = [keeper]
            lines = None
            if verbose == "auto":
                verbose = 1 if is_terminal(sys.stdout) else 0
                if not verbose:
                    lines = TrainingProgress(
                        recipe.schedule.epochs, dist.global_batch, recipe.run.log_every, print_fn
                    )
                    callbacks.append(lines)
            with warnings.catch_warnings():
                # Keras's notices for datasets it cannot count: the validation set is finite on
                # purpose and the training set is shuffled by the pipeline's seed.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
                while epoch < recipe.schedule.epochs:
                    # Resumed within an epoch: first the rest of that epoch alone.
                    until = epoch + 1 if step else recipe.schedule.epochs
                    if lines is not None:
                        lines.start_step = step
                    model.fit(
                        _train_dataset(strategy, dist, data, epoch, step),
                        epochs=until,
                        initial_epoch=epoch,
                        steps_per_epoch=data.steps_per_epoch - step,
                        validation_data=val,
                        callbacks=callbacks,
                        verbose=verbose,
                    )
                    if model.stop_training:
                        break
                    epoch, step = until, 0
    except KeyboardInterrupt:
        keeper.close(quiet=True, grace=INTERRUPT_GRACE)
        raise
    except BaseException:
        keeper.close(quiet=True)  # the error that stopped training is the one to report
        raise
    keeper.close()
    if keeper.diverged is not None:
        epoch, batch = keeper.diverged
        if dist.is_chief:
            runs.write_metrics(run_dir, runs.run_metrics(keeper.meta, "nan"))
        where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
        kept = (
            f"the last good checkpoint (after epoch {keeper.meta['epoch']}) is kept in {run_dir}"
            if keeper.meta["epoch"]
            else "no epoch had finished, so there is no checkpoint"
        )
        raise TrainingDiverged(
            f"loss became NaN at {where} (learning rate {keeper.epoch_lr:.1e}); stopped: "
            f"{kept}. Lower optimizer.lr and run again with --overwrite"
        )
    metrics = runs.run_metrics(keeper.meta, "finished")
    if dist.is_chief:
        runs.write_metrics(run_dir, metrics)
    print_fn(f"finished: {metrics.get('stop_reason')}; run directory: {run_dir}")
    return FitResult(run_dir, model, keeper.meta["history"], metrics)


def _train_dataset(strategy, dist, data: TrainingData, start_epoch: int, start_step: int):
    # `start_step` only when there is one: a `data.train` of its own may not take it.
    skip = {"start_step": start_step} if start_step else {}
    if dist.kind != "multi_worker":
        return data.train(start_epoch=start_epoch, batch_size=dist.global_batch, **skip)

    def dataset_fn(context: tf.distribute.InputContext):
        return data.train(
            start_epoch=start_epoch,
            batch_size=context.get_per_replica_batch_size(dist.global_batch),
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
            **skip,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)
