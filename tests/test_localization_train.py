"""Training a localisation net with `fit` (Appendix A): recipe keys, init, fc-only fine-tuning."""

import csv
import math

import keras
import numpy as np
import pytest

import keras_vgg
from keras_vgg import recipe as recipe_lib
from keras_vgg import runs, training
from keras_vgg.localization import annotations as A
from keras_vgg.record import ModelRecord


@pytest.fixture(scope="module")
def boxes_tree(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("loctrain")
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for k in range(4):
            pixels = rng.integers(0, 60, (48, 56, 3)).astype(np.uint8)
            x0, y0 = rng.integers(1, 20, 2)
            box = (int(x0), int(y0), int(x0) + 24, int(y0) + 20)
            pixels[box[1] - 1 : box[3], box[0] - 1 : box[2]] = 230 if cls == "a" else 150
            (root / "images" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "images" / cls / f"{k}.png")
            A.write_voc_xml(root / "xml" / cls / f"{k}.xml", f"{k}.png", (56, 48), [(cls, box)])
    classifier = keras_vgg.build(
        "A",
        classes=2,
        input_shape=(32, 32, 3),
        width=1 / 32,
        fc_units=16,
        record=ModelRecord(crop_size=32, class_names=("a", "b")),
    )
    classifier.save(root / "classifier.keras")
    return root


def loc_recipe(root, **model):
    raw = {
        "model": {
            "config": "A",
            "width": 1 / 32,
            "fc_units": 16,
            "task": "localization",
            "box_mode": "pcr",
            "weights": str(root / "classifier.keras"),
            **model,
        },
        "data": {
            "root": str(root / "images"),
            "annotations": str(root / "xml"),
            "train_scale": 40,
            "crop_size": 32,
            "val_split": 0.25,
            "color_shift": False,
            "threads": 1,
        },
        "optimizer": {"lr": 1e-3},
        "schedule": {"epochs": 2},
        "init": {"mode": "all_but_head"},
        "run": {
            "batch_size": 2,
            "precision": "float32",
            "runs_dir": str(root / "runs"),
            "name": "loc",
        },
    }
    return recipe_lib.parse_recipe(raw, path="loc.toml")


def test_fit_trains_a_localisation_net_fc_only(boxes_tree):
    recipe = loc_recipe(boxes_tree, fine_tune="fc")
    result = training.fit(recipe, verbose=0, print_fn=lambda line: None)
    model = result.model
    record = keras_vgg.record_of(model)
    assert (record.task, record.box_mode, record.class_names) == ("localization", "pcr", ("a", "b"))
    assert model.output.shape[-1] == 8
    source = keras.saving.load_model(boxes_tree / "classifier.keras")
    # fc-only: the convolutions are the classifier's; fc1 has moved.
    np.testing.assert_array_equal(
        model.get_layer("block3_conv1").get_weights()[0],
        source.get_layer("block3_conv1").get_weights()[0],
    )
    assert not np.allclose(
        model.get_layer("fc1").get_weights()[0], source.get_layer("fc1").get_weights()[0]
    )
    # The run directory of any run: history with the validation localisation error, best model.
    with open(result.run_dir + "/" + runs.HISTORY) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 <= float(r["val_top1_error"]) <= 1 for r in rows)
    assert math.isnan(float(rows[0]["val_top5_error"]))
    best = keras.saving.load_model(result.run_dir + "/" + runs.BEST_MODEL)
    assert keras_vgg.record_of(best) == record
    # A finished run is refused, as for any recipe.
    with pytest.raises(ValueError, match="this run has finished"):
        training.fit(recipe, verbose=0, print_fn=lambda line: None)


def test_localisation_recipe_keys_are_checked(boxes_tree):
    with pytest.raises(ValueError, match="loc.toml: model.box_mode: must be one of"):
        loc_recipe(boxes_tree, box_mode="both")
    with pytest.raises(ValueError, match="loc.toml: model.fine_tune: must be one of"):
        loc_recipe(boxes_tree, fine_tune="conv")
    raw = {"model": {"task": "localization"}, "data": {"root": "/x"}}
    with pytest.raises(ValueError, match="r.toml: data.annotations: missing"):
        recipe_lib.parse_recipe(raw, path="r.toml")
    for name in ("loc_d_256", "loc_d_384"):
        r = recipe_lib.load_recipe(f"recipes/{name}.toml")
        s = int(name[-3:])
        assert (r.model.task, r.model.config, r.data.train_scale.bounds) == (
            "localization",
            "D",
            (s, s),
        )
        assert (r.optimizer.lr, r.init.from_run, r.init.mode) == (1e-3, f"d_{s}", "all_but_head")
