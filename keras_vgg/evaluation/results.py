"""Evaluation results: rows of top-1 / top-5 errors, as tables shaped like the paper's
Tables 3-6 (Markdown, plain text) and as JSON, and the files they are written to."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from keras_vgg import runs
from keras_vgg.files import atomic_text

if TYPE_CHECKING:
    from keras_vgg.evaluation.loading import LoadedModel

__all__ = ["EvaluationResult", "Row", "write_results"]

_FORMATS = ("json", "markdown")

_PROTOCOL_TITLES = {
    "center": "center crop",
    "dense": "dense",
    "multi_crop": "multi-crop",
    "dense+multi_crop": "multi-crop & dense",
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a results table: a protocol, its test scales, the nets and their errors.

    Attributes:
        models: Names of the nets (several: their fusion).
        protocol: "center", "dense", "multi_crop" or "dense+multi_crop".
        scales: Test scales Q whose posteriors were averaged.
        top1: Top-1 error in percent.
        top5: Top-5 error in percent.
        images: Number of images evaluated.
    """

    models: tuple[str, ...]
    protocol: str
    scales: tuple[int, ...]
    top1: float
    top5: float
    images: int

    @property
    def key(self) -> tuple[tuple[str, ...], str, tuple[int, ...]]:
        """(models, protocol, scales), the key of `EvaluationResult.posteriors`."""
        return (self.models, self.protocol, self.scales)

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return {
            "models": list(self.models),
            "fusion": len(self.models) > 1,
            "protocol": self.protocol,
            "scales": list(self.scales),
            "top1_error": self.top1,
            "top5_error": self.top5,
            "images": self.images,
        }


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Top-1 / top-5 errors of every protocol asked, shaped like the paper's Tables 3-6.

    Attributes:
        rows: The table's rows (per net: per protocol, each single scale then all scales;
            then the fusion of all nets).
        images: Number of images evaluated.
        settings: Protocol settings (flip, dense_average, ties, batch_size, ...).
        seconds: Wall time of the evaluation.
        posteriors: With `keep_posteriors=True`, `Row.key` -> (images, classes) posteriors.
        skipped: Files that could not be decoded and were left out.
    """

    rows: tuple[Row, ...]
    images: int
    settings: dict
    seconds: float
    posteriors: dict | None = None
    skipped: tuple[str, ...] = ()

    def row(self, protocol: str, scales: Sequence[int] | None = None, models=None) -> Row:
        """The row of a protocol (default: over all scales, of the single or fused nets)."""
        candidates = [r for r in self.rows if r.protocol == protocol]
        if scales is not None:
            candidates = [r for r in candidates if r.scales == tuple(scales)]
        if models is not None:
            candidates = [r for r in candidates if r.models == tuple(models)]
        if not candidates:
            raise KeyError(f"no row for protocol={protocol!r}, scales={scales!r}")
        # The last matching row is the multi-scale one, and the fusion where there is one.
        return max(candidates, key=lambda r: (len(r.models), len(r.scales)))

    def to_dict(self) -> dict:
        """JSON-ready dictionary (errors in percent)."""
        return {
            "images": self.images,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images / self.seconds, 3) if self.seconds else None,
            "settings": self.settings,
            "skipped_files": list(self.skipped),
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self) -> str:
        """The results as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def write(self, path: str | os.PathLike, fmt: str = "json") -> Path:
        """Writes the results to one file, atomically, creating its folder.

        The text goes to a temporary file in the same folder, which then replaces `path`:
        a reader never sees a half-written file, and an interrupted write leaves the old one.

        Args:
            path: The file to write.
            fmt: "json" (`to_json`) or "markdown" (`to_markdown`).

        Returns:
            The path written.

        Raises:
            ValueError: if `fmt` is neither.
        """
        if fmt not in _FORMATS:
            raise ValueError(f"`fmt` must be one of {_FORMATS}. Received: fmt={fmt!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.to_json() if fmt == "json" else self.to_markdown()
        atomic_text(path, text)
        return path

    def _table(self) -> tuple[list[str], list[list[str]]]:
        header = [
            "ConvNet",
            "evaluation method",
            "test scale Q",
            "top-1 error (%)",
            "top-5 error (%)",
        ]
        body = []
        previous = None
        for row in self.rows:
            net = " & ".join(row.models) if len(row.models) > 1 else row.models[0]
            if len(row.models) > 1:
                net = f"fusion: {net}"
            body.append(
                [
                    net if net != previous else "",
                    _PROTOCOL_TITLES[row.protocol],
                    ",".join(str(q) for q in row.scales),
                    f"{row.top1:.1f}",
                    f"{row.top5:.1f}",
                ]
            )
            previous = net
        return header, body

    def to_markdown(self) -> str:
        """A Markdown table shaped like the paper's Tables 3-6, with the settings below."""
        header, body = self._table()
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        lines += ["", f"{self.images} images; {settings}."]
        return "\n".join(lines) + "\n"

    def format_table(self) -> str:
        """A plain-text table for the terminal, with aligned columns."""
        header, body = self._table()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = []
        for cells in [header, None, *body]:
            if cells is None:
                lines.append("  ".join("-" * w for w in widths))
                continue
            lines.append(
                "  ".join(
                    c.rjust(w) if i >= 3 else c.ljust(w)
                    for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                ).rstrip()
            )
        return "\n".join(lines) + "\n"


def write_results(
    result: EvaluationResult,
    loaded_models: Iterable[LoadedModel] = (),
    output: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
) -> list[Path]:
    """Writes the results where `kvgg evaluate` writes them, each file atomically.

    Args:
        result: The results.
        loaded_models: The evaluated nets; into the run directory of each that has one go
            `evaluation.json` and `evaluation.md` (`keras_vgg.runs.write_evaluation`).
        output: Also write the JSON here.
        markdown: Also write the Markdown table here.

    Returns:
        The files written, in order: `output`, `markdown`, then each run directory's.
    """
    written = [result.write(output, "json")] if output else []
    written += [result.write(markdown, "markdown")] if markdown else []
    for loaded in loaded_models:
        if loaded.run_dir is not None:
            written += runs.write_evaluation(loaded.run_dir, result)
    return written
