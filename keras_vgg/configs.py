"""Table 1 of the paper as data, and the heads a network can end with (Appendix A).

Each configuration is a tuple of five blocks; each block is a tuple of layer specs and ends
with a 2x2 max-pool (implied, Sec. 2.1). A spec says exactly what Table 1 says: a 3x3 conv
(`conv3-N`), a 1x1 conv (`conv1-N`, config C) or Local Response Normalisation (config A-LRN).
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ALIASES",
    "BOX_MODES",
    "TASKS",
    "CONFIGS",
    "Conv",
    "LRN",
    "canonical_name",
    "get_config_spec",
    "scaled_filters",
]

#: What a network's head predicts: class scores, or boxes (Appendix A).
TASKS = ("classification", "localization")
#: Appendix A's box heads: single-class regression (4 outputs) and per-class (4 x classes).
BOX_MODES = ("scr", "pcr")


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution with stride 1 and "same" padding, followed by ReLU (Sec. 2.1).

    Attributes:
        filters: Number of output channels at width 1.0.
        kernel_size: 3 for the paper's `conv3-N`, 1 for config C's `conv1-N`.
    """

    filters: int
    kernel_size: int = 3


@dataclasses.dataclass(frozen=True)
class LRN:
    """Local Response Normalisation with AlexNet's parameters (Sec. 2.1, config A-LRN)."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0


def _convs(*widths: int) -> tuple[Conv, ...]:
    return tuple(Conv(w) for w in widths)


CONFIGS: dict[str, tuple[tuple[Conv | LRN, ...], ...]] = {
    "A": (
        _convs(64),
        _convs(128),
        _convs(256, 256),
        _convs(512, 512),
        _convs(512, 512),
    ),
    "A-LRN": (
        (Conv(64), LRN()),
        _convs(128),
        _convs(256, 256),
        _convs(512, 512),
        _convs(512, 512),
    ),
    "B": (
        _convs(64, 64),
        _convs(128, 128),
        _convs(256, 256),
        _convs(512, 512),
        _convs(512, 512),
    ),
    "C": (
        _convs(64, 64),
        _convs(128, 128),
        (Conv(256), Conv(256), Conv(256, kernel_size=1)),
        (Conv(512), Conv(512), Conv(512, kernel_size=1)),
        (Conv(512), Conv(512), Conv(512, kernel_size=1)),
    ),
    "D": (
        _convs(64, 64),
        _convs(128, 128),
        _convs(256, 256, 256),
        _convs(512, 512, 512),
        _convs(512, 512, 512),
    ),
    "E": (
        _convs(64, 64),
        _convs(128, 128),
        _convs(256, 256, 256, 256),
        _convs(512, 512, 512, 512),
        _convs(512, 512, 512, 512),
    ),
}

ALIASES: dict[str, str] = {"VGG11": "A", "VGG13": "B", "VGG16": "D", "VGG19": "E"}

# Table 2 of the paper, in millions, for `kvgg summary` and the demo.
PAPER_PARAMS_M: dict[str, int] = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


def canonical_name(config: str) -> str:
    """Returns the paper's letter for a configuration name or alias, case-insensitively.

    Args:
        config: "A", "a-lrn", "vgg16", ... ("A_LRN" and "alrn" are accepted for A-LRN).

    Returns:
        One of the keys of `CONFIGS`.

    Raises:
        ValueError: if the name is not a configuration of Table 1 nor an alias.
    """
    if not isinstance(config, str):
        raise ValueError(
            f"`config` must be one of {sorted(CONFIGS)} or an alias {sorted(ALIASES)}. "
            f"Received: config={config!r}"
        )
    key = config.strip().upper().replace("_", "-")
    if key == "ALRN":
        key = "A-LRN"
    key = ALIASES.get(key, key)
    if key not in CONFIGS:
        raise ValueError(
            f"`config` must be one of {sorted(CONFIGS)} (case-insensitive) or an alias "
            f"{sorted(a.lower() for a in ALIASES)}. Received: config={config!r}"
        )
    return key


def get_config_spec(config: str) -> tuple[tuple[Conv | LRN, ...], ...]:
    """Returns the blocks of layer specs of a configuration (see `canonical_name`)."""
    return CONFIGS[canonical_name(config)]


def weight_layers(config: str) -> int:
    """Number of weight layers (convs + 3 FC), the depth the paper names a net by."""
    convs = sum(isinstance(s, Conv) for block in get_config_spec(config) for s in block)
    return convs + 3


def scaled_filters(filters: int, width: float) -> int:
    """The number of channels of a conv layer of `filters` channels at a width factor.

    `build(..., width=w)` gives each conv `max(1, round(filters * w))` channels (Python's
    rounding, halves to even), so small widths still keep at least one channel.

    Args:
        filters: The layer's number of channels in Table 1 (width 1.0).
        width: The width factor.

    Returns:
        The layer's number of channels at that width.
    """
    return max(1, round(filters * width))
