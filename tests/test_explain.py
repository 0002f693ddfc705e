"""Grad-CAM and Grad-CAM++ (`keras_vgg.explain`) against `pytorch-grad-cam` (the `grad-cam`
package) on a torch VGG holding the same weights, on real photographs; nested models; the
`kvgg explain` command.

The torch net is torchvision's VGG layout (`features.N`, `classifier.N`), its state dict
saved as a `.pth` and read by `keras_vgg.build` (so both hold the same weights); torch is fed
the torchvision-normalised tensor made here in NumPy, ours the raw uint8 pixels (its record
says torchvision). Fast tier: configuration D at width 1/8 on 64x64 photographs (pool5 is
2x2, so torch's head takes it as is); slow tier: the full VGG-16 of torchvision at 224x224.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import SMALL, kvgg_batch
from PIL import Image
from torch_reference import reference

import keras_vgg
from keras_vgg.explain import CamNet, grad_cam, resize_bilinear

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# Our layer -> torchvision's module (the ReLU after the conv: the rectified map) in D.
TORCH_LAYER = {"block5_conv3": 29, "block4_conv3": 22, "block3_conv2": 13}


def photographs(side: int, names=("astronaut", "chelsea", "coffee")) -> np.ndarray:
    """scikit-image's bundled photographs, resized (bilinear) to side x side uint8 RGB."""
    data = pytest.importorskip("skimage.data")
    out = []
    for name in names:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        out.append(np.asarray(image.resize((side, side), Image.BILINEAR)))
    return np.stack(out)


def torch_vgg16(width_div: int, classes: int, fc_units: int, pool5: int):
    """torchvision's VGG-16 module layout, every conv's channels divided by `width_div`,
    no adaptive pooling (the head takes pool5's `pool5` x `pool5` map as is)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    layers, channels = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"):  # fmt: skip
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v // width_div, 3, padding=1), nn.ReLU()]
            channels = v // width_div

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(
                nn.Linear(channels * pool5 * pool5, fc_units), nn.ReLU(), nn.Dropout(),
                nn.Linear(fc_units, fc_units), nn.ReLU(), nn.Dropout(),
                nn.Linear(fc_units, classes),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    net = VGG().eval()
    for m in net.modules():  # spread the scores so classes differ (random weights)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(m.bias, 0, 0.05)
    return net


def torch_cams(net, pixels, layer, classes, method):
    torch = pytest.importorskip("torch")
    cam_lib = reference("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = ((pixels / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2)
    cls = cam_lib.GradCAM if method == "gradcam" else cam_lib.GradCAMPlusPlus
    with cls(model=net, target_layers=[net.features[TORCH_LAYER[layer]]]) as cam:
        targets = None if classes is None else [ClassifierOutputTarget(int(c)) for c in classes]
        return cam(torch.tensor(x, dtype=torch.float32), targets=targets)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A torch VGG-16 at width 1/8 and our model read from its state dict (64x64 input)."""
    torch = pytest.importorskip("torch")
    net = torch_vgg16(8, classes=6, fc_units=32, pool5=2)
    path = tmp_path_factory.mktemp("cam") / "vgg16_small.pth"
    torch.save(net.state_dict(), path)
    ours = keras_vgg.build(
        "D", width=0.125, fc_units=32, classes=6, input_shape=(64, 64, 3), weights=str(path)
    )
    assert ours.inputs[0].shape[1:3] == (64, 64)
    assert ours.record.preprocessing == keras_vgg.TORCHVISION
    return net, ours


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("layer", ["block5_conv3", "block4_conv3"])
def test_equals_pytorch_grad_cam(small, method, layer):
    net, ours = small
    pixels = photographs(64)
    cam = CamNet(ours, layer, method)
    for classes in (None, [0, 3, 5], [2, 2, 1]):
        expected = torch_cams(net, pixels.astype(np.float64), layer, classes, method)
        got = cam(pixels, classes)[0]
        assert got.shape == (3, 64, 64) and got.min() >= 0 and got.max() <= 1
        assert expected.std() > 0.05  # a map with something in it
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{classes}")
    # The top class is the torch net's top class.
    torch = pytest.importorskip("torch")
    x = torch.tensor(((pixels / 255.0 - MEAN) / STD).transpose(0, 3, 1, 2), dtype=torch.float32)
    np.testing.assert_array_equal(cam(pixels)[1], net(x).argmax(-1).numpy())


