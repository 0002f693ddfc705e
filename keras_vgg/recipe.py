"""Training recipes: a TOML file -> frozen, validated dataclasses (Sec. 3.1 as data).

A recipe has six sections, every key optional except `data.root`::

    [model]      config, batch_norm, width, fc_units, dropout, init, classes, weights,
                 task, box_mode, fine_tune
    [data]       root, val_root, labels_file, label_offset, val_split, train_scale,
                 val_scale, crop_size, stats, flip, color_shift, annotations,
                 val_annotations, threads, max_pixels
    [optimizer]  name, lr, momentum, weight_decay, weight_decay_mode
    [schedule]   epochs, plateau_patience, factor, min_delta, max_reductions
    [init]       from_run, mode
    [run]        name, seed, precision, batch_size, runs_dir, steps_per_epoch, val_steps,
                 log_every, checkpoint_every

The defaults are the paper's. `load_recipe(path, overrides)` parses and validates; any
problem is a `ValueError` of one line naming the file and the key
(`recipes/d_256.toml: data.train_scale: ...`).

Durations (`run.log_every`, the commands' `--log-every`) are read by `parse_duration`
("90", "90s", "2m", "1h30m") and written by `format_duration` ("12m31s").
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from keras_vgg import configs as configs_lib
from keras_vgg import limits
from keras_vgg.configs import BOX_MODES, TASKS
from keras_vgg.scales import TrainScale, check_scales

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "OBSERVATION_KEYS",
    "DataSection",
    "InitSection",
    "ModelSection",
    "OptimizerSection",
    "Recipe",
    "RunSection",
    "ScheduleSection",
    "load_recipe",
    "parse_recipe",
    "recipe_to_dict",
    "recipe_to_toml",
    "format_duration",
    "parse_duration",
]

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
INITS = ("normal", "glorot")
INIT_MODES = ("a_layers", "all", "all_but_head")
WEIGHT_DECAY_MODES = ("l2", "decoupled")
OPTIMIZERS = ("sgd", "adam")
FINE_TUNE = ("all", "fc")

#: Keys that change only what a run prints along the way or how often it keeps its state,
#: never what it computes: a killed or interrupted run may be resumed with other values of
#: them.
OBSERVATION_KEYS = frozenset({"run.log_every", "run.checkpoint_every"})


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The network (Sec. 2.1, Table 1).

    Attributes:
        config: "A", "A-LRN", "B", "C", "D", "E" or an alias (vgg16...); stored canonical.
        batch_norm: The VGG-BN variant (not in the paper).
        width: Factor on every conv width (1.0 is the paper).
        fc_units: Width of fc1 and fc2 (4096 in the paper).
        dropout: Dropout after fc1 and fc2 (Sec. 3.1: 0.5).
        init: Random initialisation: "normal" (Sec. 3.1: zero mean, std 1e-2, biases zero)
            or "glorot" (Glorot & Bengio 2010, which the authors note works without
            pre-training).
        classes: Number of classes; None means the number of class folders in `data.root`.
        weights: Pretrained weights to start from (a `.keras` / `.weights.h5` path or a
            pretrained entry name); layers are taken according to `init.mode`.
        task: "classification", or "localization" (Appendix A: the last FC layer predicts
            boxes, trained with the Euclidean loss on `data.annotations`).
        box_mode: For localisation: "scr" (one box) or "pcr" (one box per class).
        fine_tune: "all" layers, or "fc" (only fc1, fc2 and the last layer: Table 8's
            other variant); the other layers keep their initial weights.
    """

    config: str = "A"
    batch_norm: bool = False
    width: float = 1.0
    fc_units: int = 4096
    dropout: float = 0.5
    init: str = "normal"
    classes: int | None = None
    weights: str | None = None
    task: str = "classification"
    box_mode: str = "scr"
    fine_tune: str = "all"


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The training and validation images (Sec. 3.1).

    Attributes:
        root: Training images: a folder with one sub-folder per class, or TFRecord shards
            ("tfrecord:/data/train-*") or a TensorFlow Datasets name ("tfds:imagenet2012").
        val_root: Validation images (a class-folder tree, a flat folder with
            `labels_file`, "tfrecord:..." or "tfds:NAME:SPLIT"); None uses `val_split` of
            `root`.
        labels_file: Labels of a flat `val_root`, one class index per line ("imagenet-val":
            the bundled ILSVRC-2012 validation labels).
        label_offset: Subtracted from TFRecord labels (1 for converters that store 1..1000).
        val_split: Fraction of `root` held out for validation when there is no `val_root`.
        train_scale: S, the smallest side of the rescaled training image: written as an
            int (single-scale) or [Smin, Smax] (scale jittering, Sec. 3.1), held as a
            `TrainScale`.
        val_scale: Q of the validation centre crop; None means S, or (Smin + Smax) / 2.
        crop_size: The fixed training crop (224 in the paper).
        stats: Path to a JSON of dataset statistics (mean RGB and RGB PCA); None means
            ImageNet's.
        flip: Random horizontal flips.
        color_shift: AlexNet's PCA colour shift.
        annotations: The boxes of `root` for a localisation run: a folder of VOC XML files
            or a CSV manifest (`keras_vgg.localization.annotations`).
        val_annotations: The boxes of `val_root`.
        threads: CPU threads that read, decode and augment the images (training and
            validation); None means one per core. Lower it to leave cores to the model
            or to other jobs on the machine; the batches are the same for any value.
        max_pixels: The most pixels an image may declare (width x height, read from its
            header); larger images are skipped and named, never decoded. None means
            `KVGG_MAX_PIXELS`, else 100 megapixels (`keras_vgg.limits.MAX_PIXELS`).
    """

    root: str = ""
    val_root: str | None = None
    labels_file: str | None = None
    label_offset: int = 0
    val_split: float = 0.0
    train_scale: TrainScale = TrainScale(256, 256)
    val_scale: int | None = None
    crop_size: int = 224
    stats: str | None = None
    flip: bool = True
    color_shift: bool = True
    annotations: str | None = None
    val_annotations: str | None = None
    threads: int | None = None
    max_pixels: int | None = None

    @property
    def scale_jitter(self) -> bool:
        """Whether S is drawn per image from [Smin, Smax] (Sec. 3.1, multi-scale training)."""
        return self.train_scale.jittered

    @property
    def resolved_val_scale(self) -> int:
        """Q for validation: `val_scale`, else S, else (Smin + Smax) / 2 (Sec. 3.2)."""
        if self.val_scale is not None:
            return self.val_scale
        return self.train_scale.single_test_scale()


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """Mini-batch SGD with momentum (Sec. 3.1).

    Attributes:
        name: "sgd" (the paper's: SGD with `momentum`) or "adam" (Kingma & Ba 2015, Keras's
            defaults besides `lr`; `momentum` unused): not in the paper, for small demo nets
            whose loss is too small for one SGD rate to suit every layer (the box loss).
        lr: Initial learning rate (1e-2; 1e-3 for nets initialised from a trained net).
        momentum: 0.9.
        weight_decay: 5e-4.
        weight_decay_mode: "l2" (the paper's, Caffe's meaning: the loss gets
            0.5 * weight_decay * ||w||^2, so the gradient gets + weight_decay * w before
            momentum) or "decoupled" (Keras's `weight_decay`: w -= lr * weight_decay * w after
            the momentum step, Loshchilov & Hutter).
    """

    name: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_mode: str = "l2"


@dataclasses.dataclass(frozen=True)
class ScheduleSection:
    """The learning-rate schedule and the stopping rule (Sec. 3.1).

    Attributes:
        epochs: At most this many epochs (74 in the paper).
        plateau_patience: Epochs without improvement of validation top-1 accuracy before
            the learning rate is divided (the paper does not give it).
        factor: Factor on the learning rate at a plateau (0.1).
        min_delta: Smallest improvement of validation top-1 accuracy that counts.
        max_reductions: Training stops at the first plateau after this many reductions (3).
    """

    epochs: int = 74
    plateau_patience: int = 2
    factor: float = 0.1
    min_delta: float = 0.0
    max_reductions: int = 3


@dataclasses.dataclass(frozen=True)
class InitSection:
    """Where the initial weights come from (Sec. 3.1).

    Attributes:
        from_run: A finished run to start from: a run name under `run.runs_dir` or a path
            to a run directory (its `best.keras` is used). None: random initialisation.
        mode: "a_layers" (B-E from a trained A: its first four conv and three FC layers),
            "all" (S = 384 from S = 256, jittered from S = 384), or "all_but_head" (fine-tuning
            to another number of classes).
        partial: Start from a source some of whose weight layers have no place in this
            model (a BN source for a model without batch norm): those layers are left out.
            False (the default) refuses such a source, naming the recipe key that would
            take its layers (`model.batch_norm = true`, `model.width`).
        preprocessing: What a source without a record expects ("paper", "caffe",
            "torchvision"; e.g. a keras.applications VGG16 saved as `.keras`). A source that
            records none is refused without it; one that records its own must agree.
    """

    from_run: str | None = None
    mode: str = "all"
    partial: bool = False
    preprocessing: str | None = None


@dataclasses.dataclass(frozen=True)
class RunSection:
    """How and where the run happens.

    Attributes:
        name: The run directory's name under `runs_dir`; defaults to the recipe file's stem.
        seed: Seed of every random choice (initialisation, crops, dropout).
        precision: "auto" (bfloat16 where the hardware has it, float16 on older tensor-core
            GPUs, float32 otherwise), "float32", "mixed_bfloat16" or "mixed_float16".
        batch_size: The global batch, split across replicas (Sec. 3.3; 256 in the paper).
        runs_dir: Parent folder of run directories.
        steps_per_epoch: None means one pass over the training images.
        val_steps: None means the whole validation set.
        log_every: Where standard output is not a terminal (a batch job, `nohup`, a
            cluster log), seconds between the progress lines of an epoch (step, images/s,
            the epoch's ETA, loss and top-1 error so far): a number or a duration string
            ("60s", "2m"; `parse_duration`); 0 prints a line after every step. On a
            terminal Keras's progress bar shows instead.
        checkpoint_every: Also write the resumable state within an epoch: a duration
            ("30m", "90s", "2h": `parse_duration`) or a number of steps (an integer). None
            writes it at the end of each epoch only. A run killed within an epoch resumes
            from the last such state and ends as an uninterrupted run would.
    """

    name: str = ""
    seed: int = 0
    precision: str = "auto"
    batch_size: int = 256
    runs_dir: str = "runs"
    steps_per_epoch: int | None = None
    val_steps: int | None = None
    log_every: float = dataclasses.field(default=60.0, metadata={"duration": True})
    checkpoint_every: int | str | None = None

    @property
    def checkpoint_steps(self) -> int | None:
        """`checkpoint_every` as a number of steps, or None (not set, or a duration)."""
        return self.checkpoint_every if isinstance(self.checkpoint_every, int) else None

    @property
    def checkpoint_seconds(self) -> float | None:
        """`checkpoint_every` as seconds, or None (not set, or a number of steps)."""
        if isinstance(self.checkpoint_every, str):
            return parse_duration(self.checkpoint_every, "run.checkpoint_every")
        return None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A whole training recipe; `path` is the file it came from (for messages)."""

    model: ModelSection
    data: DataSection
    optimizer: OptimizerSection
    schedule: ScheduleSection
    init: InitSection
    run: RunSection
    path: str = ""

    @property
    def run_dir(self) -> str:
        """`runs_dir/name`."""
        return os.path.join(self.run.runs_dir, self.run.name)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "init": InitSection,
    "run": RunSection,
}


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """Reads and validates a recipe file, then applies `--set key=value` overrides.

    Args:
        path: The TOML file.
        overrides: Strings "section.key=value"; the value is read as TOML (`0.001`,
            `[256, 512]`, `true`, `"text"`) and otherwise taken as a bare string
            (`data.root=/data/imagenet`).

    Returns:
        A frozen, validated `Recipe`.

    Raises:
        ValueError: one line naming the file and the key.
        FileNotFoundError: if the file does not exist.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: recipe file not found")
    with open(path, "rb") as f:
        text = limits.decode_utf8(f.read(), path, "a TOML recipe")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        _apply_override(raw, item, path)
    default_name = os.path.splitext(os.path.basename(path))[0]
    return parse_recipe(raw, path=path, default_name=default_name)


def parse_recipe(
    raw: Mapping[str, Any], *, path: str = "<recipe>", default_name: str = "run"
) -> Recipe:
    """Validates a recipe given as nested dicts (the parsed TOML).

    Args:
        raw: {section: {key: value}}.
        path: Name of the source, for messages.
        default_name: `run.name` when the recipe gives none.

    Returns:
        A frozen, validated `Recipe`.

    Raises:
        ValueError: one line naming `path` and the key.
    """
    sections = {}
    for section, value in raw.items():
        if section not in _SECTIONS:
            raise ValueError(
                f"{path}: unknown section [{section}] (expected one of {sorted(_SECTIONS)})"
            )
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: {section}: must be a table [{section}]")
    for section, cls in _SECTIONS.items():
        sections[section] = _build_section(cls, section, raw.get(section, {}), path)
    recipe = Recipe(**sections, path=path)
    if not recipe.run.name:
        recipe = dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, name=default_name))
    _check(recipe, path)
    canonical = configs_lib.canonical_name(recipe.model.config)
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, config=canonical))


def _apply_override(raw: dict, item: str, path: str) -> None:
    if "=" not in item:
        raise ValueError(f"{path}: --set {item!r}: expected section.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if key.count(".") != 1:
        raise ValueError(f"{path}: --set {key}: expected section.key (e.g. optimizer.lr)")
    section, name = key.split(".")
    if section not in _SECTIONS:
        raise ValueError(
            f"{path}: --set {key}: unknown section {section!r} (expected one of "
            f"{sorted(_SECTIONS)})"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    hint = typing.get_type_hints(_SECTIONS[section]).get(name)
    if hint is not None and not isinstance(value, str) and _takes_only_text(hint):
        # A text key keeps its text: run.name=nan is the name "nan", not a float.
        value = text.strip()
    raw.setdefault(section, {})[name] = value


def _takes_only_text(hint: Any) -> bool:
    """Whether a field takes text and nothing else (None aside): `str`, `str | None`."""
    options = set(typing.get_args(hint) or (hint,)) - {type(None)}
    return options == {str}


def _build_section(cls: type, section: str, values: Mapping[str, Any], path: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(
                f"{path}: {section}.{key}: unknown key (expected one of {sorted(fields)})"
            )
        if fields[key].metadata.get("duration"):
            # A duration field (metadata "duration"): seconds, or text such as "2m".
            kwargs[key] = parse_duration(value, f"{path}: {section}.{key}")
        else:
            kwargs[key] = _coerce(value, hints[key], f"{path}: {section}.{key}")
    return cls(**kwargs)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([hms])")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(value: Any, where: str = "duration") -> float:
    """Seconds from a number of seconds or a duration string.

    The one reading of durations: recipe keys such as `run.log_every` and the commands'
    `--log-every` options.

    Args:
        value: A number of seconds (int or float, >= 0), or text: a number of seconds
            ("90", "0.5") or parts with units h, m, s ("90s", "2m", "1.5h", "1h30m").
        where: What is read, for the message (e.g. "recipes/a.toml: run.log_every").

    Returns:
        The seconds, a float >= 0.

    Raises:
        ValueError: one line naming `where`, for anything else (negative, empty, NaN,
            an unknown unit).
    """
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        try:
            seconds = float(text) if text and text[-1] not in _DURATION_UNITS else None
        except ValueError:
            seconds = None
        if seconds is None and text and _DURATION_PART.sub("", text) == "":
            seconds = sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART.findall(text)
            )
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(
            f'{where}: expected seconds >= 0 or a duration like "90s", "2m", "1h30m", '
            f"got {_toml_repr(value) if isinstance(value, (bool, int, float, str)) else repr(value)}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as `parse_duration` reads it, to the second: "45s", "12m31s", "3h07m".

    Args:
        seconds: The duration (>= 0; NaN or infinite gives "?").

    Returns:
        Seconds below a minute, minutes and seconds below an hour, else hours and minutes.
    """
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _coerce(value: Any, hint: Any, where: str):
    """Checks `value` against a field's type (int, float, bool, str, optional, TrainScale)."""
    if hint is TrainScale:
        # The one reading of S or [Smin, Smax]; its errors name `where` (file and key).
        return TrainScale.parse(value, where=where)
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    for option in options:
        if option is type(None):
            continue
        ok, converted = _convert(value, option)
        if ok:
            return converted
    expected = " or ".join(_type_name(o) for o in options if o is not type(None))
    raise ValueError(f"{where}: expected {expected}, got {_toml_repr(value)}")


