"""The testing protocols of Sec. 3.2: center crop, dense, multi-crop, multi-scale, their
combination (Table 5) and the fusion of several nets (Table 6), with top-1 / top-5 errors.

A notebook user calls the same functions as `kvgg evaluate` / `kvgg predict`::

    from keras_vgg import evaluation
    result = evaluation.evaluate(["runs/d_jitter"], "data/val", protocols=("dense", "multi_crop"))
    print(result.to_markdown())

Every protocol runs one network, the model's fully convolutional twin
(`keras_vgg.to_fully_convolutional`) cut before the final soft-max, so that it returns class
scores (logits) for inputs of any size: a 224x224 crop gives a 1x1 score map, a whole image
rescaled to Q gives a map of floor(H/32) - 6 by floor(W/32) - 6 scores. On TensorFlow the
network runs inside one `tf.function` whose input signature leaves batch, height and width
unknown, so images of new sizes never trigger a retrace.

Conventions (documented choices where the paper is ambiguous):

- Dense score maps are averaged spatially *before* the soft-max by default
  (`dense_average="logits"`): Sec. 3.2 sum-pools the class score map "to obtain a fixed-size
  vector of class scores for the image", and only then speaks of "soft-max class
  posteriors". `dense_average="softmax"` averages the per-location posteriors instead.
- Center crop uses no flip (it is the keras.applications / torchvision protocol, kept for
  comparison); dense and multi-crop average the image and its horizontal flip unless
  `flip=False`.
- Multi-scale, dense + multi-crop and fusion all average soft-max posteriors with equal
  weights: over scales, then over the two protocols, then over the models.
- Ties in top-k error are counted pessimistically by default (see `top_k_error`).

Where things live (each module one job; each imports only those listed above it):

- `metrics`: soft-max, top-k error and its ties (`TIES`), fusion of posteriors (NumPy only).
- `loading`: the nets: `load_model` (a `.keras` file or run directory, with its record),
  `load_models` (several, over the same classes), `check_classes` (nets against data).
- `protocols`: `PROTOCOLS`, the test scales Q, what each protocol computes at one scale
  with a `ScoreNet`, and the averages over scales, protocols and nets; `ImageScorer`, the
  type of what scores images (`ScoreNet`, `exported.ExportedNet`), and `score_images`
  (several fused).
- `scoring`: `ScoreNet`, the fully convolutional score net, compiled once for all sizes.
- `results`: `Row` and `EvaluationResult`: tables like the paper's (Markdown, text), JSON,
  and `write_results` (the files `kvgg evaluate` writes, each written atomically).
- `loop`: `evaluate` and `evaluate_images`: images or a data set through the protocols of
  every net, in chunks, into an `EvaluationResult` (`kvgg evaluate`).
- `prediction`: `predict_images` (posteriors) and `predict` (top-k of files, `kvgg predict`).
"""

from __future__ import annotations

from keras_vgg.evaluation.loading import LoadedModel, check_classes, load_model, load_models
from keras_vgg.evaluation.loop import evaluate, evaluate_images
from keras_vgg.evaluation.metrics import TIES, fuse, softmax, top_k_credit, top_k_error
from keras_vgg.evaluation.prediction import Prediction, image_files, predict, predict_images
from keras_vgg.evaluation.protocols import (
    PROTOCOLS,
    ImageScorer,
    default_test_scales,
    score_images,
    single_test_scale,
)
from keras_vgg.evaluation.results import EvaluationResult, Row, write_results
from keras_vgg.evaluation.scoring import DENSE_AVERAGES, ScoreNet

__all__ = [
    "DENSE_AVERAGES",
    "PROTOCOLS",
    "TIES",
    "EvaluationResult",
    "ImageScorer",
    "LoadedModel",
    "Row",
    "ScoreNet",
    "default_test_scales",
    "evaluate",
    "evaluate_images",
    "check_classes",
    "Prediction",
    "image_files",
    "predict",
    "predict_images",
    "fuse",
    "load_model",
    "load_models",
    "score_images",
    "single_test_scale",
    "softmax",
    "top_k_credit",
    "top_k_error",
    "write_results",
]
