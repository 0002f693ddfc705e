"""A stand-in for the few parts of torchvision that the reference packages the tests compare
against (`lpips`, `grad-cam`) import.

The registries reachable here carry torchvision only as CUDA builds, which fail to load
their operators next to the CPU torch the tests install ("operator torchvision::nms does not
exist"). `lpips` needs `torchvision.models.vgg16` (its backbone, whose weights the tests set
themselves) and `grad-cam` imports a few transforms at import time. This package gives
VGG-16 in torchvision's exact module layout (so its `state_dict` keys are torchvision's) and
makes every other name raise when called. `tests/torch_reference.py` puts it on `sys.path`
only when the real torchvision cannot be imported.
"""

from . import models, ops, transforms  # noqa: F401

__version__ = "0.0-stub"
