"""The learning-rate schedule of Sec. 3.1: divide by 10 at each validation plateau, then stop."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["Plateau", "plateau_step"]


@dataclasses.dataclass(frozen=True)
class Plateau:
    """State of "divide the learning rate by 10 when validation accuracy stops improving".

    Attributes:
        best: Best validation top-1 accuracy so far.
        wait: Epochs since it last improved (by more than `min_delta`).
        reductions: Learning-rate reductions so far.
    """

    best: float = -math.inf
    wait: int = 0
    reductions: int = 0


def plateau_step(
    state: Plateau, accuracy: float, *, patience: int, min_delta: float, max_reductions: int
) -> tuple[Plateau, str]:
    """One epoch of the schedule.

    Sec. 3.1: the learning rate is divided by 10 when the validation accuracy stops
    improving; this happened three times, and training stopped when it stopped improving
    again.

    Args:
        state: The state after the previous epoch.
        accuracy: This epoch's validation top-1 accuracy.
        patience: Epochs without improvement that make a plateau.
        min_delta: Smallest improvement that counts.
        max_reductions: Reductions before a plateau stops training.

    Returns:
        (new state, action) with action "improved", "wait", "reduce" or "stop".
    """
    if accuracy > state.best + min_delta:
        return Plateau(accuracy, 0, state.reductions), "improved"
    wait = state.wait + 1
    if wait < patience:
        return Plateau(state.best, wait, state.reductions), "wait"
    if state.reductions >= max_reductions:
        return Plateau(state.best, wait, state.reductions), "stop"
    return Plateau(state.best, 0, state.reductions + 1), "reduce"
