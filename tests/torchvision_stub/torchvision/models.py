"""torchvision's VGG-16, layer for layer (`features`, `avgpool`, `classifier`)."""

from __future__ import annotations

from torch import nn

#: torchvision's configuration "D": output channels, "M" for a 2x2 max pooling.
_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def vgg16(pretrained: bool = False, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-16 with random weights (the stand-in downloads nothing)."""
    if pretrained or weights is not None:
        raise RuntimeError("the torchvision stand-in has no pretrained weights")
    layers: list[nn.Module] = []
    channels = 3
    for v in _D:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return VGG(nn.Sequential(*layers), **kwargs)


def __getattr__(name):
    raise AttributeError(f"the torchvision stand-in has no models.{name}")
