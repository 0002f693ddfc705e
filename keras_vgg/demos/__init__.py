"""The demos: the package's commands end to end on real data that ships with a dependency.

One job per module (a change belongs in the module whose job it touches):

- `opening`: what every demo opens with (its data written once, their statistics, its
  recipes pointed at them, each run trained unless it has finished).
- `digits`: the data, scikit-learn's handwritten digits as an image folder tree
  (`write_digits`, `DIGITS_SPLITS`, `digits_by_split`, `sample_images`).
- `classification`: `kvgg demo` (`run_demo`): train, evaluate, predict.
- `features`: `kvgg demo features` (`run_features_demo`): Appendix B on digits the nets
  never saw, the trained nets against each baseline as a paired test over the splits
  (`paired_difference`).
- `localization`: `kvgg demo localize` (`run_localization_demo`): Appendix A on digits
  pasted onto photographs.

The demos are the top floor of the package: nothing else in it imports them. Every public
name is importable from `keras_vgg.demos`.
"""

from __future__ import annotations

from keras_vgg.demos.classification import DemoResult, run_demo
from keras_vgg.demos.digits import DIGITS_SPLITS, digits_by_split, sample_images, write_digits
from keras_vgg.demos.features import (
    FEATURES_DEMO_CLASSES,
    FEATURES_DEMO_COLUMNS,
    FEATURES_DEMO_DATA,
    FEATURES_DEMO_EPOCHS,
    FEATURES_DEMO_HOLDOUT_REPEATS,
    FEATURES_DEMO_IMAGE_SIZE,
    FEATURES_DEMO_LAYER,
    FEATURES_DEMO_LEVEL,
    FEATURES_DEMO_RECIPE,
    FEATURES_DEMO_RELU,
    FEATURES_DEMO_SCALES,
    FEATURES_DEMO_SEEDS,
    FEATURES_DEMO_SHOTS,
    FEATURES_DEMO_SPLITS,
    VERDICTS,
    FeaturesDemoResult,
    FeaturesSetting,
    PairedDifference,
    paired_difference,
    run_features_demo,
)
from keras_vgg.demos.localization import (
    PHOTOS,
    LocalizationDemoResult,
    run_localization_demo,
    write_canvases,
)

__all__ = [
    "DIGITS_SPLITS",
    "FEATURES_DEMO_CLASSES",
    "FEATURES_DEMO_COLUMNS",
    "FEATURES_DEMO_DATA",
    "FEATURES_DEMO_EPOCHS",
    "FEATURES_DEMO_HOLDOUT_REPEATS",
    "FEATURES_DEMO_IMAGE_SIZE",
    "FEATURES_DEMO_LAYER",
    "FEATURES_DEMO_LEVEL",
    "FEATURES_DEMO_RECIPE",
    "FEATURES_DEMO_RELU",
    "FEATURES_DEMO_SCALES",
    "FEATURES_DEMO_SEEDS",
    "FEATURES_DEMO_SHOTS",
    "FEATURES_DEMO_SPLITS",
    "PHOTOS",
    "VERDICTS",
    "DemoResult",
    "FeaturesDemoResult",
    "FeaturesSetting",
    "LocalizationDemoResult",
    "PairedDifference",
    "digits_by_split",
    "paired_difference",
    "run_demo",
    "run_features_demo",
    "run_localization_demo",
    "sample_images",
    "write_canvases",
    "write_digits",
]
