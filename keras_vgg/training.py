"""`fit(recipe)`: the paper's training protocol (Sec. 3.1) in a resumable run directory.

The flow: plan (strategy, precision, run directory) -> data -> model and initialisation ->
SGD -> `model.fit` with one callback that keeps the schedule, the checkpoint and the logs.

Weight decay. The paper's 5e-4 is Caffe's: the loss gets 0.5 * 5e-4 * ||w||^2, so each
gradient gets + 5e-4 * w *before* momentum. Keras's `L2(l)` adds l * sum(w^2), so the paper's
decay is `kernel_regularizer=L2(5e-4 / 2)` on every conv and FC kernel (biases are not
decayed, as in Caffe's VGG/AlexNet prototxts with `decay_mult: 0` on biases). The other
reading, `weight_decay_mode = "decoupled"`, is Keras's optimizer `weight_decay`
(w -= lr * 5e-4 * w after the momentum step).

The run directory `runs/<name>/` holds `recipe.toml` (resolved), `model_info.json`,
`history.csv`, `logs/` (TensorBoard), `best.keras`, `last.keras`, `metrics.json`,
`curves.png`, `bad_files.txt` and `state.npz`, the resumable state written atomically at the
end of every epoch: every model variable (weights and dropout seed states), every optimizer
variable (momentum, iteration count), the learning rate, the plateau state and the history.
Running the same command again after a kill resumes from it; the data pipeline is seeded by
(seed, epoch, position), so the resumed run sees the batches an uninterrupted run would.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_vgg import distribute
from keras_vgg import recipe as recipe_lib
from keras_vgg.imagenet import Preprocessing
from keras_vgg.record import ModelRecord, attach_record, describe, record_of

__all__ = [
    "CheckpointError",
    "FitPlan",
    "FitResult",
    "Plateau",
    "TrainingData",
    "TrainingDiverged",
    "adapt_first_conv",
    "build_model",
    "compile_model",
    "fit",
    "initialize",
    "make_optimizer",
    "plan_fit",
    "plateau_step",
    "recipe_data",
    "split_source",
    "write_state",
]

STATE_FILE = "state.npz"
HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "top1_error",
    "top5_error",
    "val_loss",
    "val_top1_error",
    "val_top5_error",
    "seconds",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """An epoch's files could not be written (e.g. a full disk); the previous ones are kept."""


# === The learning-rate schedule (Sec. 3.1) ===


@dataclasses.dataclass(frozen=True)
class Plateau:
    """State of "divide the learning rate by 10 when validation accuracy stops improving".

    Attributes:
        best: Best validation top-1 accuracy so far.
        wait: Epochs since it last improved (by more than `min_delta`).
        reductions: Learning-rate reductions so far.
    """

    best: float = -math.inf
    wait: int = 0
    reductions: int = 0


def plateau_step(
    state: Plateau, accuracy: float, *, patience: int, min_delta: float, max_reductions: int
) -> tuple[Plateau, str]:
    """One epoch of the schedule.

    Sec. 3.1: the learning rate is divided by 10 when the validation accuracy stops
    improving; this happened three times, and training stopped when it stopped improving
    again.

    Args:
        state: The state after the previous epoch.
        accuracy: This epoch's validation top-1 accuracy.
        patience: Epochs without improvement that make a plateau.
        min_delta: Smallest improvement that counts.
        max_reductions: Reductions before a plateau stops training.

    Returns:
        (new state, action) with action "improved", "wait", "reduce" or "stop".
    """
    if accuracy > state.best + min_delta:
        return Plateau(accuracy, 0, state.reductions), "improved"
    wait = state.wait + 1
    if wait < patience:
        return Plateau(state.best, wait, state.reductions), "wait"
    if state.reductions >= max_reductions:
        return Plateau(state.best, wait, state.reductions), "stop"
    return Plateau(state.best, 0, state.reductions + 1), "reduce"


