"""AlexNet and VGG16 convolutional stacks with torchvision's layer indices.

torchvision is not a dependency; these rebuild ``models.alexnet().features`` and
``models.vgg16().features`` so that a torchvision checkpoint's ``features.<i>.*`` tensors map
onto layer ``<i>`` here. Both return the activations LPIPS / DISTS tap.
"""

from __future__ import annotations

from torch import nn

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def alexnet_features() -> list[nn.Module]:
    """Layers 0..12 of torchvision's AlexNet ``features`` (ReLUs not in-place, to keep taps intact)."""
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
    ]


def vgg16_features() -> list[nn.Module]:
    """Layers 0..30 of torchvision's VGG16 ``features`` (no batch norm)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU()]
            in_ch = int(v)
    return layers


def sliced(layers: list[nn.Module], bounds: list[tuple[int, int]]) -> list[nn.Sequential]:
    """Group layers into Sequentials named by their torchvision index (``slice.<i>``)."""
    out = []
    for start, stop in bounds:
        seq = nn.Sequential()
        for i in range(start, stop):
            seq.add_module(str(i), layers[i])
        out.append(seq)
    return out


def torchvision_key_map(bounds: list[tuple[int, int]], prefix: str) -> dict[int, str]:
    """features index -> module path here, e.g. 3 -> 'net.slice2.3' for prefix 'net.slice'."""
    return {i: f"{prefix}{s + 1}.{i}" for s, (a, b) in enumerate(bounds) for i in range(a, b)}
