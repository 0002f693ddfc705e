"""The training scale S (Sec. 3.1) and the test scales it implies (Sec. 3.2, 4.1, 4.2).

One type, `TrainScale`, stands for both of the paper's training set-ups: a fixed S
(single-scale training) and S jittered in [Smin, Smax] (scale jittering). Recipes, model
records, evaluation and the input pipeline all take and give this type; `TrainScale.parse`
is the one place where an int, a pair or a string becomes one. `check_scales` checks the
scales a user asks for against the crop they must hold and the largest scale
(`limits.MAX_SCALE`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from keras_vgg import limits

__all__ = ["TrainScale", "check_scales"]


def check_scales(
    scales: Iterable[Any], crop_size: int | None = None, what: str = "scales"
) -> tuple[int, ...]:
    """Scales a user asked for (test scales Q, a training S, an export's scale), checked
    before any work: integers, at least the crop they must hold, at most the largest scale.

    An image rescaled so its smaller side is Q holds at least Q * Q pixels, and the
    network's first activations 64 floats for each of them: a Q of 20000 on a 40-pixel
    image asks for 100 GB. The bound is `limits.MAX_SCALE` (2048; `KVGG_MAX_SCALE` raises
    it).

    Args:
        scales: The scales.
        crop_size: The side of the model's crop (a scale below it has no crop to take), or
            None to check the upper bound only.
        what: How errors name the scales ("--scales", "scales", "data.train_scale").

    Returns:
        The scales, a tuple of ints.

    Raises:
        ValueError: one line naming `what`, the scale and the bound.
    """
    scales = tuple(scales)
    if not scales:
        raise ValueError(f"{what}: at least one scale is needed. Received: {what}=()")
    high = limits.max_scale()
    for q in scales:
        if isinstance(q, bool) or not isinstance(q, int):
            raise ValueError(f"{what}: scales are integers. Received: {what}={q!r}")
        if crop_size is not None and q < crop_size:
            raise ValueError(
                f"{what}: {q} is below the model's crop size {crop_size} (a scale is the "
                f"smaller side of the rescaled image, which must hold the crop). "
                f"Received: {what}={q}"
            )
        if q < 1:
            raise ValueError(f"{what}: scales are positive. Received: {what}={q}")
        if q > high:
            raise ValueError(
                f"{what}: {q} is over the largest scale, {high} "
                f"({limits.MAX_SCALE.how_to_raise()}). Received: {what}={q}"
            )
    return scales


@dataclasses.dataclass(frozen=True)
class TrainScale:
    """The smallest side S of the rescaled training image: fixed, or jittered in a range.

    Attributes:
        smin: The smallest S (the fixed S when `smin == smax`).
        smax: The largest S.
    """

    smin: int
    smax: int

    def __post_init__(self):
        for value in (self.smin, self.smax):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    "The training scale must be positive integers. "
                    f"Received: train_scale={self.to_json()!r}"
                )
        if self.smin > self.smax:
            raise ValueError(
                f"The training scale needs Smin <= Smax. Received: train_scale={self.to_json()!r}"
            )

    @classmethod
    def parse(cls, value: Any, where: str = "train_scale") -> TrainScale:
        """Reads S or [Smin, Smax] as written in a recipe, a record or an argument.

        Args:
            value: A `TrainScale`, an int S, a pair (Smin, Smax), or a string "256" or
                "256,512".
            where: How to name the value in errors (a file and key, e.g.
                "d_256.toml: data.train_scale").

        Returns:
            A `TrainScale`.

        Raises:
            ValueError: naming `where` and the value.
        """
        if isinstance(value, TrainScale):
            return value
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace("-", ",").split(",")]
            try:
                value = [int(p) for p in parts] if len(parts) == 2 else int(parts[0])
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            pair = (value, value)
        elif (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            pair = (int(value[0]), int(value[1]))
        else:
            raise ValueError(
                f"{where}: must be an integer S or a range [Smin, Smax]. "
                f"Received: train_scale={value!r}"
            )
        try:
            return cls(*pair)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @property
    def jittered(self) -> bool:
        """Whether S is drawn from a range (scale jittering, Sec. 3.1)."""
        return self.smin != self.smax

    @property
    def bounds(self) -> tuple[int, int]:
        """(Smin, Smax); (S, S) for a fixed scale."""
        return (self.smin, self.smax)

    def test_scales(self) -> tuple[int, int, int]:
        """The multi-scale test scales Q of Sec. 4.2.

        Nets trained at a fixed S are tested at Q in {S - 32, S, S + 32}; nets trained with S
        jittered in [Smin, Smax] at Q in {Smin, (Smin + Smax) / 2, Smax}.
        """
        if not self.jittered:
            return (self.smin - 32, self.smin, self.smin + 32)
        return (self.smin, (self.smin + self.smax) // 2, self.smax)

    def single_test_scale(self) -> int:
        """The single test scale of Table 3: Q = S, or (Smin + Smax) / 2 when jittered."""
        return (self.smin + self.smax) // 2

    def to_json(self) -> int | list[int]:
        """S as an int, or [Smin, Smax]: how recipes and records write it."""
        return self.smin if not self.jittered else [self.smin, self.smax]

    def __str__(self) -> str:
        return f"S={self.smin}" if not self.jittered else f"S=[{self.smin};{self.smax}]"
