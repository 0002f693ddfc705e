"""`keras_vgg.features.LPIPS` and `kvgg lpips` against the `lpips` package (torch).

The reference is `lpips.LPIPS(net="vgg")` itself (tests/lpips_reference.py): its scaling
layer, channel normalisation, bundled v0.1 linear weights and spatial average, on a VGG-16
whose (seeded) weights are saved as a torchvision `.pth` that our LPIPS reads as its
backbone. Real photographs (scikit-learn's sample photos, 64x64 JPEGs) and their
distortions (noise, blur, shift), values to 1e-5 and the input gradient's direction; the
value on JAX and torch too (one subprocess per backend).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch_reference
from conftest import kvgg_batch, on_backend
from data_images import write_photographs
from PIL import Image, ImageFilter

torch = pytest.importorskip("torch")
lpips = torch_reference.reference("lpips")  # skipped without torch or lpips

from lpips_reference import backbone_file, reference_lpips  # noqa: E402

from keras_vgg.features import LPIPS  # noqa: E402
from keras_vgg.features.lpips import read_linear_weights  # noqa: E402

SIDE = 64


def distortions(photo: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    noisy = np.clip(photo + rng.normal(0, 12, photo.shape), 0, 255)
    blurred = np.asarray(Image.fromarray(photo).filter(ImageFilter.GaussianBlur(1.5)))
    shifted = np.roll(photo, (3, -2), axis=(0, 1))
    return {"noise": noisy, "blur": blurred, "shift": shifted}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The reference net, its backbone as a .pth, and pairs of real photographs."""
    root = tmp_path_factory.mktemp("lpips")
    net = reference_lpips(seed=0)
    backbone = backbone_file(net, root / "vgg16_features.pth")
    files = write_photographs(root / "photos", count=3, size=(SIDE, SIDE), seed=2)
    photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    first, second = [], []
    for k, photo in enumerate(photos):
        for distorted in distortions(photo, k).values():
            first.append(photo)
            second.append(distorted)
    first.append(photos[0])
    second.append(photos[1])  # two different photographs
    a = np.stack(first).astype(np.float32)
    b = np.stack(second).astype(np.float32)
    return {"net": net, "backbone": backbone, "root": root, "a": a, "b": b, "files": files}


def reference(net, a, b, grad=False):
    """lpips on pixels in [0, 255]: mapped to [-1, 1] as lpips's docs say (NCHW)."""
    x0 = torch.tensor(a / 127.5 - 1.0, dtype=torch.float32).permute(0, 3, 1, 2)
    x1 = torch.tensor(b / 127.5 - 1.0, dtype=torch.float32).permute(0, 3, 1, 2)
    x1.requires_grad_(grad)
    value = net(x0, x1).reshape(-1)
    if not grad:
        return value.detach().numpy()
    value.sum().backward()
    return value.detach().numpy(), x1.grad.permute(0, 2, 3, 1).numpy() / 127.5


@pytest.fixture(scope="module")
def metric(setup):
    return LPIPS(setup["backbone"], reduction=None)


def test_equals_lpips_on_photographs(setup, metric):
    expected = reference(setup["net"], setup["a"], setup["b"])
    got = np.asarray(metric(setup["a"], setup["b"]))
    assert got.shape == (len(setup["a"]),)
    # Distortions of one photo and two photos apart: distances of different sizes.
    assert expected.max() > 3 * expected.min() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The same image: distance zero.
    np.testing.assert_allclose(np.asarray(metric(setup["a"], setup["a"])), 0.0, atol=1e-7)


def test_gradient_direction_equals_lpips(setup, metric):
    a, b = setup["a"][:4], setup["b"][:4]
    expected_value, expected_grad = reference(setup["net"], a, b, grad=True)
    y = tf.Variable(b)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(metric(a, y))
    grad = tape.gradient(value, y).numpy()
    np.testing.assert_allclose(float(value), expected_value.sum(), rtol=1e-5)
    for g, e in zip(grad, expected_grad, strict=True):
        cosine = float((g * e).sum() / np.linalg.norm(g) / np.linalg.norm(e))
        assert cosine > 1 - 1e-4, cosine  # float32 sums in two orders
        np.testing.assert_allclose(np.linalg.norm(g), np.linalg.norm(e), rtol=1e-3)