def test_default_layer_is_the_last_conv(small):
    _, ours = small
    pixels = photographs(64)
    np.testing.assert_array_equal(
        grad_cam(ours, pixels), grad_cam(ours, pixels, None, "block5_conv3")
    )
    assert CamNet(ours).layer == "block5_conv3"
    bn = keras_vgg.build("B", batch_norm=True, width=0.125, input_shape=(32, 32, 3), fc_units=8)
    assert CamNet(bn).layer == "block5_conv2_relu"


def test_resize_is_opencv_linear():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for shape, size in (((4, 6), (64, 96)), ((7, 7), (224, 224)), ((9, 5), (4, 3))):
        m = rng.random(shape).astype(np.float32)
        np.testing.assert_allclose(
            resize_bilinear(m[None], size)[0], cv2.resize(m, size[::-1]), atol=1e-6
        )


def nested_models(vgg):
    """The same network seen through a user's model: a functional model calling the VGG as
    a layer, and a Sequential holding it."""
    inputs = keras.Input(vgg.inputs[0].shape[1:])
    functional = keras.Model(inputs, vgg(inputs))
    sequential = keras.Sequential([keras.Input(vgg.inputs[0].shape[1:]), vgg])
    return functional, sequential


def test_nested_model_equals_the_bare_model(small):
    _, ours = small
    pixels = photographs(64)
    for method in ("gradcam", "gradcam++"):
        bare = grad_cam(ours, pixels, [1, 2, 3], "block4_conv3", method)
        for model in nested_models(ours):
            nested = grad_cam(model, pixels, [1, 2, 3], "block4_conv3", method)
            np.testing.assert_allclose(nested, bare, atol=1e-6)


def test_transfer_learning_shape_by_hand():
    """Sequential([body, GlobalAveragePooling2D, Dense]): the gradient by hand in NumPy
    (Dense after an average: d y_c / d A = w_c / (h w) at every location)."""
    keras.utils.set_random_seed(1)
    body = keras_vgg.build("A", include_top=False, width=0.125, input_shape=(64, 64, 3))
    dense = keras.layers.Dense(4)
    model = keras.Sequential(
        [keras.Input((64, 64, 3)), body, keras.layers.GlobalAveragePooling2D(), dense]
    )
    pixels = photographs(64)
    got = grad_cam(model, pixels, [0, 1, 2], "block5_conv2")
    x = keras_vgg.preprocess_input(
        pixels.astype(np.float32), preprocessing=body.record.preprocessing
    )
    a = np.asarray(keras.Model(body.inputs, body.get_layer("block5_conv2").output)(x), np.float64)
    w = dense.get_weights()[0][:, [0, 1, 2]].T  # (3, channels)
    cam = np.maximum(np.einsum("bhwc,bc->bhw", a, w / (a.shape[1] * a.shape[2])), 0)

    def norm(m):
        m = m - m.min(axis=(1, 2), keepdims=True)
        return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))

    cv2 = pytest.importorskip("cv2")
    expected = norm(np.stack([cv2.resize(np.float32(c), (64, 64)) for c in norm(cam)]))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_soft_max_built_into_the_last_dense_is_left_out():
    """Dense(n, activation="softmax") (keras.io's transfer-learning head): the maps are of
    the logits, those of the same weights with the soft-max as a layer of its own."""
    keras.utils.set_random_seed(2)
    body = keras_vgg.build("A", include_top=False, width=0.125, input_shape=(64, 64, 3))
    built_in = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            body,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    apart = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            body,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
            keras.layers.Activation("softmax"),
        ]
    )
    apart.layers[-2].set_weights(built_in.layers[-1].get_weights())
    pixels = photographs(64)
    got = grad_cam(built_in, pixels, [0, 1, 4], "block5_conv2")
    assert got.max() == pytest.approx(1.0)  # the soft-max's saturated gradient gives ~0
    np.testing.assert_allclose(got, grad_cam(apart, pixels, [0, 1, 4], "block5_conv2"))
    assert built_in.layers[-1].activation is keras.activations.softmax  # left as it was


