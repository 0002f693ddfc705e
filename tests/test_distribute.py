"""Sec. 3.3 on CPU: strategies through the same `fit` code path, each in its own process.

Two logical CPU devices are configured with `tf.config.set_logical_device_configuration`
inside a subprocess, so the setting cannot leak into other tests.
"""

import csv
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
from conftest import kvgg_batch
from data_images import write_class_folders

from keras_vgg import distribute

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Shared by the scripts: a tiny recipe and seeded in-memory data, sharded by worker.
COMMON = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np

    def recipe(runs_dir, name, dropout=0.0, epochs=2):
        from keras_vgg import recipe as recipe_lib
        raw = {
            "model": {"config": "A", "width": 1 / 16, "fc_units": 32, "init": "glorot",
                      "dropout": dropout},
            "data": {"root": "unused", "train_scale": 32, "crop_size": 32},
            "optimizer": {"lr": 0.01},
            "schedule": {"epochs": epochs, "plateau_patience": 5},
            "run": {"name": name, "batch_size": 8, "precision": "float32",
                    "runs_dir": runs_dir, "seed": 1},
        }
        return recipe_lib.parse_recipe(raw, path=name + ".toml")

    def data(with_val=True, n=32):
        import tensorflow as tf
        from keras_vgg import training
        rng = np.random.default_rng(0)
        y = (np.arange(n) % 4).astype("int32")
        x = rng.normal(0, 20, (n, 32, 32, 3)).astype("float32")
        x[:, :8, :8, :] += y[:, None, None, None] * 40.0

        def train(*, start_epoch, batch_size, num_shards=1, shard_index=0):
            def epoch(e):
                order = tf.argsort(tf.random.stateless_uniform(
                    [n], seed=tf.stack([tf.constant(7, tf.int64), e])))
                return tf.data.Dataset.from_tensor_slices(
                    (tf.gather(x, order), tf.gather(y, order)))
            ds = tf.data.Dataset.range(start_epoch, 10**9).flat_map(epoch)
            return ds.shard(num_shards, shard_index).batch(batch_size, drop_remainder=True)

        def val():
            return tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8)

        val = val if with_val == "lazy" else val() if with_val else None
        return training.TrainingData(train, val, ("a", "b", "c", "d"), n // 8, (0.0, 0.0, 0.0))

    def save_weights(model, path):
        np.savez(path, *[v.numpy() for v in model.weights])
    """
)

# Two logical CPU devices, configured before anything else touches TensorFlow.
TWO_DEVICES = textwrap.dedent(
    """
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    """
)

MIRRORED = textwrap.dedent(
    """
    import keras
    from keras_vgg import training
    out = sys.argv[1]
    results = {}
    for name, devices in (("one", ["/cpu:0"]), ("two", ["/cpu:0", "/cpu:1"])):
        r = training.fit(recipe(out, name), data=data(), devices=devices, verbose=0,
                         print_fn=lambda line: None)
        save_weights(r.model, os.path.join(out, name + ".npz"))
        # Loss and metrics on a fixed set, under this strategy, against numpy.
        x, y = next(iter(data().val.unbatch().batch(16)))
        loss, top1, top5 = r.model.evaluate(data().val, verbose=0)
        p = r.model(x, training=False).numpy()
        reference = float(np.mean(-np.log(p[np.arange(16), y.numpy()])))
        results[name] = {
            "history": r.history, "eval_loss": loss, "eval_top1": top1,
            "numpy_loss": reference, "numpy_top1": float(np.mean(p.argmax(1) == y.numpy())),
            "replicas": r.model.distribute_strategy.num_replicas_in_sync,
        }
    json.dump(results, open(os.path.join(out, "results.json"), "w"))
    """
)

DROPOUT = textwrap.dedent(
    """
    import keras
    from keras_vgg import training
    out = sys.argv[1]
    r = training.fit(recipe(out, "dropout", dropout=0.5), data=data(), verbose=0,
                     devices=["/cpu:0", "/cpu:1"], print_fn=lambda line: None)
    model, strategy = r.model, r.model.distribute_strategy
    head = keras.Model(model.inputs, [model.get_layer("fc1").output,
                                      model.get_layer("fc1_dropout").output])
    x = tf.constant(np.random.default_rng(1).normal(0, 50, (8, 32, 32, 3)), tf.float32)
    per_replica = strategy.run(lambda: head(x, training=True))
    fc1 = np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica[0])])
    dropped = np.concatenate(
        [t.numpy() for t in strategy.experimental_local_results(per_replica[1])])
    active = fc1 > 0
    kept = dropped[active] != 0
    # Replicas hold identical copies of every variable, seed states included.
    mirrored = [v.value for v in model.variables if hasattr(v.value, "values")]
    in_sync = all(
        len(v.values) == 2 and np.array_equal(v.values[0].numpy(), v.values[1].numpy())
        for v in mirrored)
    json.dump({
        "kept_fraction": float(kept.mean()),
        "scale_ok": bool(np.allclose(dropped[active][kept], 2 * fc1[active][kept], rtol=1e-5)),
        "inference_equal": bool(np.array_equal(head(x, training=False)[1].numpy(),
                                               head(x, training=False)[0].numpy())),
        "losses": [row["loss"] for row in r.history],
        "in_sync": in_sync,
        "mirrored": len(mirrored), "variables": len(model.variables),
    }, open(os.path.join(out, "dropout.json"), "w"))
    """
)

WORKER = textwrap.dedent(
    """
    from keras_vgg import training
    out, index = sys.argv[1], int(sys.argv[2])
    # No TensorFlow call before fit(): MultiWorkerMirroredStrategy must come first.
    r = training.fit(recipe(os.path.join(out, f"runs{index}"), "mw", epochs=2),
                     data=data(with_val="lazy"), verbose=0, print_fn=print)
    save_weights(r.model, os.path.join(out, f"worker{index}.npz"))
    json.dump(r.history, open(os.path.join(out, f"history{index}.json"), "w"))
    print("replicas", r.model.distribute_strategy.num_replicas_in_sync)
    """
)


def run_script(tmp_path, name, *bodies, timeout=240):
    """COMMON and `bodies` as one script, run in a fresh Python with `tmp_path` as argument."""
    script = tmp_path / f"{name}.py"
    script.write_text(COMMON + "".join(bodies))
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """One process on two logical devices: one device against two, then dropout on two."""
    tmp = tmp_path_factory.mktemp("mirrored")
    result = run_script(tmp, "mirrored", TWO_DEVICES, MIRRORED, DROPOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp, json.loads((tmp / "results.json").read_text())


def test_mirrored_two_devices_equal_one_device(mirrored):
    """(1) Same global batch, dropout off: the same weights after a few steps."""
    tmp, results = mirrored
    assert (results["one"]["replicas"], results["two"]["replicas"]) == (1, 2)
    one, two = load(tmp / "one.npz"), load(tmp / "two.npz")
    initial_gap = []
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        initial_gap.append(np.abs(a).max())
    assert max(initial_gap) > 0


def test_loss_and_metrics_are_averaged_not_summed(mirrored):
    """(2) Per-epoch and evaluation losses match one device and numpy (a sum would double)."""
    _, results = mirrored
    one, two = results["one"], results["two"]
    for row_one, row_two in zip(one["history"], two["history"], strict=True):
        for key in ("loss", "top1_error", "val_loss", "val_top1_error"):
            assert row_two[key] == pytest.approx(row_one[key], rel=1e-4, abs=1e-6), key
    for name in ("one", "two"):
        r = results[name]
        # The evaluation loss includes the L2 term, so it is above the pure cross-entropy.
        assert r["numpy_loss"] <= r["eval_loss"] < r["numpy_loss"] * 1.5
        assert r["eval_top1"] == pytest.approx(r["numpy_top1"])
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-4)


def test_dropout_under_mirrored_strategy(mirrored):
    """(3) Dropout drops about half the units and scales the rest by 2 on every replica."""
    tmp, _ = mirrored
    out = json.loads((tmp / "dropout.json").read_text())
    assert 0.35 < out["kept_fraction"] < 0.65
    assert out["scale_ok"] and out["inference_equal"]
    assert all(np.isfinite(out["losses"]))
    assert out["mirrored"] == out["variables"] and out["in_sync"]


def free_ports(count):
    """Distinct free ports (all held open together while they are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


PIPES = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def communicate(processes, timeout=300):
    """(stdout, stderr) of each process, once all have exited 0 (killed on any failure)."""
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout))
    finally:
        for process in processes:
            process.kill()
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    return outputs