# === Data ===


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What `fit` trains and validates on.

    Attributes:
        train: `train(start_epoch=, batch_size=, num_shards=, shard_index=)` returns an
            infinite dataset of (images, labels) batches whose epoch `start_epoch` comes
            first, so a resumed run sees the batches of an uninterrupted one.
        val: A finite dataset of (images, labels) batches, a function that makes one (so
            that it is made after the strategy, as MultiWorkerMirroredStrategy needs), or
            None.
        class_names: One name per class.
        steps_per_epoch: Batches per epoch.
        mean: The mean RGB subtracted from the images (for `model_info.json`).
    """

    train: Callable[..., tf.data.Dataset]
    val: tf.data.Dataset | Callable[[], tf.data.Dataset] | None
    class_names: tuple[str, ...]
    steps_per_epoch: int
    mean: tuple[float, float, float]


def recipe_data(
    recipe: recipe_lib.Recipe, *, bad_files_path: str | None = None, num_workers: int = 1
) -> TrainingData:
    """Builds the training and validation pipelines of a recipe (Sec. 3.1).

    Args:
        recipe: The recipe.
        bad_files_path: Where the pipeline lists images it had to skip.
        num_workers: Worker processes reading shards of the training set.

    Returns:
        A `TrainingData`.

    Raises:
        ValueError: naming the recipe key whose folder or file is missing or unusable.
    """
    from keras_vgg.data import pipelines, sources
    from keras_vgg.data import stats as stats_lib

    d, r = recipe.data, recipe.run
    train_source = _open_source(recipe, "data.root", d.root, None)
    is_folder = isinstance(train_source, sources.ImageSource)
    if d.val_root is not None:
        val_source = _open_source(recipe, "data.val_root", d.val_root, d.labels_file)
    elif d.val_split > 0:
        if not is_folder:
            raise ValueError(f"{recipe.path}: data.val_split: needs a folder data.root")
        train_source, val_source = split_source(sources, train_source, d.val_split, r.seed)
    else:
        val_source = None
    if d.stats is None:
        stats = stats_lib.IMAGENET_STATS
    else:
        if not os.path.isfile(d.stats):
            raise ValueError(f"{recipe.path}: data.stats: file not found: {d.stats}")
        stats = stats_lib.DatasetStats.from_json(d.stats)
    mean = tuple(float(v) for v in stats.mean)
    batch = r.batch_size
    if is_folder and r.steps_per_epoch is not None:
        # A fixed seeded subset makes one pipeline epoch exactly `steps_per_epoch` batches,
        # so Keras's epochs and the pipeline's stay aligned (and resuming stays exact).
        train_source = train_source.sample(r.steps_per_epoch * batch, seed=r.seed)
    if is_folder:
        # Every worker orders all the files and takes its part of each of the epoch's full
        # global batches (`pipelines.training_dataset`): the same steps as one process.
        count = len(train_source)
        steps = count // batch
    else:
        # Shards of records: each worker reads whole files, so the fewest batches any worker
        # has in an epoch is the number of steps all of them run.
        count = None
        per_worker = batch // num_workers
        steps = min(
            pipelines.steps_per_epoch(
                train_source, per_worker, num_shards=num_workers, shard_index=index
            )
            for index in range(num_workers)
        )
        if r.steps_per_epoch is not None:
            steps = min(steps, r.steps_per_epoch)
    if steps < 1:
        raise ValueError(
            f"{recipe.path}: run.batch_size: {batch} is larger than the "
            f"{count if count is not None else 'available'} training images of {d.root}"
        )
    class_names = getattr(train_source, "class_names", None)
    if not class_names:
        if recipe.model.classes is None:
            raise ValueError(
                f"{recipe.path}: model.classes: {d.root} does not name its classes; give "
                "their number"
            )
        class_names = tuple(str(i) for i in range(recipe.model.classes))

    def train(*, start_epoch: int, batch_size: int, num_shards: int = 1, shard_index: int = 0):
        return pipelines.training_dataset(
            train_source,
            batch_size=batch_size,
            train_scale=d.train_scale.to_json(),
            crop_size=d.crop_size,
            flip=d.flip,
            color_shift=stats if d.color_shift else None,
            mean=mean,
            seed=r.seed,
            start_epoch=start_epoch,
            num_shards=num_shards,
            shard_index=shard_index,
            bad_files_path=bad_files_path,
            threads=d.threads,
        )

    val = None
    if val_source is not None:
        val = pipelines.evaluation_dataset(
            val_source,
            batch_size=r.batch_size,
            scale=d.resolved_val_scale,
            crop_size=d.crop_size,
            mode="center",
            mean=mean,
            threads=d.threads,
        )
        if r.val_steps is not None:
            val = val.take(r.val_steps)
    return TrainingData(train, val, tuple(class_names), steps, mean)


def _open_source(recipe, key, root, labels_file):
    """A folder tree, a flat folder with labels, "tfrecord:PATTERN" or "tfds:NAME[:SPLIT]"."""
    from keras_vgg.data import sources

    prefixed = root.startswith(("tfrecord:", "tfds:"))
    if not prefixed and not os.path.isdir(root):
        raise ValueError(f"{recipe.path}: {key}: folder not found: {root}")
    if (
        labels_file is not None
        and labels_file != sources.IMAGENET_VAL_LABELS
        and not os.path.isfile(labels_file)
    ):
        raise ValueError(f"{recipe.path}: data.labels_file: file not found: {labels_file}")
    try:
        if prefixed:
            return sources.as_source(root, label_offset=recipe.data.label_offset)
        return sources.open_source(root, labels_file=labels_file)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{recipe.path}: {key}: {exc}") from None


def split_source(sources, source, fraction, seed):
    """A seeded split of one source into (train, validation), stratified by class."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(source.labels)
    val_index = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = max(1, round(len(members) * fraction))
        val_index.extend(rng.permutation(members)[:count].tolist())
    is_val = np.zeros(len(labels), bool)
    is_val[val_index] = True
    files = list(source.files)

    def pick(mask):
        return sources.ImageSource(
            tuple(f for f, m in zip(files, mask, strict=True) if m),
            tuple(int(v) for v in labels[mask]),
            tuple(source.class_names),
        )

    return pick(~is_val), pick(is_val)