def test_backbone_of_another_convention_gets_its_own_preprocessing(setup):
    """A backbone recording Keras's caffe convention (BGR minus the mean, 0-255) is fed that,
    not LPIPS's scaling: the reference is lpips's own stages (its backbone, normalisation,
    linear layers and spatial average) on the paper's input."""
    import keras_vgg
    from keras_vgg import KERAS_CAFFE

    vgg = keras_vgg.build("D", include_top=False, weights=setup["backbone"])
    vgg.record = vgg.record.replace(preprocessing=KERAS_CAFFE)
    a, b = setup["a"][:3], setup["b"][:3]
    loss = LPIPS(vgg, reduction=None)
    got = np.asarray(loss(a, b))
    # From its config: the architecture and record (fresh weights: a model object is not a file).
    again = LPIPS.from_config(loss.get_config())
    assert again.convention == KERAS_CAFFE and again.stages == loss.stages
    net = setup["net"]
    mean = np.array([103.939, 116.779, 123.68], np.float32)  # B, G, R
    with torch.no_grad():
        outs = [
            net.net(torch.tensor(x[..., ::-1] - mean).permute(0, 3, 1, 2).contiguous())
            for x in (a, b)
        ]
        expected = sum(
            lpips.spatial_average(
                net.lins[k]((lpips.normalize_tensor(o0) - lpips.normalize_tensor(o1)) ** 2)
            )
            for k, (o0, o1) in enumerate(zip(*outs, strict=True))
        )
    expected = expected.numpy().reshape(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Not LPIPS's torchvision numbers (by 10x the tolerance above): the convention counts.
    assert np.abs(expected - reference(net, a, b)).max() > 1e-4


def test_input_ranges_give_one_distance(setup):
    a, b = setup["a"][:2], setup["b"][:2]
    base = np.asarray(LPIPS(setup["backbone"], reduction=None)(a, b))
    for low, high in ((0, 1), (-1, 1)):
        scaled = LPIPS(setup["backbone"], input_range=(low, high), reduction=None)
        got = np.asarray(scaled(a / 255 * (high - low) + low, b / 255 * (high - low) + low))
        np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-7)


def test_outside_the_declared_range_raises(setup, metric):
    a = setup["a"][:1]
    with pytest.raises(
        ValueError, match=r"outside its declared input_range \(0, 255\): min 9, max 382.5"
    ):
        metric(a, a * 1.5)  # max 382.5
    unit = LPIPS(setup["backbone"], input_range=(0, 1))
    with pytest.raises(ValueError, match=r"input_range \(0, 1\): min \d+, max 2\d\d"):
        unit(a / 255, a)  # [0, 255] images given to a (0, 1) loss: not rescaled
    signed = LPIPS(setup["backbone"], input_range=(-1, 1))
    with pytest.raises(ValueError, match=r"input_range \(-1, 1\): min -1\.4\d+, max 0\.\d+"):
        signed(a / 127.5 - 1, a / 127.5 - 1.5)
    with pytest.raises(ValueError, match="input_range"):
        LPIPS(setup["backbone"], input_range=(0, 2))
    # In a traced TensorFlow graph (model.fit's step): a graph assertion with the same text.
    step = tf.function(lambda x, y: metric(x, y))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"input_range \(0, 255\)"):
        step(a, a * 1.5)
    np.testing.assert_allclose(step(a, a).numpy(), 0.0, atol=1e-7)
    # Under XLA the assertion is dropped: the distance is NaN, not a number of the wrong range.
    xla = tf.function(lambda x, y: metric(x, y), jit_compile=True)
    assert np.isnan(xla(a, a * 1.5).numpy()).all()
    np.testing.assert_allclose(xla(a, a).numpy(), 0.0, atol=1e-6)


