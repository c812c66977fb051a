"""GoogLeNet / Inception v1 (Szegedy et al., 2014, "Going deeper with convolutions") as
torchvision defines it: the same modules, names and state-dict keys (conv1..conv3 and
inception3a..inception5b of BasicConv2d = conv without bias + BatchNorm(eps 1e-3) + ReLU,
optional aux1/aux2 heads, fc), so torchvision weights converted to numpy load as they are::

    model = googlenet(transform_input=True)  # as torchvision's googlenet(weights=...)
    model.load_state_dict({k: v.numpy() for k, v in torchvision_model.state_dict().items()})

(``aux_logits=True`` adds the two auxiliary classifiers that torchvision's checkpoint file
also holds and that its untrained ``googlenet()`` builds.)

An Inception module runs four branches on the same input and concatenates them on channels:
a 1x1 convolution; 1x1 reduce then 3x3; 1x1 reduce then a "5x5" branch (torchvision, and
hence its checkpoint, uses a 3x3 there: a known deviation from the paper, kept for weight
compatibility; ``five_by_five=True`` builds the paper's 5x5); a 3x3 max pool then a 1x1
projection. The channel table (``INCEPTION_CFG``) is the paper's Table 1; ``width`` scales
every channel count, which gives a tiny net with the full depth for tests.

Run with the kiln CLI::

    kiln show examples/inception.py:googlenet --input x=1x3x224x224:float32
    kiln interpret examples/inception.py:googlenet_tiny --input x=2x3x32x32
"""

from __future__ import annotations

from typing import Any

from kiln import nn, ops

# name -> (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj), the paper's Table 1
INCEPTION_CFG: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class BasicConv2d(nn.Module):
    """Convolution (no bias) + BatchNorm2d(eps=0.001) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Any) -> Any:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches, concatenated on channels (ch1x1 + ch3x3 + ch5x5 + pool_proj
    output channels)."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int, five_by_five: bool = False):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, kernel_size=1),
                                     BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1))
        k = 5 if five_by_five else 3  # torchvision's 3x3 (see the module docstring)
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, kernel_size=1),
                                     BasicConv2d(ch5x5red, ch5x5, kernel_size=k, padding=k // 2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1,
                                                  ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, kernel_size=1))

    def forward(self, x: Any) -> Any:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return ops.concat(branches, axis=1)


class InceptionAux(nn.Module):
    """An auxiliary classifier (used in training only): adaptive average pool to 4x4, 1x1
    conv to 128, fc 2048 -> 1024, ReLU, dropout 0.7, fc -> classes. kiln's adaptive pooling
    needs a map side that 4 divides: 256x256 images (16x16 maps here) trace, 224x224 (14x14)
    do not."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7,
                 width: float = 1.0):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = BasicConv2d(in_channels, _scale(128, width), kernel_size=1)
        self.fc1 = nn.Linear(_scale(128, width) * 16, _scale(1024, width))
        self.fc2 = nn.Linear(_scale(1024, width), num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Any) -> Any:
        x = self.conv(self.avgpool(x)).flatten(1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


def _scale(channels: int, width: float) -> int:
    return max(1, int(channels * width))


class GoogLeNet(nn.Module):
    """Stem (7x7/2 conv, pool, 1x1 and 3x3 convs, pool), nine Inception modules with two more
    3x3/2 max pools (all pools in ceil mode, as torchvision), global average pool, dropout,
    fc. In training mode with ``aux_logits`` it returns (logits, aux2, aux1), else logits."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False,
                 transform_input: bool = False, init_weights: bool = True,
                 dropout: float = 0.2, dropout_aux: float = 0.7, width: float = 1.0,
                 five_by_five: bool = False):
        super().__init__()
        self.aux_logits, self.transform_input = aux_logits, transform_input
        c = {name: tuple(_scale(n, width) for n in cfg) for name, cfg in INCEPTION_CFG.items()}
        out = {name: cfg[0] + cfg[2] + cfg[4] + cfg[5] for name, cfg in c.items()}
        stem1, stem3 = _scale(64, width), _scale(192, width)

        def inception(name: str, in_channels: int) -> Inception:
            return Inception(in_channels, *c[name], five_by_five=five_by_five)

        self.conv1 = BasicConv2d(3, stem1, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(stem1, stem1, kernel_size=1)
        self.conv3 = BasicConv2d(stem1, stem3, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = inception("3a", stem3)
        self.inception3b = inception("3b", out["3a"])
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = inception("4a", out["3b"])
        self.inception4b = inception("4b", out["4a"])
        self.inception4c = inception("4c", out["4b"])
        self.inception4d = inception("4d", out["4c"])
        self.inception4e = inception("4e", out["4d"])
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = inception("5a", out["4e"])
        self.inception5b = inception("5b", out["5a"])
        if aux_logits:
            self.aux1 = InceptionAux(out["4a"], num_classes, dropout_aux, width)
            self.aux2 = InceptionAux(out["4d"], num_classes, dropout_aux, width)
        else:
            self.aux1 = self.aux2 = None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(out["5b"], num_classes)
        if init_weights:  # torchvision's truncated normal(0, 0.01), untruncated here
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def _transform_input(self, x: Any) -> Any:
        """ImageNet normalization ((x - mean) / std) re-expressed for inputs already
        normalized to [-1, 1] (torchvision's ``transform_input`` for its checkpoint)."""
        if not self.transform_input:
            return x
        stats = [(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]
        channels = [x[:, i].unsqueeze(1) * (std / 0.5) + (mean - 0.5) / 0.5
                    for i, (mean, std) in enumerate(stats)]
        return ops.concat(channels, axis=1)

    def forward(self, x: Any) -> Any:
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        aux1 = self.aux1(x) if self.aux1 is not None and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if self.aux2 is not None and self.training else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(self.avgpool(x).flatten(1)))
        if aux1 is not None:
            return x, aux2, aux1
        return x


def googlenet(num_classes: int = 1000, aux_logits: bool = False,
              transform_input: bool = False) -> GoogLeNet:
    """GoogLeNet for 3x224x224 ImageNet images (6.6M parameters without the aux heads,
    13.0M with them)."""
    return GoogLeNet(num_classes, aux_logits=aux_logits, transform_input=transform_input)


def googlenet_tiny(num_classes: int = 10) -> GoogLeNet:
    """The full depth at 1/16 of the channels (3a: 4+8+2+2 = 16 output channels), for
    3x32x32 images: quick to interpret and compile."""
    return GoogLeNet(num_classes, width=1 / 16)


def inception_block() -> Inception:
    """Inception 3a: 192 -> 256 channels, for 28x28 maps (input x=1x192x28x28)."""
    return Inception(192, *INCEPTION_CFG["3a"])
