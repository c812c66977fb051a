"""AlexNet (Krizhevsky et al., 2012). ``AlexNet()`` is torchvision's variant (same modules
and state-dict keys); ``AlexNet(lrn=True)`` adds the paper's local response normalization
(size 5, alpha 1e-4, beta 0.75, k 2) after the first two ReLUs, which shifts the indices of
the later ``features`` entries.

Run with the kiln CLI::

    kiln show examples/alexnet.py:AlexNet --input x=1x3x224x224:float32
    kiln show examples/alexnet.py:alexnet_lrn --input x=1x3x224x224:float32
"""

from __future__ import annotations

from typing import Any

from kiln import nn


class AlexNet(nn.Module):
    """Five convolutions (three max pools), adaptive average pool to 6x6, three linear
    layers with dropout."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, lrn: bool = False):
        super().__init__()

        def norm() -> list[nn.Module]:
            return [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)] if lrn else []

        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            *norm(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            *norm(), nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Any) -> Any:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def alexnet_lrn() -> AlexNet:
    """AlexNet with the paper's local response normalization."""
    return AlexNet(lrn=True)
