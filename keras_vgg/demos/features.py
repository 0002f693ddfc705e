"""The features demo (`kvgg demo features`): Appendix B in small, on classes the nets never saw.

The demo recipe on 64-pixel crops trained on digits 0 to 4 only (three seeds, stacked), its
fc2 descriptors of digits 5 to 9 against the same nets untrained and raw pixels, each with a
linear SVM trained on 5, 10 and 20 images per class, over 10 seeded splits; the trained nets
against each baseline as a paired t-test over the splits.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

from keras_vgg import evaluation, features, training
from keras_vgg import recipe as recipe_lib
from keras_vgg.demos.digits import DIGITS_SPLITS, write_digits
from keras_vgg.demos.opening import data_overrides, needs_demo_extra, train_once, training_stats
from keras_vgg.record import record_of

__all__ = [
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
    "VERDICTS",
    "FeaturesDemoResult",
    "FeaturesSetting",
    "PairedDifference",
    "paired_difference",
    "run_features_demo",
]

#: Training images per class of the features demo's SVMs.
FEATURES_DEMO_SHOTS: tuple[int, ...] = (5, 10, 20)
#: The features demo's nets: the demo recipe on digits 0-4 with these seeds, stacked.
FEATURES_DEMO_SEEDS: tuple[int, ...] = (0, 1, 2)
#: Held-out draws averaged to choose each SVM's C (`features.select_c`).
FEATURES_DEMO_HOLDOUT_REPEATS = 5
#: Side of the features demo's digit images: 64-pixel crops (pool5 2x2), so that fc1 sees
#: the layout of four quadrants instead of one 1x1 pool5 cell.
FEATURES_DEMO_IMAGE_SIZE = 72
#: Where `kvgg demo features` writes its digits (not `kvgg demo`'s 40-pixel ones).
FEATURES_DEMO_DATA = "runs/digits72"
#: The features demo's changes to the demo recipe (docs/features.md says how they were chosen).
FEATURES_DEMO_RECIPE: tuple[str, ...] = (
    "data.crop_size=64",
    "data.train_scale=[64, 72]",
    "data.val_scale=68",
    "model.fc_units=512",
    "model.dropout=0.0",
)
#: Training epochs of the features demo's nets (at most; the best validation epoch is kept).
FEATURES_DEMO_EPOCHS = 1
#: The scales Q of the features demo's descriptors (Appendix B: fc2, dense, pooled, stacked
#: over the scales, L2; no flip: a flipped digit is another digit).
FEATURES_DEMO_SCALES: tuple[int, ...] = (64, 80, 96)
#: The layer whose activations are the features demo's descriptors ("fc2": Appendix B).
FEATURES_DEMO_LAYER = "fc2"
#: Whether the features demo's descriptors are taken after the layer's ReLU (the paper does
#: not say; the library's default, and the proxy's choice).
FEATURES_DEMO_RELU = True
#: The seen and unseen classes of the features demo: nets trained on the first, SVMs on the
#: second.
FEATURES_DEMO_CLASSES: tuple[tuple[str, ...], tuple[str, ...]] = (tuple("01234"), tuple("56789"))
#: Seeded splits of the unseen classes' images per N, the same splits for every column: the
#: comparisons are paired over them.
FEATURES_DEMO_SPLITS = 10
#: Two-sided level of the paired t-test behind the verdicts.
FEATURES_DEMO_LEVEL = 0.05
#: What the paired test says of the trained nets against a baseline at one N.
VERDICTS: tuple[str, ...] = ("ahead", "behind", "no difference at this N")
#: The columns of the features demo's table.
FEATURES_DEMO_COLUMNS: tuple[str, ...] = (
    "descriptors of the trained nets",
    "the same nets untrained",
    "raw pixels (L2)",
)


@dataclasses.dataclass(frozen=True)
class FeaturesSetting:
    """What the features demo trains and describes with: the levers its proxy compares.

    The defaults are the demo's constants (`FEATURES_DEMO_*`); `benchmarks/features_demo_proxy.py`
    scores other settings on digits 0-4 only.

    Attributes:
        recipe: `--set` overrides of the demo recipe for the nets.
        epochs: Training epochs (at most; the best validation epoch is kept).
        seeds: One net per seed, stacked.
        scales: The scales Q of the descriptors, stacked.
        layer: "fc2" (Appendix B) or "fc1".
        relu: After the layer's ReLU, or before.
        per_scale_norm: L2-normalise each scale's descriptor before stacking.
    """

    recipe: tuple[str, ...] = FEATURES_DEMO_RECIPE
    epochs: int = FEATURES_DEMO_EPOCHS
    seeds: tuple[int, ...] = FEATURES_DEMO_SEEDS
    scales: tuple[int, ...] = FEATURES_DEMO_SCALES
    layer: str = FEATURES_DEMO_LAYER
    relu: bool = FEATURES_DEMO_RELU
    per_scale_norm: bool = False

    def descriptor_options(self) -> dict:
        """The keyword arguments of `features.describe_images` (no flip: a flipped digit is
        another digit)."""
        return {
            "scales": self.scales,
            "aggregate": "stack",
            "flip": False,
            "layer": self.layer,
            "relu": self.relu,
            "per_scale_norm": self.per_scale_norm,
        }


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """The trained nets' mean class recall minus a baseline's, split by split.

    Attributes:
        mean: Mean of the per-split differences, in points.
        se: Its standard error: the differences' standard deviation (n - 1) over sqrt(n).
        t: The critical value, Student's t at 1 - level / 2 with n - 1 degrees of freedom.
        verdict: "ahead" when mean - t se > 0, "behind" when mean + t se < 0, else "no
            difference at this N" (a two-sided paired t-test at the level).
    """

    mean: float
    se: float
    t: float
    verdict: str


def paired_difference(
    ours: Sequence[float], theirs: Sequence[float], level: float = FEATURES_DEMO_LEVEL
) -> PairedDifference:
    """The paired t-test of `ours - theirs`, the two measured on the same splits, in order.

    Raises:
        ValueError: for fewer than two splits, or sequences of different lengths.
    """
    differences = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
    if len(ours) != len(theirs) or len(differences) < 2:
        raise ValueError(
            f"a paired comparison needs two equal sequences of at least 2 splits, "
            f"got {len(ours)} and {len(theirs)}"
        )
    # scipy comes with scikit-learn, which the features demo needs for its data and SVMs.
    from scipy import stats as scipy_stats

    k = len(differences)
    mean = float(differences.mean())
    se = float(differences.std(ddof=1) / np.sqrt(k))
    t = float(scipy_stats.t.ppf(1 - level / 2, k - 1))
    if mean - t * se > 0:
        verdict = VERDICTS[0]
    elif mean + t * se < 0:
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]
    return PairedDifference(mean, se, t, verdict)


@dataclasses.dataclass(frozen=True)
class FeaturesDemoResult:
    """What `run_features_demo` measured.

    Attributes:
        run_dirs: The runs of the nets trained on the seen classes.
        recalls: Per training images per class N: column (`FEATURES_DEMO_COLUMNS`) -> the
            mean class recall (%) on each seeded split, in split order; split s is the same
            images for every column.
        images: Number of images of the unseen classes described.
        seconds: Wall time of the whole demo (training included).
        level: Two-sided level of the paired t-tests behind the verdicts.
    """

    run_dirs: tuple[str, ...]
    recalls: dict[int, dict[str, tuple[float, ...]]]
    images: int
    seconds: float
    level: float = FEATURES_DEMO_LEVEL

    @property
    def table(self) -> dict[int, dict[str, float]]:
        """Per N: column -> mean class recall in %, the mean over the splits."""
        return {
            n: {c: float(np.mean(v)) for c, v in row.items()} for n, row in self.recalls.items()
        }

    @property
    def spread(self) -> dict[int, dict[str, float]]:
        """Per N: column -> standard deviation (n) of the mean class recall over the splits."""
        return {n: {c: float(np.std(v)) for c, v in row.items()} for n, row in self.recalls.items()}

    def paired(self, n: int, baseline: str) -> PairedDifference:
        """The trained nets' descriptors against `baseline` at N = `n`, split by split."""
        row = self.recalls[n]
        return paired_difference(row[FEATURES_DEMO_COLUMNS[0]], row[baseline], self.level)

    def verdicts(self) -> dict[int, dict[str, str]]:
        """Per N: baseline -> "ahead", "behind" or "no difference at this N"."""
        return {
            n: {b: self.paired(n, b).verdict for b in FEATURES_DEMO_COLUMNS[1:]}
            for n in self.recalls
        }

    def verdict(self) -> str:
        """One line: against each baseline, at which N the trained nets' descriptors are
        ahead, behind or not different."""
        verdicts = self.verdicts()
        parts = []
        for baseline in FEATURES_DEMO_COLUMNS[1:]:
            said = []
            for word in VERDICTS:
                at = [str(n) for n, row in verdicts.items() if row[baseline] == word]
                if at:
                    said.append(f"{word.removesuffix(' at this N')} at N = {', '.join(at)}")
            parts.append(f"{baseline}: " + "; ".join(said))
        return "trained nets' descriptors against " + " | ".join(parts)

    def to_markdown(self) -> str:
        """The table in Markdown, one row per N: each column's mean ± standard deviation over
        the splits, then against each baseline the paired difference ± its standard error and
        the verdict."""
        baselines = FEATURES_DEMO_COLUMNS[1:]
        header = [*FEATURES_DEMO_COLUMNS, *(f"trained - {b} (paired)" for b in baselines)]
        lines = [
            "| training images per class | " + " | ".join(header) + " |",
            "|---" * (len(header) + 1) + "|",
        ]
        table, spread = self.table, self.spread
        for n in self.recalls:
            cells = [f"{table[n][c]:.1f} ± {spread[n][c]:.1f} %" for c in FEATURES_DEMO_COLUMNS]
            for b in baselines:
                d = self.paired(n, b)
                cells.append(f"{d.mean:+.1f} ± {d.se:.1f}: {d.verdict}")
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _link_classes(source_root: str, target_root: str, classes: tuple[str, ...]) -> None:
    """`target_root/<class>/` holding (links to) the images of `source_root/<class>/`."""
    for name in classes:
        folder = os.path.join(target_root, name)
        os.makedirs(folder, exist_ok=True)
        for file in sorted(os.listdir(os.path.join(source_root, name))):
            target = os.path.join(folder, file)
            if not os.path.exists(target):
                try:
                    os.link(os.path.join(source_root, name, file), target)
                except OSError:
                    shutil.copyfile(os.path.join(source_root, name, file), target)


