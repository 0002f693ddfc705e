"""The torch reference packages the parity tests compare against (`lpips`, `grad-cam`),
imported with a working torchvision: the real one when it loads, else the stand-in in
tests/torchvision_stub (see its docstring: the reachable torchvision wheels are CUDA builds
that fail next to the CPU torch)."""

from __future__ import annotations

import pathlib
import sys

import pytest

STUB = pathlib.Path(__file__).resolve().parent / "torchvision_stub"


def _torchvision_loads() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # ImportError, or RuntimeError from a CUDA build's operators
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def reference(name: str):
    """Imports the reference package `name` (e.g. "lpips", "pytorch_grad_cam"), skipping the
    test when torch or the package is not installed."""
    pytest.importorskip("torch")
    if not _torchvision_loads() and str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    return pytest.importorskip(name)
