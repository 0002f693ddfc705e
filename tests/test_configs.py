"""Table 1 as the builders produce it, checked against the paper's table written out here."""

import keras
import pytest
from conftest import CONFIG_NAMES, SMALL

import keras_vgg
from keras_vgg import configs

# Table 1, transcribed independently of keras_vgg.configs: "c1-N" is conv1-N, "LRN" LRN,
# plain numbers conv3-N, "|" a max-pool.
TABLE_1 = {
    "A": "64 | 128 | 256 256 | 512 512 | 512 512 |",
    "A-LRN": "64 LRN | 128 | 256 256 | 512 512 | 512 512 |",
    "B": "64 64 | 128 128 | 256 256 | 512 512 | 512 512 |",
    "C": "64 64 | 128 128 | 256 256 c1-256 | 512 512 c1-512 | 512 512 c1-512 |",
    "D": "64 64 | 128 128 | 256 256 256 | 512 512 512 | 512 512 512 |",
    "E": "64 64 | 128 128 | 256 256 256 256 | 512 512 512 512 | 512 512 512 512 |",
}
TABLE_2_EXACT = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}


def expected_layers(config, width=1.0):
    """[(kind, filters, kernel)] per Table 1."""
    out = []
    for token in TABLE_1[config].split():
        if token == "|":
            out.append(("pool", None, None))
        elif token == "LRN":
            out.append(("lrn", None, None))
        elif token.startswith("c1-"):
            out.append(("conv", round(int(token[3:]) * width), 1))
        else:
            out.append(("conv", round(int(token) * width), 3))
    return out


def expected_param_count(config, width=1.0, fc_units=4096, classes=1000, size=224):
    count, channels = 0, 3
    for kind, filters, kernel in expected_layers(config, width):
        if kind == "conv":
            count += kernel * kernel * channels * filters + filters
            channels = filters
    flat = (size // 32) ** 2 * channels
    count += flat * fc_units + fc_units + fc_units * fc_units + fc_units
    count += fc_units * classes + classes
    return count


def built_layers(model):
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            out.append(("conv", layer.filters, layer.kernel_size[0]))
        elif isinstance(layer, keras.layers.MaxPooling2D):
            out.append(("pool", None, None))
        elif isinstance(layer, keras_vgg.LocalResponseNormalization):
            out.append(("lrn", None, None))
    return out


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_layers_follow_table_1(config):
    model = keras_vgg.build(config, input_shape=(64, 64, 3), **SMALL)
    assert built_layers(model) == expected_layers(config, SMALL["width"])
    depth = sum(kind == "conv" for kind, _, _ in expected_layers(config)) + 3
    assert configs.weight_layers(config) == depth


@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_small_parameter_count_matches_hand_count(config):
    model = keras_vgg.build(config, input_shape=(64, 64, 3), **SMALL)
    assert model.count_params() == expected_param_count(
        config, SMALL["width"], SMALL["fc_units"], SMALL["classes"], 64
    )


def test_hand_count_reproduces_table_2():
    # The reference used above gives the paper's exact figures at full size.
    for config, count in TABLE_2_EXACT.items():
        assert expected_param_count(config) == count


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_full_size_parameter_counts_are_exact(config):
    # Zero kernels: the count does not depend on the values, and they are ~6x cheaper.
    model = keras_vgg.build(config, kernel_initializer="zeros")
    assert model.count_params() == TABLE_2_EXACT[config]


def test_layer_names_are_keras_names():
    model = keras_vgg.build("E", input_shape=(64, 64, 3), **SMALL)
    names = [layer.name for layer in model.layers]
    assert names[:5] == [
        "input_layer", "model_record", "block1_conv1", "block1_conv2", "block1_pool"
    ]  # fmt: skip
    assert "block5_conv4" in names and "block5_pool" in names
    assert names[names.index("flatten") :] == [
        "flatten",
        "fc1",
        "fc1_dropout",
        "fc2",
        "fc2_dropout",
        "predictions",
        "predictions_activation",
    ]
    lrn = keras_vgg.build("A-LRN", input_shape=(64, 64, 3), **SMALL)
    assert [layer.name for layer in lrn.layers][2:5] == [
        "block1_conv1",
        "block1_lrn",
        "block1_pool",
    ]


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("vgg11", "A"),
        ("VGG13", "B"),
        ("vgg16", "D"),
        ("Vgg19", "E"),
        ("a-lrn", "A-LRN"),
        ("a_lrn", "A-LRN"),
        ("c", "C"),
        (" d ", "D"),
    ],
)
def test_aliases_and_case(alias, canonical):
    assert configs.canonical_name(alias) == canonical


@pytest.mark.parametrize("bad", ["F", "vgg18", "", None, 16])
def test_unknown_config_is_a_value_error(bad):
    with pytest.raises(ValueError, match=r"Received: config="):
        keras_vgg.build(bad)


@pytest.mark.parametrize(
    ("filters", "width", "channels"),
    # Python rounds halves to even (64 * 0.3 = 19.2, 128 * 0.1 = 12.8, 512 / 1024 = 0.5);
    # at least one channel whatever the width.
    [
        (64, 0.1, 6),
        (128, 0.1, 13),
        (256, 0.3, 77),
        (64, 1 / 16, 4),
        (512, 1 / 1024, 1),
        (64, 1e-6, 1),
        (256, 1 / 512 * 5, 2),
    ],
)
def test_scaled_filters_is_what_build_gives_each_conv(filters, width, channels):
    assert configs.scaled_filters(filters, width) == channels
    block = {64: 1, 128: 2, 256: 3, 512: 4}[filters]
    model = keras_vgg.build("A", width=width, include_top=False, input_shape=(32, 32, 3))
    assert model.get_layer(f"block{block}_conv1").filters == channels