def test_two_workers_end_with_identical_weights(tmp_path):
    """(4) MultiWorkerMirroredStrategy from TF_CONFIG, two processes on 127.0.0.1."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    script = tmp_path / "worker.py"
    script.write_text(COMMON + WORKER)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": json.dumps(tf_config)}
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp_path), str(index)], env=env, **PIPES
            )
        )
    outputs = communicate(processes)
    assert all("replicas 2" in out for out, _ in outputs)
    assert "MultiWorkerMirroredStrategy" in outputs[0][0]
    w0, w1 = load(tmp_path / "worker0.npz"), load(tmp_path / "worker1.npz")
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
    # Both workers saw the same validation results (so took the same schedule decisions).
    h0, h1 = (json.loads((tmp_path / f"history{i}.json").read_text()) for i in range(2))
    for row0, row1 in zip(h0, h1, strict=True):
        for key in ("loss", "top1_error", "val_loss", "val_top1_error", "lr"):
            assert row0[key] == pytest.approx(row1[key], rel=1e-6), key
    assert all(np.isfinite(row["val_loss"]) for row in h0)
    # The chief (worker 0) wrote the run directory; worker 1 wrote none.
    assert (tmp_path / "runs0" / "mw" / "state.npz").is_file()
    assert not (tmp_path / "runs1" / "mw").exists()


FOLDER_RECIPE = """
[model]
config = "A"
width = 0.0625
fc_units = 16
init = "glorot"
dropout = 0.0

