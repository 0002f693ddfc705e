"""Pretrained entries: the registry against the published tables, downloads, `weights=`.

The published figures (file names, hashes, accuracies, parameter counts) are typed here by
hand from torchvision's and Keras's sources, so a wrong registry entry cannot agree with
them by construction. No network: "published" files are served from a temporary directory,
by `file://` URL or by an HTTP server on 127.0.0.1, into a temporary Keras cache; the
full-size end-to-end tests write files of the published layouts into that cache under the
published names and point the entries at an unreachable URL.
"""

import dataclasses
import functools
import hashlib
import http.server
import inspect
import os
import re
import threading
from collections import OrderedDict

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import write_keras2_h5  # noqa: E402

import keras_vgg  # noqa: E402
from keras_vgg import weights as weights_lib  # noqa: E402
from keras_vgg.imagenet import KERAS_CAFFE, TORCHVISION  # noqa: E402
from keras_vgg.weights import PretrainedWeights, WeightsFile  # noqa: E402


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# === The registry ===

# torchvision/models/vgg.py, VGG{11,13,16,19}[_BN]_Weights.IMAGENET1K_V1 (the same figures as
# https://pytorch.org/vision/stable/models.html): file name (its hash part is the first 8 hex
# digits of the file's SHA-256), acc@1, acc@5 and num_params (trainable parameters; BN
# running statistics are buffers, not counted).
TORCHVISION_PUBLISHED = {
    ("A", "torchvision"): ("vgg11-8a719046.pth", 69.020, 88.628, 132863336),
    ("A", "torchvision_bn"): ("vgg11_bn-6002323d.pth", 70.370, 89.810, 132868840),
    ("B", "torchvision"): ("vgg13-19584684.pth", 69.928, 89.246, 133047848),
    ("B", "torchvision_bn"): ("vgg13_bn-abd245e5.pth", 71.586, 90.374, 133053736),
    ("D", "torchvision"): ("vgg16-397923af.pth", 71.592, 90.382, 138357544),
    ("D", "torchvision_bn"): ("vgg16_bn-6c64b313.pth", 73.360, 91.516, 138365992),
    ("E", "torchvision"): ("vgg19-dcbb9e9d.pth", 72.376, 90.876, 143667240),
    ("E", "torchvision_bn"): ("vgg19_bn-c79401a0.pth", 74.218, 91.842, 143678248),
}

# keras/src/applications/vgg{16,19}.py: the file_hash (MD5) given to get_file for the file
# with and without the FC layers; https://keras.io/api/applications/: top-1 / top-5 accuracy
# (71.3 / 90.1 and 71.3 / 90.0); parameters 138.4M / 143.7M, 14.7M / 20.0M without the top,
# exactly those of keras.applications' models.
KERAS_PUBLISHED = {
    ("D", "imagenet"): (
        "vgg16",
        "64373286793e3c8b2b4e3219cbf3544b",
        "6d6bbae143d832006294945121d1f1fc",
        71.3,
        90.1,
        138357544,
        14714688,
    ),
    ("E", "imagenet"): (
        "vgg19",
        "cbe5617147190e668d6c5d5026f83318",
        "253f8cb515780f3b799900260a226db6",
        71.3,
        90.0,
        143667240,
        20024384,
    ),
}

KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCHVISION_URL = "https://download.pytorch.org/models/"


def test_registry_lists_every_published_configuration():
    assert sorted(weights_lib.REGISTRY) == sorted([*TORCHVISION_PUBLISHED, *KERAS_PUBLISHED])
    for (config, name), entry in weights_lib.REGISTRY.items():
        assert (entry.config, entry.name) == (config, name)


@pytest.mark.parametrize("key", sorted(TORCHVISION_PUBLISHED), ids="-".join)
def test_torchvision_entries_are_torchvision_published_table(key):
    file_name, top1, top5, num_params = TORCHVISION_PUBLISHED[key]
    sha256_prefix = re.fullmatch(r"vgg1[1369](?:_bn)?-([0-9a-f]{8})\.pth", file_name).group(1)
    entry = weights_lib.REGISTRY[key]
    assert entry.top == WeightsFile(TORCHVISION_URL + file_name, sha256_prefix)
    assert entry.top.file_name == file_name
    assert entry.notop is None  # torchvision publishes one file, with the classifier
    assert (entry.top1_accuracy, entry.top5_accuracy) == (top1, top5)
    assert entry.num_params == num_params
    assert entry.batch_norm == ("_bn" in file_name) == (key[1] == "torchvision_bn")
    assert (entry.layout, entry.preprocessing) == ("torchvision", TORCHVISION)


