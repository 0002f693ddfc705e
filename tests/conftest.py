import json
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns oneDNN on by itself only on some x86 CPUs (Intel's); without it a CPU runs
# no channels-first convolution ("Conv2D ... only supports NHWC on the CPU", seen on AMD
# EPYC), and tests/test_channels_first.py checks those. Inherited by the kvgg processes.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def kvgg(*args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Runs `kvgg ARGS...` as a real process on this checkout's code."""
    return subprocess.run(
        [sys.executable, "-m", "keras_vgg.cli", *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def on_backend(backend: str, argv, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGV...` as a real process with Keras on `backend` (CPU only), on this
    checkout's code."""
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        env={
            **os.environ,
            "KERAS_BACKEND": backend,
            "PYTHONPATH": str(ROOT),
            "CUDA_VISIBLE_DEVICES": "",
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class KvggBatch(list):
    """What `kvgg_batch` ran: one `CompletedProcess` per command line, in order.

    Attributes:
        imported: The heavy packages (tensorflow, keras, jax, torch) the process had
            imported by the end.
    """

    imported: list[str]


def kvgg_batch(*invocations, timeout: float = 300, cwd=None, env=None) -> KvggBatch:
    """Runs several `kvgg` command lines in ONE real process (tests/kvgg_batch.py).

    Each goes through `kvgg`'s own entry point with its own stdout, stderr and exit code,
    like `kvgg`; TensorFlow starts once for all of them (~5 s saved per command). The
    commands share one interpreter: put together only commands that do not depend on
    starting fresh (what one sets globally, the next one sees).

    Args:
        *invocations: Each a sequence of arguments (paths are turned into strings).
        timeout: Seconds for the whole batch.
        cwd: The process's working directory.
        env: The process's environment (default: this one's), with PYTHONPATH set to
            this checkout.
    """
    invocations = [[str(a) for a in args] for args in invocations]
    with tempfile.TemporaryDirectory() as folder:
        request, result = pathlib.Path(folder, "request.json"), pathlib.Path(folder, "result.json")
        request.write_text(json.dumps(invocations), encoding="utf-8")
        process = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "kvgg_batch.py"), str(request), str(result)],
            env={**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
        )
        assert process.returncode == 0, process.stderr[-3000:]
        report = json.loads(result.read_text(encoding="utf-8"))
    done = KvggBatch(
        subprocess.CompletedProcess(["kvgg", *args], r["returncode"], r["stdout"], r["stderr"])
        for args, r in zip(invocations, report["results"], strict=True)
    )
    done.imported = report["imported"]
    return done


# The longest test files, started first (the two demo goals: minutes of one core; the rest
# 30 s or more, in the order of their time on the 2-core machine, docs/benchmarks.md "Test
# time"). pytest-xdist's `--dist loadfile` hands whole files to the workers in collection
# order; a long file handed out last keeps one core busy while the other has nothing left.
LONGEST_FIRST = (
    "test_localization_demo.py",
    "test_features_demo.py",
    "test_model_door.py",
    "test_explain.py",
    "test_lpips.py",
    "test_distribute.py",
    "test_training.py",
    "test_training_resume.py",
    "test_data_pipelines.py",
    "test_training_demo.py",
    "test_features.py",
    "test_serve.py",
    "test_weights_foreign.py",
    "test_evaluation.py",
    "test_layers.py",
    "test_backends.py",
    "test_predict.py",
    "test_evaluation_cli.py",
)


def pytest_collection_modifyitems(config, items):
    """Orders the test files longest first (stable: each file keeps its own order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


CONFIG_NAMES = ["A", "A-LRN", "B", "C", "D", "E"]

# Every stage a different width (a builder that drops or repeats a block cannot pass).
SMALL = dict(width=1 / 16, fc_units=24, classes=5)


# The three conventions written out by hand: (channels reversed?, scale, mean, std).
CONVENTIONS = {
    "PAPER": (False, 1.0, (123.68, 116.779, 103.939), None),
    "KERAS_CAFFE": (True, 1.0, (103.939, 116.779, 123.68), None),
    "TORCHVISION": (False, 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def preprocess_by_hand(x, convention):
    """NumPy reference: channel swap, scale, mean, std, in float32 like the package."""
    reverse, scale, mean, std = CONVENTIONS[convention]
    x = np.asarray(x).astype(np.float32)
    if reverse:
        x = np.stack([x[..., 2], x[..., 1], x[..., 0]], axis=-1)
    x = x * np.float32(scale) - np.asarray(mean, np.float32)
    return x if std is None else x / np.asarray(std, np.float32)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Each test starts and ends under the float32 policy, whatever it changes."""
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def write_keras2_h5(model, path, old_style_names=True, skip=(), whole_model=False):
    """The keras.applications layout: root `layer_names`, per-layer `weight_names`.

    Old files name arrays like `block1_conv1_W_1:0`; the reader must go by order, not name.
    Keras 2's whole-model files (`model.save("x.h5")`) nest it under `model_weights`.
    """
    with h5py.File(path, "w") as root:
        f = root.create_group("model_weights") if whole_model else root
        names = [layer.name for layer in model.layers if layer.name not in skip]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            if layer.name in skip:
                continue
            group = f.create_group(layer.name)
            weight_names = []
            for i, variable in enumerate(layer.weights):
                name = f"{layer.name}_{'WbXY'[i]}_1:0" if old_style_names else f"{variable.path}:0"
                weight_names.append(name.encode())
                group.create_dataset(name, data=np.array(variable))
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")


# Settings of the backend script's inputs (tests/backend_script.py).
BACKEND_SETTINGS = {
    "small": SMALL,
    "conventions": list(CONVENTIONS),
    "loss_width": 1 / 16,
    # The perceptual loss gets [0, 255] images, the style loss [0, 1] (input_range=1.0).
    "loss_scale": {"perceptual": 1.0, "style": 255.0},
}


def write_backend_inputs(folder: pathlib.Path) -> None:
    """The inputs of tests/backend_script.py: seeded weights and images, written once."""
    import keras_vgg

    rng = np.random.default_rng(0)
    (folder / "settings.json").write_text(json.dumps(BACKEND_SETTINGS), encoding="utf-8")
    np.save(folder / "x.npy", rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    np.save(folder / "big.npy", rng.uniform(0, 255, (1, 96, 128, 3)).astype("float32"))
    keras.utils.set_random_seed(0)
    for config in ("A-LRN", "C"):
        model = keras_vgg.build(config, input_shape=(64, 64, 3), **SMALL)
        model.save_weights(folder / f"{config}.weights.h5")
    pixels = rng.integers(0, 256, (2, 5, 4, 3)).astype("float32")
    pixels[0, 0, 0] = (255, 0, 7)
    np.save(folder / "pixels.npy", pixels)
    vgg = keras_vgg.build(
        "D", include_top=False, input_shape=(32, 32, 3), width=BACKEND_SETTINGS["loss_width"]
    )
    vgg.save_weights(folder / "vgg.weights.h5")
    # The device half of the training input (tests/test_augment.py): uint8 crops with
    # their flip bits and colour shifts, and a tiny net to run them through its steps.
    images = rng.integers(0, 256, (3, 6, 5, 3)).astype(np.uint8)
    images[0, 0, 0], images[1, 0, 0] = (0, 255, 7), (255, 255, 255)
    np.save(folder / "aug_image.npy", images)
    np.save(folder / "aug_flip.npy", np.array([True, False, True]))
    np.save(folder / "aug_color.npy", rng.normal(0, 20, (3, 3)).astype(np.float32))
    keras_vgg.build("A", input_shape=(32, 32, 3), **SMALL).save_weights(folder / "aug.weights.h5")
    np.save(folder / "aug_net_image.npy", rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8))
    np.save(folder / "a.npy", rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    np.save(folder / "b.npy", rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    # MaxPooling2x2 (tests/test_layers.py): odd sides, and one window whose maximum is tied.
    pool_x = rng.normal(0, 1, (2, 9, 11, 3)).astype(np.float32)
    pool_x[0, 2:4, 4:6, 1] = 5.0
    np.save(folder / "pool_x.npy", pool_x)
    np.save(folder / "pool_w.npy", rng.normal(0, 1, (2, 4, 5, 3)).astype(np.float32))
    # Grad-CAM (tests/test_explain.py): a D at 64x64 and two uint8 images.
    keras_vgg.build("D", input_shape=(64, 64, 3), **SMALL).save_weights(folder / "cam.weights.h5")
    np.save(folder / "cam_x.npy", rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8))


@pytest.fixture(scope="session", params=["jax", "torch"])
def other_backend(request, tmp_path_factory):
    """(backend, folder): tests/backend_script.py run once per backend for the whole run.

    The folder holds the inputs (`write_backend_inputs`) and what the backend computed
    from them; skipped where the backend is not installed. Under pytest-xdist the workers
    of one run share it (pytest-xdist's own recipe: the run's base temporary folder, and a
    lock): the first worker to need a backend runs the script, the others wait for it and
    read the same files, instead of each starting that backend again (~30 s of CPU each).
    """
    import fcntl
    import importlib.util

    backend = request.param
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install -e .[test])")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / f"backend_{backend}"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp(f"backend_{backend}")
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / "done").exists():
            write_backend_inputs(folder)
            result = on_backend(
                backend, [str(ROOT / "tests" / "backend_script.py"), backend, str(folder)]
            )
            assert result.returncode == 0, result.stderr[-3000:]
            (folder / "done").touch()
    return backend, folder
