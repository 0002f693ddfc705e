"""fit(recipe) in-process on tiny models and in-memory data: schedule, weight decay, run dir."""

import csv
import dataclasses
import json
import math
import pathlib
import re
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vgg
from keras_vgg import recipe as recipe_lib
from keras_vgg import runs, training
from keras_vgg.imagenet import IMAGENET_MEAN, KERAS_CAFFE, TORCHVISION, preprocess_input
from keras_vgg.training import Plateau, plateau_step
from keras_vgg.weights import transfer

CLASSES = 4


def tiny_recipe(tmp_path, name="tiny", **sections):
    raw = {
        "model": {"config": "A", "width": 1 / 16, "fc_units": 32, "init": "glorot"},
        "data": {"root": str(tmp_path / "unused"), "train_scale": 32, "crop_size": 32},
        "optimizer": {"lr": 0.01},
        "schedule": {"epochs": 3, "plateau_patience": 1},
        "run": {
            "name": name,
            "batch_size": 8,
            "precision": "float32",
            "runs_dir": str(tmp_path / "runs"),
        },
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return recipe_lib.parse_recipe(raw, path="tiny.toml")


def tiny_data(n=32, nan_epoch=None, seed=0):
    """In-memory TrainingData: a learnable colour patch per class, seeded per-epoch order."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % CLASSES).astype("int32")
    x = rng.normal(0, 20, (n, 32, 32, 3)).astype("float32")
    x[:, :8, :8, :] += y[:, None, None, None] * 40.0

    def train(*, start_epoch, batch_size, num_shards=1, shard_index=0):
        xs, ys = tf.constant(x), tf.constant(y)

        def epoch(e):
            key = tf.stack([tf.constant(7, tf.int64), e])
            order = tf.argsort(tf.random.stateless_uniform([n], seed=key))
            images = tf.gather(xs, order)
            if nan_epoch is not None:
                images = tf.where(tf.equal(e, nan_epoch), images * np.nan, images)
            return tf.data.Dataset.from_tensor_slices((images, tf.gather(ys, order)))

        ds = tf.data.Dataset.range(start_epoch, 10**9).flat_map(epoch)
        return ds.shard(num_shards, shard_index).batch(batch_size, drop_remainder=True)

    val = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)
    names = tuple(f"class_{i}" for i in range(CLASSES))
    return training.TrainingData(train, val, names, n // 8, (1.0, 2.0, 3.0))


def quiet(_line):
    pass


def interrupt_after_first_epoch(recipe, lines):
    """Runs `fit` and stops it (KeyboardInterrupt) once epoch 1's checkpoint is written."""

    def stop_after_first_epoch(line):
        lines.append(line)
        if line.startswith("epoch   1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.fit(recipe, data=tiny_data(), print_fn=stop_after_first_epoch, verbose=0)


# === The schedule (Sec. 3.1) ===


def test_plateau_divides_three_times_then_stops():
    accuracies = [0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.35, 0.35, 0.35, 0.35]
    state, actions = Plateau(), []
    for accuracy in accuracies:
        state, action = plateau_step(state, accuracy, patience=2, min_delta=0.0, max_reductions=3)
        actions.append(action)
    assert actions == [
        "improved", "improved", "wait", "improved", "wait", "reduce",
        "improved", "wait", "reduce", "wait",
    ]  # fmt: skip
    assert state == Plateau(0.35, 1, 2)
    state, action = plateau_step(state, 0.35, patience=2, min_delta=0.0, max_reductions=3)
    assert (action, state.reductions) == ("reduce", 3)
    state, action = plateau_step(state, 0.34, patience=2, min_delta=0.0, max_reductions=3)
    state, action = plateau_step(state, 0.34, patience=2, min_delta=0.0, max_reductions=3)
    assert action == "stop" and state.reductions == 3


def test_plateau_min_delta():
    state, action = plateau_step(
        Plateau(0.5, 0, 0), 0.505, patience=1, min_delta=0.01, max_reductions=3
    )
    assert action == "reduce" and state == Plateau(0.5, 0, 1)


# === Weight decay: the paper's (Caffe's) meaning ===


def one_step(tmp_path, mode, x, y):
    recipe = tiny_recipe(
        tmp_path,
        model={"dropout": 0.0},
        optimizer={"lr": 0.1, "momentum": 0.0, "weight_decay": 0.05, "weight_decay_mode": mode},
    )
    keras.utils.set_random_seed(3)
    model = training.build_model(recipe, CLASSES, "float32")
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        ce = keras.losses.SparseCategoricalCrossentropy()(y, model(x, training=True))
    grads = [g.numpy() for g in tape.gradient(ce, model.trainable_variables)]
    training.compile_model(model, training.make_optimizer(recipe, "float32"), CLASSES)
    model.train_on_batch(x, y)
    after = [v.numpy() for v in model.trainable_variables]
    return model, before, grads, after


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_weight_decay_adds_decay_times_w_to_the_gradient(tmp_path, mode):
    """Caffe: w <- w - lr * (dCE/dw + 5e-4 * w) for kernels; biases are not decayed."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % CLASSES
    model, before, grads, after = one_step(tmp_path, mode, x, y)
    lr, decay = 0.1, 0.05
    names = [v.path for v in model.trainable_variables]
    assert any("kernel" in n for n in names) and any("bias" in n for n in names)
    for name, w0, g, w1 in zip(names, before, grads, after, strict=True):
        expected = w0 - lr * (g + (decay * w0 if name.endswith("kernel") else 0.0))
        np.testing.assert_allclose(w1, expected, rtol=1e-4, atol=1e-6, err_msg=name)
    assert (len(model.losses) > 0) == (mode == "l2")


def test_adam_step_by_hand(tmp_path):
    """optimizer.name = "adam": Kingma & Ba's first step, w - lr * m / (sqrt(v) + eps)."""
    recipe = tiny_recipe(
        tmp_path,
        model={"dropout": 0.0},
        optimizer={"name": "adam", "lr": 0.01, "weight_decay": 0.0},
    )
    keras.utils.set_random_seed(3)
    model = training.build_model(recipe, CLASSES, "float32")
    optimizer = training.make_optimizer(recipe, "float32")
    rng = np.random.default_rng(1)
    grads = [rng.normal(0, 1, v.shape).astype("float32") for v in model.trainable_variables]
    before = [v.numpy().copy() for v in model.trainable_variables]
    for _ in range(2):
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    beta1, beta2, eps = 0.9, 0.999, 1e-7
    for w0, g, v in zip(before, grads, model.trainable_variables, strict=True):
        w = w0.astype(np.float64)
        for t in (1, 2):
            m = (1 - beta1**t) * g  # the same gradient twice: m_t, v_t in closed form
            s = (1 - beta2**t) * g.astype(np.float64) ** 2
            step = 0.01 * np.sqrt(1 - beta2**t) / (1 - beta1**t)
            w = w - step * m / (np.sqrt(s) + eps)
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-4, atol=1e-6)


# === A whole run ===


def tensorboard_scalars(folder, tag):
    """{step: value} of one scalar tag in the event files of `folder`."""
    values = {}
    for path in folder.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_fit_writes_the_run_directory(tmp_path):
    recipe = tiny_recipe(tmp_path)
    lines = []
    result = training.fit(recipe, data=tiny_data(), print_fn=lines.append, verbose=0)
    run = tmp_path / "runs" / "tiny"
    assert result.run_dir == str(run)
    for name in ("recipe.toml", "history.csv", "bad_files.txt", "best.keras", "last.keras", "metrics.json",
                 "curves.png", "model_info.json", "state.npz"):  # fmt: skip
        assert (run / name).is_file(), name
    assert any((run / "logs").rglob("events.out.tfevents.*"))
    for folder, tag, key in (
        ("train", "epoch_loss", "loss"),
        ("train", "epoch_top5_error", "top5_error"),
        ("train", "epoch_learning_rate", "lr"),
        ("validation", "epoch_top1_error", "val_top1_error"),
    ):
        logged = tensorboard_scalars(run / "logs" / folder, tag)
        assert sorted(logged) == [1, 2, 3], tag
        assert [logged[r["epoch"]] for r in result.history] == pytest.approx(
            [r[key] for r in result.history]
        ), tag
    saved = recipe_lib.load_recipe(run / "recipe.toml")
    assert recipe_lib.recipe_to_dict(saved) == recipe_lib.recipe_to_dict(recipe)
    info = {
        "config": "A",
        "batch_norm": False,
        "width": 1 / 16,
        "fc_units": 32,
        "classes": 4,
        "include_top": True,
        "class_names": ["class_0", "class_1", "class_2", "class_3"],
        "preprocessing": {
            "mean": [1.0, 2.0, 3.0],
            "std": None,
            "scale": 1.0,
            "channel_order": "rgb",
        },
        "train_scale": 32,
        "crop_size": 32,
        "weights": str(run),
        "task": "classification",
        "box_mode": None,
    }
    assert json.loads((run / "model_info.json").read_text()) == info
    # The checkpoints carry the same record themselves: the file is a copy.
    for name in ("best.keras", "last.keras"):
        saved_model = keras.saving.load_model(run / name)
        assert keras_vgg.record.describe(saved_model) == info, name
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == list(runs.HISTORY_COLUMNS)
    for row, kept in zip(rows, result.history, strict=True):
        assert float(row["val_top1_error"]) == pytest.approx(kept["val_top1_error"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 3
    assert metrics["stop_reason"] == "reached 3 epochs"
    best = min(result.history, key=lambda r: r["val_top1_error"])
    assert metrics["best_val_top1_error"] == pytest.approx(best["val_top1_error"])
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The summary line per epoch.
    summaries = [line for line in lines if line.startswith("epoch ")]
    assert len(summaries) == 3 and "val loss" in summaries[0] and "top-5 err" in summaries[0]
    # best.keras is the model of the best epoch; last.keras the final weights.
    last = keras.saving.load_model(run / "last.keras", compile=False)
    for a, b in zip(last.weights, result.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    val = tiny_data().val
    x = np.concatenate([b[0] for b in val]), np.concatenate([b[1] for b in val])
    best_model = keras.saving.load_model(run / "best.keras", compile=False)
    error = np.mean(np.argmax(best_model.predict_on_batch(x[0]), 1) != x[1])
    assert error == pytest.approx(best["val_top1_error"], abs=1e-6)
    # The learning rate went down at plateaus and history records it.
    lrs = [r["lr"] for r in result.history]
    assert lrs[0] == pytest.approx(0.01)
    for previous, current in zip(lrs, lrs[1:], strict=False):
        assert current == pytest.approx(previous) or current == pytest.approx(previous * 0.1)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished one-epoch run of the tiny recipe: (FitResult, its run directory).

    Tests copy the directory into their own runs folder before they change anything.
    """
    tmp = tmp_path_factory.mktemp("one_epoch")
    recipe = tiny_recipe(tmp, schedule={"epochs": 1})
    result = training.fit(recipe, data=tiny_data(), print_fn=quiet, verbose=0)
    return result, tmp / "runs" / "tiny"


def test_finished_run_is_not_overwritten_silently(tmp_path, one_epoch_run):
    recipe = tiny_recipe(tmp_path, schedule={"epochs": 1})
    shutil.copytree(one_epoch_run[1], tmp_path / "runs" / "tiny")
    state = (tmp_path / "runs" / "tiny" / "state.npz").read_bytes()
    with pytest.raises(ValueError, match="has finished.*--overwrite"):
        training.fit(recipe, data=tiny_data(), print_fn=quiet, verbose=0)
    assert (tmp_path / "runs" / "tiny" / "state.npz").read_bytes() == state
    again = training.fit(recipe, data=tiny_data(), overwrite=True, print_fn=quiet, verbose=0)
    assert again.metrics["status"] == "finished"


def test_resuming_with_another_recipe_is_refused(tmp_path):
    recipe = tiny_recipe(tmp_path, schedule={"epochs": 2})
    lines = []
    interrupt_after_first_epoch(recipe, lines)
    other = tiny_recipe(tmp_path, schedule={"epochs": 2}, optimizer={"lr": 0.5})
    with pytest.raises(
        ValueError, match=r"different recipe \(optimizer.lr: 0.01 there, 0.5 here\)"
    ):
        training.fit(other, data=tiny_data(), print_fn=quiet, verbose=0)
    resumed = []
    training.fit(recipe, data=tiny_data(), print_fn=resumed.append, verbose=0)
    assert any(line.startswith("resuming") and "after epoch 1" in line for line in resumed)
    assert [line[:10] for line in resumed if line.startswith("epoch")] == ["epoch   2/"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    recipe = tiny_recipe(tmp_path, schedule={"epochs": 4})
    run = tmp_path / "runs" / "tiny"
    with pytest.raises(training.TrainingDiverged) as info:
        training.fit(recipe, data=tiny_data(nan_epoch=1), print_fn=quiet, verbose=0)
    message = str(info.value)
    # (Keras clips probabilities, so a NaN batch can show a finite loss; the next one is NaN.)
    assert re.search(r"NaN at epoch 2, batch [12] ", message) and "after epoch 1" in message
    assert "\n" not in message
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "nan" and metrics["epochs"] == 1
    with np.load(run / "state.npz") as state:
        meta = json.loads(str(state["meta"]))
        assert meta["epoch"] == 1
        assert all(np.isfinite(state[k]).all() for k in state.files if k.startswith("model/"))
    last = keras.saving.load_model(run / "last.keras", compile=False)
    assert all(np.isfinite(w.numpy()).all() for w in last.weights)


def test_a_failed_checkpoint_write_is_one_error_and_keeps_the_epoch_before(tmp_path, monkeypatch):
    # The epoch files are written off the training thread; a full disk while writing the
    # second epoch's state must stop the run with one line and leave epoch 1's files whole.
    # (The keeper looks `write_state` up in `keras_vgg.runs`, its home: patch it there.)
    write_state = runs.write_state

    def full_disk(path, arrays, meta):
        if meta["epoch"] == 2:
            raise OSError(28, "No space left on device", path)
        write_state(path, arrays, meta)

    monkeypatch.setattr(runs, "write_state", full_disk)
    recipe = tiny_recipe(tmp_path, schedule={"epochs": 4})
    run = tmp_path / "runs" / "tiny"
    with pytest.raises(training.CheckpointError) as info:
        training.fit(recipe, data=tiny_data(), print_fn=quiet, verbose=0)
    message = str(info.value)
    assert "\n" not in message
    assert "epoch 2" in message and "No space left on device" in message
    assert str(run / "state.npz") in message and "state of epoch 1 is kept" in message
    with np.load(run / "state.npz") as state:
        assert json.loads(str(state["meta"]))["epoch"] == 1
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1
    # The same command resumes after epoch 1 once the disk has room again.
    monkeypatch.setattr(runs, "write_state", write_state)
    lines = []
    result = training.fit(recipe, data=tiny_data(), print_fn=lines.append, verbose=0)
    assert any("after epoch 1" in line for line in lines)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]


def test_init_from_a_run_copies_the_papers_layers(tmp_path, one_epoch_run):
    # A's run: the tiny recipe (configuration A) trained for one epoch.
    a_result, a_run = one_epoch_run
    shutil.copytree(a_run, tmp_path / "runs" / "a_tiny")
    b = tiny_recipe(
        tmp_path,
        name="b_tiny",
        model={"config": "B"},
        init={"from_run": "a_tiny", "mode": "a_layers"},
        schedule={"epochs": 2},
    )
    missing = tiny_recipe(tmp_path, name="c", model={"config": "B"}, init={"from_run": "zzz"})
    with pytest.raises(ValueError, match=r"init.from_run: .*zzz.*not there yet: train run 'zzz'"):
        training.fit(missing, data=tiny_data(), print_fn=quiet, verbose=0)
    assert not (tmp_path / "runs" / "c").exists()  # refused before anything was written
    lines = []
    best_a = keras.saving.load_model(tmp_path / "runs" / "a_tiny" / "best.keras", compile=False)
    keras.utils.set_random_seed(0)
    b_model = training.build_model(b, CLASSES, "float32")
    copied = training.initialize(
        b_model, b, str(tmp_path / "runs" / "a_tiny" / "best.keras"), (1.0, 2.0, 3.0)
    )
    assert copied == [
        "block1_conv1", "block2_conv1", "block3_conv1", "block3_conv2", "fc1", "fc2",
        "predictions",
    ]  # fmt: skip
    for name in copied:
        for w_b, w_a in zip(b_model.get_layer(name).weights, best_a.get_layer(name).weights,
                            strict=True):  # fmt: skip
            np.testing.assert_array_equal(w_b.numpy(), w_a.numpy())
    # block1_conv2 exists only in B: random, not copied.
    assert b_model.get_layer("block1_conv2").weights[0].shape == (3, 3, 4, 4)
    interrupt_after_first_epoch(b, lines)
    assert any(line.startswith("initialised 7 layers from") for line in lines)
    assert a_result.metrics["status"] == "finished"
    # Resuming takes every weight from B's own state: A's run is no longer needed.
    shutil.rmtree(tmp_path / "runs" / "a_tiny")
    resumed = training.fit(b, data=tiny_data(), print_fn=quiet, verbose=0)
    assert resumed.metrics["status"] == "finished" and resumed.metrics["epochs"] == 2


def test_normal_init_has_std_1e_2_and_zero_biases(tmp_path):
    recipe = tiny_recipe(tmp_path, model={"init": "normal", "fc_units": 256})
    keras.utils.set_random_seed(0)
    model = training.build_model(recipe, CLASSES, "float32")
    kernel, bias = model.get_layer("fc1").weights
    assert np.std(kernel.numpy()) == pytest.approx(1e-2, rel=0.05)
    assert not np.any(bias.numpy())
    assert math.isclose(float(np.mean(kernel.numpy())), 0.0, abs_tol=1e-3)


def test_model_follows_the_recipe(tmp_path):
    recipe = tiny_recipe(tmp_path, model={"config": "C", "batch_norm": True, "dropout": 0.3})
    model = training.build_model(recipe, 7, "float32")
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 7)
    assert model.get_layer("block1_conv1").filters == 4 and model.get_layer("fc1").units == 32
    assert model.get_layer("fc1_dropout").rate == 0.3
    assert model.get_layer("block3_conv3").kernel_size == (1, 1)
    assert model.get_layer("block1_conv1_bn") is not None
    mixed = training.build_model(recipe, 7, "mixed_bfloat16")
    assert mixed.get_layer("fc1").compute_dtype == "bfloat16"
    assert mixed.output.dtype == "float32"


def test_val_split_is_stratified_seeded_and_disjoint():
    from keras_vgg.data import sources

    labels = tuple([0] * 20 + [1] * 10 + [2] * 5)
    source = sources.ImageSource(
        tuple(f"/x/{i}.png" for i in range(len(labels))), labels, ("a", "b", "c")
    )
    train, val = training.split_source(sources, source, 0.2, seed=0)
    assert sorted(val.labels) == [0, 0, 0, 0, 1, 1, 2]
    assert set(train.files) | set(val.files) == set(source.files)
    assert not set(train.files) & set(val.files)
    assert train.class_names == val.class_names == ("a", "b", "c")
    again = training.split_source(sources, source, 0.2, seed=0)[1]
    assert again.files == val.files
    assert training.split_source(sources, source, 0.2, seed=1)[1].files != val.files


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_runs_and_checkpoints(tmp_path, precision):
    recipe = tiny_recipe(tmp_path, run={"precision": precision}, schedule={"epochs": 1})
    result = training.fit(recipe, data=tiny_data(), print_fn=quiet, verbose=0)
    model = result.model
    assert model.get_layer("fc1").compute_dtype == precision.split("_")[1]
    assert model.get_layer("fc1").kernel.dtype == "float32"
    assert np.isfinite(result.history[0]["loss"])
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "mixed_float16")
    with np.load(tmp_path / "runs" / "tiny" / "state.npz") as state:
        saved = sum(k.startswith("optimizer/") for k in state.files)
    assert saved == len(model.optimizer.variables)


def write_tfrecords(tmp_path):
    rng = np.random.default_rng(0)

    def example(label):
        pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        feature = {
            "image/encoded": tf.train.Feature(
                bytes_list=tf.train.BytesList(value=[tf.io.encode_png(pixels).numpy()])
            ),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    for name, count in (("train-0", 12), ("train-1", 12), ("val-0", 8)):
        with tf.io.TFRecordWriter(str(tmp_path / name)) as writer:
            for i in range(count):
                writer.write(example(1 + i % 3))
    return tiny_recipe(
        tmp_path,
        model={"classes": 3},
        data={
            "root": f"tfrecord:{tmp_path}/train-*",
            "val_root": f"tfrecord:{tmp_path}/val-*",
            "label_offset": 1,
            "train_scale": [32, 40],
            "val_scale": 36,
        },
        schedule={"epochs": 1},
    )


def test_tfrecord_root_in_a_recipe(tmp_path):
    """data.root = "tfrecord:PATTERN" (labels 1..3 stored, label_offset 1), val as records too."""
    recipe = write_tfrecords(tmp_path)
    data = training.recipe_data(recipe)
    assert data.steps_per_epoch == 3 and data.class_names == ("0", "1", "2")
    train = data.train(start_epoch=0, batch_size=8)
    assert train.options().threading.private_threadpool_size is None  # one per core
    limited = training.recipe_data(
        dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, threads=1))
    )
    assert (
        limited.train(start_epoch=0, batch_size=8).options().threading.private_threadpool_size == 1
    )
    assert limited.val.options().threading.private_threadpool_size == 1
    val_labels = np.concatenate([y.numpy() for _, y in data.val])
    np.testing.assert_array_equal(np.sort(val_labels), np.sort(np.arange(8) % 3))
    without_classes = tiny_recipe(tmp_path, data={"root": f"tfrecord:{tmp_path}/train-*"})
    with pytest.raises(ValueError, match="model.classes: .* does not name its classes"):
        training.recipe_data(without_classes)


def test_tfrecord_root_trains_through_the_same_path(tmp_path):
    recipe = write_tfrecords(tmp_path)
    result = training.fit(recipe, print_fn=quiet, verbose=0)
    assert result.metrics["status"] == "finished" and result.model.output_shape == (None, 3)


def test_finetune_from_weights_keeps_all_but_the_head(tmp_path):
    """finetune_folder.toml's mode: every layer but `predictions` from a 10-class net."""
    source_recipe = tiny_recipe(tmp_path)
    keras.utils.set_random_seed(5)
    source = training.build_model(source_recipe, 10, "float32")
    source.save(tmp_path / "source.keras")
    recipe = tiny_recipe(
        tmp_path,
        name="fine",
        model={"weights": str(tmp_path / "source.keras")},
        init={"mode": "all_but_head"},
    )
    keras.utils.set_random_seed(0)
    model = training.build_model(recipe, CLASSES, "float32")
    copied = training.initialize(model, recipe, str(tmp_path / "source.keras"), IMAGENET_MEAN)
    assert "predictions" not in copied and {"block1_conv1", "fc1", "fc2"} <= set(copied)
    assert len(copied) == len([layer for layer in model.layers if layer.weights]) - 1
    for name in copied:
        for a, b in zip(model.get_layer(name).weights, source.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model.get_layer("predictions").kernel.shape == (32, CLASSES)
    everything = tiny_recipe(
        tmp_path, model={"weights": str(tmp_path / "source.keras")}, init={"mode": "all"}
    )
    with pytest.raises(ValueError, match=r"init.mode = 'all': .*'predictions'.*shapes"):
        training.initialize(model, everything, str(tmp_path / "source.keras"), IMAGENET_MEAN)


@pytest.mark.parametrize("preprocessing", [KERAS_CAFFE, TORCHVISION], ids=["caffe", "torch"])
def test_first_conv_is_rewritten_for_this_runs_input(preprocessing):
    """Weights trained on BGR / (x/255 - mean)/std inputs give the same first-layer output
    on this run's RGB - mean input (inside the image; exactly everywhere for BGR)."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((16, 16, 3))
    source = keras.layers.Conv2D(5, 3, padding="same", name="block1_conv1")
    source_model = keras.Model(inputs, source(inputs))
    source.set_weights([rng.normal(0, 0.1, (3, 3, 3, 5)), rng.normal(0, 0.1, 5)])
    target = keras.layers.Conv2D(5, 3, padding="same", name="block1_conv1")
    target_model = keras.Model(inputs, target(inputs))
    target.set_weights(source.get_weights())
    mean = (120.0, 110.0, 100.0)
    assert training.adapt_first_conv is transfer.adapt_first_conv  # still importable there
    transfer.adapt_first_conv(target, preprocessing, mean)
    x = rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    expected = source_model.predict_on_batch(preprocess_input(x, preprocessing=preprocessing))
    got = target_model.predict_on_batch(x - np.asarray(mean, np.float32))
    inner = (slice(None), slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(got[inner], expected[inner], rtol=1e-4, atol=1e-3)
    if preprocessing is KERAS_CAFFE:
        # With the ImageNet mean, Keras's BGR weights need only a channel reorder: exact
        # everywhere, borders included.
        target.set_weights(source.get_weights())
        transfer.adapt_first_conv(target, KERAS_CAFFE, IMAGENET_MEAN)
        got = target_model.predict_on_batch(x - np.asarray(IMAGENET_MEAN, np.float32))
        expected = source_model.predict_on_batch(preprocess_input(x, preprocessing=KERAS_CAFFE))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def _fine_tune_sources(tmp_path):
    """Three sources whose architecture differs from the recipe's defaults, as users have."""
    import torch
    from test_weights_foreign import torch_model

    # torchvision-layout VGG-BN file: config A at width 1/16, BN, 5 classes.
    torch.save(torch_model("A", True).state_dict(), tmp_path / "vgg11_bn.pth")
    # A width-0.25 .weights.h5 of this package (its build arguments travel in the file).
    keras.utils.set_random_seed(1)
    narrow = keras_vgg.build("A", width=0.25, fc_units=24, classes=7, input_shape=(32, 32, 3))
    narrow.save_weights(tmp_path / "narrow.weights.h5")
    # A 10-class whole model.
    keras.utils.set_random_seed(2)
    ten = keras_vgg.build("A", width=1 / 16, fc_units=32, classes=10, input_shape=(32, 32, 3))
    ten.save(tmp_path / "ten.keras")
    # torchvision's fc1 sees a 7x7 grid: 224 crops.
    crops_224 = {"train_scale": 256, "crop_size": 224}
    return {
        "vgg11_bn.pth": ({"batch_norm": True}, crops_224, TORCHVISION),
        "narrow.weights.h5": ({"width": 0.25, "fc_units": 24}, {}, None),
        "ten.keras": ({}, {}, None),
    }


def test_fine_tune_from_sources_of_another_architecture(tmp_path):
    """`model.weights` builds the model the file fits (BN, width, FC size, classes), not the
    default one, and the first conv is adapted to this run's input."""
    for name, (model_keys, data_keys, convention) in _fine_tune_sources(tmp_path).items():
        source_path = str(tmp_path / name)
        recipe = tiny_recipe(
            tmp_path,
            name=name,
            model={"weights": source_path, **model_keys},
            data=data_keys,
            init={"mode": "all_but_head"},
        )
        source = keras_vgg.model_from_weights(source_path, "A")
        model = training.build_model(recipe, CLASSES, "float32")
        run_record = model.record
        copied = training.initialize(model, recipe, source_path, IMAGENET_MEAN)
        assert "predictions" not in copied and {"block1_conv1", "fc1", "fc2"} <= set(copied)
        for layer_name in copied:
            if layer_name == "block1_conv1":
                continue
            for a, b in zip(
                model.get_layer(layer_name).weights,
                source.get_layer(layer_name).weights,
                strict=True,
            ):
                np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
        kernel = model.get_layer("block1_conv1").kernel.numpy()
        expected_kernel = source.get_layer("block1_conv1").kernel.numpy()
        if convention is TORCHVISION:
            # (x / 255 - m) / s: the kernel is scaled by 1 / (255 s) per input channel.
            scale = 1 / (255 * np.asarray(TORCHVISION.std))
            expected_kernel = expected_kernel * scale[None, None, :, None]
        np.testing.assert_allclose(kernel, expected_kernel, rtol=1e-5, err_msg=name)
        assert model.record == run_record, name


def test_a_source_layer_with_nowhere_to_go_is_refused_naming_the_recipe_key(tmp_path):
    """Pairs agree: a BN source for a model without batch norm, or a source of another
    width, is refused naming the key that takes it, unless init.partial asks for it."""
    sources = _fine_tune_sources(tmp_path)
    for name, key in (("vgg11_bn.pth", "model.batch_norm = true"), ("narrow.weights.h5", "model.width = 0.25")):  # fmt: skip
        _, data_keys, _ = sources[name]
        source_path = str(tmp_path / name)
        recipe = tiny_recipe(
            tmp_path, name=f"x{len(name)}", model={"weights": source_path}, data=data_keys,
            init={"mode": "all_but_head"},
        )  # fmt: skip
        model = training.build_model(recipe, CLASSES, "float32")
        before = [w.numpy().copy() for w in model.weights]
        with pytest.raises(ValueError) as info:
            training.initialize(model, recipe, source_path, IMAGENET_MEAN)
        message = str(info.value)
        assert key in message, message
        # Leaving layers out is an answer to layers with nowhere to go, not to other shapes.
        assert ("init.partial = true" in message) == name.endswith("_bn.pth"), message
        assert message.startswith(f"{recipe.path}: model.weights: {source_path}"), message
        for a, b in zip(before, model.weights, strict=True):
            np.testing.assert_array_equal(a, b.numpy())
    # Asked for: the BN layers are left out, every other layer copied.
    source_path = str(tmp_path / "vgg11_bn.pth")
    recipe = tiny_recipe(
        tmp_path, name="partial", model={"weights": source_path},
        data=sources["vgg11_bn.pth"][1], init={"mode": "all_but_head", "partial": True},
    )  # fmt: skip
    model = training.build_model(recipe, CLASSES, "float32")
    copied = training.initialize(model, recipe, source_path, IMAGENET_MEAN)
    assert {"block1_conv1", "fc1", "fc2"} <= set(copied)
    assert not any(name.endswith("_bn") for name in copied)


def test_a_source_without_a_record_needs_init_preprocessing(tmp_path):
    """No silent PAPER: a plain Keras file is refused until the recipe says what it
    expects; told "caffe", its first conv is adapted from BGR to this run's RGB."""
    source = keras_vgg.build(
        "A", width=1 / 16, fc_units=32, classes=CLASSES, input_shape=(32, 32, 3)
    )
    inputs = x = keras.Input((32, 32, 3))
    for layer in source.layers[1:]:
        if not isinstance(layer, keras_vgg.RecordLayer):
            x = layer(x)
    plain = keras.Model(inputs, x)
    path = str(tmp_path / "plain.keras")
    plain.save(path)
    recipe = tiny_recipe(tmp_path, name="plain", model={"weights": path}, init={"mode": "all"})
    model = training.build_model(recipe, CLASSES, "float32")
    with pytest.raises(ValueError) as info:
        training.initialize(model, recipe, path, IMAGENET_MEAN)
    assert "records no input convention" in str(info.value)
    assert "init.preprocessing = 'paper' | 'caffe' | 'torchvision'" in str(info.value)
    recipe = tiny_recipe(
        tmp_path, name="plain", model={"weights": path},
        init={"mode": "all", "preprocessing": "caffe"},
    )  # fmt: skip
    training.initialize(model, recipe, path, IMAGENET_MEAN)
    np.testing.assert_allclose(
        model.get_layer("block1_conv1").kernel.numpy(),
        source.get_layer("block1_conv1").kernel.numpy()[:, :, ::-1, :],
        rtol=1e-6,
    )
    np.testing.assert_array_equal(
        model.get_layer("fc2").kernel.numpy(), source.get_layer("fc2").kernel.numpy()
    )


def test_dry_run_refuses_the_sources_the_run_refuses(tmp_path):
    """`--dry-run` makes the run's checks of its source: a layer with nowhere to go, a head
    over other classes copied by init.mode = "all"."""
    from data_images import write_class_folders

    write_class_folders(tmp_path / "train", classes=3, per_class=4)
    tiny = dict(width=1 / 16, fc_units=32, classes=3, input_shape=(32, 32, 3))
    bn = keras_vgg.build("A", batch_norm=True, **tiny)
    bn.save(tmp_path / "bn.keras")
    other = keras_vgg.build("A", **tiny)
    other.record = other.record.replace(class_names=("p", "q", "r"))
    other.save(tmp_path / "other.keras")
    for source, mode, expected in (
        ("bn.keras", "all_but_head", "set model.batch_norm = true, or init.partial = true"),
        ("other.keras", "all", "init.mode = 'all' would rename them"),
    ):
        recipe = tiny_recipe(
            tmp_path, name=source, model={"weights": str(tmp_path / source)},
            data={"root": str(tmp_path / "train")}, init={"mode": mode},
        )  # fmt: skip
        plan = training.plan_fit(recipe)
        assert plan.problem is not None and expected in plan.problem, plan.problem
        assert not pathlib.Path(recipe.run_dir).exists()