@pytest.mark.parametrize("key", sorted(KERAS_PUBLISHED), ids="-".join)
def test_keras_entries_are_keras_published_files(key):
    module, top_md5, notop_md5, top1, top5, num_params, _ = KERAS_PUBLISHED[key]
    stem = f"{module}_weights_tf_dim_ordering_tf_kernels"
    entry = weights_lib.REGISTRY[key]
    assert entry.top == WeightsFile(f"{KERAS_URL}{module}/{stem}.h5", top_md5)
    assert entry.notop == WeightsFile(f"{KERAS_URL}{module}/{stem}_notop.h5", notop_md5)
    assert (entry.top.file_name, entry.notop.file_name) == (f"{stem}.h5", f"{stem}_notop.h5")
    assert (entry.top1_accuracy, entry.top5_accuracy) == (top1, top5)
    assert entry.num_params == num_params
    assert (entry.layout, entry.batch_norm, entry.preprocessing) == (
        "keras2_h5",
        False,
        KERAS_CAFFE,
    )


@pytest.mark.parametrize("key", sorted(KERAS_PUBLISHED), ids="-".join)
def test_keras_published_table_is_the_installed_keras_applications_source(key):
    """The hand-typed table against the file names and hashes keras.applications uses."""
    import importlib

    module, top_md5, notop_md5, *_ = KERAS_PUBLISHED[key]
    source_module = importlib.import_module(f"keras.src.applications.{module}")
    source = inspect.getsource(source_module)
    assert re.findall(r'file_hash="([0-9a-f]{32})"', source) == [top_md5, notop_md5]
    stem = f"{module}_weights_tf_dim_ordering_tf_kernels"
    assert source_module.WEIGHTS_PATH == f"{KERAS_URL}{module}/{stem}.h5"
    assert source_module.WEIGHTS_PATH_NO_TOP == f"{KERAS_URL}{module}/{stem}_notop.h5"
    assert f'"{stem}.h5"' in source and f'"{stem}_notop.h5"' in source


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(weights_lib.REGISTRY), ids="-".join)
def test_model_built_for_each_entry_has_the_published_parameter_count(key):
    """Full size. The published count, not the registry's, is the reference."""
    entry = weights_lib.REGISTRY[key]
    if key in KERAS_PUBLISHED:
        *_, num_params, notop_params = KERAS_PUBLISHED[key]
    else:
        num_params, notop_params = TORCHVISION_PUBLISHED[key][3], None
    # Zero kernels: the count does not depend on the values, and they are ~6x cheaper.
    zeros = dict(kernel_initializer="zeros")
    model = keras_vgg.build(entry.config, batch_norm=entry.batch_norm, **zeros)
    assert trainable_count(model) == num_params == entry.num_params
    if notop_params is not None:  # Keras's notop file: the model without the FC layers
        body = keras_vgg.build(entry.config, include_top=False, **zeros)
        assert trainable_count(body) == notop_params
        application = {"D": keras.applications.VGG16, "E": keras.applications.VGG19}
        reference = application[entry.config](weights=None, include_top=False)
        assert reference.count_params() == notop_params


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
        num_params=1,
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
    monkeypatch.setenv("KERAS_HOME", cache)
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
    monkeypatch.setenv("KERAS_HOME", cache)
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
    model.record = model.record.replace(preprocessing=KERAS_CAFFE)
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

    keras.utils.set_random_seed(0)  # the random weights, and so the logits' spread, fixed
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
    # Logits: random VGG logits spread ~0.1; soft-max outputs over 1000 classes ~1e-4.
    assert np.std(expected) > 0.01
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-4)


# === weights="imagenet" / "torchvision" end to end, from the Keras cache ===


@pytest.fixture
def keras_models_dir(tmp_path, monkeypatch):
    """An empty Keras cache under tmp_path, found through $KERAS_HOME: its models/ folder."""
    home = tmp_path / "keras_home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home / "models"


def offline(entry, file_hash):
    """The entry with `file_hash` for its file, whose URL no longer answers (same file name).

    A download would fail, so a successful load proves the cached file was used.
    """

    def unreachable(published, digest):
        return WeightsFile(f"file:///nonexistent/{published.file_name}", digest)

    notop = entry.notop and unreachable(entry.notop, "0" * 32)
    return dataclasses.replace(entry, top=unreachable(entry.top, file_hash), notop=notop)