[data]
root = "{root}/train"
train_scale = [32, 40]
crop_size = 32
flip = true
color_shift = true

[optimizer]
lr = 0.05

[schedule]
epochs = 2
plateau_patience = 5

[run]
seed = 5
precision = "float32"
batch_size = 8
runs_dir = "{root}/runs"
"""


def state_arrays(run_dir):
    """The model and optimizer variables of a run's `state.npz`, by name."""
    with np.load(run_dir / "state.npz") as f:
        return {k: f[k] for k in f.files if k.startswith(("model/", "optimizer/"))}


def read_history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


# About 45 s on 2 cores (three processes start TensorFlow and train at once).
@pytest.mark.slow
def test_two_workers_train_as_one_process_on_a_folder(tmp_path):
    """(5) `kvgg fit` on two TF_CONFIG workers ends where one process does (Sec. 3.3).

    The real recipe pipeline on an image folder, augmentation on (scale jittering, flips,
    colour shift), dropout off: each worker reads its half of every global batch, with the
    random choices the one-process run gives those images (see
    `test_workers_batches_together_are_the_one_process_batches`), and the gradients of
    the halves are averaged. So after the same 4 SGD steps from the same seeded weights, the
    weights and momenta are those of one process with the same global batch of 8. They can
    differ only by float32 rounding: the batch mean is summed in two halves and all-reduced
    instead of in one pass (measured: at most about 1e-7 after 4 steps, while a worker seeing
    the wrong images or summing instead of averaging moves some weights by 0.1 or more).
    """
    write_class_folders(tmp_path / "train", per_class=6)
    (tmp_path / "exp.toml").write_text(FOLDER_RECIPE.format(root=tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fit = [sys.executable, "-m", "keras_vgg.cli", "fit", str(tmp_path / "exp.toml"), "--set"]
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = [subprocess.Popen([*fit, "run.name=one"], env=env, **PIPES)]
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            subprocess.Popen(
                [*fit, "run.name=two"], env={**env, "TF_CONFIG": json.dumps(tf_config)}, **PIPES
            )
        )
    outputs = communicate(processes)
    assert "one device" in outputs[0][0]
    assert "MultiWorkerMirroredStrategy" in outputs[1][0] and "worker 0" in outputs[1][0]
    assert_trained_as_one_process(tmp_path / "runs" / "one", tmp_path / "runs" / "two")


def assert_trained_as_one_process(one_dir, workers_dir, epochs=2):
    """The run of several workers ends where the run of one process on the same global
    batches does: weights, optimizer state and epoch losses (FOLDER_RECIPE's runs)."""
    one, two = state_arrays(one_dir), state_arrays(workers_dir)
    assert sorted(one) == sorted(two) and any(k.startswith("optimizer/") for k in one)
    for key in one:
        # rtol 1e-5, atol 1e-6: float32 rounding of differently ordered sums, nothing more.
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # The epoch losses (averaged over both workers' halves) are the one-process ones too.
    h_one, h_two = read_history(one_dir), read_history(workers_dir)
    assert len(h_one) == len(h_two) == epochs
    for row_one, row_two in zip(h_one, h_two, strict=True):
        for key in ("loss", "top1_error"):
            assert float(row_two[key]) == pytest.approx(float(row_one[key]), rel=1e-5), key


def processes_with(marker):
    """The pids of this user's processes whose environment holds `marker` (a token)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone, or another user's
                pass
    return found


# About 75 s of CPU time: Ray's own processes, two workers that each start TensorFlow, and
# the one-process run beside them; about a minute on 2 idle cores, several on busy ones.
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray Train is not installed (the ray extra: pip install 'keras-vgg[ray]')",
)
def test_ray_workers_train_as_one_process_on_a_folder(tmp_path):
    """(6) `kvgg fit --workers 2`: two Ray Train workers end where one process does.

    Ray Train starts the workers and sets TF_CONFIG in each; they run the same `fit` as
    test (5)'s, so the check is test (5)'s. Ray runs on this machine only (no dashboard, no
    usage report), and every process it started is gone when the command returns.
    """
    write_class_folders(tmp_path / "train", per_class=6)
    (tmp_path / "exp.toml").write_text(FOLDER_RECIPE.format(root=tmp_path))
    marker = f"kvgg-ray-test-{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KVGG_TEST_MARKER": marker}
    env.pop("RAY_ADDRESS", None)
    fit = [sys.executable, "-m", "keras_vgg.cli", "fit", str(tmp_path / "exp.toml"), "--set"]
    processes = [
        subprocess.Popen([*fit, "run.name=one"], env=env, **PIPES),
        subprocess.Popen([*fit, "run.name=two", "--workers", "2"], env=env, **PIPES),
    ]
    outputs = communicate(processes)
    out, err = outputs[1]
    assert "ray: 2 workers on this machine, one CPU each" in out
    # The chief's lines, as `kvgg fit` prints them; no worker's TensorFlow start-up noise.
    assert "MultiWorkerMirroredStrategy (/cpu:0), 2 workers, this is worker 0" in out
    assert "epoch   2/2" in out and "finished: reached 2 epochs" in out
    # (Ray's own placement-group cleaner may print a traceback of its thread on a loaded
    # machine, when it times out reaching Ray's control store: not this package's.)
    assert "cuda drivers" not in out + err and "keras_vgg" not in err
    assert_trained_as_one_process(tmp_path / "runs" / "one", tmp_path / "runs" / "two")
    # Ray's processes end with the command (shutting down may take a moment).
    for _ in range(40):
        left = processes_with(marker)
        if not left:
            break
        time.sleep(0.5)
    assert not left, [pathlib.Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]


# Ray made unimportable (a None entry in sys.modules), then `kvgg` as `python -m` runs it.
WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from keras_vgg.cli import main; main()"


def test_workers_refusals_are_one_line(tmp_path):
    """`kvgg fit --workers` without the ray extra, beside a TF_CONFIG, or with a global batch
    the workers cannot split: one line, exit 2, before Ray starts."""
    write_class_folders(tmp_path / "train", per_class=1)
    (tmp_path / "exp.toml").write_text(FOLDER_RECIPE.format(root=tmp_path))
    fit = ["fit", str(tmp_path / "exp.toml"), "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    tf_config = json.dumps({"cluster": {"worker": ["h:1", "h:2"]}, "task": {"index": 0}})
    no_ray = subprocess.Popen([sys.executable, "-c", WITHOUT_RAY, *fit], env=env, **PIPES)
    done = kvgg_batch([*fit, "--set", "run.batch_size=9"], fit, env={**env, "TF_CONFIG": tf_config})
    out, err = no_ray.communicate(timeout=120)
    assert (no_ray.returncode, out) == (2, "")
    assert (
        err == "kvgg: error: kvgg fit --workers needs the ray extra: pip install 'keras-vgg[ray]'\n"
    )
    fragments = (
        "run.batch_size: the global batch 9 does not split evenly over 2 replicas",
        "--workers: TF_CONFIG is set already; Ray Train sets it in each worker",
    )
    for result, fragment in zip(done, fragments, strict=True):
        assert (result.returncode, result.stdout) == (2, "")
        assert (
            result.stderr.startswith(f"kvgg: error: {fragment}") and result.stderr.count("\n") == 1
        )
    assert not (tmp_path / "runs").exists()


# === Plans and precision (no strategy created) ===


def test_plan_reads_tf_config():
    tf_config = json.dumps(
        {"cluster": {"worker": ["h1:1", "h2:2", "h3:3"]}, "task": {"type": "worker", "index": 2}}
    )
    plan = distribute.plan_distribution(
        96, devices=["/gpu:0", "/gpu:1"], environ={"TF_CONFIG": tf_config}
    )
    assert (plan.kind, plan.replicas, plan.per_replica_batch) == ("multi_worker", 6, 16)
    assert (plan.worker_index, plan.is_chief) == (2, False)
    mirrored = distribute.plan_distribution(256, devices=["/gpu:0", "/gpu:1"], environ={})
    assert (mirrored.kind, mirrored.per_replica_batch) == ("mirrored", 128)
    one = distribute.plan_distribution(256, devices=["/cpu:0"], environ={})
    assert (one.kind, one.replicas, one.is_chief) == ("one_device", 1, True)
    with pytest.raises(ValueError, match="run.batch_size: the global batch 100 does not split"):
        distribute.plan_distribution(100, devices=["/gpu:0", "/gpu:1", "/gpu:2"], environ={})
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.plan_distribution(8, devices=["/cpu:0"], environ={"TF_CONFIG": "{"})


def test_one_cpu_trains_under_the_default_strategy():
    # Not OneDeviceStrategy("/cpu:0"), whose distributed-input path costs every fit step.
    import tensorflow as tf

    for device in ("/cpu:0", "/job:localhost/replica:0/task:0/device:CPU:0"):
        plan = distribute.plan_distribution(8, devices=[device], environ={})
        strategy = distribute.make_strategy(plan)
        assert strategy is tf.distribute.get_strategy()
        assert not isinstance(strategy, tf.distribute.OneDeviceStrategy)


@pytest.mark.parametrize(
    "gpus, cpu_bf16, expected",
    [
        ([(9, 0), (9, 0)], False, "mixed_bfloat16"),
        ([(8, 0)], False, "mixed_bfloat16"),
        ([(7, 5)], True, "mixed_float16"),
        ([(7, 0), (8, 6)], False, "mixed_float16"),
        ([(6, 1)], True, "float32"),
        ([], True, "mixed_bfloat16"),
        ([], False, "float32"),
    ],
)
def test_auto_precision(gpus, cpu_bf16, expected):
    choice = distribute.resolve_precision("auto", gpu_capabilities=gpus, cpu_bf16=cpu_bf16)
    assert choice.policy == expected and choice.reason
    given = distribute.resolve_precision("float32", gpu_capabilities=gpus, cpu_bf16=cpu_bf16)
    assert given.policy == "float32"


def test_cpu_bf16_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16\n")
    assert distribute.cpu_has_bf16(str(info))
    info.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not distribute.cpu_has_bf16(str(info))
    assert not distribute.cpu_has_bf16(str(tmp_path / "missing"))
