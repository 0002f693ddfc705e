"""The reference LPIPS: the `lpips` package (torch) on a VGG-16 whose weights we write.

`lpips.LPIPS(net="vgg", pnet_rand=True)` builds torchvision's VGG-16 `features` with random
weights (no download) and loads the bundled v0.1 linear weights; `backbone_file` saves that
backbone as a torchvision state dict (`features.N.weight`), the file our LPIPS reads, so
both hold the same weights.

lpips imports torchvision for its VGG-16 layer list; `torch_reference.reference` imports it
with the real torchvision when that loads, else with the stand-in in tests/torchvision_stub.
"""

from __future__ import annotations

import torch
from torch_reference import reference


def reference_lpips(seed: int = 0):
    """lpips.LPIPS(net="vgg") with a random (seeded) backbone and the bundled linear weights."""
    lpips = reference("lpips")

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