def rgb_images(n=2, seed=0):
    """What users feed: RGB pixels in [0, 255], channels last."""
    return np.random.default_rng(seed).uniform(0, 255, (n, 224, 224, 3)).astype("float32")


@pytest.mark.slow
def test_build_d_imagenet_reproduces_keras_applications_from_the_cached_file(keras_models_dir):
    """D with top: Keras's published file name and layout, keras.applications' outputs."""
    key = ("D", "imagenet")
    source = keras.applications.VGG16(weights=None, classifier_activation=None)
    path = keras_models_dir / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras2_h5(source, path)
    images = rgb_images()
    # keras.applications' own preprocessing for its files ("caffe": BGR, mean BGR).
    expected = source.predict(keras.applications.vgg16.preprocess_input(images.copy()), verbose=0)
    # Logits: random VGG logits spread ~0.1; soft-max outputs over 1000 classes ~1e-4.
    assert np.std(expected) > 0.01
    del source
    entry = weights_lib.REGISTRY[key]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(weights_lib.REGISTRY, key, offline(entry, md5(path)))
        model = keras_vgg.build("D", weights="imagenet", classifier_activation=None)

    # Fed as the loaded weights say (a wrong channel order or mean in the entry shows here).
    x = keras_vgg.preprocess_input(images, preprocessing=keras_vgg.preprocessing_for(model))
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)
    assert keras_vgg.preprocessing_for(model) == KERAS_CAFFE
    assert os.listdir(keras_models_dir) == [path.name]

    # A cached file whose hash is not the published one is deleted, and nothing loads.
    written = md5(path)
    wrong = hashlib.md5(b"the published weights").hexdigest()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(weights_lib.REGISTRY, key, offline(entry, wrong))
        with pytest.raises(ValueError) as info:
            keras_vgg.build("D", weights="imagenet")
    assert f"hash {written} is not the published {wrong}" in str(info.value)
    assert "cannot download file:///nonexistent/" + path.name in str(info.value)
    assert not path.exists()


def torchvision_vgg(torch, cfg):
    """torchvision's VGG written out (make_layers + VGG): the state dict has its key names.

    `features.N` counts Conv2d, ReLU and MaxPool2d modules; `classifier` is Linear, ReLU,
    Dropout, Linear, ReLU, Dropout, Linear (indices 0, 3, 6).
    """
    nn = torch.nn
    features, channels = [], 3
    for v in cfg:
        if v == "M":
            features.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            features += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(*features),
            avgpool=nn.AdaptiveAvgPool2d((7, 7)),
            flatten=nn.Flatten(1),
            classifier=nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 1000),
            ),
        )
    )


@pytest.mark.slow
def test_build_a_torchvision_reproduces_torch_from_the_cached_file(keras_models_dir):
    """A (vgg11): torchvision's published file name and state-dict layout, torch's outputs."""
    torch = pytest.importorskip("torch")
    key = ("A", "torchvision")
    torch.manual_seed(0)
    # torchvision's cfgs["A"].
    source = torchvision_vgg(
        torch, [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    )
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2.0 / fan_in) ** 0.5)
                module.bias.uniform_(-0.1, 0.1)
    source.eval()
    path = keras_models_dir / "vgg11-8a719046.pth"
    torch.save(source.state_dict(), path)
    images = rgb_images()
    # torchvision's eval transform after the crop: ToTensor (/255), Normalize(mean, std).
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    nchw = ((images / 255.0 - mean) / std).astype("float32").transpose(0, 3, 1, 2)
    with torch.no_grad():
        expected = source(torch.from_numpy(nchw.copy())).numpy()
    assert np.std(expected) > 0.1
    del source
    entry = weights_lib.REGISTRY[key]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(weights_lib.REGISTRY, key, offline(entry, sha256(path)[:8]))
        model = keras_vgg.build("A", weights="torchvision", classifier_activation=None)

    x = keras_vgg.preprocess_input(images, preprocessing=keras_vgg.preprocessing_for(model))
    got = model.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5 * np.abs(expected).max())
    assert keras_vgg.preprocessing_for(model) == TORCHVISION
    assert os.listdir(keras_models_dir) == [path.name]