def test_trains_as_a_loss(setup):
    """model.compile(loss=LPIPS(...)): a one-conv image model fitted to lower LPIPS."""
    keras.utils.set_random_seed(0)
    loss = LPIPS(setup["backbone"], input_range=(0, 1))
    inputs = keras.Input((SIDE, SIDE, 3))
    outputs = keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    x = setup["a"][:4] / 255
    before = model.evaluate(x, x, verbose=0)
    history = model.fit(x, x, epochs=3, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.evaluate(x, x, verbose=0) < before
    # Its config names the backbone's file: a loss made from it gives the same distances.
    again = LPIPS.from_config(loss.get_config())
    np.testing.assert_allclose(
        np.asarray(keras.ops.convert_to_numpy(again(x, x[::-1]))),
        np.asarray(keras.ops.convert_to_numpy(loss(x, x[::-1]))),
        rtol=1e-6,
    )


def test_linear_weights_are_lpips_v01(setup):
    """The bundled file's five non-negative vectors, read with weights_only (no code)."""
    weights = read_linear_weights()
    assert [len(w) for w in weights] == [64, 128, 256, 512, 512]
    for w, lin in zip(weights, setup["net"].lins, strict=True):
        np.testing.assert_array_equal(w, lin.model[-1].weight.detach().numpy().reshape(-1))
        assert (w >= 0).all() and w.max() > 0


def test_weights_files_refused(setup, tmp_path):
    # A pickle that would run code when loaded: refused, nothing run.
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    evil = tmp_path / "evil.pth"
    torch.save({"lin0.model.1.weight": Evil()}, evil, pickle_module=pickle)
    with pytest.raises(ValueError, match="refused"):
        read_linear_weights(evil)
    assert not (tmp_path / "ran").exists()
    # Negative weights (not LPIPS's), a missing stage, and a backbone too narrow.
    state = {f"lin{k}.model.1.weight": torch.ones(1, c, 1, 1) for k, c in enumerate((64, 128))}
    state["lin0.model.1.weight"][0, 3] = -1.0
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="negative"):
        read_linear_weights(bad)
    state["lin0.model.1.weight"][0, 3] = 1.0
    torch.save(state, bad)
    with pytest.raises(ValueError, match="no lin2.model.1.weight"):
        read_linear_weights(bad)
    import keras_vgg

    narrow = keras_vgg.build("D", include_top=False, width=0.25, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"stage widths \(64, 128, 256, 512, 512\)"):
        LPIPS(narrow)
    # Not VGG-16 (whose stages the linear weights were learned on), at full width.
    for kwargs, seen in (
        (dict(config="A"), "configuration A"),
        (dict(config="E"), "configuration E"),
        (dict(config="D", batch_norm=True), "configuration D with batch norm"),
    ):
        body = keras_vgg.build(**kwargs, include_top=False, input_shape=(32, 32, 3))
        with pytest.raises(ValueError, match=f"learned on VGG-16 .*; this model is {seen}$"):
            LPIPS(body)


# === Other backends: the value on JAX and torch (one subprocess each) ===

