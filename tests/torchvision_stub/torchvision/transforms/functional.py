"""Names `grad-cam` imports from torchvision.transforms.functional; calling them raises."""


def resize(*args, **kwargs):
    raise NotImplementedError("torchvision stand-in: resize")
