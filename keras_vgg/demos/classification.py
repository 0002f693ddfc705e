"""The digits demo (`kvgg demo`): the paper's training protocol end to end on real data.

The digits (`demos.digits.write_digits`) are written once under `runs/digits`, then
`recipes/demo.toml` trains a width-reduced configuration A on them through the same
pipeline, recipe format, callbacks and run directory as the Table 3 recipes, and the
held-out test images are evaluated and some predicted.

`run_demo` is the whole of `kvgg demo`, callable from a notebook::

    from keras_vgg import demos
    result = demos.run_demo()         # writes runs/digits, trains runs/demo, evaluates
    print(result.test_result.to_markdown())
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from keras_vgg import evaluation, runs
from keras_vgg import recipe as recipe_lib
from keras_vgg.demos.digits import sample_images, write_digits
from keras_vgg.demos.opening import data_overrides, needs_demo_extra, train_once, training_stats

__all__ = ["DemoResult", "run_demo"]


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What `run_demo` did, and what it printed.

    Attributes:
        data_root: The folder of the digits (`train`, `val`, `test`, `stats.json`).
        counts: Number of images per split.
        stats_path: The training images' statistics (mean RGB and RGB PCA), JSON.
        run_dir: The run directory, or None with `prepare_only`.
        trained: Whether this call trained (False: the run had finished already).
        metrics: The run's `metrics.json` (best validation errors, epochs, seconds).
        test_result: The held-out test images' `EvaluationResult` (centre crop, Q = the
            recipe's validation scale).
        predictions: `Prediction`s of eight held-out test images (top-1).
    """

    data_root: str
    counts: dict[str, int]
    stats_path: str
    run_dir: str | None = None
    trained: bool = False
    metrics: dict | None = None
    test_result: evaluation.EvaluationResult | None = None
    predictions: tuple[evaluation.Prediction, ...] = ()


def run_demo(
    recipe_path: str | os.PathLike = "recipes/demo.toml",
    data_root: str | os.PathLike = "runs/digits",
    *,
    prepare_only: bool = False,
    overwrite: bool = False,
    print_fn: Callable[[str], None] = print,
) -> DemoResult:
    """The digits demo end to end: data, training, evaluation and prediction (`kvgg demo`).

    Writes the digits under `data_root` and their statistics (`stats.json`) once, then
    trains the recipe on `data_root/train` with `data_root/val` for validation (resuming a
    killed run; a finished run is not trained again unless `overwrite`), then evaluates the
    held-out `data_root/test` images (centre crop at the recipe's validation scale Q) and
    predicts eight of them: the same library calls as `kvgg evaluate RUN --data DIR
    --center-crop --scales Q` and `kvgg predict --model RUN IMAGES`.

    Args:
        recipe_path: The training recipe; its data paths are replaced by `data_root`'s.
        data_root: Where the images and their statistics go.
        prepare_only: Only write the images and their statistics.
        overwrite: Train again even if the demo run has finished.
        print_fn: Receives each line of the report (and training's progress lines).

    Returns:
        A `DemoResult`.

    Raises:
        ModuleNotFoundError: if scikit-learn (the digits) is not installed.
        keras_vgg.training.TrainingDiverged: if the loss became NaN.
        keras_vgg.training.CheckpointError: if an epoch's files could not be written.
    """
    data_root = os.fspath(data_root)
    with needs_demo_extra("the digits demo needs scikit-learn for its data"):
        counts = write_digits(data_root)
    stats_path = training_stats(data_root)
    print_fn(f"digits: {counts} images under {data_root} (statistics: {stats_path})")
    if prepare_only:
        return DemoResult(data_root, counts, stats_path)
    recipe = recipe_lib.load_recipe(recipe_path, data_overrides(data_root, stats_path))
    trained = train_once(
        recipe, overwrite=overwrite, again="kvgg demo --overwrite", print_fn=print_fn
    )
    metrics = runs.read_metrics(recipe.run_dir)
    if metrics is None:
        raise ValueError(f"{recipe.run_dir}: {runs.METRICS} is missing or unreadable")
    q = recipe.data.resolved_val_scale
    print_fn(
        f"validation (centre crop, Q = {q}): top-1 error "
        f"{100 * metrics['best_val_top1_error']:.2f} %, top-5 error "
        f"{100 * metrics['best_val_top5_error']:.2f} % (best epoch {metrics['best_epoch']} "
        f"of {metrics['epochs']}, {metrics['train_seconds']:.0f} s)"
    )
    # Dense evaluation is not shown: on 36-pixel images the five floor-rounding poolings
    # keep the top-left 32 pixels, a different view from the centre crop the net was
    # validated on.
    test_root = os.path.join(data_root, "test")
    model = evaluation.load_model(recipe.run_dir)
    result = evaluation.evaluate(model, test_root, protocols=["center"], scales=[q])
    print_fn(f"held-out test images ({counts['test']}), Q = {q}:")
    print_fn(result.format_table().rstrip("\n"))
    predictions = tuple(evaluation.predict(model, sample_images(test_root, count=8), top=1))
    for prediction in predictions:
        truth = os.path.basename(os.path.dirname(prediction.path))
        _, name, probability = prediction.top[0]
        mark = "ok" if name == truth else "WRONG"
        print_fn(f"  {prediction.path}: true {truth}, predicted {name} ({probability:.2f}) {mark}")
    print_fn(f"run directory: {recipe.run_dir}")
    return DemoResult(
        data_root, counts, stats_path, recipe.run_dir, trained, metrics, result, predictions
    )
