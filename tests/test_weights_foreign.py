"""Foreign weight files: Keras 2 `.h5`, torchvision `.pth`, `.npz`, and `kvgg convert`.

Each file is made here from a model the test builds itself (a Keras model for the Keras 2
layout and `.npz`, an equivalent `torch.nn` network with torchvision's module names for the
state dicts), and the loaded model must reproduce the source framework's outputs.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import kvgg_batch, write_keras2_h5  # noqa: E402

import keras_vgg  # noqa: E402
from keras_vgg import models  # noqa: E402
from keras_vgg import weights as weights_lib  # noqa: E402
from keras_vgg.imagenet import KERAS_CAFFE, PAPER, TORCHVISION  # noqa: E402

torch = pytest.importorskip("torch")
nn = torch.nn

# Every stage a different width: 4, 8, 16, 32, 32 (a mapping that skips or repeats a block
# cannot fit). fc1 sees 7 x 7 x 32 after five poolings of 224.
SMALL = dict(width=1 / 16, fc_units=32, classes=5)


def small(config="D", **kwargs):
    args = dict(SMALL, input_shape=(64, 64, 3))
    args.update(kwargs)
    return keras_vgg.build(config, **args)


def randomize(model, seed):
    """Non-trivial values everywhere, BN statistics included (not Keras's 0 / 1 defaults)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if "moving_variance" in variable.path or "gamma" in variable.path:
            value = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        variable.assign(value.astype("float32"))
    return model


def snapshot(model):
    return [np.array(v) for v in model.weights]


def assert_unchanged(model, before):
    for variable, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(np.array(variable), value, err_msg=variable.path)


def images(n=2, size=64, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


# === Keras 2 legacy .h5 ===


@pytest.mark.parametrize("config, batch_norm", [("D", False), ("E", False), ("B", True)])
def test_keras2_h5_reproduces_the_source_model_and_keras_own_loader(tmp_path, config, batch_norm):
    source = randomize(small(config, batch_norm=batch_norm), seed=0)
    path = str(tmp_path / "legacy.h5")
    write_keras2_h5(source, path)
    x = images()

    ours = small(config, batch_norm=batch_norm)
    keras_vgg.load_weights(ours, path)
    # Keras's own legacy loader (matches layers with weights in order) as the reference.
    reference = small(config, batch_norm=batch_norm)
    reference.load_weights(path)

    expected = source.predict(x, verbose=0)
    np.testing.assert_allclose(ours.predict(x, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(reference.predict(x, verbose=0), expected, atol=1e-6)
    assert keras_vgg.preprocessing_for(ours) == KERAS_CAFFE


def test_keras2_whole_model_h5_with_new_style_names(tmp_path):
    source = randomize(small("A", batch_norm=True), seed=11)
    path = str(tmp_path / "whole_model.hdf5")
    write_keras2_h5(source, path, old_style_names=False, whole_model=True)
    target = small("A", batch_norm=True)
    keras_vgg.load_weights(target, path)
    x = images()
    np.testing.assert_allclose(
        target.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-6
    )


def test_keras2_h5_written_by_keras_own_legacy_writer(tmp_path):
    from keras.src.legacy.saving import legacy_h5_format

    source = randomize(small("D"), seed=2)
    path = str(tmp_path / "keras_written.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    target = small("D")
    keras_vgg.load_weights(target, path)
    x = images()
    np.testing.assert_allclose(
        target.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-6
    )


def test_full_keras2_file_fills_a_model_without_top(tmp_path):
    source = randomize(small("D"), seed=3)
    path = str(tmp_path / "full.h5")
    write_keras2_h5(source, path)
    features = small("D", include_top=False, input_shape=(None, None, 3))
    keras_vgg.load_weights(features, path)
    pool5 = keras.Model(source.inputs, source.get_layer("block5_pool").output)
    x = images()
    np.testing.assert_allclose(
        features.predict(x, verbose=0), pool5.predict(x, verbose=0), atol=1e-6
    )


# === torchvision state dicts ===


class TorchVGG(nn.Module):
    """torchvision's VGG, written out: `features`, `avgpool`, `classifier` with its indices."""

    def __init__(self, widths, batch_norm, fc_units, classes):
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, fc_units),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(fc_units, fc_units),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(fc_units, classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def torch_widths(config):
    """torchvision's cfgs list for our small widths: Table 1's convs per block, 'M' after."""
    counts = {"A": [1, 1, 2, 2, 2], "B": [2, 2, 2, 2, 2], "D": [2, 2, 3, 3, 3]}
    counts["E"] = [2, 2, 4, 4, 4]
    widths = []
    for count, width in zip(counts[config], [4, 8, 16, 32, 32], strict=True):
        widths += [width] * count + ["M"]
    return widths


def torch_model(config, batch_norm, seed=0):
    torch.manual_seed(seed)
    model = TorchVGG(torch_widths(config), batch_norm, SMALL["fc_units"], SMALL["classes"])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, nn.Linear):
                module.weight.mul_(4.0)  # logits of order 1, so 1e-4 means something
    return model.eval()


def torch_forward(model, x_nhwc, features_only=False):
    with torch.no_grad():
        x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
        out = model.features(x) if features_only else model(x)
    out = out.numpy()
    return out.transpose(0, 2, 3, 1) if features_only else out


def keras_twin(config, batch_norm, **kwargs):
    args = dict(SMALL, batch_norm=batch_norm, classifier_activation=None)
    args.update(kwargs)
    return keras_vgg.build(config, **args)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("config", ["A", "B", "D", "E"])
def test_torchvision_state_dict_reproduces_torch(tmp_path, config, batch_norm):
    source = torch_model(config, batch_norm)
    path = str(tmp_path / "vgg.pth")
    torch.save(source.state_dict(), path)
    x = images(size=224)

    model = keras_twin(config, batch_norm)
    keras_vgg.load_weights(model, path, config=config)

    expected = torch_forward(source, x)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4)
    assert keras_vgg.preprocessing_for(model) == TORCHVISION


def test_torchvision_fc1_rows_really_need_the_permutation(tmp_path):
    # Without the (C, 7, 7) -> (7, 7, C) reordering the outputs differ: the test above can fail.
    source = torch_model("A", False)
    state = source.state_dict()
    found = weights_lib.read_torchvision(state, "A")
    model = keras_twin("A", False)
    naive = dict(found, fc1=[state["classifier.0.weight"].numpy().T, found["fc1"][1]])
    weights_lib.assign_weights(model, naive, "naive")
    x = images(size=224)
    assert np.abs(model.predict(x, verbose=0) - torch_forward(source, x)).max() > 1e-2


def test_torchvision_file_fills_a_model_without_top_with_the_config_inferred(tmp_path):
    source = torch_model("D", True)
    path = str(tmp_path / "vgg16_bn.pth")
    torch.save(source.state_dict(), path)
    model = keras_twin("D", True, include_top=False, input_shape=(None, None, 3))
    keras_vgg.load_weights(model, path)  # config inferred from the layer names
    x = images(size=96)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), torch_forward(source, x, features_only=True), atol=1e-4
    )


def test_save_weights_keeps_the_preprocessing_record(tmp_path):
    path = str(tmp_path / "vgg11.pth")
    torch.save(torch_model("A", False).state_dict(), path)
    model = keras_twin("A", False)
    keras_vgg.load_weights(model, path)
    kept, plain = str(tmp_path / "kept.weights.h5"), str(tmp_path / "plain.weights.h5")
    weights_lib.save_weights(model, kept)
    model.save_weights(plain)
    x = images(size=224)
    # A VGG's own save_weights keeps the record too.
    for saved, expected in ((kept, TORCHVISION), (plain, TORCHVISION)):
        reloaded = keras_twin("A", False)
        keras_vgg.load_weights(reloaded, saved)
        assert keras_vgg.preprocessing_for(reloaded) == expected
        np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_pth_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    path = str(tmp_path / "vgg.pth")
    torch.save(torch_model("A", False).state_dict(), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now fails
    with pytest.raises(ImportError, match=r"pip install 'keras-vgg\[torch\]'"):
        keras_vgg.load_weights(keras_twin("A", False), path)


def test_torchvision_layer_map_matches_torch_module_indices():
    for config in "ABDE":
        for batch_norm in (False, True):
            names = dict(torch_model(config, batch_norm).named_modules())
            mapping = weights_lib.torchvision_layer_map(config, batch_norm)
            for ours, theirs in mapping.items():
                expected = (
                    nn.Linear
                    if ours in weights_lib.HEAD_LAYERS
                    else nn.BatchNorm2d
                    if ours.endswith("_bn")
                    else nn.Conv2d
                )
                assert isinstance(names[theirs], expected), (config, ours, theirs)
    with pytest.raises(ValueError, match="A, B, D and E"):
        weights_lib.torchvision_layer_map("C", False)


# === .npz ===


def test_npz_of_named_arrays(tmp_path):
    source = randomize(small("C", batch_norm=True), seed=4)
    path = str(tmp_path / "weights.npz")
    # Reverse the order: arrays are matched by name, not position.
    np.savez(path, **{v.path: np.array(v) for v in reversed(source.weights)})
    target = small("C", batch_norm=True)
    keras_vgg.load_weights(target, path)
    x = images()
    np.testing.assert_allclose(
        target.predict(x, verbose=0), source.predict(x, verbose=0), atol=1e-6
    )
    assert keras_vgg.preprocessing_for(target) == PAPER
    keras_vgg.load_weights(target, path, preprocessing=TORCHVISION)
    assert keras_vgg.preprocessing_for(target) == TORCHVISION


# === Bad input: one error naming the layer and shapes, nothing half loaded ===


def _keras2(tmp_path, config="D", **kwargs):
    path = str(tmp_path / f"{config}.h5")
    write_keras2_h5(randomize(small(config, **kwargs), seed=5), path)
    return path


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return path


def _bad_files(tmp_path):
    deeper = _keras2(tmp_path, "E")
    shallower = _keras2(tmp_path, "B")
    wider = str(tmp_path / "wider.h5")
    write_keras2_h5(randomize(small("D", width=1 / 8), seed=6), wider)
    missing = str(tmp_path / "missing.h5")
    write_keras2_h5(randomize(small("D"), seed=7), missing, skip=("block4_conv2",))
    notop = str(tmp_path / "notop.h5")
    write_keras2_h5(randomize(small("D", include_top=False), seed=8), notop)
    torch_b = str(tmp_path / "b.pth")
    torch.save(torch_model("B", False).state_dict(), torch_b)
    truncated_pth = str(tmp_path / "t.pth")
    torch.save(torch_model("D", False).state_dict(), truncated_pth)
    npz = str(tmp_path / "w.npz")
    np.savez(npz, **{v.path: np.array(v) for v in small("D").weights})
    return {
        "E file into D": (deeper, ["block3_conv4"]),
        "B file into D": (shallower, ["block3_conv3", "(3, 3, 16, 16)"]),
        "other width": (wider, ["block1_conv1", "(3, 3, 3, 8)", "(3, 3, 3, 4)"]),
        "missing layer": (missing, ["block4_conv2", "(3, 3, 32, 32)"]),
        "no top": (notop, ["fc1", "include_top=False"]),
        "truncated h5": (_truncate(_keras2(tmp_path, "A")), ["truncated"]),
        "torchvision B as D": (torch_b, ["features.", "block"]),
        "truncated pth": (_truncate(truncated_pth), ["truncated"]),
        "truncated npz": (_truncate(npz), ["truncated"]),
    }


def test_bad_files_raise_one_error_and_load_nothing(tmp_path):
    model = randomize(small("D", classifier_activation=None), seed=9)
    keras_vgg.load_weights(model, _keras2(tmp_path, "D"))  # records KERAS_CAFFE
    before = snapshot(model)
    for case, (path, needles) in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as info:
            keras_vgg.load_weights(model, path, config="D")
        message = str(info.value)
        assert "\n" not in message, case
        assert path in message, case
        for needle in needles:
            assert needle in message, (case, message)
        assert_unchanged(model, before)
        assert keras_vgg.preprocessing_for(model) == KERAS_CAFFE, case


def test_shape_error_names_expected_and_found(tmp_path):
    model = small("D")
    wider = str(tmp_path / "wider.h5")
    write_keras2_h5(randomize(small("D", width=1 / 8), seed=6), wider)
    with pytest.raises(ValueError) as info:
        keras_vgg.load_weights(model, wider)
    assert str(info.value) == (
        f"{wider}: layer 'block1_conv1' has weights of shapes [(3, 3, 3, 8), (8,)], "
        "model 'vgg_d' expects [(3, 3, 3, 4), (4,)]"
    )


# === kvgg convert ===


@pytest.fixture(scope="module")
def convert_cli(tmp_path_factory):
    """Both `kvgg convert` command lines of this file in ONE real `kvgg` process
    (`kvgg_batch`): a torchvision E-BN file, and a B file converted as D (refused).

    Returns (tmp, source, runs): their folder, the torch model of the first, and the
    CompletedProcess of each by its name here.
    """
    tmp = tmp_path_factory.mktemp("convert_cli")
    source = torch_model("E", True, seed=3)
    torch.save(source.state_dict(), tmp / "vgg19_bn.pth")
    torch.save(torch_model("B", False).state_dict(), tmp / "b.pth")
    commands = {
        "e_bn": ("convert", tmp / "vgg19_bn.pth", tmp / "vgg19_bn.weights.h5", "--config", "vgg19"),
        "b_as_d": ("convert", tmp / "b.pth", tmp / "out.weights.h5", "--config", "D"),
        # Onto the first one's file: refused (the load test below still finds E-BN in it).
        "onto_e_bn": ("convert", tmp / "b.pth", tmp / "vgg19_bn.weights.h5", "--config", "B"),
    }
    return tmp, source, dict(zip(commands, kvgg_batch(*commands.values()), strict=True))


def test_kvgg_convert_torchvision_then_load_reproduces_torch(convert_cli):
    tmp, source, runs = convert_cli
    dest = str(tmp / "vgg19_bn.weights.h5")
    result = runs["e_bn"]
    assert result.returncode == 0, result.stderr
    assert "keras_vgg.build('E', batch_norm=True, width=0.0625" in result.stdout

    model = keras_twin("E", True)
    keras_vgg.load_weights(model, dest)
    x = images(size=224)
    np.testing.assert_allclose(model.predict(x, verbose=0), torch_forward(source, x), atol=1e-4)
    assert keras_vgg.preprocessing_for(model) == TORCHVISION
    refused = runs["onto_e_bn"]
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"kvgg: error: {dest}: already exists; choose another path, or replace it with "
        "--overwrite (overwrite=True)"
    )


def test_convert_keras2_and_npz_record_their_preprocessing(tmp_path):
    source = randomize(small("D", batch_norm=True), seed=10)
    h5 = str(tmp_path / "d.h5")
    write_keras2_h5(source, h5)
    npz = str(tmp_path / "d.npz")
    np.savez(npz, **{v.path: np.array(v) for v in source.weights})
    x = images()
    for src, override, expected in ((h5, None, KERAS_CAFFE), (npz, TORCHVISION, TORCHVISION)):
        dest = str(tmp_path / (os.path.basename(src) + ".weights.h5"))
        kwargs = models.convert(src, dest, "vgg16", preprocessing=override)
        assert kwargs.pop("preprocessing") == expected
        assert kwargs == dict(
            config="D",
            batch_norm=True,
            width=1 / 16,
            include_top=True,
            fc_units=32,
            classes=5,
            input_shape=(64, 64, 3),
        )
        model = small("D", batch_norm=True)
        keras_vgg.load_weights(model, dest)
        np.testing.assert_allclose(model.predict(x, verbose=0), source.predict(x, verbose=0))
        assert keras_vgg.preprocessing_for(model) == expected
    # An existing destination is replaced only when asked.
    first = str(tmp_path / "d.h5.weights.h5")
    with pytest.raises(ValueError, match="already exists"):
        models.convert(npz, first, "vgg16", preprocessing=TORCHVISION)
    models.convert(npz, first, "vgg16", preprocessing=TORCHVISION, overwrite=True)
    keras_vgg.load_weights(model, first)
    assert keras_vgg.preprocessing_for(model) == TORCHVISION


def test_kvgg_convert_bad_input_is_one_line_exit_2(convert_cli):
    tmp, _, runs = convert_cli
    src = str(tmp / "b.pth")
    result = runs["b_as_d"]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kvgg: error:")]
    assert len(errors) == 1 and src in errors[0] and "features." in errors[0]
    assert not os.path.exists(tmp / "out.weights.h5")


def torchvision_state_dict(model, config):
    """The state dict torchvision's VGG would hold with `model`'s weights, written by hand.

    Kernels (h, w, in, out) -> (out, in, h, w); FC matrices transposed, fc1's columns from
    our (k, k, C) flatten order to torchvision's (C, k, k); BN gamma / beta / moving
    statistics -> weight / bias / running_mean / running_var.
    """
    names = weights_lib.torchvision_layer_map(config, batch_norm=False)
    state = {}
    for layer in model.layers:
        if layer.name not in names:
            continue
        prefix, values = names[layer.name], [np.array(v) for v in layer.weights]
        kernel, bias = values
        if kernel.ndim == 4:
            kernel = kernel.transpose(3, 2, 0, 1)
        elif layer.name == "fc1":
            channels = model.get_layer("block5_pool").output.shape[-1]
            side = int(np.sqrt(kernel.shape[0] // channels))
            kernel = kernel.reshape(side, side, channels, -1).transpose(3, 2, 0, 1)
            kernel = kernel.reshape(kernel.shape[0], -1)
        else:
            kernel = kernel.T
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{prefix}.bias"] = torch.from_numpy(bias)
    return state


@pytest.mark.parametrize(
    ("config", "width", "include_top", "layout", "size"),
    [
        ("A", 0.1, True, "npz", 32),
        ("D", 0.1, True, "pth", 64),
        ("D", 0.3, False, "npz", 32),
        ("A", 0.25, True, "npz", 32),
        ("D", 1 / 16, False, "pth", 32),
    ],
)
def test_kvgg_convert_round_trip_at_widths_that_round_differently_per_layer(
    tmp_path, config, width, include_top, layout, size
):
    # At width 0.1 block1 has 6 channels (6 / 64 = 0.09375) but block2 has 13, not 12:
    # the width must fit every conv layer, not block1 alone.
    from click.testing import CliRunner

    from keras_vgg.cli import main

    kwargs = dict(width=width, include_top=include_top, fc_units=16, classes=5)
    kwargs["input_shape"] = (size, size, 3) if include_top else (None, None, 3)
    source = randomize(keras_vgg.build(config, **kwargs), seed=7)
    src = str(tmp_path / f"source.{layout}")
    if layout == "npz":
        np.savez(src, **{v.path: np.array(v) for v in source.weights})
    else:
        torch.save(torchvision_state_dict(source, config), src)
    dest = str(tmp_path / "converted.weights.h5")

    result = CliRunner().invoke(main, ["convert", src, dest, "--config", config])
    assert result.exit_code == 0, result.output
    assert f"width={width!r}," in result.output
    (load_line,) = [line for line in result.output.splitlines() if "Load it with:" in line]
    model = eval(load_line.split("Load it with: ", 1)[1], {"keras_vgg": keras_vgg})

    x = images(size=size, seed=3) * 127.0
    expected = source.predict(x, verbose=0)
    assert np.ptp(expected) > 1e-3
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)


def test_convert_names_the_first_layer_no_width_fits(tmp_path):
    source = randomize(keras_vgg.build("A", width=0.1, include_top=False), seed=7)
    arrays = {v.path: np.array(v) for v in source.weights}
    # 20 channels in block2_conv1 after block1's 6: no width gives both.
    arrays["block2_conv1/kernel"] = np.zeros((3, 3, 6, 20), "float32")
    arrays["block2_conv1/bias"] = np.zeros(20, "float32")
    src = str(tmp_path / "bad.npz")
    np.savez(src, **arrays)
    dest = tmp_path / "out.weights.h5"
    with pytest.raises(ValueError, match="no width factor") as info:
        models.convert(src, dest, "A")
    message = str(info.value)
    assert message.startswith(f"{src}: ") and "'block2_conv1' its 20 channels" in message
    assert not dest.exists()


# === channels_first models (keras.config.image_data_format()) ===


@pytest.fixture
def channels_first():
    """Builds under "channels_first" inside the test; the global format is restored after."""
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        yield
    finally:
        keras.config.set_image_data_format(before)


@pytest.mark.parametrize("config, batch_norm", [("A", False), ("D", True)])
def test_torchvision_state_dict_reproduces_torch_channels_first(
    tmp_path, channels_first, config, batch_norm
):
    # torch is channels-first itself: the same NCHW images go to both, no transposes.
    source = torch_model(config, batch_norm, seed=5)
    path = str(tmp_path / "vgg.pth")
    torch.save(source.state_dict(), path)
    model = keras_twin(config, batch_norm, input_shape=(3, 224, 224))
    keras_vgg.load_weights(model, path)
    x = images(size=224).transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        expected = source(torch.from_numpy(x)).numpy()
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4)


def test_keras2_h5_of_a_channels_last_model_fills_a_channels_first_one(tmp_path):
    source = randomize(small("D"), seed=6)
    path = str(tmp_path / "legacy.h5")
    write_keras2_h5(source, path)
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = small("D", input_shape=(3, 64, 64))
    finally:
        keras.config.set_image_data_format(before)
    keras_vgg.load_weights(model, path)
    x = images()
    np.testing.assert_allclose(
        model.predict(x.transpose(0, 3, 1, 2), verbose=0), source.predict(x, verbose=0), atol=1e-5
    )


def test_convert_under_channels_first_builds_a_channels_first_model(tmp_path, channels_first):
    source = torch_model("B", False, seed=7)
    src = str(tmp_path / "vgg13.pth")
    torch.save(source.state_dict(), src)
    dest = str(tmp_path / "vgg13.weights.h5")
    kwargs = models.convert(src, dest, "B")
    assert kwargs["input_shape"] == (3, 224, 224)
    model = keras_twin("B", False, input_shape=(3, 224, 224))
    keras_vgg.load_weights(model, dest)
    x = images(size=224).transpose(0, 3, 1, 2).copy()
    with torch.no_grad():
        expected = source(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4)
