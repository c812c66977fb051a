"""VGG (Simonyan & Zisserman, 2014) as torchvision defines it: ``features`` (3x3 convolutions
and 2x2 max pools from a configuration list), ``avgpool`` (adaptive, to 7x7) and
``classifier`` (4096-4096-num_classes with dropout), with torchvision's state-dict keys.

Run with the kiln CLI::

    kiln show examples/vgg.py:vgg16 --input x=1x3x224x224:float32
    kiln show examples/vgg.py:vgg11_bn --input x=1x3x224x224:float32
"""

from __future__ import annotations

from typing import Any, Sequence

from kiln import nn

CFGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
          "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512,
          512, 512, 512, "M"],
}


def make_layers(cfg: Sequence[int | str], batch_norm: bool = False,
                in_channels: int = 3) -> nn.Sequential:
    """Conv3x3(+BN)+ReLU for each int in ``cfg``, MaxPool2d(2) for each 'M'."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, int(v), kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(nn.ReLU(inplace=True))
        in_channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features``, adaptive average pool to ``pool_size`` (7: torchvision), classifier."""

    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5, pool_size: int = 7, hidden: int = 4096,
                 out_channels: int = 512):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(out_channels * pool_size * pool_size, hidden), nn.ReLU(True),
            nn.Dropout(p=dropout), nn.Linear(hidden, hidden), nn.ReLU(True),
            nn.Dropout(p=dropout), nn.Linear(hidden, num_classes))
        if init_weights:  # torchvision's initialization
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: Any) -> Any:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def _vgg(cfg: str, batch_norm: bool, num_classes: int) -> VGG:
    return VGG(make_layers(CFGS[cfg], batch_norm), num_classes)


def vgg11(num_classes: int = 1000) -> VGG:
    """VGG-11 (configuration A)."""
    return _vgg("A", False, num_classes)


def vgg11_bn(num_classes: int = 1000) -> VGG:
    """VGG-11 with batch norm."""
    return _vgg("A", True, num_classes)


def vgg16(num_classes: int = 1000) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("D", False, num_classes)


def vgg16_bn(num_classes: int = 1000) -> VGG:
    """VGG-16 with batch norm."""
    return _vgg("D", True, num_classes)


def vgg19(num_classes: int = 1000) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("E", False, num_classes)


def vgg_tiny(num_classes: int = 10) -> VGG:
    """A small VGG-style net for 3x32x32 images (CIFAR-sized), quick to interpret."""
    features = make_layers([16, "M", 32, "M", 64, 64, "M"], batch_norm=True)
    return VGG(features, num_classes, pool_size=1, hidden=128, out_channels=64)
