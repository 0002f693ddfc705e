"""The one door for outputs: where each file a command writes goes, checked before any work.

Every command that writes files for a user asks here first, before it loads a model or
reads an image:

- `per_image_outputs`: one output per input image (heat maps, drawn boxes), named from the
  image's path relative to the inputs' common folder, sub-folders mirrored, so no two inputs
  share an output (`a/0.png` and `b/0.png` give `OUT/a/0_heatmap.png` and
  `OUT/b/0_heatmap.png`).
- `check_outputs`: no output is one of the command's inputs (paths resolved, links and hard
  links followed), no existing file inside an input folder, and an existing file is refused
  unless the caller asked to replace it (`--overwrite`).
- `make_folders`: the outputs' missing folders, made once the inputs are open.
- `check_pack_folder`: the folder `kvgg data pack` writes its shards to: never an input
  or inside one, and an existing folder only if it holds an unfinished pack of the same
  inputs (continued) or the caller asked to replace what it holds (`--overwrite`).

The files themselves are then written through `keras_vgg.files.atomic_write`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from keras_vgg.data import manifest as manifest_lib
from keras_vgg.data.sources import IMAGE_EXTENSIONS
from keras_vgg.files import refuse_existing

__all__ = ["check_outputs", "check_pack_folder", "make_folders", "per_image_outputs"]


def per_image_outputs(
    images: Sequence[str | os.PathLike], folder: str | os.PathLike, suffix: str
) -> dict[str, str]:
    """The output file of each input image, unique per image.

    Args:
        images: The input image files.
        folder: The folder the outputs go to.
        suffix: What replaces each image's extension (e.g. "_heatmap.png").

    Returns:
        Image path (as given) -> its output path: `folder/<relative folder>/<stem><suffix>`,
        the relative folder taken from the images' common folder. Two images that differ
        only by extension (`x.png`, `x.jpg`) keep it in the name (`x_png<suffix>`).
    """
    images = [os.fspath(p) for p in images]
    if not images:
        return {}
    # One image named twice (`a/0.png`, `./a/../a/0.png`) is one image: one output.
    real = {p: os.path.realpath(p) for p in images}
    unique = list(dict.fromkeys(real.values()))
    common = os.path.commonpath([os.path.dirname(p) for p in unique])
    stems = {p: os.path.splitext(os.path.relpath(p, common))[0] for p in unique}
    counts = collections.Counter(stems.values())
    named = {}
    for full, stem in stems.items():
        if counts[stem] > 1:  # x.png and x.jpg
            stem = f"{stem}_{os.path.splitext(full)[1].lstrip('.').lower()}"
        named[full] = os.path.join(os.fspath(folder), stem + suffix)
    return {path: named[real[path]] for path in images}


def check_outputs(
    outputs: Iterable[str | os.PathLike | None],
    inputs: Iterable[str | os.PathLike | None],
    *,
    overwrite: bool = False,
    folder: bool = False,
) -> None:
    """Refuses outputs that would replace an input or, without `overwrite`, any file.

    Checked before anything is computed, so a refused command has read and written nothing.

    Args:
        outputs: The files the command will write (None entries are ignored).
        inputs: The files and folders the command reads (models, run directories, data
            folders, features files, annotation files; None entries are ignored).
        overwrite: Whether existing outputs may be replaced (never an input).
        folder: The outputs are folders made whole (an export): an existing one is refused
            whatever `overwrite` says.

    Raises:
        ValueError: one line naming the output and, where it is one, the input it would
            replace; or an output that is a folder, or that two outputs share.
    """
    inputs = [Path(os.fspath(p)) for p in inputs if p is not None]
    seen: dict[str, str] = {}
    outputs = list(dict.fromkeys(os.fspath(p) for p in outputs if p is not None))
    for output in outputs:
        resolved = os.path.realpath(output)
        if resolved in seen:
            raise ValueError(f"{output}: written twice by this command (also as {seen[resolved]})")
        seen[resolved] = output
        for source in inputs:
            if _same(output, source):
                raise ValueError(
                    f"{output}: is an input of this command ({source}); choose another path"
                )
            # An existing file there may be one that is read; a new picture there would be
            # read as an input image by the next run over that folder.
            if (
                source.is_dir()
                and _inside(resolved, source)
                and (os.path.lexists(output) or output.lower().endswith(IMAGE_EXTENSIONS))
            ):
                raise ValueError(
                    f"{output}: lies inside the input folder {source}; choose a path outside it"
                )
        if folder:
            if os.path.lexists(output):
                raise ValueError(
                    f"{output}: already exists; an export never replaces a folder: choose "
                    "another path"
                )
            continue
        if os.path.isdir(output):
            raise ValueError(f"{output}: is a folder; give a file path")
        refuse_existing(output, overwrite)


def check_pack_folder(
    folder: str | os.PathLike,
    settings: dict,
    inputs: Iterable[str | os.PathLike | None],
    *,
    overwrite: bool = False,
) -> bool:
    """Checks the folder a pack is written to, before anything is read or written.

    Args:
        folder: The pack's folder.
        settings: The new pack's settings (`manifest.plan_pack`).
        inputs: The folder packed and its labels file (None entries are ignored).
        overwrite: Replace what the folder holds: a pack of other settings, or other files.

    Returns:
        Whether the folder holds a pack of the same settings to continue (without
        `overwrite`); False when the pack is written anew.

    Raises:
        ValueError: one line naming the folder if it is an input, lies inside an input
            folder, holds an input, is a file, or, without `overwrite`, holds a pack of other
            settings or files that are not a pack.
    """
    folder = os.fspath(folder)
    resolved = os.path.realpath(folder)
    for source in (Path(os.fspath(p)) for p in inputs if p is not None):
        if _same(folder, source) or (source.is_dir() and _inside(resolved, source)):
            raise ValueError(
                f"{folder}: is or lies inside the input folder {source}; choose a folder outside it"
            )
        if os.path.lexists(source) and _inside(os.path.realpath(source), Path(folder)):
            raise ValueError(f"{folder}: holds the input {source}; choose another folder")
    if not os.path.lexists(folder):
        return False
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: is not a folder; give a folder for the shards")
    existing = manifest_lib.read_manifest(folder)
    if overwrite:
        return False
    if existing is not None:
        if existing.settings == settings:
            return True
        raise ValueError(
            f"{folder}: holds a pack of other inputs or settings ({existing.settings.get('root')}"
            f", {len(existing.shards)} shards); choose another folder, or replace it with "
            "--overwrite"
        )
    if os.listdir(folder):
        raise ValueError(
            f"{folder}: already exists and holds files that are not a pack; choose another "
            "folder, or write into it with --overwrite"
        )
    return False


def make_folders(outputs: Iterable[str | os.PathLike | None]) -> None:
    """Makes the missing folders of outputs that `check_outputs` passed.

    Called once the command's inputs are open (a refused model writes nothing, not even a
    folder) and before the first output is computed.

    Raises:
        ValueError: naming the output whose folder cannot be made.
    """
    for output in outputs:
        if output is None:
            continue
        parent = os.path.dirname(os.path.abspath(os.fspath(output)))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{output}: cannot make its folder {parent}: {exc.strerror}") from None


def _same(output: str, source: Path) -> bool:
    if os.path.realpath(output) == os.path.realpath(source):
        return True
    try:
        return os.path.samefile(output, source)  # a hard link to the input
    except OSError:
        return False


def _inside(resolved: str, folder: Path) -> bool:
    root = os.path.realpath(folder)
    return os.path.commonpath([resolved, root]) == root