_SCRIPT = """
import sys
import numpy as np, keras
from keras_vgg.features import LPIPS
folder = sys.argv[1]
a, b = np.load(folder + "/a.npy"), np.load(folder + "/b.npy")
metric = LPIPS(folder + "/backbone.pth", reduction=None)
np.save(folder + "/value.npy", keras.ops.convert_to_numpy(metric(a, b)))
try:
    metric(a, b * 2)
except ValueError as exc:
    open(folder + "/refused.txt", "w").write(str(exc))
if keras.backend.backend() == "jax":
    import jax
    step = jax.jit(lambda x, y: metric(x, y))
    np.save(folder + "/jit.npy", np.asarray(step(a, b)))
    try:
        np.asarray(step(a, b * 2))
    except Exception as exc:
        open(folder + "/jit_refused.txt", "w").write(str(exc))
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_equals_lpips_on_other_backends(setup, backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed (pip install -e .[test])")
    a, b = setup["a"][:4], setup["b"][:4]
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    os.link(setup["backbone"], tmp_path / "backbone.pth")
    result = on_backend(backend, ["-c", _SCRIPT, tmp_path])
    assert result.returncode == 0, result.stderr[-3000:]
    expected = reference(setup["net"], a, b)
    np.testing.assert_allclose(np.load(tmp_path / "value.npy"), expected, rtol=1e-5, atol=1e-5)
    assert "outside its declared input_range (0, 255)" in (tmp_path / "refused.txt").read_text()
    if backend == "jax":
        np.testing.assert_allclose(np.load(tmp_path / "jit.npy"), expected, rtol=1e-5, atol=1e-5)
        assert "outside its declared input_range" in (tmp_path / "jit_refused.txt").read_text()


# === kvgg lpips (every command line in one process) ===

_BAD = {
    "missing": r"C: no such image file or folder",
    "file_folder": r"give two image files or two folders",
    "no_twin": r"B/z.png: missing; every image of .*A needs its twin",
    "no_model": r"nothing.keras: no such model file or run directory",
}
# Pairs that cannot be compared: skipped and named after the pairs that could (ok.png), exit 1.
_SKIPPED = {
    "sizes": r"x.png: .*B/x.png: 32x64 pixels, its twin .* 64x64; LPIPS compares images of one",
    "not_image": r"x.png: .*B/x.png: not a readable image",
}


@pytest.fixture(scope="module")
def cli(setup):
    """Two folders of pairs (a sub-folder too), bad inputs, and every command's result."""
    root = setup["root"] / "cli"
    photos = [np.asarray(Image.open(f).convert("RGB")) for f in setup["files"]]
    for name, photo in zip(("x.png", "sub/y.png"), photos[:2], strict=True):
        for folder, image in (("A", photo), ("B", distortions(photo, 0)["noise"])):
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.astype(np.uint8)).save(path)
    a, b, model = root / "A", root / "B", ["--model", setup["backbone"]]
    bad = {}
    for case in [*_BAD, *_SKIPPED]:
        folder = root / "bad" / case
        for side in ("A", "B"):
            (folder / side).mkdir(parents=True)
            Image.fromarray(photos[0]).save(folder / side / "x.png")
            if case in _SKIPPED:
                Image.fromarray(photos[1]).save(folder / side / "ok.png")
        args = [folder / "A", folder / "B", *model]
        if case == "missing":
            args[1] = folder / "C"
        elif case == "file_folder":
            args[0] = folder / "A" / "x.png"
        elif case == "no_twin":
            Image.fromarray(photos[0]).save(folder / "A" / "z.png")
        elif case == "sizes":
            Image.fromarray(photos[0][:, :32]).save(folder / "B" / "x.png")
        elif case == "not_image":
            (folder / "B" / "x.png").write_bytes(b"not an image")
        elif case == "no_model":
            args[3] = folder / "nothing.keras"
        bad[case] = ["lpips", *args]
    good = {
        "one": ["lpips", a / "x.png", b / "x.png", *model],
        "json": ["lpips", a, b, *model, "--json"],
        "text": ["lpips", a, b, *model],
    }
    done = kvgg_batch(*good.values(), *bad.values(), cwd=root)
    results = dict(zip([*good, *bad], done, strict=True))
    pixels = {
        side: np.stack(
            [np.asarray(Image.open(root / side / n)) for n in ("sub/y.png", "x.png")]
        ).astype(np.float32)
        for side in ("A", "B")
    }
    return root, results, reference(setup["net"], pixels["A"], pixels["B"])


def test_cli_two_images_and_two_folders(cli):
    root, results, expected = cli
    for key in ("one", "json", "text"):
        assert results[key].returncode == 0, results[key].stderr[-2000:]
    value, name = results["one"].stdout.split()
    assert name == "x.png" and abs(float(value) - expected[1]) < 1e-5
    report = json.loads(results["json"].stdout)
    assert [p["name"] for p in report["pairs"]] == ["sub/y.png", "x.png"]
    np.testing.assert_allclose([p["lpips"] for p in report["pairs"]], expected, atol=1e-5)
    assert abs(report["mean"] - expected.mean()) < 1e-5
    lines = results["text"].stdout.splitlines()
    assert [line.split()[1] for line in lines[:2]] == ["sub/y.png", "x.png"]
    assert (
        lines[2].endswith("mean of 2 pairs")
        and abs(float(lines[2].split()[0]) - expected.mean()) < 1e-5
    )
    assert sorted(p.name for p in root.iterdir()) == ["A", "B", "bad"]  # nothing written


@pytest.mark.parametrize("case", list(_BAD))
def test_cli_bad_input_one_line(cli, case):
    result = cli[1][case]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kvgg: error: "), result.stderr
    assert re.search(_BAD[case], lines[0]), lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("case", list(_SKIPPED))
def test_cli_pairs_it_cannot_compare_are_skipped(cli, case):
    result = cli[1][case]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("kvgg: skipped pair "), result.stderr
    assert re.search(_SKIPPED[case], lines[0]), lines[0]
    value, name = result.stdout.split()  # the pair it could compare: one image, same twice
    assert name == "ok.png" and float(value) == pytest.approx(0.0, abs=1e-6)
