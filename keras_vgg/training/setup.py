"""The model of a run: built from the recipe, initialised (Sec. 3.1), its optimizer, compiled.

`build_model` gives the recipe's net with the paper's initialiser and weight decay;
`initialize` copies layers from a trained net (B-E from A, S = 384 from S = 256,
fine-tuning) and adapts its first convolution to this run's input; `make_optimizer` and
`compile_model` are SGD with momentum (or Adam) and the top-1 / top-5 metrics;
`run_record` is what the trained model expects; `build_for_fit` builds the loss and metrics
before `fit` feeds uint8 batches. `multi_worker_workarounds` patches a model for
MultiWorkerMirroredStrategy.

Weight decay. The paper's 5e-4 is Caffe's: the loss gets 0.5 * 5e-4 * ||w||^2, so each
gradient gets + 5e-4 * w *before* momentum. Keras's `L2(l)` adds l * sum(w^2), so the paper's
decay is `kernel_regularizer=L2(5e-4 / 2)` on every conv and FC kernel (biases are not
decayed, as in Caffe's VGG/AlexNet prototxts with `decay_mult: 0` on biases). The other
reading, `weight_decay_mode = "decoupled"`, is Keras's optimizer `weight_decay`
(w -= lr * 5e-4 * w after the momentum step).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from keras_vgg import models
from keras_vgg import recipe as recipe_lib
from keras_vgg.handle import open_model
from keras_vgg.imagenet import Preprocessing
from keras_vgg.localization.network import BoxAccuracy, BoxLoss
from keras_vgg.record import ModelRecord, attach_record, record_of
from keras_vgg.training.data import TrainingData
from keras_vgg.weights.names import HEAD_LAYERS
from keras_vgg.weights.transfer import adapt_first_conv, initialize_from_a, transfer_weights

__all__ = [
    "build_model",
    "check_init_source",
    "compile_model",
    "initialize",
    "make_optimizer",
    "build_for_fit",
    "multi_worker_workarounds",
    "run_record",
]


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
    localization = m.task == "localization"
    if record is None:
        record = ModelRecord(crop_size=crop)
    if localization:
        # Appendix A: the last FC layer predicts boxes, 4 or 4 x classes numbers, linear.
        record = record.replace(task="localization", box_mode=m.box_mode)
    model = models.build(
        m.config,
        input_shape=(crop, crop, 3),
        classes=record.head_outputs(classes),
        classifier_activation=None if localization else "softmax",
        dropout=m.dropout,
        batch_norm=m.batch_norm,
        width=m.width,
        fc_units=m.fc_units,
        kernel_initializer=initializer,
        kernel_regularizer=regularizer,
        dtype=None if precision == "float32" else precision,
        record=record,
    )
    if m.fine_tune == "fc":
        # Table 8's variant: only fc1, fc2 and the last layer are trained.
        for layer in model.layers:
            if layer.weights and layer.name not in HEAD_LAYERS:
                layer.trainable = False
    return model


def check_init_source(recipe: recipe_lib.Recipe, source_path: str | None) -> None:
    """Checks that the model file a recipe starts from is there, before anything is written.

    Args:
        recipe: The recipe.
        source_path: Its initial weights (`FitPlan.init_source`), or None.

    Raises:
        ValueError: one line naming the key (`init.from_run` or `model.weights`), the
            missing file and, for a run, the command that trains it.
    """
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
    if source_path is None:
        return []
    source = open_init_source(recipe, source_path, model)
    run_record = record_of(model)
    try:
        if recipe.init.mode == "a_layers":
            copied = initialize_from_a(source, model)
        else:
            names = [layer.name for layer in model.layers if layer.weights]
            if recipe.init.mode == "all_but_head":
                names = [n for n in names if n != "predictions"]
            copied = transfer_weights(source, model, names, source_name=source_path)
    except ValueError as exc:
        raise ValueError(f"{recipe.path}: init.mode = {recipe.init.mode!r}: {exc}") from None
    if "block1_conv1" in copied:
        adapt_first_conv(model.get_layer("block1_conv1"), record_of(source).preprocessing, mean)
    # The run feeds its own input (RGB minus `mean`) whatever the source expected.
    attach_record(model, run_record)
    return copied


def open_init_source(recipe, source_path: str, model: keras.Model) -> keras.Model:
    """The model a run starts from, opened through the package's door and checked against
    the run's model: what `initialize` copies from, and what `kvgg fit --dry-run` checks.

    Args:
        recipe: The recipe.
        source_path: Its initial weights (`FitPlan.init_source`).
        model: The run's model (its layers and record: class names).

    Returns:
        The source model.

    Raises:
        ValueError: one line naming the recipe and key: a missing or unreadable source, one
            without a record and without `init.preprocessing`, a layer with nowhere to go
            (without `init.partial`), or a head over other classes copied by `init.mode =
            "all"`.
    """
    check_init_source(recipe, source_path)
    key = "model.weights" if recipe.model.weights is not None else "init.from_run"
    try:
        # The source's architecture comes from the file: a BN, narrower or other-headed
        # source builds the model it fits; its record says what input it expects.
        source = open_model(
            source_path,
            needs="any",
            config=recipe.model.config,
            preprocessing=recipe.init.preprocessing,
            told_by="init.preprocessing = 'paper' | 'caffe' | 'torchvision'",
            command="a fine-tuning source",
        ).model
    except (ValueError, NotImplementedError) as exc:
        raise ValueError(f"{recipe.path}: {key}: {exc}") from None
    if recipe.init.mode != "a_layers" and not recipe.init.partial:
        _check_source_fits(recipe, key, source_path, source, model)
    if recipe.init.mode == "all":
        theirs, ours = record_of(source).class_names, record_of(model).class_names
        if theirs is not None and ours is not None and tuple(theirs) != tuple(ours):
            raise ValueError(
                f"{recipe.path}: {key}: {source_path}'s head predicts other classes "
                f"({list(theirs)[:4]}...) than this run's data ({list(ours)[:4]}...): "
                "init.mode = 'all' would rename them; set init.mode = 'all_but_head'"
            )
    return source


def _check_source_fits(recipe, key: str, source_path: str, source, model) -> None:
    """Pairs agree: every weight layer of the source has a place in the run's model.

    A source layer with nowhere to go (a BN source's batch norms for a model without them,
    a wider source's kernels) would be dropped in silence, and the start would not be the
    source's network; named here with the recipe key that would take it.
    """
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    skip = {"predictions"} if recipe.init.mode == "all_but_head" else set()
    for layer in source.layers:
        if not layer.weights or layer.name in skip:
            continue
        if layer.name not in ours:
            fix = (
                "model.batch_norm = true"
                if layer.name.endswith("_bn")
                else "the source's configuration in model.config"
            )
            raise ValueError(
                f"{recipe.path}: {key}: {source_path} has layer {layer.name!r} that this "
                f"model has no place for; set {fix}, or init.partial = true to leave it out"
            )
        theirs = [tuple(w.shape) for w in layer.weights]
        expected = [tuple(w.shape) for w in ours[layer.name].weights]
        if theirs != expected and layer.name == "block1_conv1":
            width = theirs[0][-1] / 64
            raise ValueError(
                f"{recipe.path}: {key}: {source_path} layer 'block1_conv1' has weights of "
                f"shapes {theirs}, this model {expected}: set model.width = {width:g} to "
                "take it"
            )


def make_optimizer(recipe, precision: str) -> keras.optimizers.Optimizer:
    """The recipe's SGD with momentum (Sec. 3.1) or Adam, loss-scaled under mixed float16."""
    o = recipe.optimizer
    decoupled = o.weight_decay_mode == "decoupled" and o.weight_decay > 0
    weight_decay = o.weight_decay if decoupled else None
    if o.name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=o.lr, weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.SGD(
            learning_rate=o.lr, momentum=o.momentum, weight_decay=weight_decay
        )
    if decoupled:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def compile_model(model: keras.Model, optimizer, classes: int) -> None:
    """Compiles for training: cross-entropy, top-1 and top-5 (top-5 with > 5 classes).

    A localisation net (its record says so) gets Appendix A's Euclidean loss on the box
    (`BoxLoss`) and, as "top1", the share of crops localised with IoU > 0.5
    (`BoxAccuracy`).
    """
    box_mode = record_of(model).box_mode
    if box_mode is not None:
        model.compile(
            optimizer=optimizer,
            loss=BoxLoss(box_mode),
            weighted_metrics=[BoxAccuracy(box_mode)],
        )
        return
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, classes), name="top5"),
        ],
    )