def _convert(value: Any, option: Any) -> tuple[bool, Any]:
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if option is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and math.isfinite(value), float(value) if ok else value
    if option is str:
        return isinstance(value, str), value
    return False, value


def _type_name(option: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[option]


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _check(recipe: Recipe, path: str) -> None:
    """Cross-field and range checks; each names its key."""

    def fail(key: str, message: str):
        raise ValueError(f"{path}: {key}: {message}")

    m, d, o, s, i, r = (
        recipe.model,
        recipe.data,
        recipe.optimizer,
        recipe.schedule,
        recipe.init,
        recipe.run,
    )
    try:
        configs_lib.canonical_name(m.config)
    except ValueError:
        fail(
            "model.config",
            f"unknown configuration {m.config!r} (expected one of {sorted(configs_lib.CONFIGS)} "
            f"or {sorted(a.lower() for a in configs_lib.ALIASES)})",
        )
    if m.width <= 0:
        fail("model.width", f"must be > 0, got {m.width}")
    if m.fc_units < 1:
        fail("model.fc_units", f"must be >= 1, got {m.fc_units}")
    if not 0 <= m.dropout < 1:
        fail("model.dropout", f"must be in [0, 1), got {m.dropout}")
    if m.init not in INITS:
        fail("model.init", f"must be one of {list(INITS)}, got {m.init!r}")
    if m.task not in TASKS:
        fail("model.task", f"must be one of {list(TASKS)}, got {m.task!r}")
    if m.box_mode not in BOX_MODES:
        fail("model.box_mode", f"must be one of {list(BOX_MODES)}, got {m.box_mode!r}")
    if m.fine_tune not in FINE_TUNE:
        fail("model.fine_tune", f"must be one of {list(FINE_TUNE)}, got {m.fine_tune!r}")
    if m.task == "localization" and not d.annotations:
        fail("data.annotations", "missing: a localisation run needs the boxes of data.root")
    if m.task == "localization" and d.val_root is not None and not d.val_annotations:
        fail("data.val_annotations", "missing: the boxes of data.val_root")
    if m.classes is not None and m.classes < 1:
        fail("model.classes", f"must be >= 1, got {m.classes}")
    if not d.root:
        fail("data.root", "missing: the folder of training images (one sub-folder per class)")
    if not 0 <= d.val_split < 1:
        fail("data.val_split", f"must be in [0, 1), got {d.val_split}")
    if d.max_pixels is not None and d.max_pixels < 1:
        fail(limits.MAX_PIXELS_KEY, f"must be >= 1, got {d.max_pixels}")
    if d.crop_size < 32:
        fail("data.crop_size", f"must be >= 32 (five 2x2 poolings), got {d.crop_size}")
    if d.train_scale.smin < d.crop_size:
        fail(
            "data.crop_size",
            f"crop {d.crop_size} is larger than the smallest training scale "
            f"S = {d.train_scale.smin}",
        )
    if d.val_scale is not None and d.val_scale < d.crop_size:
        fail("data.val_scale", f"Q = {d.val_scale} is smaller than the crop {d.crop_size}")
    for key, values in (
        ("data.train_scale", d.train_scale.bounds),
        ("data.val_scale", [d.val_scale]),
    ):
        if values[-1] is not None:
            try:
                check_scales(values, None, key)  # the largest scale (limits.MAX_SCALE)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    if d.threads is not None and d.threads < 1:
        fail("data.threads", f"must be >= 1, got {d.threads}")
    if o.name not in OPTIMIZERS:
        fail("optimizer.name", f"must be one of {list(OPTIMIZERS)}, got {o.name!r}")
    if o.lr <= 0:
        fail("optimizer.lr", f"must be > 0, got {o.lr}")
    if not 0 <= o.momentum < 1:
        fail("optimizer.momentum", f"must be in [0, 1), got {o.momentum}")
    if o.weight_decay < 0:
        fail("optimizer.weight_decay", f"must be >= 0, got {o.weight_decay}")
    if o.weight_decay_mode not in WEIGHT_DECAY_MODES:
        fail(
            "optimizer.weight_decay_mode",
            f"must be one of {list(WEIGHT_DECAY_MODES)}, got {o.weight_decay_mode!r}",
        )
    if s.epochs < 1:
        fail("schedule.epochs", f"must be >= 1, got {s.epochs}")
    if s.plateau_patience < 1:
        fail("schedule.plateau_patience", f"must be >= 1, got {s.plateau_patience}")
    if not 0 < s.factor < 1:
        fail("schedule.factor", f"must be in (0, 1), got {s.factor}")
    if s.min_delta < 0:
        fail("schedule.min_delta", f"must be >= 0, got {s.min_delta}")
    if s.max_reductions < 0:
        fail("schedule.max_reductions", f"must be >= 0, got {s.max_reductions}")
    if i.mode not in INIT_MODES:
        fail("init.mode", f"must be one of {list(INIT_MODES)}, got {i.mode!r}")
    if i.preprocessing is not None and i.preprocessing not in ("paper", "caffe", "torchvision"):
        fail(
            "init.preprocessing",
            f"must be one of ['paper', 'caffe', 'torchvision'], got {i.preprocessing!r}",
        )
    if i.from_run is not None and m.weights is not None:
        fail("init.from_run", "give either init.from_run or model.weights, not both")
    if r.precision not in PRECISIONS:
        fail("run.precision", f"must be one of {list(PRECISIONS)}, got {r.precision!r}")
    if r.batch_size < 1:
        fail("run.batch_size", f"must be >= 1, got {r.batch_size}")
    if not r.name or os.sep in r.name or r.name in (".", ".."):
        fail("run.name", f"must be a plain folder name, got {r.name!r}")
    for key in ("steps_per_epoch", "val_steps"):
        value = getattr(r, key)
        if value is not None and value < 1:
            fail(f"run.{key}", f"must be >= 1, got {value}")
    if r.checkpoint_steps is not None and r.checkpoint_steps < 1:
        fail("run.checkpoint_every", f"must be >= 1 steps, got {r.checkpoint_steps}")
    if isinstance(r.checkpoint_every, str):
        text = r.checkpoint_every.strip().lower()
        try:
            seconds = parse_duration(text, "run.checkpoint_every") if text[-1:] in "hms" else 0
        except ValueError:
            seconds = 0
        if not seconds > 0:
            fail(
                "run.checkpoint_every",
                'expected a duration above 0 with its unit ("30m", "90s", "2h") or an '
                f"integer number of steps, got {r.checkpoint_every!r}",
            )


def recipe_to_dict(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """The recipe as {section: {key: value}}, omitting None values (TOML has no null).

    Args:
        recipe: A parsed recipe.

    Returns:
        Nested dictionaries; `train_scale` as written in a recipe (`TrainScale.to_json`: S
        or [Smin, Smax]).
    """
    out = {}
    for section in _SECTIONS:
        values = getattr(recipe, section)
        out[section] = {}
        for field in dataclasses.fields(values):
            value = getattr(values, field.name)
            if isinstance(value, TrainScale):
                value = value.to_json()
            if value is not None:
                out[section][field.name] = value
    return out


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML text that `load_recipe` reads back to an equal recipe.

    Args:
        recipe: A parsed recipe.

    Returns:
        TOML text with every section and every key that has a value.
    """
    lines = []
    for section, values in recipe_to_dict(recipe).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)