# === The plan ===


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """Everything `fit` will do, decided before it starts (printed by `--dry-run`).

    `action` is "start", "resume" (after `resume_epoch` epochs), "overwrite" or "finished"
    (a finished run, refused without `overwrite`).
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
        ]
        return "\n".join(lines)

    def _action_text(self) -> str:
        return {
            "start": "new run",
            "resume": f"resume after epoch {self.resume_epoch}",
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
    return os.path.join(run_dir, "best.keras")


def run_status(run_dir: str, overwrite: bool = False) -> tuple[str, int]:
    """What `fit` would do with a run directory, and the epochs it has completed.

    Args:
        run_dir: The run directory (`runs/<name>`).
        overwrite: Whether `fit` is allowed to replace a finished or started run.

    Returns:
        ("start" | "resume" | "overwrite" | "finished", completed epochs).
    """
    metrics = _read_json(os.path.join(run_dir, "metrics.json"))
    if metrics and metrics.get("status") == "finished":
        return ("overwrite" if overwrite else "finished"), metrics.get("epochs", 0)
    state_path = os.path.join(run_dir, STATE_FILE)
    if os.path.isfile(state_path):
        if overwrite:
            return "overwrite", 0
        with np.load(state_path) as state:
            meta = json.loads(str(state["meta"]))
        return "resume", meta["epoch"]
    return "start", 0


def plan_fit(
    recipe: recipe_lib.Recipe,
    *,
    devices: Sequence[str] | None = None,
    overwrite: bool = False,
    count_images: bool = True,
) -> FitPlan:
    """Decides strategy, precision and what happens to the run directory, creating nothing.

    Args:
        recipe: The recipe.
        devices: Local devices (default: every GPU, else the CPU).
        overwrite: Whether a finished run may be replaced.
        count_images: Count the training images (walks `data.root` when it exists).

    Returns:
        A `FitPlan`.

    Raises:
        ValueError: if the global batch does not split over the replicas.
    """
    dist = distribute.plan_distribution(recipe.run.batch_size, devices=devices)
    precision = distribute.resolve_precision(recipe.run.precision)
    run_dir = recipe.run_dir
    action, epoch = run_status(run_dir, overwrite)
    count = steps = None
    if count_images and os.path.isdir(recipe.data.root):
        from keras_vgg.data import sources

        count = len(sources.open_source(recipe.data.root).files)
        steps = recipe.run.steps_per_epoch or count // recipe.run.batch_size
    elif recipe.run.steps_per_epoch:
        steps = recipe.run.steps_per_epoch
    return FitPlan(
        recipe, dist, precision, run_dir, action, epoch, _init_source(recipe), count, steps
    )


# === The model ===


def build_model(
    recipe, classes: int, precision: str, *, record: ModelRecord | None = None
) -> keras.Model:
    """The recipe's model (Sec. 3.1: its initialiser and weight decay), before initialisation.

    Args:
        recipe: The recipe.
        classes: Number of classes.
        precision: "float32" or a mixed policy name.
        record: The model's record (default: the paper's convention at the crop size).

    Returns:
        A `keras_vgg.VGG`.
    """
    from keras_vgg import models

    m, o = recipe.model, recipe.optimizer
    initializer = (
        keras.initializers.RandomNormal(stddev=1e-2) if m.init == "normal" else "glorot_uniform"
    )
    # Caffe's decay d is a loss term 0.5 * d * ||w||^2; Keras's L2(l) is l * ||w||^2.
    regularizer = (
        keras.regularizers.L2(o.weight_decay / 2)
        if o.weight_decay_mode == "l2" and o.weight_decay > 0
        else None
    )
    crop = recipe.data.crop_size
    return models.build(
        m.config,
        input_shape=(crop, crop, 3),
        classes=classes,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
        width=m.width,
        fc_units=m.fc_units,
        kernel_initializer=initializer,
        kernel_regularizer=regularizer,
        dtype=None if precision == "float32" else precision,
        record=record,
    )


def _check_init_source(recipe, source_path: str | None) -> None:
    """Raises a one-line error naming the run (or file) to start from if it is missing."""
    if source_path is None or not source_path.endswith((".keras", ".h5")):
        return
    if os.path.isfile(source_path):
        return
    key = "model.weights" if recipe.model.weights is not None else "init.from_run"
    hint = ""
    if recipe.init.from_run is not None:
        hint = (
            f": train run {recipe.init.from_run!r} first "
            f"(kvgg fit recipes/{os.path.basename(recipe.init.from_run)}.toml)"
        )
    raise ValueError(f"{recipe.path}: {key}: {source_path} is not there yet{hint}")


def initialize(
    model: keras.Model, recipe, source_path: str | None, mean: tuple[float, float, float]
) -> list[str]:
    """Sec. 3.1: B-E from A's first four conv and three FC layers; S = 384 from S = 256.

    When the source expects other input than this run feeds (RGB minus `mean`), e.g.
    Keras's VGG16 file (BGR minus the BGR mean) or torchvision's (RGB / 255, then mean and
    std), the copied first convolution is rewritten to take this run's input
    (`adapt_first_conv`). The model keeps the record of this run: its input is this run's.
    """
    from keras_vgg import weights

    if source_path is None:
        return []
    _check_init_source(recipe, source_path)
    key = "model.weights" if recipe.model.weights is not None else "init.from_run"
    try:
        # The source's architecture comes from the file: a BN, narrower or other-headed
        # source builds the model it fits; its record says what input it expects.
        source = weights.model_from_weights(source_path, recipe.model.config)
    except (ValueError, NotImplementedError) as exc:
        raise ValueError(f"{recipe.path}: {key}: {exc}") from None
    run_record = record_of(model)
    try:
        if recipe.init.mode == "a_layers":
            copied = weights.initialize_from_a(source, model)
        else:
            names = [layer.name for layer in model.layers if layer.weights]
            if recipe.init.mode == "all_but_head":
                names = [n for n in names if n != "predictions"]
            copied = weights.transfer_weights(source, model, names, source_name=source_path)
    except ValueError as exc:
        raise ValueError(f"{recipe.path}: init.mode = {recipe.init.mode!r}: {exc}") from None
    if "block1_conv1" in copied:
        adapt_first_conv(model.get_layer("block1_conv1"), record_of(source).preprocessing, mean)
    # The run feeds its own input (RGB minus `mean`) whatever the source expected.
    attach_record(model, run_record)
    return copied


def adapt_first_conv(layer, preprocessing, mean: tuple[float, float, float]) -> None:
    """Rewrites a first convolution trained on `preprocessing` to take RGB minus `mean`.

    The source saw t_c = (scale * x_c - mu_c) / sd_c (channels in its own order); this run
    feeds u_c = x_c - m_c, so t_c = (scale / sd_c) * u_c + (scale * m_c - mu_c) / sd_c: the
    kernel is scaled per input channel (and reordered from BGR), and the constant term goes
    into the bias. Exact wherever the 3x3 window lies inside the image; at the border the
    zero padding stands for a slightly different value (none for a pure channel reorder
    with the same mean, e.g. Keras's VGG16 weights with the ImageNet mean).
    """
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    mu = np.asarray(preprocessing.mean, np.float64)
    sd = np.ones(3) if preprocessing.std is None else np.asarray(preprocessing.std, np.float64)
    if preprocessing.channel_order == "bgr":
        kernel, mu, sd = kernel[:, :, ::-1, :], mu[::-1], sd[::-1]
    factor = preprocessing.scale / sd
    offset = (preprocessing.scale * np.asarray(mean, np.float64) - mu) / sd
    new_kernel = kernel * factor[None, None, :, None]
    new_bias = bias + np.einsum("hwco,c->o", kernel, offset)
    layer.set_weights([new_kernel.astype(np.float32), new_bias.astype(np.float32)])


def make_optimizer(recipe, precision: str) -> keras.optimizers.Optimizer:
    """The recipe's SGD with momentum (Sec. 3.1), loss-scaled under mixed float16."""
    o = recipe.optimizer
    decoupled = o.weight_decay_mode == "decoupled" and o.weight_decay > 0
    optimizer = keras.optimizers.SGD(
        learning_rate=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay if decoupled else None,
    )
    if decoupled:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def compile_model(model: keras.Model, optimizer, classes: int) -> None:
    """Compiles for training: cross-entropy, top-1 and top-5 (top-5 with > 5 classes)."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, classes), name="top5"),
        ],
    )


# === Checkpoints ===


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Writes through a temporary file in the same folder, then renames (atomic on POSIX)."""
    directory, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(directory, f".{stem}.partial{ext}")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def _optimizer_variables(model: keras.Model) -> list:
    return list(model.optimizer.variables)


def save_state(path: str, model: keras.Model, meta: dict[str, Any]) -> None:
    """Writes the resumable state atomically: every model and optimizer variable + `meta`.

    Args:
        path: The `.npz` file (written through a temporary file, then renamed).
        model: A compiled model whose optimizer is built.
        meta: JSON-ready run state (epoch, learning rate, plateau state, history).
    """
    write_state(path, _state_arrays(model), meta)


def _state_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """Copies of every model and optimizer variable, as `save_state` stores them."""
    arrays = {f"model/{i}": np.array(v.numpy()) for i, v in enumerate(model.variables)}
    for i, v in enumerate(_optimizer_variables(model)):
        arrays[f"optimizer/{i}"] = np.array(v.numpy())
    return arrays


def write_state(path: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Writes a resumable state (`state.npz`) atomically: arrays plus the JSON `meta`."""
    arrays = {**arrays, "meta": np.asarray(json.dumps(meta))}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic_write(path, write)


def load_state(path: str, model: keras.Model) -> dict[str, Any]:
    """Restores what `save_state` wrote into a model built and compiled the same way.

    Args:
        path: The `.npz` file.
        model: The model to fill (weights, dropout seed states and optimizer variables).

    Returns:
        The `meta` dictionary that was saved.

    Raises:
        ValueError: if the file holds another number of variables than the model.
    """
    with np.load(path) as state:
        model_vars, opt_vars = model.variables, _optimizer_variables(model)
        n_model = sum(k.startswith("model/") for k in state.files)
        n_opt = sum(k.startswith("optimizer/") for k in state.files)
        if (n_model, n_opt) != (len(model_vars), len(opt_vars)):
            raise ValueError(
                f"{path}: holds {n_model} model and {n_opt} optimizer variables, the model has "
                f"{len(model_vars)} and {len(opt_vars)} (was the recipe changed?)"
            )
        for i, v in enumerate(model_vars):
            v.assign(state[f"model/{i}"])
        for i, v in enumerate(opt_vars):
            v.assign(state[f"optimizer/{i}"])
        return json.loads(str(state["meta"]))


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# === The callback that runs the schedule and the run directory ===


class _RunKeeper(keras.callbacks.Callback):
    """Schedule (Sec. 3.1), NaN guard, per-epoch checkpoint, history, logs, summary line.

    The per-epoch files are written off the training thread, so the next epoch does not
    wait for the disk: at the end of an epoch the variables are copied (a memory copy, the
    only part that must see a consistent model), and a single background thread writes
    `last.keras` (from a CPU twin of the model holding the copies), `best.keras`,
    `state.npz`, `history.csv`, `metrics.json` and the TensorBoard scalars, each
    atomically, one epoch after the other. At most one epoch's writes are pending, and
    `close()` waits for them. `state.npz` is what a resumed run reads, so a kill while an
    epoch's files are being written resumes from the epoch before, as it should.
    `curves.png` is for people: it is redrawn at most every `curves_every` seconds, and at
    the end.
    """

    # Keras may run the per-batch NaN check off the training thread (it only sets flags),
    # so the loop never waits on it for the step's loss.
    async_safe = True

    def __init__(self, recipe, run_dir, meta, is_chief, print_fn, curves_every: float = 30.0):
        super().__init__()
        self.recipe = recipe
        self.run_dir = run_dir
        self.meta = meta
        self.is_chief = is_chief
        self.print_fn = print_fn
        self.curves_every = curves_every
        self.diverged: tuple[int, int] | None = None
        self._start = 0.0
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: tuple[int, concurrent.futures.Future] | None = None
        self._twin: keras.Model | None = None
        self._summaries: dict[str, Any] = {}
        self._curves_drawn = -math.inf
        self._curves_stale = False

    def close(self) -> None:
        """Waits for the pending writes, draws the final curves.png, stops the thread."""
        try:
            self._wait()
            if self._curves_stale and self.is_chief:
                _write_curves(os.path.join(self.run_dir, "curves.png"), self.meta["history"])
        finally:
            self._writer.shutdown()
            for writer in self._summaries.values():
                writer.close()

    def _wait(self) -> None:
        if self._pending is None:
            return
        (epoch, pending), self._pending = self._pending, None
        try:
            pending.result()
        except OSError as exc:
            where = exc.filename or self.run_dir
            kept = (
                f"the resumable state of epoch {epoch - 1} is kept"
                if epoch > 1
                else "no epoch's state had been written yet"
            )
            raise CheckpointError(
                f"could not write the files of epoch {epoch} ({where}: {exc.strerror or exc}); "
                f"{kept} in {self.run_dir}: fix this and run the same command again"
            ) from None

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._epoch_lr = self._lr()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged = (self.meta["epoch"] + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged is not None:
            return
        logs = logs or {}
        seconds = time.perf_counter() - self._start
        row = {
            "epoch": epoch + 1,
            "lr": self._epoch_lr,
            "loss": float(logs.get("loss", math.nan)),
            "top1_error": 1.0 - float(logs.get("top1", math.nan)),
            "top5_error": 1.0 - float(logs.get("top5", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "val_top1_error": 1.0 - float(logs.get("val_top1", math.nan)),
            "val_top5_error": 1.0 - float(logs.get("val_top5", math.nan)),
            "seconds": seconds,
        }
        if not math.isfinite(row["loss"]):
            self.diverged = (epoch + 1, 0)
            self.model.stop_training = True
            return
        s = self.recipe.schedule
        # Without validation data the schedule watches training accuracy.
        accuracy = logs.get("val_top1", logs.get("top1"))
        plateau = Plateau(**self.meta["plateau"])
        plateau, action = plateau_step(
            plateau,
            float(accuracy),
            patience=s.plateau_patience,
            min_delta=s.min_delta,
            max_reductions=s.max_reductions,
        )
        if action == "reduce":
            self.model.optimizer.learning_rate.assign(self._epoch_lr * s.factor)
        stop_reason = None
        if action == "stop":
            stop_reason = f"validation top-1 plateau after {plateau.reductions} reductions"
        elif epoch + 1 >= s.epochs:
            stop_reason = f"reached {s.epochs} epochs"
        if stop_reason:
            self.model.stop_training = True
        self.meta.update(
            epoch=epoch + 1,
            lr=self._lr(),
            plateau=dataclasses.asdict(plateau),
            history=[*self.meta["history"], row],
            stop_reason=stop_reason,
        )
        if action == "improved":
            self.meta["best_epoch"] = epoch + 1
        if self.is_chief:
            self._write(action == "improved")
        self.print_fn(_summary_line(row, s.epochs, plateau, action))

    def _write(self, improved: bool) -> None:
        # Everything the thread needs is copied here, on the training thread.
        arrays = _state_arrays(self.model)
        meta = json.loads(json.dumps(self.meta))
        curves = time.monotonic() - self._curves_drawn >= self.curves_every
        if curves:
            self._curves_drawn = time.monotonic()
        self._curves_stale = not curves
        self._wait()
        future = self._writer.submit(self._write_files, arrays, meta, improved, curves)
        self._pending = (meta["epoch"], future)

    def _write_files(self, arrays, meta, improved: bool, curves: bool) -> None:
        run_dir = self.run_dir
        last = os.path.join(run_dir, "last.keras")
        _atomic_write(last, self._twin_with(arrays).save)
        if improved:
            # The same model as last.keras: copy the file rather than serialise twice.
            _atomic_write(
                os.path.join(run_dir, "best.keras"), lambda tmp: shutil.copyfile(last, tmp)
            )
        write_state(os.path.join(run_dir, STATE_FILE), arrays, meta)
        history = meta["history"]
        _atomic_text(os.path.join(run_dir, "history.csv"), _history_csv(history))
        _atomic_text(
            os.path.join(run_dir, "metrics.json"),
            json.dumps(_metrics(meta, "running"), indent=2) + "\n",
        )
        self._log_scalars(history[-1])
        if curves:
            _write_curves(os.path.join(run_dir, "curves.png"), history)

    def _twin_with(self, arrays) -> keras.Model:
        """A copy of the model on the CPU, outside any distribution strategy, holding `arrays`.

        Built once, in the writer thread (strategy scopes are per thread), from the model's
        own config, so its `.keras` file is the model's.
        """
        if self._twin is None:
            with tf.device("/cpu:0"):
                # from_config, not clone_model: clone_model rebuilds a VGG as a plain
                # functional model, and the checkpoints are to load as VGG models.
                self._twin = type(self.model).from_config(self.model.get_config())
        variables = self._twin.variables
        if len(variables) != len(self.model.variables):
            raise RuntimeError("the model's CPU twin has different variables")
        for i, variable in enumerate(variables):
            variable.assign(arrays[f"model/{i}"])
        return self._twin

    def _log_scalars(self, row: dict) -> None:
        """The epoch's figures as TensorBoard scalars in logs/train and logs/validation."""
        for split, prefix in (("train", ""), ("validation", "val_")):
            if split not in self._summaries:
                path = os.path.join(self.run_dir, "logs", split)
                self._summaries[split] = tf.summary.create_file_writer(path)
            with self._summaries[split].as_default(step=row["epoch"]):
                for key in ("loss", "top1_error", "top5_error"):
                    value = row[prefix + key]
                    if math.isfinite(value):
                        tf.summary.scalar(f"epoch_{key}", value)
                if split == "train":
                    tf.summary.scalar("epoch_learning_rate", row["lr"])
            self._summaries[split].flush()


def _summary_line(row, epochs, plateau: Plateau, action: str) -> str:
    def pct(v):
        return f"{100 * v:5.2f}%" if math.isfinite(v) else "  n/a "

    note = {"reduce": "  -> lr / 10", "stop": "  -> stop (plateau)", "improved": "  *"}.get(
        action, ""
    )
    return (
        f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.1e}  loss {row['loss']:.4f}  "
        f"top-1 err {pct(row['top1_error'])}  top-5 err {pct(row['top5_error'])}  |  "
        f"val loss {row['val_loss']:.4f}  top-1 err {pct(row['val_top1_error'])}  "
        f"top-5 err {pct(row['val_top5_error'])}  |  {row['seconds']:.1f} s  "
        f"reductions {plateau.reductions}{note}"
    )


def _history_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in HISTORY_COLUMNS})
    return out.getvalue()


