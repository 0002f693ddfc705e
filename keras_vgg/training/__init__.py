"""Training: `fit(recipe)`, the paper's protocol (Sec. 3.1) in a resumable run directory.

One job per module (a change belongs in the module whose job it touches):

- `schedule`: the learning-rate schedule (`Plateau`, `plateau_step`).
- `data`: a recipe's training and validation pipelines (`TrainingData`, `recipe_data`,
  `split_source`).
- `setup`: the model, its initialisation and optimizer (`build_model`, `initialize`,
  `make_optimizer`, `compile_model`, the run's record, the multi-worker workarounds).
- `callbacks`: the per-epoch keeper (`RunKeeper`: schedule, NaN guard, checkpoint files,
  summary line, curves).
- `fit`: the plan and the loop (`FitPlan`, `plan_fit`, `fit`, `FitResult`).
- `ray`: `fit` on N Ray Train workers (`ray_fit`, `RAY_MISSING`), the optional `ray` extra.

The run directory's files (names, formats, atomic writes, `state.npz`) are
`keras_vgg.runs`; the first-conv adaptation to another input convention is
`keras_vgg.weights.transfer.adapt_first_conv`. Every public name is importable from
`keras_vgg.training`.
"""

from __future__ import annotations

# Kept importable from here for callers of the single-module `training` (e.g. `kvgg demo`
# asks `training.run_status`); their home is `keras_vgg.runs`.
from keras_vgg.runs import HISTORY_COLUMNS as HISTORY_COLUMNS
from keras_vgg.runs import STATE as STATE_FILE  # noqa: F401
from keras_vgg.runs import load_state as load_state
from keras_vgg.runs import run_status as run_status
from keras_vgg.runs import save_state as save_state
from keras_vgg.runs import write_state
from keras_vgg.training.callbacks import CheckpointError
from keras_vgg.training.data import TrainingData, recipe_data, split_source
from keras_vgg.training.fit import FitPlan, FitResult, TrainingDiverged, fit, plan_fit
from keras_vgg.training.ray import RAY_MISSING, ray_fit
from keras_vgg.training.schedule import Plateau, plateau_step
from keras_vgg.training.setup import build_model, compile_model, initialize, make_optimizer
from keras_vgg.weights.transfer import adapt_first_conv

__all__ = [
    "CheckpointError",
    "FitPlan",
    "FitResult",
    "Plateau",
    "RAY_MISSING",
    "TrainingData",
    "TrainingDiverged",
    "adapt_first_conv",
    "build_model",
    "compile_model",
    "fit",
    "initialize",
    "make_optimizer",
    "plan_fit",
    "plateau_step",
    "ray_fit",
    "recipe_data",
    "split_source",
    "write_state",
]
