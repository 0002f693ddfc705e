"""Pretrained entries: the registry against Keras's sources, downloads, `weights="imagenet"`.

No network: "published" files are served from a temporary directory, by `file://` URL or
by an HTTP server on 127.0.0.1, into a temporary Keras cache.
"""

import dataclasses
import functools
import hashlib
import http.server
import inspect
import os
import re
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import keras.src.backend.config as keras_config  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_vgg  # noqa: E402
from keras_vgg import weights as weights_lib  # noqa: E402
from keras_vgg.imagenet import KERAS_CAFFE, TORCHVISION  # noqa: E402
from keras_vgg.weights import PretrainedWeights, WeightsFile  # noqa: E402


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# === The registry ===


@pytest.mark.parametrize("config, module", [("D", "vgg16"), ("E", "vgg19")])
def test_keras_entries_are_the_files_and_hashes_of_keras_applications(config, module):
    import importlib

    source_module = importlib.import_module(f"keras.src.applications.{module}")
    top_hash, notop_hash = re.findall(
        r'file_hash="([0-9a-f]{32})"', inspect.getsource(source_module)
    )
    entry = weights_lib.REGISTRY[(config, "imagenet")]
    assert entry.top == WeightsFile(source_module.WEIGHTS_PATH, top_hash)
    assert entry.notop == WeightsFile(source_module.WEIGHTS_PATH_NO_TOP, notop_hash)
    assert entry.top.file_name == f"{module}_weights_tf_dim_ordering_tf_kernels.h5"
    assert entry.preprocessing == KERAS_CAFFE
    assert (entry.layout, entry.batch_norm, entry.top1_accuracy) == ("keras2_h5", False, 71.3)


def test_registry_lists_every_published_configuration():
    assert sorted(weights_lib.REGISTRY) == sorted(
        [("D", "imagenet"), ("E", "imagenet")]
        + [(c, n) for c in "ABDE" for n in ("torchvision", "torchvision_bn")]
    )
    for (config, name), entry in weights_lib.REGISTRY.items():
        assert (entry.config, entry.name) == (config, name)
        assert entry.top.url.startswith("https://")
        assert 0 < entry.top1_accuracy < entry.top5_accuracy < 100
        if entry.layout == "torchvision":
            assert entry.preprocessing == TORCHVISION
            assert entry.batch_norm == (name == "torchvision_bn")
            # torchvision's file names carry the first 8 hex digits of the SHA-256.
            assert re.fullmatch(r"vgg1[1369](_bn)?-[0-9a-f]{8}\.pth", entry.top.file_name)
            assert entry.top.file_name.endswith(f"-{entry.top.file_hash}.pth")


# === Downloads ===


@pytest.fixture
def published(tmp_path):
    """A directory of "published" files and a Keras cache, both empty at first."""
    served = tmp_path / "served"
    served.mkdir()
    cache = tmp_path / "keras_home"
    cache.mkdir()  # get_file falls back to /tmp/.keras for a directory it cannot write
    return served, str(cache)


def _entry(url, file_hash, notop=None):
    return PretrainedWeights(
        config="D",
        name="test",
        layout="keras2_h5",
        top=WeightsFile(url, file_hash),
        notop=notop,
        batch_norm=False,
        preprocessing=KERAS_CAFFE,
        top1_accuracy=1.0,
        top5_accuracy=2.0,
        reference="test",
    )


def test_fetch_with_the_right_hash_caches_the_file_and_reuses_it_offline(published):
    served, cache = published
    src = served / "vgg16_weights.h5"
    src.write_bytes(b"published weights " * 100)
    entry = _entry(src.as_uri(), md5(src))
    path = weights_lib.fetch_pretrained(entry, cache_dir=cache)
    assert path == os.path.join(cache, "models", "vgg16_weights.h5")
    assert open(path, "rb").read() == src.read_bytes()
    src.unlink()  # "offline": the cached file is used
    assert weights_lib.fetch_pretrained(entry, cache_dir=cache) == path


def test_fetch_with_a_wrong_hash_raises_and_leaves_no_file(published):
    served, cache = published
    src = served / "vgg16_weights.h5"
    src.write_bytes(b"tampered weights")
    wrong = hashlib.md5(b"the real weights").hexdigest()
    with pytest.raises(ValueError) as info:
        weights_lib.fetch_pretrained(_entry(src.as_uri(), wrong), cache_dir=cache)
    message = str(info.value)
    assert wrong in message and md5(src) in message and "deleted" in message
    assert os.listdir(os.path.join(cache, "models")) == []


def test_fetch_replaces_a_corrupt_cached_file(published):
    served, cache = published
    src = served / "w.h5"
    src.write_bytes(b"good bytes")
    os.makedirs(os.path.join(cache, "models"))
    with open(os.path.join(cache, "models", "w.h5"), "wb") as f:
        f.write(b"half a downl")
    path = weights_lib.fetch_pretrained(_entry(src.as_uri(), md5(src)), cache_dir=cache)
    assert open(path, "rb").read() == b"good bytes"


@pytest.fixture
def http_server(published):
    served, _ = published
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_fetch_over_http_checks_a_sha256_prefix_like_torchvision(published, http_server):
    served, cache = published
    src = served / "vgg16-abcdef12.pth"
    src.write_bytes(os.urandom(5000))
    good = _entry(f"{http_server}/{src.name}", sha256(src)[:8])
    path = weights_lib.fetch_pretrained(good, cache_dir=cache)
    assert open(path, "rb").read() == src.read_bytes()
    os.remove(path)
    wrong_prefix = "0" * 8 if not sha256(src).startswith("0" * 8) else "1" * 8
    with pytest.raises(ValueError, match=f"not the published {wrong_prefix}"):
        weights_lib.fetch_pretrained(_entry(good.top.url, wrong_prefix), cache_dir=cache)
    assert not os.path.exists(path)