def _metrics(meta: dict, status: str) -> dict:
    history = meta["history"]
    out = {
        "status": status,
        "epochs": meta["epoch"],
        "stop_reason": meta.get("stop_reason"),
        "reductions": meta["plateau"]["reductions"],
        "final_lr": meta["lr"],
    }
    if history:
        best = max(
            history,
            key=lambda r: (
                -r["val_top1_error"] if math.isfinite(r["val_top1_error"]) else -r["top1_error"]
            ),
        )
        last = history[-1]
        for prefix, row in (("best", best), ("last", last)):
            out[f"{prefix}_epoch"] = row["epoch"]
            for key in ("val_top1_error", "val_top5_error", "val_loss", "top1_error", "loss"):
                value = row[key]
                out[f"{prefix}_{key}"] = value if math.isfinite(value) else None
        out["train_seconds"] = sum(r["seconds"] for r in history)
    return out


def _write_curves(path: str, history: list[dict]) -> None:
    """curves.png: loss, top-1 and top-5 error, learning rate by epoch.

    Uses matplotlib's object API (no pyplot state), so it can run in a background thread.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(16, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    panels = (
        ("loss", "loss", "val_loss"),
        ("top-1 error", "top1_error", "val_top1_error"),
        ("top-5 error", "top5_error", "val_top5_error"),
    )
    for ax, (title, train_key, val_key) in zip(axes, panels, strict=False):
        ax.plot(epochs, [r[train_key] for r in history], "o-", label="training")
        ax.plot(epochs, [r[val_key] for r in history], "o-", label="validation")
        ax.set_title(title)
        ax.legend()
    axes[3].semilogy(epochs, [r["lr"] for r in history], "o-")
    axes[3].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=80)

    _atomic_write(path, write)


# === fit ===


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
            f"{plan.run_dir}: this run has finished (metrics.json); pass --overwrite to train "
            f"it again, or --set run.name=NEW for a new run"
        )
    saved_path = os.path.join(plan.run_dir, "recipe.toml")
    if plan.action == "resume" and os.path.isfile(saved_path):
        saved = recipe_lib.load_recipe(saved_path)
        if recipe_lib.recipe_to_dict(saved) != recipe_lib.recipe_to_dict(r):
            diff = _first_difference(recipe_lib.recipe_to_dict(saved), recipe_lib.recipe_to_dict(r))
            raise ValueError(
                f"{plan.run_dir}: holds a run of a different recipe ({diff}); pass --overwrite "
                f"to start again, or --set run.name=NEW"
            )


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
        verbose: Keras progress bar: "auto" (a bar on a terminal), 0, 1 or 2.
        print_fn: Where the one-line epoch summaries and notices go.

    Returns:
        A `FitResult`.

    Raises:
        ValueError: for a recipe that cannot run (missing folders, a missing initial run,
            a finished run without `overwrite`), naming the key or the run directory.
        TrainingDiverged: when the loss becomes NaN; the previous epoch's checkpoint is kept.
    """
    plan = plan_fit(recipe, devices=devices, overwrite=overwrite, count_images=False)
    recipe_text = recipe_lib.recipe_to_toml(recipe)
    _check_run_dir(plan)
    if plan.action != "resume":
        _check_init_source(recipe, plan.init_source)
    dist = plan.distribution
    run_dir = plan.run_dir
    if dist.is_chief:
        if plan.action == "overwrite" and os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
    strategy = distribute.make_strategy(dist)
    print_fn(
        f"strategy: {dist.describe()}; precision: {plan.precision.policy} ({plan.precision.reason})"
    )

    if data is None:
        data = recipe_data(
            recipe,
            bad_files_path=os.path.join(run_dir, "bad_files.txt") if dist.is_chief else None,
            num_workers=dist.num_workers,
        )
    classes = recipe.model.classes or len(data.class_names)
    if recipe.model.classes is not None and data.class_names and classes != len(data.class_names):
        raise ValueError(
            f"{recipe.path}: model.classes: {classes}, but {recipe.data.root} has "
            f"{len(data.class_names)} classes"
        )

    state_path = os.path.join(run_dir, STATE_FILE)
    resuming = plan.action == "resume" and os.path.isfile(state_path)
    keras.utils.set_random_seed(recipe.run.seed)
    with strategy.scope():
        model = build_model(
            recipe, classes, plan.precision.policy, record=_run_record(recipe, data)
        )
        # A resumed run takes every weight from its own state: the run it started from may
        # have been moved or deleted since.
        copied = [] if resuming else initialize(model, recipe, plan.init_source, data.mean)
        compile_model(model, make_optimizer(recipe, plan.precision.policy), classes)
        model.optimizer.build(model.trainable_variables)
        if dist.kind == "multi_worker":
            _multi_worker_workarounds(model, recipe.data.crop_size)

    meta = {
        "epoch": 0,
        "lr": recipe.optimizer.lr,
        "plateau": dataclasses.asdict(Plateau()),
        "history": [],
        "stop_reason": None,
        "best_epoch": None,
    }
    if resuming:
        meta = load_state(state_path, model)
        model.optimizer.learning_rate.assign(meta["lr"])
        print_fn(
            f"resuming {run_dir} after epoch {meta['epoch']} (lr {meta['lr']:.1e}, "
            f"{meta['plateau']['reductions']} reductions)"
        )
    elif copied:
        print_fn(f"initialised {len(copied)} layers from {plan.init_source}: {', '.join(copied)}")

    if dist.is_chief:
        # The pipeline appends the images it had to skip; an empty file means none.
        open(os.path.join(run_dir, "bad_files.txt"), "a").close()
        _atomic_text(os.path.join(run_dir, "recipe.toml"), recipe_text)
        _atomic_text(
            os.path.join(run_dir, "model_info.json"),
            json.dumps(describe(model), indent=2) + "\n",
        )

    start_epoch = meta["epoch"]
    keeper = _RunKeeper(recipe, run_dir, meta, dist.is_chief, print_fn)
    try:
        if start_epoch < recipe.schedule.epochs and not meta.get("stop_reason"):
            train = _train_dataset(strategy, dist, data, start_epoch)
            val = data.val() if callable(data.val) else data.val
            if val is not None and dist.kind == "multi_worker":
                options = tf.data.Options()
                options.experimental_distribute.auto_shard_policy = (
                    tf.data.experimental.AutoShardPolicy.DATA
                )
                val = val.with_options(options)
            callbacks = [keeper]
            if verbose == "auto":
                verbose = 1 if sys.stdout.isatty() else 0
            with warnings.catch_warnings():
                # Keras's notices for datasets it cannot count: the validation set is finite on
                # purpose and the training set is shuffled by the pipeline's seed.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                warnings.filterwarnings("ignore", message="`shuffle=True` was passed")
                model.fit(
                    train,
                    epochs=recipe.schedule.epochs,
                    initial_epoch=start_epoch,
                    steps_per_epoch=data.steps_per_epoch,
                    validation_data=val,
                    callbacks=callbacks,
                    verbose=verbose,
                )
    finally:
        keeper.close()
    if keeper.diverged is not None:
        epoch, batch = keeper.diverged
        if dist.is_chief:
            _atomic_text(
                os.path.join(run_dir, "metrics.json"),
                json.dumps(_metrics(keeper.meta, "nan"), indent=2) + "\n",
            )
        where = f"epoch {epoch}" + (f", batch {batch}" if batch else "")
        kept = (
            f"the last good checkpoint (after epoch {keeper.meta['epoch']}) is kept in {run_dir}"
            if keeper.meta["epoch"]
            else "no epoch had finished, so there is no checkpoint"
        )
        raise TrainingDiverged(
            f"loss became NaN at {where} (learning rate {keeper._epoch_lr:.1e}); stopped: "
            f"{kept}. Lower optimizer.lr and run again with --overwrite"
        )
    metrics = _metrics(keeper.meta, "finished")
    if dist.is_chief:
        _atomic_text(os.path.join(run_dir, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    print_fn(f"finished: {metrics.get('stop_reason')}; run directory: {run_dir}")
    return FitResult(run_dir, model, keeper.meta["history"], metrics)


def _multi_worker_workarounds(model: keras.Model, crop: int) -> None:
    """Works around keras-team/keras#20585 (Keras 3 + MultiWorkerMirroredStrategy, 3.15).

    Keras 3's `fit` learns the input shapes by reducing the first distributed batch across
    replicas (`_maybe_symbolic_build`), which fails under MultiWorkerMirroredStrategy
    ("Attempt to convert a value (PerReplica...)"). The model, loss and metrics are built here
    from local symbolic shapes instead, and that probe is switched off for this model. Only
    used under MultiWorkerMirroredStrategy.
    """
    batch = (np.zeros((1, crop, crop, 3), np.float32), np.zeros((1,), np.int32))
    model._symbolic_build(data_batch=batch)

    def no_probe(iterator=None, data_batch=None):
        del iterator, data_batch

    model._maybe_symbolic_build = no_probe
    # Keras reduces the per-step logs with strategy.reduce("MEAN", value, axis=0), which
    # fails on scalars across workers: the steps return each value as a [1] vector, whose
    # mean over axis 0 and all replicas is the mean over replicas, a scalar again.
    train_step, test_step = model.train_step, model.test_step

    def as_vectors(logs):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    model.train_step = lambda data: as_vectors(train_step(data))
    model.test_step = lambda data: as_vectors(test_step(data))


def _train_dataset(strategy, dist, data: TrainingData, start_epoch: int):
    if dist.kind != "multi_worker":
        return data.train(start_epoch=start_epoch, batch_size=dist.global_batch)

    def dataset_fn(context: tf.distribute.InputContext):
        return data.train(
            start_epoch=start_epoch,
            batch_size=context.get_per_replica_batch_size(dist.global_batch),
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def _run_record(recipe, data: TrainingData) -> ModelRecord:
    """What a model trained by this recipe expects: RGB minus the training set's mean."""
    return ModelRecord(
        preprocessing=Preprocessing(mean=tuple(data.mean)),
        crop_size=recipe.data.crop_size,
        train_scale=recipe.data.train_scale,
        class_names=tuple(data.class_names) if data.class_names else None,
        weights=recipe.run_dir,
    )
