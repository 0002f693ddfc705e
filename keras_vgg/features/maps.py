"""Named feature maps of a VGG's conv body, as a multi-output Keras model.

`feature_extractor` rebuilds a model's conv body (any configuration of Table 1, with or
without its FC head, any input size) up to the deepest layer asked and returns the maps of
the named layers (`block3_conv3`, `block4_pool`, ...) as a dict. Options the feature uses
of VGG ask for:

- `pre_activation=True`: each conv's map *before* its ReLU (perceptual-loss work asks for
  it; Keras folds the ReLU into `Conv2D(activation="relu")`, so the extractor applies a
  linear copy of the conv, then a separate ReLU).
- `pooling="avg"`: every max-pooling layer replaced by average pooling (Gatys et al.).
- `input_range=255.0` or `1.0`: the model's own input preprocessing (its record's
  `Preprocessing`) built in as the first layer, so RGB in [0, 255] or [0, 1] goes in as it
  is and the convention can never be got wrong.

The common layer sets have names (`LAYER_SETS`), each a rule on the blocks so that it maps
onto every configuration (`layer_set`); `encoder_stages` gives one map per stride 1 to 32
for U-Net / FPN encoders.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import keras

from keras_vgg.handle import open_model
from keras_vgg.layers import InputPreprocessing

__all__ = [
    "LAYER_SETS",
    "InputPreprocessing",
    "encoder_stages",
    "feature_extractor",
    "layer_set",
    "linear_copy",
]

#: Named layer sets, as (block, which conv) rules: which = "first", "last" or an index
#: (1-based, clipped to the block's convs). On D they are: "johnson" = block2_conv2 (relu2_2,
#: Johnson et al.'s feature reconstruction layer); "johnson_style" = block1_conv2,
#: block2_conv2, block3_conv3, block4_conv3; "gatys" = block1_conv1 ... block5_conv1 (style
#: layers of Gatys et al.); "gatys_content" = block4_conv2; "lpips" = block1_conv2,
#: block2_conv2, block3_conv3, block4_conv3, block5_conv3 (LPIPS's five stages).
LAYER_SETS: dict[str, tuple[tuple[int, Any], ...]] = {
    "johnson": ((2, "last"),),
    "johnson_style": ((1, "last"), (2, "last"), (3, "last"), (4, "last")),
    "gatys": ((1, "first"), (2, "first"), (3, "first"), (4, "first"), (5, "first")),
    "gatys_content": ((4, 2),),
    "lpips": ((1, "last"), (2, "last"), (3, "last"), (4, "last"), (5, "last")),
}

_CONV = re.compile(r"^block(\d+)_conv(\d+)$")


def _block_convs(model: keras.Model) -> dict[int, list[str]]:
    blocks: dict[int, list[str]] = {}
    for layer in model.layers:
        match = _CONV.match(layer.name)
        if match and isinstance(layer, keras.layers.Conv2D):
            blocks.setdefault(int(match.group(1)), []).append(layer.name)
    return blocks


def layer_set(model: keras.Model, name: str) -> tuple[str, ...]:
    """The layer names of a named set (`LAYER_SETS`) in this model's configuration.

    "last" is a block's last conv, "first" its first, an index its n-th conv (the last
    when the block has fewer: config A's block 4 has two convs, D's three).

    Raises:
        ValueError: for an unknown set name.
    """
    if name not in LAYER_SETS:
        raise ValueError(f"`layers` set must be one of {tuple(LAYER_SETS)}. Received: {name!r}")
    blocks = _block_convs(model)
    names = []
    for block, which in LAYER_SETS[name]:
        convs = blocks[block]
        if which == "first":
            names.append(convs[0])
        elif which == "last":
            names.append(convs[-1])
        else:
            names.append(convs[min(which, len(convs)) - 1])
    return tuple(names)


def encoder_stages(model: keras.Model) -> tuple[str, ...]:
    """One layer per output stride 1, 2, 4, 8, 16, 32 (U-Net / FPN encoders).

    The last conv of each block (after its ReLU, the map before the block's pooling) gives
    strides 1 to 16, `block5_pool` stride 32.
    """
    blocks = _block_convs(model)
    return (*(blocks[b][-1] for b in sorted(blocks)), f"block{max(blocks)}_pool")


def linear_copy(layer: keras.layers.Conv2D) -> keras.layers.Conv2D:
    """A copy of a conv layer without its activation, its weights copied (not shared).

    Its output is the conv's pre-activation map: `Conv2D(activation="relu")` folds the ReLU
    in, so the map before it is not a tensor of the original graph.
    """
    config = layer.get_config()
    config.update(activation=None, name=f"{layer.name}_linear", trainable=False)
    copy = keras.layers.Conv2D.from_config(config)
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


def feature_extractor(
    model: keras.Model,
    layers: str | Sequence[str],
    *,
    pre_activation: bool = False,
    pooling: str = "max",
    input_range: float | None = 255.0,
    name: str | None = None,
    preprocessing: Any = None,
) -> keras.Model:
    """A multi-output model returning named feature maps of a VGG's conv body.

    The conv body is rebuilt on an input of any height and width (the FC head is left
    out), as far as the deepest layer asked; layers other than replaced ones are the
    model's own (weights shared). The extractor is frozen (`trainable=False`).

    Args:
        model: A model from `keras_vgg.build` (any configuration, with or without its FC
            head, VGG-BN too) or keras.applications' VGG16 / VGG19; channels last.
        layers: Layer names (`block3_conv3`, `block4_pool`, ...) or the name of a set in
            `LAYER_SETS` ("johnson", "gatys", "lpips", ...).
        pre_activation: Conv maps before their ReLU (for VGG-BN, the batch norm's output).
        pooling: "max" (the model's) or "avg" (each max pooling replaced by an average
            pooling of the same window, Gatys et al.).
        input_range: 255.0 or 1.0: the model's preprocessing (from its record) is built in
            and the extractor takes RGB in [0, input_range]. None: it takes inputs already
            preprocessed.
        name: The model's name (default `<model.name>_features`).
        preprocessing: The input convention of a model that records none (keras.applications'
            VGG16: "caffe"), for `input_range`; see `keras_vgg.handle.open_model`. A model
            without a record and without it is refused: no convention is assumed.

    Returns:
        A `keras.Model` whose output is a dict: layer name -> map (batch, h, w, channels).

    Raises:
        ValueError: for an unknown layer, a channels-first model, or a bad option.
    """
    if pooling not in ("max", "avg"):
        raise ValueError(f"`pooling` must be 'max' or 'avg'. Received: pooling={pooling!r}")
    # Through the door: a localisation net's or a classifier's body, channels last, and a
    # known input convention when the extractor takes pixels.
    handle = open_model(
        model,
        needs="body",
        preprocessing=preprocessing,
        command="feature_extractor",
        takes_pixels=input_range is not None,
    )
    model = handle.model
    convention = handle.info.preprocessing
    if isinstance(layers, str):
        names = layer_set(model, layers) if layers in LAYER_SETS else (layers,)
    else:
        names = tuple(layers)
    body = []
    for layer in model.layers[1:]:
        if layer.name == "flatten" or isinstance(layer, keras.layers.Dense):
            break
        body.append(layer)
    known = [layer.name for layer in body]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(
            f"{model.name}: no conv-body layer named {unknown or names}; layers: {known}"
        )
    if any(getattr(layer, "data_format", "channels_last") == "channels_first" for layer in body):
        raise ValueError(f"{model.name}: feature_extractor needs a channels-last model")
    channels = model.inputs[0].shape[-1]
    inputs = keras.Input((None, None, channels), name="images")
    x = inputs
    if input_range is not None:
        x = InputPreprocessing(convention, input_range, name="preprocess")(x)
    outputs = {}
    deepest = max(known.index(f"{n}_relu" if f"{n}_relu" in known else n) for n in names)
    for layer in body[: deepest + 1]:
        batch_norm = f"{layer.name}_bn" in known
        if isinstance(layer, keras.layers.MaxPooling2D) and pooling == "avg":
            config = layer.get_config()
            config["name"] = f"{layer.name}_avg"
            x = keras.layers.AveragePooling2D.from_config(config)(x)
        elif (
            pre_activation
            and isinstance(layer, keras.layers.Conv2D)
            and not batch_norm
            and keras.activations.serialize(layer.activation) == "relu"
        ):
            x = linear_copy(layer)(x)
            outputs_pre = x
            x = keras.layers.ReLU(name=f"{layer.name}_relu")(x)
            if layer.name in names:
                outputs[layer.name] = outputs_pre
            continue
        else:
            x = layer(x)
        if layer.name in names:
            outputs[layer.name] = x
        # VGG-BN: the conv's map is the batch norm's (pre-ReLU) or its ReLU's output.
        base = layer.name[: -len("_bn")] if layer.name.endswith("_bn") else None
        if base in names and pre_activation:
            outputs[base] = x
        base = layer.name[: -len("_relu")] if layer.name.endswith("_relu") else None
        if base in names and not pre_activation:
            outputs[base] = x
    extractor = keras.Model(
        inputs, {n: outputs[n] for n in names}, name=name or f"{model.name}_features"
    )
    extractor.trainable = False
    return extractor
