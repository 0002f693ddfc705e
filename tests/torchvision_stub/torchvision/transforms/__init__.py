"""Names `grad-cam` imports from torchvision.transforms; using them raises."""

from . import functional  # noqa: F401


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"torchvision stand-in: {type(self).__name__}")


class Compose(_Unavailable):
    pass


class Normalize(_Unavailable):
    pass


class ToTensor(_Unavailable):
    pass
