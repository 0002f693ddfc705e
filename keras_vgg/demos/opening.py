"""What every demo opens with: its data written once, their statistics, its recipes, its runs.

A demo writes its images once, as an ImageNet-style tree `<root>/{train,val,test}/...`,
with a JSON marker holding the settings they were written with (`write_once`); computes the
training images' statistics once (`training_stats`); points its recipes at them
(`data_overrides`); and trains each run unless it has finished (`train_once`). Its data come
from scikit-learn (the digits) and scikit-image (photographs): `needs_demo_extra` names the
extra that installs them when one is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from collections.abc import Callable, Iterator

from keras_vgg import files, limits, runs, training
from keras_vgg.data import sources, stats
from keras_vgg.recipe import Recipe

__all__ = [
    "DEMO_EXTRA",
    "STATS_FILE",
    "data_overrides",
    "needs_demo_extra",
    "train_once",
    "training_stats",
    "write_once",
]

#: What installs the demos' data sources (scikit-learn, scikit-image).
DEMO_EXTRA = "pip install 'keras-vgg[demo]'"
#: The statistics file of a demo's data, `<root>/stats.json`.
STATS_FILE = "stats.json"


@contextlib.contextmanager
def needs_demo_extra(what: str) -> Iterator[None]:
    """A missing data source inside becomes `ModuleNotFoundError("<what> (<error>): pip ...")`."""
    try:
        yield
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"{what} ({exc}): {DEMO_EXTRA}", name=exc.name) from exc


def write_once(
    root: str, marker: str, settings: dict, write: Callable[[], dict[str, int]]
) -> dict[str, int]:
    """`write()` (which fills `root` and returns its counts) unless `root/marker` says it was
    done with the same `settings`; the marker is written last, atomically.

    Returns:
        The counts `write` returned, now or when the marker was written.
    """
    path = os.path.join(root, marker)
    if os.path.isfile(path):
        written = limits.load_json(pathlib.Path(path))
        if isinstance(written, dict) and written.get("settings") == settings:
            return written["counts"]
    counts = write()
    files.atomic_text(path, json.dumps({"settings": settings, "counts": counts}, indent=2) + "\n")
    return counts


def training_stats(root: str) -> str:
    """`<root>/stats.json`: mean RGB and RGB PCA of the images of `<root>/train` (once)."""
    path = os.path.join(root, STATS_FILE)
    if not os.path.isfile(path):
        stats.compute_stats(sources.open_source(os.path.join(root, "train"))).to_json(path)
    return path


def data_overrides(root: str, stats_path: str) -> list[str]:
    """The `--set` overrides that train a recipe on `<root>/train`, validated on `<root>/val`."""
    return [
        f"data.root={os.path.join(root, 'train')}",
        f"data.val_root={os.path.join(root, 'val')}",
        f"data.stats={stats_path}",
    ]


def train_once(
    recipe: Recipe,
    *,
    overwrite: bool,
    again: str,
    print_fn: Callable[[str], None] = print,
    **fit_options,
) -> bool:
    """Trains `recipe` (resuming a killed run) unless its run has finished and not `overwrite`.

    Args:
        recipe: The recipe.
        overwrite: Train again a finished run.
        again: The command that trains again, named in the line printed for a finished run.
        print_fn: Receives training's lines.
        fit_options: More keyword arguments of `training.fit`.

    Returns:
        Whether this call trained.
    """
    if runs.run_status(recipe.run_dir, overwrite)[0] == "finished":
        print_fn(f"{recipe.run_dir} has finished already ({again} trains again)")
        return False
    training.fit(recipe, overwrite=overwrite, print_fn=print_fn, **fit_options)
    return True