def build_for_fit(model: keras.Model, crop: int) -> None:
    """Builds a compiled model's loss and metrics before `fit`, from float input shapes.

    Keras builds them at the start of `fit` from the first batch, through the model itself;
    the pipelines' batches are uint8 crops with their random choices, which only the
    device step (`keras_vgg.augment.attach_device_input`) turns into the model's input. So
    they are built here from a float batch of the crop size, and the first-batch probe
    (`_maybe_symbolic_build`, which would also reduce that batch across replicas) is
    switched off for this model: it has nothing left to build.
    """
    target = (
        np.zeros((1,), np.int32)
        if record_of(model).box_mode is None
        else np.zeros((1, 5), np.float32)
    )
    batch = (np.zeros((1, crop, crop, 3), np.float32), target)
    model._symbolic_build(data_batch=batch)

    def no_probe(iterator=None, data_batch=None):
        del iterator, data_batch

    model._maybe_symbolic_build = no_probe


def multi_worker_workarounds(model: keras.Model) -> None:
    """Works around keras-team/keras#20585 (Keras 3 + MultiWorkerMirroredStrategy, 3.15).

    Keras 3's `fit` learns the input shapes by reducing the first distributed batch across
    replicas (`_maybe_symbolic_build`), which fails under MultiWorkerMirroredStrategy
    ("Attempt to convert a value (PerReplica...)"); `build_for_fit` (called first) builds
    from local symbolic shapes instead and switches that probe off. Only used under
    MultiWorkerMirroredStrategy.
    """
    # Keras reduces the per-step logs with strategy.reduce("MEAN", value, axis=0), which
    # fails on scalars across workers: the steps return each value as a [1] vector, whose
    # mean over axis 0 and all replicas is the mean over replicas, a scalar again.
    train_step, test_step = model.train_step, model.test_step

    def as_vectors(logs):
        return {name: tf.reshape(value, [1]) for name, value in logs.items()}

    model.train_step = lambda data: as_vectors(train_step(data))
    model.test_step = lambda data: as_vectors(test_step(data))


def run_record(recipe: recipe_lib.Recipe, data: TrainingData) -> ModelRecord:
    """The record of a model trained by a recipe: RGB minus the training set's mean.

    Args:
        recipe: The recipe (crop size, training scale, run directory).
        data: Its data (mean RGB, class names).

    Returns:
        A `ModelRecord` that `build_model` attaches to the model.
    """
    return ModelRecord(
        preprocessing=Preprocessing(mean=tuple(data.mean)),
        crop_size=recipe.data.crop_size,
        train_scale=recipe.data.train_scale,
        class_names=tuple(data.class_names) if data.class_names else None,
        weights=recipe.run_dir,
        task=recipe.model.task,
        box_mode=recipe.model.box_mode if recipe.model.task == "localization" else None,
    )
