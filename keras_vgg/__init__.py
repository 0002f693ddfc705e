"""keras-vgg: the VGG paper (Simonyan & Zisserman, ICLR 2015) as a Keras 3 package.

Public API::

    import keras_vgg
    model = keras_vgg.build("D")                      # Table 1, configuration D (VGG16)
    dense = keras_vgg.to_fully_convolutional(model)   # Sec. 3.2 dense evaluation
    x = keras_vgg.preprocess_input(images)            # subtract the mean RGB
    keras_vgg.decode_predictions(model.predict(x))

Names are imported when first used, so that `kvgg --version` does not pay for importing
Keras. Where Keras is already imported (`import keras` before `import keras_vgg`, the order
isort gives), importing the package registers its Keras classes (`VGG`, `RecordLayer`,
`LocalResponseNormalization`, `MaxPooling2x2`, `WindowDense`, `InputPreprocessing`) at once, so
`keras.saving.load_model` reads a saved VGG;
otherwise any use of `keras_vgg.build`, `keras_vgg.VGG` or the loaders registers them.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"


_EXPORTS = {
    "build": "keras_vgg.models",
    "VGG": "keras_vgg.network",
    "ModelRecord": "keras_vgg.record",
    "RecordLayer": "keras_vgg.record",
    "record_of": "keras_vgg.record",
    "TrainScale": "keras_vgg.scales",
    "model_from_weights": "keras_vgg.models",
    "to_fully_convolutional": "keras_vgg.network",
    "CONFIGS": "keras_vgg.configs",
    "ALIASES": "keras_vgg.configs",
    "canonical_name": "keras_vgg.configs",
    "LocalResponseNormalization": "keras_vgg.layers",
    "MaxPooling2x2": "keras_vgg.layers",
    "WindowDense": "keras_vgg.layers",
    "InputPreprocessing": "keras_vgg.layers",
    "IMAGENET_MEAN": "keras_vgg.imagenet",
    "Preprocessing": "keras_vgg.imagenet",
    "preprocess_input": "keras_vgg.imagenet",
    "decode_predictions": "keras_vgg.imagenet",
    "evaluate": "keras_vgg.evaluation",
    "evaluate_images": "keras_vgg.evaluation",
    "predict_images": "keras_vgg.evaluation",
    "top_k_error": "keras_vgg.evaluation",
    "load_weights": "keras_vgg.weights.load",
    "transfer_weights": "keras_vgg.weights.transfer",
    "preprocessing_for": "keras_vgg.weights.load",
    "KERAS_CAFFE": "keras_vgg.imagenet",
    "TORCHVISION": "keras_vgg.imagenet",
    "PAPER": "keras_vgg.imagenet",
    "training_dataset": "keras_vgg.data.pipelines",
    "evaluation_dataset": "keras_vgg.data.pipelines",
    "open_source": "keras_vgg.data.sources",
    "open_model": "keras_vgg.handle",
    "ModelHandle": "keras_vgg.handle",
    "ImageSource": "keras_vgg.data.sources",
    "TFRecordSource": "keras_vgg.data.sources",
    "TFDSSource": "keras_vgg.data.sources",
    "DatasetStats": "keras_vgg.data.stats",
    "IMAGENET_STATS": "keras_vgg.data.stats",
    "compute_stats": "keras_vgg.data.stats",
    "load_recipe": "keras_vgg.recipe",
    "fit": "keras_vgg.training",
    "export_model": "keras_vgg.export",
    "grad_cam": "keras_vgg.explain",
}

__all__ = ["__version__", *_EXPORTS]


if "keras" in sys.modules:
    # Registration with Keras's serialisation: without it a saved VGG cannot be read.
    importlib.import_module("keras_vgg.network")


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_vgg' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