def test_refusals(small, tmp_path):
    _, ours = small
    pixels = photographs(64)
    with pytest.raises(ValueError, match="'block9_conv1': no such layer"):
        grad_cam(ours, pixels, layer="block9_conv1")
    for layer in ("fc1", "block5_pool"):  # layers of the model, but no conv's map
        with pytest.raises(ValueError, match=f"'{layer}': not a conv layer of the model's VGG"):
            grad_cam(ours, pixels, layer=layer)
    with pytest.raises(ValueError, match="gives 2 classes for 3 images"):
        grad_cam(ours, pixels, class_index=[1, 2])
    with pytest.raises(
        ValueError, match=r"float64 batch lies in \[0, 0\.\d+\]: multiply it by 255"
    ):
        grad_cam(ours, pixels / 255.0)
    with pytest.raises(ValueError, match="raw RGB pixels, 0 to 255"):
        grad_cam(ours, pixels.astype(np.float32) - 128)
    with pytest.raises(ValueError, match="class_index 6 is not one of the model's 6"):
        grad_cam(ours, pixels, class_index=6)
    with pytest.raises(ValueError, match="method must be one of"):
        grad_cam(ours, pixels, method="cam")
    with pytest.raises(ValueError, match="images of 32x32 pixels; the model takes 64x64"):
        grad_cam(ours, pixels[:, :32, :32])
    inputs = keras.Input((64, 64, 3))
    branch = keras.layers.Add()([ours(inputs), ours(inputs)])
    with pytest.raises(ValueError, match="not one chain"):
        grad_cam(keras.Model(inputs, branch), pixels)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["block5_conv3", "block4_conv3", "block3_conv2"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_equals_pytorch_grad_cam_full_vgg16(tmp_path, method, layer):
    """torchvision's own VGG-16 (random weights, seeded) at 224x224, two photographs, each
    one's top class and two given classes, three layers.

    At block 5 the maps agree to 1e-4. Below it they agree to 1e-2: where a pooling
    window's two largest activations differ by a rounding error (torch and TensorFlow round
    differently), the frameworks send the window's gradient to different locations, and the
    convs behind it spread the difference (Grad-CAM++'s weights, non-linear in each
    location's gradient, move most). From the same maps and gradients the two formulas
    agree to 1e-6 (checked by hand), so what differs is the gradient's tie-breaking.
    """
    torch = pytest.importorskip("torch")
    tv = reference("torchvision")
    torch.manual_seed(0)
    net = tv.models.vgg16(weights=None).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    path = tmp_path / "vgg16.pth"
    torch.save(net.state_dict(), path)
    ours = keras_vgg.build("D", weights=str(path))
    pixels = photographs(224, ("astronaut", "chelsea"))
    expected = np.concatenate(
        [torch_cams(net, pixels.astype(np.float64), layer, c, method) for c in (None, [1, 500])]
    )
    got = np.concatenate([grad_cam(ours, pixels, c, layer, method) for c in (None, [1, 500])])
    # Maps with something in them (Grad-CAM's map of a random net can be all negative at a
    # layer for an image and class: zero after the ReLU in both).
    assert (expected.reshape(len(expected), -1).std(axis=1) > 0.05).sum() >= 1
    np.testing.assert_allclose(got, expected, atol=1e-4 if layer == "block5_conv3" else 1e-2)


def test_same_maps_on_jax_and_torch(other_backend):
    """tests/backend_script.py ran grad_cam on JAX / torch (their own autodiff).

    On JAX, `MaxPooling2x2` shares the gradient of a window whose maximum is tied (an
    all-zero window after a ReLU) among the ties instead of giving it to one: Grad-CAM's
    weights (sums over locations) do not change, Grad-CAM++'s (a non-linear function of
    each location's gradient) change a little, hence its looser tolerance there.
    """
    backend, folder = other_backend
    loose = {"gradcam": 1e-4, "gradcam++": 2e-2 if backend == "jax" else 1e-4}
    model = keras_vgg.build(
        "D", input_shape=(64, 64, 3), weights=str(folder / "cam.weights.h5"), **SMALL
    )
    x = np.load(folder / "cam_x.npy")
    for method in ("gradcam", "gradcam++"):
        expected = {
            "": grad_cam(model, x, method=method),
            "_given": grad_cam(model, x, [1, 3], "block4_conv3", method),
        }
        for suffix, maps in expected.items():
            got = np.load(folder / f"cam_{method}{suffix}_{backend}.npy")
            np.testing.assert_allclose(got, maps, atol=loose[method], err_msg=f"{method}{suffix}")
    nested = np.load(folder / f"cam_nested_{backend}.npy")
    np.testing.assert_allclose(nested, grad_cam(model, x), atol=1e-4)


# === kvgg explain ===


@pytest.fixture(scope="module")
def demo_model(small, tmp_path_factory):
    _, ours = small
    root = tmp_path_factory.mktemp("explain")
    model = keras_vgg.build("D", width=0.125, fc_units=32, classes=6, input_shape=(64, 64, 3))
    model.set_weights(ours.get_weights())
    model.record = ours.record.replace(class_names=tuple("abcdef"))
    model.save(root / "m.keras")
    for k, folder in enumerate(("x", "y")):
        (root / "imgs" / folder).mkdir(parents=True)
        Image.fromarray(photographs(96)[k][:, :80]).save(root / "imgs" / folder / "0.png")
    return root, model


def test_kvgg_explain_writes_overlays_and_peaks(demo_model):
    root, model = demo_model
    out, m = root / "out", root / "m.keras"
    images = [root / "imgs" / "x" / "0.png", root / "imgs" / "y" / "0.png"]
    first, again, dense, bad = kvgg_batch(
        ["explain", *images, "--model", m, "--class", "c", "--layer", "block4_conv3",
         "-o", out, "--json"],
        # Again without --overwrite: refused, one line, nothing computed.
        ["explain", *images, "--model", m, "-o", out, "--method", "gradcam"],
        ["explain", *images, "--model", m, "-o", out, "--method", "dense"],
        ["explain", images[0], "--model", m, "-o", root / "o2", "--class", "zz"],
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    entries = json.loads(first.stdout)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*_gradcam.png"))
    assert written == ["x/0_gradcam.png", "y/0_gradcam.png"]
    for entry, image in zip(entries, images, strict=True):
        pixels = np.asarray(Image.open(image))
        assert entry["class_name"] == "c"
        resized = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BILINEAR))
        maps = grad_cam(model, resized[None], 2, "block4_conv3")
        heat = np.clip(resize_bilinear(maps, pixels.shape[:2])[0], 0, 1)
        y, x = np.unravel_index(np.argmax(heat), heat.shape)
        assert entry["peak"] == [int(x), int(y)] and abs(entry["value"] - heat[y, x]) < 1e-6
        picture = np.asarray(Image.open(entry["picture"]), np.float64)
        # The overlay: red over the grey image, by hand (below the label's text).
        grey = np.asarray(Image.fromarray(pixels).convert("L").convert("RGB"), np.float64)
        alpha = heat[..., None]
        panel = grey * 0.6 * (1 - alpha) + np.array([255.0, 0, 0]) * alpha
        np.testing.assert_allclose(picture[14:], panel[14:], atol=1.01)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr
    assert "already exists" in again.stderr
    assert dense.returncode == 0, dense.stderr
    assert len(list(out.rglob("*_dense.png"))) == 2
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--class 'zz'" in bad.stderr and not (root / "o2").exists()
