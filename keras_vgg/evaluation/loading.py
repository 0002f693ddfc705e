"""The nets to evaluate: opened through the package's one door (`keras_vgg.handle`), and
checked against each other and against a data set's classes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_vgg.handle import ModelHandle, check_pair, open_model
from keras_vgg.imagenet import Preprocessing, class_index

__all__ = ["LoadedModel", "check_classes", "load_model", "load_models"]


#: A model as `load_model` opens it: the door's `keras_vgg.handle.ModelHandle`.
LoadedModel = ModelHandle


def load_model(
    path: Any,
    *,
    needs: str = "keras",
    preprocessing: str | Preprocessing | None = None,
    command: str | None = None,
) -> ModelHandle:
    """Opens a net to evaluate through the package's one door (`keras_vgg.handle.open_model`).

    Args:
        path: A `.keras` file, a run directory, a `keras.Model` or a `ModelHandle`.
        needs: What the caller needs (`keras_vgg.handle.NEEDS`; default a Keras
            classification net).
        preprocessing: The input convention of a model that records none.
        command: How refusals name the caller.

    Returns:
        A `ModelHandle`.

    Raises:
        ValueError: as `open_model`.
    """
    return open_model(path, needs=needs, preprocessing=preprocessing, command=command)


def load_models(
    models: Sequence[Any] | Any,
    *,
    needs: str = "keras",
    preprocessing: str | Preprocessing | None = None,
    command: str | None = None,
) -> list[ModelHandle]:
    """Loads one or several nets (each as `load_model`) that must predict the same classes.

    Args:
        models: A model (a `.keras` file, run directory, `keras.Model` or `ModelHandle`) or
            a sequence of them.
        needs: As `load_model`.
        preprocessing: As `load_model` (for every net that records none).
        command: As `load_model`.

    Returns:
        The `ModelHandle`s, in order.

    Raises:
        ValueError: for no model, an unreadable one, or nets whose classes differ (fusion
            needs nets over the same classes).
    """
    if isinstance(models, (str, os.PathLike, keras.Model, ModelHandle)):
        models = [models]
    # Keras nets only: an artifact runs alone (`prediction.resolve_models`).
    needs = "keras" if needs == "classifier" else needs
    loaded = [
        load_model(m, needs=needs, preprocessing=preprocessing, command=command) for m in models
    ]
    if not loaded:
        raise ValueError("no model to evaluate")
    for other in loaded[1:]:
        check_pair(loaded[0], other, why="fusion needs nets over the same classes")
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