def test_fetch_failure_says_where_to_put_the_file(published, http_server):
    _, cache = published
    with pytest.raises(ValueError, match=r"cannot download .*models/missing\.h5"):
        weights_lib.fetch_pretrained(_entry(f"{http_server}/missing.h5", "0" * 32), cache_dir=cache)


# === weights="imagenet" through build() ===


def test_build_d_imagenet_without_top_downloads_and_loads_the_notop_file(published, monkeypatch):
    """Full width (Keras's published shapes), 32x32 input; the notop file is 59 MB."""
    from keras.src.legacy.saving import legacy_h5_format

    served, cache = published
    monkeypatch.setattr(keras_config, "_KERAS_DIR", cache)
    source = keras_vgg.build("D", include_top=False, input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)
    for variable in source.weights:
        variable.assign(rng.normal(0, 0.05, tuple(variable.shape)).astype("float32"))
    notop = served / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(notop, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    entry = _entry("file:///nonexistent/top.h5", "0" * 32, WeightsFile(notop.as_uri(), md5(notop)))
    monkeypatch.setitem(weights_lib.REGISTRY, ("D", "imagenet"), entry)

    model = keras_vgg.build("vgg16", weights="imagenet", include_top=False, input_shape=(32, 32, 3))

    x = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-5)
    assert keras_vgg.preprocessing_for(model) == KERAS_CAFFE
    assert os.listdir(os.path.join(cache, "models")) == [notop.name]


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(config="D", input_shape=(64, 64, 3)), "input_shape=(224, 224, 3)"),
        (dict(config="D", batch_norm=True, include_top=False), "batch_norm=False"),
        (dict(config="E", width=0.5, include_top=False), "width=1.0"),
        (dict(config="D", fc_units=64), "fc_units=4096"),
        (dict(config="A"), "available: ['torchvision', 'torchvision_bn']"),
        (dict(config="C", weights="torchvision"), "available: none"),
    ],
)
def test_pretrained_weights_that_cannot_fit_fail_before_any_download(
    published, monkeypatch, kwargs, needle
):
    _, cache = published
    monkeypatch.setattr(keras_config, "_KERAS_DIR", cache)
    kwargs = dict(dict(weights="imagenet"), **kwargs)
    with pytest.raises(ValueError) as info:
        keras_vgg.build(kwargs.pop("config"), **kwargs)
    assert needle in str(info.value)
    assert not os.path.exists(os.path.join(cache, "models"))


def test_load_weights_checks_an_entry_against_the_model_before_download(published, monkeypatch):
    _, cache = published
    model = keras_vgg.build("E", include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="'imagenet' of configuration D do not fit model 'vgg_e'"):
        keras_vgg.load_weights(model, weights_lib.REGISTRY[("D", "imagenet")], cache_dir=cache)
    with pytest.raises(ValueError, match="`preprocessing` must be a keras_vgg.Preprocessing"):
        keras_vgg.load_weights(model, "imagenet", preprocessing="caffe", cache_dir=cache)
    assert os.listdir(cache) == []
    # Without config=, the entry is looked up for the model's own configuration (E).
    unreachable = WeightsFile("file:///nonexistent/vgg19_notop.h5", "0" * 32)
    entry = dataclasses.replace(_entry("file:///nonexistent/vgg19.h5", "0" * 32), config="E")
    monkeypatch.setitem(
        weights_lib.REGISTRY, ("E", "imagenet"), dataclasses.replace(entry, notop=unreachable)
    )
    with pytest.raises(ValueError, match="cannot download file:///nonexistent/vgg19_notop.h5"):
        keras_vgg.load_weights(model, "imagenet", cache_dir=cache)


def test_preprocess_input_follows_the_loaded_weights():
    model = keras_vgg.build("A", width=1 / 16, fc_units=8, classes=3, input_shape=(32, 32, 3))
    x = np.full((1, 2, 2, 3), [10.0, 20.0, 30.0], dtype="float32")
    # No foreign weights: the paper's mean RGB subtraction.
    np.testing.assert_allclose(
        keras_vgg.preprocess_input(x, preprocessing=keras_vgg.preprocessing_for(model))[0, 0, 0],
        [10 - 123.68, 20 - 116.779, 30 - 103.939],
        rtol=1e-6,
    )
    weights_lib._set_preprocessing(model, KERAS_CAFFE)
    np.testing.assert_allclose(
        keras_vgg.preprocess_input(x, preprocessing=keras_vgg.preprocessing_for(model))[0, 0, 0],
        [30 - 103.939, 20 - 116.779, 10 - 123.68],
        rtol=1e-6,
    )


# === Full size ===


@pytest.mark.slow
@pytest.mark.parametrize("config, application", [("D", "VGG16"), ("E", "VGG19")])
def test_full_size_keras_applications_file_loads_into_build(tmp_path, config, application):
    """keras.applications' own model and legacy writer, our reader: the same 1000 scores."""
    from keras.src.legacy.saving import legacy_h5_format

    source = getattr(keras.applications, application)(weights=None, classifier_activation=None)
    path = str(tmp_path / f"{application.lower()}.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    rng = np.random.default_rng(0)
    x = keras_vgg.preprocess_input(rng.uniform(0, 255, (2, 224, 224, 3)), preprocessing=KERAS_CAFFE)
    expected = source.predict(x, verbose=0)
    del source

    model = keras_vgg.build(config, weights=path, classifier_activation=None)
    assert keras_vgg.preprocessing_for(model) == KERAS_CAFFE
    assert np.std(expected) > 0.1  # logits, not near-uniform soft-max outputs
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-4)
