"""Run by the `other_backend` fixture (tests/conftest.py) as `python backend_script.py BACKEND DIR`.

One fresh Python per backend (JAX, torch) for the whole suite: it reads the inputs that
`conftest.write_backend_inputs` wrote to DIR and writes what this backend computes from them
(builders' outputs, preprocess_input, the perceptual and style losses with their gradients,
the device half of the training input and the model steps it runs in, MaxPooling2x2 and
its gradient, Grad-CAM maps)
as .npy files next to them. The tests compare them with TensorFlow and NumPy in their own
process. Not collected by pytest (no test_ prefix).
"""

import json
import sys

import keras
import numpy as np

import keras_vgg
from keras_vgg import augment, explain, features

backend, folder = sys.argv[1], sys.argv[2]
assert keras.backend.backend() == backend, keras.backend.backend()
settings = json.loads(open(f"{folder}/settings.json", encoding="utf-8").read())


def save(name, value):
    np.save(f"{folder}/{name}_{backend}.npy", keras.ops.convert_to_numpy(value))


# The builders (tests/test_backends.py): the same weights, the same outputs, dense too.
x, big = np.load(f"{folder}/x.npy"), np.load(f"{folder}/big.npy")
for config in ("A-LRN", "C"):
    model = keras_vgg.build(
        config,
        weights=f"{folder}/{config}.weights.h5",
        input_shape=(64, 64, 3),
        kernel_initializer="zeros",  # the weights are loaded: no random initialisation
        **settings["small"],
    )
    save(config, model(x))
    save(f"{config}_dense", keras_vgg.to_fully_convolutional(model)(big))

# preprocess_input (tests/test_backends.py): native tensors in, native tensors out.
if backend == "torch":
    import torch

    native = torch.Tensor
else:
    import jax

    native = jax.Array
pixels = np.load(f"{folder}/pixels.npy")
for name in settings["conventions"]:
    preprocessing = getattr(keras_vgg, name)
    for dtype in ("float32", "uint8"):
        images = pixels.astype(dtype)
        out = keras_vgg.preprocess_input(
            keras.ops.convert_to_tensor(images), preprocessing=preprocessing
        )
        assert isinstance(out, native), type(out)
        save(f"{name}_{dtype}_tensor", out)
        out = keras_vgg.preprocess_input(images, preprocessing=preprocessing)
        assert isinstance(out, np.ndarray), type(out)
        save(f"{name}_{dtype}_numpy", out)
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras_vgg.preprocess_input(inputs, preprocessing=preprocessing))
    save(f"{name}_model", model(pixels))

# The losses (tests/test_features.py): per-image values and the gradient of the mean.
vgg = keras_vgg.build(
    "D",
    include_top=False,
    input_shape=(32, 32, 3),
    width=settings["loss_width"],
    kernel_initializer="zeros",
    weights=f"{folder}/vgg.weights.h5",
)
a, b = np.load(f"{folder}/a.npy"), np.load(f"{folder}/b.npy")
losses = {
    "perceptual": features.PerceptualLoss(vgg, "lpips", [1, 2, 3, 4, 5], pre_activation=True),
    "style": features.StyleLoss(vgg, "gatys", pooling="avg", input_range=1.0),
}
for name, loss in losses.items():
    scale = settings["loss_scale"][name]
    if backend == "jax":  # one compiled program (value and gradient), not one per operation
        value, grad = jax.jit(
            lambda y, loss=loss, scale=scale: (
                loss.call(a / scale, y),
                jax.grad(lambda z: loss(a / scale, z))(y),
            )
        )(b / scale)
    else:
        value = loss.call(a / scale, b / scale)
        y = torch.tensor(b / scale, requires_grad=True)
        loss(torch.tensor(a / scale), y).backward()
        grad = y.grad
    save(name, value)
    save(f"{name}_grad", grad)

# The device half of the training input (tests/test_augment.py): flip, colour shift and
# each convention on a uint8 batch, and a net's steps fed the pipelines' batches.
batch = {k: np.load(f"{folder}/aug_{k}.npy") for k in augment.BATCH_KEYS}
for name in settings["conventions"]:
    save(f"aug_{name}", augment.device_batch(batch, getattr(keras_vgg, name)))
net = keras_vgg.build(
    "A",
    weights=f"{folder}/aug.weights.h5",
    input_shape=(32, 32, 3),
    kernel_initializer="zeros",
    **settings["small"],
)
net.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
labels = np.array([1, 3])
net_batch = {
    "image": np.load(f"{folder}/aug_net_image.npy"),
    "flip": np.array([True, False]),
    "color": np.array([[10.0, -5.0, 2.5], [-30.0, 0.0, 7.0]], np.float32),
}
finished = augment.device_batch(net_batch, keras_vgg.PAPER)
plain_loss = net.test_on_batch(finished, labels)  # builds the loss (float input, no hook)
augment.attach_device_input(net)
save("aug_losses", np.array([plain_loss, net.test_on_batch(net_batch, labels)]))
save("aug_train_loss", np.array(net.train_on_batch(net_batch, labels)))

# MaxPooling2x2 (tests/test_layers.py): output and the gradient of sum(pool(x) * w), both
# data formats, computed channels last and transposed back for the comparison.
pool_x, pool_w = np.load(f"{folder}/pool_x.npy"), np.load(f"{folder}/pool_w.npy")
for data_format, axes in (("channels_last", (0, 1, 2, 3)), ("channels_first", (0, 3, 1, 2))):
    pool = keras_vgg.MaxPooling2x2(data_format=data_format)
    back = np.argsort(axes)
    x_in, w_in = pool_x.transpose(axes), pool_w.transpose(axes)
    if backend == "jax":
        value, grad = jax.jit(
            lambda x, pool=pool, w=w_in: (
                pool(x),
                jax.grad(lambda z: (pool(z) * w).sum())(x),
            )
        )(x_in)
    else:
        x = torch.tensor(x_in, requires_grad=True)
        value = pool(x)
        (value * torch.tensor(w_in)).sum().backward()
        value, grad = value.detach(), x.grad
    save(f"pool_{data_format}", keras.ops.convert_to_numpy(value).transpose(back))
    save(f"pool_{data_format}_grad", keras.ops.convert_to_numpy(grad).transpose(back))

# Grad-CAM (tests/test_explain.py): both methods, top and given classes, a nested model.
cam_net = keras_vgg.build(
    "D",
    weights=f"{folder}/cam.weights.h5",
    input_shape=(64, 64, 3),
    kernel_initializer="zeros",
    **settings["small"],
)
cam_x = np.load(f"{folder}/cam_x.npy")
for method in ("gradcam", "gradcam++"):
    save(f"cam_{method}", explain.grad_cam(cam_net, cam_x, method=method))
    save(f"cam_{method}_given", explain.grad_cam(cam_net, cam_x, [1, 3], "block4_conv3", method))
nested_in = keras.Input((64, 64, 3))
save("cam_nested", explain.grad_cam(keras.Model(nested_in, cam_net(nested_in)), cam_x))
