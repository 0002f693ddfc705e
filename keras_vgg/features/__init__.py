"""Very deep features (Appendix B) and the feature uses of VGG: descriptors, feature maps,
perceptual and style losses, linear SVM transfer.

A notebook user calls the same functions as `kvgg features` / `kvgg transfer`::

    from keras_vgg import features
    features.extract_features(["runs/d"], "VOCdevkit/VOC2007", "voc07.npz", scales=(256, 384, 512))
    print(features.transfer("voc07.npz").to_table())
    extractor = features.feature_extractor(keras_vgg.build("D"), "lpips", input_range=1.0)
    model.compile(loss=features.PerceptualLoss(vgg, "johnson"))

Where things live (each imports only those listed above it):

- `maps`: named feature maps (pre- or post-ReLU, max or average pooling, preprocessing
  built in), `LAYER_SETS`, `encoder_stages`.
- `descriptors`: `DescriptorNet` (the dense twin cut before its last layer), aggregation
  over scales and nets, L2 normalisation, `describe_images`.
- `datasets`: VOC's folder layout and class-folder trees as `LabelledImages`.
- `store`: `FeatureSet` (the `.npz` of `kvgg features`) and `extract_features` (streamed).
- `losses`: `PerceptualLoss`, `StyleLoss`, `gram_matrix`.
- `lpips`: `LPIPS` (the learned perceptual distance, a loss), `lpips_distances`.
- `svm`: linear SVMs, C chosen on held-out training images, VOC APs, mean class recall.
"""

from __future__ import annotations

from keras_vgg.features.datasets import (
    VOC_CLASSES,
    LabelledImages,
    open_labelled_images,
    read_voc,
)
from keras_vgg.features.descriptors import (
    AGGREGATIONS,
    DESCRIPTOR_LAYERS,
    DescriptorNet,
    aggregate_scales,
    describe_images,
    l2_normalize,
    stack_nets,
)
from keras_vgg.features.losses import PerceptualLoss, StyleLoss, gram_matrix
from keras_vgg.features.lpips import LPIPS, LpipsPair, lpips_distances
from keras_vgg.features.maps import (
    LAYER_SETS,
    InputPreprocessing,
    encoder_stages,
    feature_extractor,
    layer_set,
)
from keras_vgg.features.store import FeatureSet, extract_features
from keras_vgg.features.svm import (
    AP_METHODS,
    TransferResult,
    class_splits,
    heldout_loss,
    holdout_split,
    mean_average_precision,
    mean_class_recall,
    select_c,
    single_label_transfer,
    transfer,
    voc_ap,
    voc_transfer,
)

__all__ = [
    "AGGREGATIONS",
    "DESCRIPTOR_LAYERS",
    "AP_METHODS",
    "LAYER_SETS",
    "LPIPS",
    "VOC_CLASSES",
    "DescriptorNet",
    "FeatureSet",
    "InputPreprocessing",
    "LabelledImages",
    "PerceptualLoss",
    "StyleLoss",
    "TransferResult",
    "aggregate_scales",
    "class_splits",
    "describe_images",
    "encoder_stages",
    "extract_features",
    "feature_extractor",
    "gram_matrix",
    "heldout_loss",
    "holdout_split",
    "l2_normalize",
    "layer_set",
    "LpipsPair",
    "lpips_distances",
    "mean_average_precision",
    "mean_class_recall",
    "open_labelled_images",
    "read_voc",
    "select_c",
    "single_label_transfer",
    "stack_nets",
    "transfer",
    "voc_ap",
    "voc_transfer",
]