def _grey_pixels(files: list[str]) -> np.ndarray:
    """The images as rows of grey levels (the digits are grey: R = G = B)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(f).convert("L"), np.float64).ravel() for f in files])


def _class_files(root: str, splits: tuple[str, ...], classes: tuple[str, ...]):
    """(files, labels) of `root/<split>/<class>/*`, labels the positions in `classes`."""
    files, labels = [], []
    for split in splits:
        for label, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            names = sorted(os.listdir(folder))
            files += [os.path.join(folder, n) for n in names]
            labels += [label] * len(names)
    return files, np.asarray(labels)


def run_features_demo(
    recipe_path: str | os.PathLike = "recipes/demo.toml",
    data_root: str | os.PathLike = FEATURES_DEMO_DATA,
    *,
    setting: FeaturesSetting | None = None,
    classes: tuple[tuple[str, ...], tuple[str, ...]] = FEATURES_DEMO_CLASSES,
    shots: tuple[int, ...] = FEATURES_DEMO_SHOTS,
    splits: int = FEATURES_DEMO_SPLITS,
    run_name: str = "demo_features",
    overwrite: bool = False,
    print_fn: Callable[[str], None] = print,
) -> FeaturesDemoResult:
    """Appendix B on the digits: descriptors of nets that never saw the classes (`kvgg demo
    features`).

    The digits are written at `FEATURES_DEMO_IMAGE_SIZE` pixels under `data_root`; the demo
    recipe with the setting's overrides (`FeaturesSetting`, by default the demo's constants)
    trains on the seen classes only (`classes[0]`, digits 0 to 4; their images linked under
    `<data_root>-<classes>`, at most `setting.epochs` epochs), once per seed (runs
    `<run_name>`, `<run_name>_seed1`, ...; a finished run is reused). Every image of the
    unseen classes (`classes[1]`, digits 5 to 9) gets the library's Appendix B descriptor
    (`features.describe_images`: the setting's layer, dense over the image at each of its
    scales, averaged spatially, stacked over the scales, L2-normalised, the nets stacked),
    without flips (a flipped digit is another digit). Two baselines get the same linear
    SVMs: the same descriptor from the same nets untrained (each built from its recipe and
    seed, the weights its training started from), and the raw pixels of the same images
    (grey, L2-normalised). SVMs are trained on N images per class for each N in `shots`, C
    chosen on held-out training images (`FEATURES_DEMO_HOLDOUT_REPEATS` draws averaged);
    mean class recall on each of `splits` seeded splits, the same splits for every column.
    Against each baseline and at each N, the per-split differences give a paired t-test
    (`paired_difference`): "ahead", "behind" or "no difference at this N". The same function
    with other classes and settings is the proxy the demo's setting was chosen on
    (docs/features.md).

    Returns:
        A `FeaturesDemoResult`.

    Raises:
        ModuleNotFoundError: if scikit-learn is not installed.
    """
    from PIL import Image

    setting = setting or FeaturesSetting()
    start = time.perf_counter()
    data_root = os.fspath(data_root)
    with needs_demo_extra("the features demo needs scikit-learn for its data and SVMs"):
        write_digits(data_root, size=FEATURES_DEMO_IMAGE_SIZE)
    seen, unseen = classes
    subset = f"{data_root}-{''.join(seen)}"
    for split in ("train", "val"):
        _link_classes(os.path.join(data_root, split), os.path.join(subset, split), seen)
    stats_path = training_stats(subset)
    run_dirs, untrained = [], []
    for seed in setting.seeds:
        recipe = recipe_lib.load_recipe(
            recipe_path,
            [
                *data_overrides(subset, stats_path),
                f"run.name={run_name}" + (f"_seed{seed}" if seed else ""),
                f"run.seed={seed}",
                f"schedule.epochs={setting.epochs}",
                *setting.recipe,
            ],
        )
        again = "kvgg demo features --overwrite"
        train_once(recipe, overwrite=overwrite, again=again, print_fn=print_fn)
        run_dirs.append(recipe.run_dir)
        trained = evaluation.load_model(recipe.run_dir).model
        # The weights the run started from: `training.fit` seeds, then builds.
        keras.utils.set_random_seed(seed)
        untrained.append(
            training.build_model(recipe, len(seen), "float32", record=record_of(trained))
        )
    files, labels = _class_files(data_root, tuple(DIGITS_SPLITS), unseen)
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    options = setting.descriptor_options()
    columns = dict(
        zip(
            FEATURES_DEMO_COLUMNS,
            (
                features.describe_images(run_dirs, images, **options),
                features.describe_images(untrained, images, **options),
                features.l2_normalize(_grey_pixels(files)),
            ),
            strict=True,
        )
    )
    recalls: dict[int, dict[str, tuple[float, ...]]] = {}
    # One BLAS thread: the SVMs' matrices are at most 100 images wide, too small to gain from
    # threads, and threads waiting on busy cores made this stage several times slower.
    # threadpoolctl comes with scikit-learn.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        for n in shots:
            recalls[n] = {}
            for column, x in columns.items():
                scored = features.single_label_transfer(
                    features.FeatureSet(x, tuple(files), labels, unseen, {}),
                    n,
                    splits=splits,
                    Cs=features.svm.DEFAULT_CS,
                    holdout_repeats=FEATURES_DEMO_HOLDOUT_REPEATS,
                )
                recalls[n][column] = tuple(scored.details["recalls"])
    result = FeaturesDemoResult(tuple(run_dirs), recalls, len(files), time.perf_counter() - start)
    t = result.paired(shots[0], FEATURES_DEMO_COLUMNS[1]).t
    print_fn(
        f"digits {', '.join(unseen)} ({len(files)} images), nets trained on "
        f"{', '.join(seen)}, linear SVM, mean class recall over {splits} splits "
        "(± their standard deviation); against each baseline, the difference on the same "
        "splits (± its standard error) and the verdict of a two-sided paired t-test at "
        f"{100 * FEATURES_DEMO_LEVEL:g} % (a difference beyond t = {t:.3f} standard errors, "
        f"{splits - 1} degrees of freedom):"
    )
    print_fn(result.to_markdown())
    print_fn(f"{result.verdict()} ({result.seconds:.0f} s)")
    return result
