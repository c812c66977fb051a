"""Compact image classifiers with torchvision's layer structure (same layers, shapes, padding,
ceil modes and batch-norm epsilons as ``torchvision.models``), written here because PyPI's
torchvision does not import beside the CPU build of torch that kiln pins. Random weights only:
``benchmarks/models.py`` builds them from these definitions, nothing is downloaded.

    resnet18()  densenet121()  inception_v3()  squeezenet1_1()  mobilenet_v3_small()
"""

from __future__ import annotations

import torch
from torch import nn


def _init(model: nn.Module) -> nn.Module:
    """torchvision's initialisation: Kaiming-normal convs, unit batch norms, small linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def conv_bn(cin: int, cout: int, k, stride=1, padding=0, groups: int = 1, eps: float = 1e-5,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ activation)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False),
                               nn.BatchNorm2d(cout, eps=eps)]
    if act is not None:
        layers.append(act(inplace=True) if act in (nn.ReLU, nn.Hardswish) else act())
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (conv_bn(cin, cout, 1, stride, act=None)
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride),
                                                         BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18() -> nn.Module:
    return _init(ResNet18())


# ---------------------------------------------------------------------------- DenseNet-121
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list):
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    def __init__(self, n: int, cin: int, growth: int, bn_size: int):
        super().__init__({f"denselayer{i + 1}": DenseLayer(cin + i * growth, growth, bn_size)
                          for i in range(n)})

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 32, blocks=(6, 12, 24, 16), init_features: int = 64,
                 bn_size: int = 4, num_classes: int = 1000):
        super().__init__()
        layers: dict[str, nn.Module] = {
            "conv0": nn.Conv2d(3, init_features, 7, 2, 3, bias=False),
            "norm0": nn.BatchNorm2d(init_features), "relu0": nn.ReLU(inplace=True),
            "pool0": nn.MaxPool2d(3, 2, 1)}
        c = init_features
        for i, n in enumerate(blocks):
            layers[f"denseblock{i + 1}"] = DenseBlock(n, c, growth, bn_size)
            c += n * growth
            if i != len(blocks) - 1:
                layers[f"transition{i + 1}"] = nn.Sequential(
                    nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                    nn.AvgPool2d(2, 2))
                c //= 2
        layers["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(*[m for m in layers.values()])
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def densenet121() -> nn.Module:
    return _init(DenseNet())


# ---------------------------------------------------------------------------- Inception v3
def _bc(cin: int, cout: int, k, stride=1, padding=0) -> nn.Sequential:
    return conv_bn(cin, cout, k, stride, padding, eps=1e-3)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _bc(cin, 64, 1)
        self.branch5x5 = nn.Sequential(_bc(cin, 48, 1), _bc(48, 64, 5, padding=2))
        self.branch3x3dbl = nn.Sequential(_bc(cin, 64, 1), _bc(64, 96, 3, padding=1),
                                          _bc(96, 96, 3, padding=1))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, pool_features, 1))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x),
                          self.branch_pool(x)], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _bc(cin, 384, 3, stride=2)
        self.branch3x3dbl = nn.Sequential(_bc(cin, 64, 1), _bc(64, 96, 3, padding=1),
                                          _bc(96, 96, 3, stride=2))
        self.branch_pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl(x), self.branch_pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _bc(cin, 192, 1)
        self.branch7x7 = nn.Sequential(_bc(cin, c7, 1), _bc(c7, c7, (1, 7), padding=(0, 3)),
                                       _bc(c7, 192, (7, 1), padding=(3, 0)))
        self.branch7x7dbl = nn.Sequential(
            _bc(cin, c7, 1), _bc(c7, c7, (7, 1), padding=(3, 0)),
            _bc(c7, c7, (1, 7), padding=(0, 3)), _bc(c7, c7, (7, 1), padding=(3, 0)),
            _bc(c7, 192, (1, 7), padding=(0, 3)))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, 192, 1))

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7dbl(x),
                          self.branch_pool(x)], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = nn.Sequential(_bc(cin, 192, 1), _bc(192, 320, 3, stride=2))
        self.branch7x7x3 = nn.Sequential(
            _bc(cin, 192, 1), _bc(192, 192, (1, 7), padding=(0, 3)),
            _bc(192, 192, (7, 1), padding=(3, 0)), _bc(192, 192, 3, stride=2))
        self.branch_pool = nn.MaxPool2d(3, 2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch7x7x3(x), self.branch_pool(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = _bc(cin, 320, 1)
        self.branch3x3_1 = _bc(cin, 384, 1)
        self.branch3x3_2a = _bc(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _bc(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = nn.Sequential(_bc(cin, 448, 1), _bc(448, 384, 3, padding=1))
        self.branch3x3dbl_3a = _bc(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _bc(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), _bc(cin, 192, 1))

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_1(x)
        return torch.cat([self.branch1x1(x),
                          torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1),
                          torch.cat([self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b)], 1),
                          self.branch_pool(x)], 1)


class InceptionV3(nn.Module):
    """torchvision's Inception v3 in eval mode (no auxiliary head, no input transform)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            _bc(3, 32, 3, stride=2), _bc(32, 32, 3), _bc(32, 64, 3, padding=1),
            nn.MaxPool2d(3, 2), _bc(64, 80, 1), _bc(80, 192, 3), nn.MaxPool2d(3, 2))
        self.mixed = nn.Sequential(
            InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64), InceptionB(288),
            InceptionC(768, 128), InceptionC(768, 160), InceptionC(768, 160),
            InceptionC(768, 192), InceptionD(768), InceptionE(1280), InceptionE(2048))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.avgpool(self.mixed(self.stem(x)))
        return self.fc(torch.flatten(self.dropout(x), 1))


def inception_v3() -> nn.Module:
    model = InceptionV3()
    for m in model.modules():  # torchvision: truncated normal, std 0.1
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# ---------------------------------------------------------------------------- SqueezeNet 1.1
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, e1: int, e3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
        self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, 2), nn.ReLU(inplace=True), pool(),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def squeezenet1_1() -> nn.Module:
    model = SqueezeNet11()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(model.classifier[1].weight, 0.0, 0.01)
    return model


# ---------------------------------------------------------------------------- MobileNetV3-small
def _divisible(v: float, d: int = 8) -> int:
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


class SqueezeExcitation(nn.Module):
    def __init__(self, c: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.relu, self.scale = nn.ReLU(), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.scale(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int):
        super().__init__()
        a = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, eps=1e-3, act=a))
        layers.append(conv_bn(exp, exp, k, stride, (k - 1) // 2, groups=exp, eps=1e-3, act=a))
        if se:
            layers.append(SqueezeExcitation(exp, _divisible(exp // 4)))
        layers.append(conv_bn(exp, cout, 1, eps=1e-3, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


# (input, kernel, expanded, output, squeeze-excitation, activation, stride)
_V3_SMALL = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
             (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
             (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
             (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
             (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
             (96, 5, 576, 96, True, "HS", 1)]


class MobileNetV3Small(nn.Module):
    def __init__(self, num_classes: int = 1000, last_channel: int = 1024):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 16, 3, 2, 1, eps=1e-3, act=nn.Hardswish),
            *[InvertedResidual(*cfg) for cfg in _V3_SMALL],
            conv_bn(96, 576, 1, eps=1e-3, act=nn.Hardswish))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(576, last_channel), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def mobilenet_v3_small() -> nn.Module:
    return _init(MobileNetV3Small())
