"""The nets to evaluate: loading a model with its record, and checking nets against each
other and against a data set's classes."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from keras_vgg import network as _network  # noqa: F401 - registers VGG with Keras
from keras_vgg import runs
from keras_vgg.imagenet import class_index
from keras_vgg.record import ModelRecord, attach_record, has_record, record_of
from keras_vgg.weights.load import read_keras_model

__all__ = ["LoadedModel", "check_classes", "load_model", "load_models"]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model with its information and where it came from.

    Attributes:
        model: The Keras model (with its FC head, input size fixed).
        info: Its `ModelRecord` (`keras_vgg.record_of(model)`).
        name: How tables name it (the run directory or file name, or the model's name).
        run_dir: The run directory it was loaded from, or None.
        config: The configuration letter, where known (for tables).
    """

    model: keras.Model
    info: ModelRecord
    name: str
    run_dir: Path | None = None
    config: str | None = None

    @property
    def classes(self) -> int:
        """Number of classes the model predicts."""
        return int(self.model.outputs[0].shape[-1])

    @property
    def label(self) -> str:
        """Name, configuration and training scale, as the paper's tables show a ConvNet."""
        parts = [self.name]
        details = []
        if self.config:
            details.append(self.config)
        if self.info.train_scale is not None:
            details.append(str(self.info.train_scale))
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)


def load_model(path: str | os.PathLike | keras.Model | LoadedModel) -> LoadedModel:
    """Loads a model for evaluation: a `.keras` file, or a run directory of `kvgg fit`.

    A run directory holds `best.keras` (else `last.keras`). What the model expects (classes,
    preprocessing, training scale) is its record, inside the model (`keras_vgg.record_of`).
    A `.keras` file of a plain Keras model, which holds no record, takes it from a
    `model_info.json` beside it if there is one, else the paper's convention.

    Args:
        path: The file or directory (an already built model, or a `LoadedModel`, is passed
            through with its record).

    Returns:
        A `LoadedModel`.

    Raises:
        ValueError: if the path does not exist, holds no model, or cannot be read.
    """
    if isinstance(path, LoadedModel):
        return path
    if isinstance(path, keras.Model):
        _check_evaluable(path)
        return LoadedModel(path, record_of(path), path.name, config=getattr(path, "config", None))
    path = Path(path)
    run_dir = None
    if path.is_dir():
        run_dir = path
        model_file = runs.model_file(path)
        if model_file is None:
            raise ValueError(
                f"{path}: run directory holds neither {' nor '.join(runs.MODEL_FILES)}"
            )
        name = path.name
    elif path.is_file():
        model_file = path
        name = path.stem if path.name not in runs.MODEL_FILES else path.parent.name
    else:
        raise ValueError(f"{path}: no such model file or run directory")
    model = read_keras_model(model_file)
    config = getattr(model, "config", None)
    if not has_record(model):
        info_file = model_file.parent / runs.MODEL_INFO
        if info_file.is_file():
            data = runs.read_model_info(info_file)
            attach_record(
                model, ModelRecord.from_dict(data, source=str(info_file)), source=str(info_file)
            )
            config = data.get("config") if isinstance(data.get("config"), str) else None
    _check_evaluable(model)
    return LoadedModel(model, record_of(model), name, run_dir, config)


def _check_evaluable(model: keras.Model) -> None:
    shape = tuple(model.inputs[0].shape[1:3])
    if None in shape or shape[0] != shape[1]:
        raise ValueError(
            f"{model.name}: evaluation needs a model with a square, fixed input size (its FC "
            f"head). Received: input shape {tuple(model.inputs[0].shape)}"
        )


def load_models(models: Sequence[Any] | Any) -> list[LoadedModel]:
    """Loads one or several nets (each as `load_model`) that must predict the same classes.

    Args:
        models: A model (a `.keras` file, run directory, `keras.Model` or `LoadedModel`) or
            a sequence of them.

    Returns:
        The `LoadedModel`s, in order.

    Raises:
        ValueError: for no model, an unreadable one, or nets whose classes differ (fusion
            needs nets over the same classes).
    """
    if isinstance(models, (str, os.PathLike, keras.Model, LoadedModel)):
        models = [models]
    loaded = [load_model(m) for m in models]
    if not loaded:
        raise ValueError("no model to evaluate")
    first = loaded[0]
    for other in loaded[1:]:
        if other.classes != first.classes or (
            first.info.class_names
            and other.info.class_names
            and first.info.class_names != other.info.class_names
        ):
            raise ValueError(
                f"{other.name}: its classes differ from those of {first.name} "
                f"({other.classes} versus {first.classes} outputs, or other class names); "
                "fusion needs nets over the same classes"
            )
    return loaded


def check_classes(loaded: Sequence[LoadedModel], class_names: Sequence[str], data: str) -> None:
    """Checks that every net predicts the data's classes, in the data's order.

    A net with stored class names must list exactly the data's classes. A net without them
    must have as many outputs; with 1000 outputs and data classes that are WordNet ids,
    they must be the bundled ImageNet class index's, in its order.

    Args:
        loaded: The nets.
        class_names: The data set's classes, in label order.
        data: How to name the data set in errors.

    Raises:
        ValueError: naming the net and the data set.
    """
    class_names = tuple(str(n) for n in class_names)
    for m in loaded:
        expected = m.info.class_names
        if expected is None and m.classes == 1000 and all(_is_wnid(n) for n in class_names):
            expected = tuple(wnid for wnid, _ in class_index())
        if expected is not None and tuple(expected) != class_names:
            foreign = [n for n in class_names if n not in set(expected)][:3]
            detail = f"e.g. {foreign} are not among its classes" if foreign else "other order"
            raise ValueError(
                f"{m.name}: its classes differ from those of {data} ({len(expected)} versus "
                f"{len(class_names)} classes; {detail})"
            )
        if m.classes != len(class_names):
            raise ValueError(
                f"{m.name}: its classes differ from those of {data} ({m.classes} outputs "
                f"versus {len(class_names)} classes)"
            )


def _is_wnid(name: str) -> bool:
    return len(name) == 9 and name[0] == "n" and name[1:].isdigit()
