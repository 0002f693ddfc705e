"""The reference LPIPS: the `lpips` package (torch) on a VGG-16 whose weights we write.

`lpips.LPIPS(net="vgg", pnet_rand=True)` builds torchvision's VGG-16 `features` with random
weights (no download) and loads the bundled v0.1 linear weights; `backbone_file` saves that
backbone as a torchvision state dict (`features.N.weight`), the file our LPIPS reads, so
both hold the same weights.

lpips imports `torchvision.models` for the layer list only (`tv.vgg16(...).features`). Where
torchvision cannot be imported (not installed, or a CUDA-only wheel beside a CPU torch:
"operator torchvision::nms does not exist"), a stand-in module gives that layer list,
torchvision's VGG-16 `features` as torchvision/models/vgg.py lays it out (cfgs["D"]).
"""

from __future__ import annotations

import sys
import types

import torch

# torchvision's cfgs["D"]: conv widths, "M" a 2x2 max pooling.
_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_features() -> torch.nn.Sequential:
    layers, channels = [], 3
    for v in _CFG_D:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [torch.nn.Conv2d(channels, v, kernel_size=3, padding=1), torch.nn.ReLU(True)]
            channels = v
    return torch.nn.Sequential(*layers)


def _standin_torchvision() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    models = types.ModuleType("torchvision.models")

    def vgg16(pretrained=False, **_):
        assert not pretrained, "the reference never downloads torchvision's weights"
        return types.SimpleNamespace(features=_vgg16_features())

    models.vgg16 = vgg16
    package = types.ModuleType("torchvision")
    package.models = models
    sys.modules["torchvision"] = package
    sys.modules["torchvision.models"] = models


def reference_lpips(seed: int = 0):
    """lpips.LPIPS(net="vgg") with a random (seeded) backbone and the bundled linear weights."""
    try:
        import torchvision.models  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or the CUDA-only wheel's RuntimeError
        _standin_torchvision()
    import lpips

    torch.manual_seed(seed)
    net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    # The random init gives tiny late-stage maps; scale each conv so every stage's maps are
    # of order one (as ImageNet weights give), the same weights on both sides.
    with torch.no_grad():
        for module in net.net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                module.bias.normal_(0.0, 0.05)
    return net.eval()


def backbone_file(net, path) -> str:
    """Saves the reference's VGG-16 features as a torchvision state dict (`features.N.*`)."""
    state = {}
    for k in range(1, 6):
        for name, tensor in getattr(net.net, f"slice{k}").state_dict().items():
            state[f"features.{name}"] = tensor.clone()
    torch.save(state, path)
    return str(path)
