"""Layer names: the vocabulary every weights layout is mapped onto.

The layer names of `build`'s models (keras.applications' own: `block{i}_conv{j}`, `fc1`,
`fc2`, `predictions`) are how every file is matched to a model. This module says which of
them are the FC head, which conv layers a configuration of Table 1 has, and which
configuration a model is from its layers. Readers, loading and conversion all rely on it.
"""

from __future__ import annotations

import keras

from keras_vgg import configs as configs_lib

__all__ = ["HEAD_LAYERS", "conv_layer_names", "infer_config"]


#: The three FC layers (Sec. 2.1): a file with them may fill a model built without them.
HEAD_LAYERS: tuple[str, ...] = ("fc1", "fc2", "predictions")


def infer_config(model: keras.Model) -> str:
    """The configuration whose conv and LRN layer names and kernel sizes the model has.

    Args:
        model: A model with `build`'s layer names (keras.applications' VGG16 / VGG19 too).

    Returns:
        The configuration letter of Table 1 ("A", "A-LRN", "B", "C", "D", "E").

    Raises:
        ValueError: when no configuration has the model's conv and LRN layers.
    """
    convs = [
        (layer.name, layer.kernel_size[0])
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    lrn = any(layer.name.endswith("_lrn") for layer in model.layers)
    for key, blocks in configs_lib.CONFIGS.items():
        expected = [(name, spec.kernel_size) for name, spec in conv_layer_names(blocks)]
        has_lrn = any(isinstance(s, configs_lib.LRN) for block in blocks for s in block)
        if expected == convs and has_lrn == lrn:
            return key
    raise ValueError(
        f"Cannot tell the configuration of model {model.name!r} from its layers; "
        "pass config=. Received: a model with conv layers "
        f"{[name for name, _ in convs]}"
    )


def conv_layer_names(blocks) -> list[tuple[str, configs_lib.Conv]]:
    """The conv layers of a configuration, named as `build` names them.

    Args:
        blocks: A configuration of Table 1 (`configs.CONFIGS[key]`).

    Returns:
        (name, Conv spec) per conv layer in order: `("block1_conv1", Conv(64, 3))`, ...
    """
    names = []
    for block_index, block in enumerate(blocks, start=1):
        convs = [s for s in block if isinstance(s, configs_lib.Conv)]
        names += [(f"block{block_index}_conv{j}", s) for j, s in enumerate(convs, start=1)]
    return names
