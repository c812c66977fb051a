"""The CNN examples (MLP, LeNet-5, ResNet, VGG, AlexNet) against PyTorch twins: the same
state-dict keys and shapes, and the same outputs once torch's weights are loaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kiln
from kiln import nn
from kiln.errors import ShapeError
from kiln.ir import verify
from tests.examples_util import example, randomize_norms, torch_port

tnn = torch.nn


def compare(ours: nn.Module, ref: tnn.Module, shape: tuple[int, ...], rtol: float = 1e-4,
            atol: float = 1e-5) -> np.ndarray:
    """Load ref's weights into ours; both must have the same keys and shapes and outputs."""
    ref.eval()
    ref_state = ref.state_dict()
    ours_state = ours.state_dict()
    assert list(ours_state) == list(ref_state)
    assert all(ours_state[k].shape == tuple(v.shape) for k, v in ref_state.items())
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref_state.items()})
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    graph = verify(kiln.trace(ours, x=kiln.TensorSpec(shape)))
    got = kiln.interpret(graph, {"x": x})[0]
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return got


# -- MLP ----------------------------------------------------------------------------------------


def test_worked_mlp():
    model = example("mlp").worked_example()
    x = np.array([[1.0, 0.5, 0.3]], np.float32)
    hidden = kiln.interpret(kiln.trace(model.layers[0], x=kiln.TensorSpec((1, 3))), {"x": x})[0]
    np.testing.assert_allclose(hidden, [[0.68, 0.84, 1.72, 1.16]], rtol=1e-6)
    logits = kiln.interpret(kiln.trace(nn.Sequential(*list(model.layers)[:3]),
                                       x=kiln.TensorSpec((1, 3))), {"x": x})[0]
    np.testing.assert_allclose(logits, [[2.972, 2.632]], rtol=1e-6)
    out = kiln.interpret(kiln.trace(model, x=kiln.TensorSpec((1, 3))), {"x": x})[0]
    e = np.exp([2.972, 2.632])
    np.testing.assert_allclose(out, [e / e.sum()], rtol=1e-6)
    np.testing.assert_allclose(out, [[0.58419, 0.41581]], atol=1e-5)


def test_mlp_matches_torch():
    ref = tnn.Module()
    ref.layers = tnn.Sequential(tnn.Linear(784, 512), tnn.ReLU(), tnn.Linear(512, 512),
                                tnn.ReLU(), tnn.Linear(512, 10))
    ref.forward = ref.layers.forward
    model = example("mlp").MLP()
    assert repr(model.layers) == repr(ref.layers)
    compare(model, ref, (2, 784))


# -- LeNet-5 ------------------------------------------------------------------------------------


class TorchLeNet5(tnn.Module):
    def __init__(self, padding: int, act: type, pool: type):
        super().__init__()
        self.conv1 = tnn.Conv2d(1, 6, 5, padding=padding)
        self.act, self.pool = act(), pool(2, 2)
        self.conv2 = tnn.Conv2d(6, 16, 5)
        self.flatten = tnn.Flatten()
        self.fc1, self.fc2, self.fc3 = tnn.Linear(400, 120), tnn.Linear(120, 84), tnn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = self.flatten(x)
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def test_lenet5_matches_torch():
    lenet = example("lenet")
    compare(lenet.LeNet5(), TorchLeNet5(0, tnn.Tanh, tnn.AvgPool2d), (2, 1, 32, 32))
    compare(lenet.lenet5_mnist(), TorchLeNet5(2, tnn.ReLU, tnn.MaxPool2d), (2, 1, 28, 28))


# -- ResNet: a torch twin written out, with torchvision's names -----------------------------------


def t_conv3x3(cin, cout, stride=1):
    return tnn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def t_conv1x1(cin, cout, stride=1):
    return tnn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = t_conv3x3(inplanes, planes, stride), tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2, self.bn2 = t_conv3x3(planes, planes), tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = t_conv1x1(inplanes, planes), tnn.BatchNorm2d(planes)
        self.conv2, self.bn2 = t_conv3x3(planes, planes, stride), tnn.BatchNorm2d(planes)
        self.conv3, self.bn3 = t_conv1x1(planes, planes * 4), tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = tnn.BatchNorm2d(64), tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(t_conv1x1(self.inplanes, planes * block.expansion, stride),
                                        tnn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet_block_matches_torch():
    ref = TorchBasicBlock(64, 64)
    randomize_norms(ref)
    compare(example("resnet").resnet_block(), ref, (2, 64, 12, 12))


def test_downsampling_blocks_match_torch():
    resnet = example("resnet")
    for ours_cls, ref_cls, planes in [(resnet.BasicBlock, TorchBasicBlock, 32),
                                      (resnet.Bottleneck, TorchBottleneck, 8)]:
        out = planes * ours_cls.expansion
        ours = ours_cls(16, planes, 2, nn.Sequential(resnet.conv1x1(16, out, 2),
                                                     nn.BatchNorm2d(out)))
        ref = ref_cls(16, planes, 2, tnn.Sequential(t_conv1x1(16, out, 2), tnn.BatchNorm2d(out)))
        randomize_norms(ref)
        compare(ours, ref, (1, 16, 9, 9))


def test_resnet18_matches_torch():
    ref = TorchResNet(TorchBasicBlock, [2, 2, 2, 2])
    randomize_norms(ref)
    model = example("resnet").resnet18()
    assert len(model.state_dict()) == 122
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters()) == 11_689_512
    compare(model, ref, (1, 3, 64, 64))


def test_resnet50_structure_and_output():
    model = example("resnet").resnet50()
    state = model.state_dict()
    # 53 convs + fc weight/bias + 53 batch norms * 5 (weight, bias, mean, var, count) = 320
    assert len(state) == 320
    assert sum(k.endswith("num_batches_tracked") for k in state) == 53
    assert {k.split(".")[0] for k in state} == {"conv1", "bn1", "layer1", "layer2", "layer3",
                                                "layer4", "fc"}
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["layer2.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    ref = TorchResNet(TorchBottleneck, [3, 4, 6, 3])
    randomize_norms(ref)
    assert model.num_parameters() == 25_557_032
    compare(model, ref, (1, 3, 224, 224))


def test_resnet_init_is_seeded_and_torchvision_like():
    resnet = example("resnet")
    nn.manual_seed(0)
    a = resnet.resnet18().state_dict()
    nn.manual_seed(0)
    b = resnet.resnet18().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    w = a["layer3.0.conv2.weight"]  # kaiming normal, fan_out, relu
    assert abs(w.std() - math.sqrt(2 / (256 * 9))) < 0.05 * math.sqrt(2 / (256 * 9))
    assert (a["layer3.0.bn2.weight"] == 1).all() and (a["layer3.0.bn2.bias"] == 0).all()


def test_shape_mistake_names_the_layer_path():
    resnet = example("resnet")
    model = resnet.resnet18()
    model.layer1[0].conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
    with pytest.raises(ShapeError) as info:
        kiln.trace(model, x=kiln.TensorSpec((1, 3, 64, 64)))
    message = str(info.value)
    assert "[layer1.0.conv2 (Conv2d)]" in message
    assert "float32[1, 64, 16, 16]" in message and "in_channels=32" in message
    assert "resnet.py:" in message  # the line of the example that called the layer
    with pytest.raises(ShapeError, match=r"\[conv1 \(Conv2d\)\].*float32\[1, 1, 64, 64\]"):
        kiln.trace(resnet.resnet18(), x=kiln.TensorSpec((1, 1, 64, 64)))


# -- VGG and AlexNet: the examples ported to torch by changing their import ------------------------


def test_vgg_matches_torch_port():
    torch.manual_seed(0)
    ref = torch_port("vgg").vgg_tiny()
    randomize_norms(ref)
    compare(example("vgg").vgg_tiny(), ref, (2, 3, 32, 32))
    vgg = example("vgg")
    vgg16_features = vgg.VGG(vgg.make_layers(vgg.CFGS["D"]), hidden=8)  # vgg16, thin classifier
    keys = list(vgg16_features.state_dict())
    assert len(keys) == 32 and keys[-2:] == ["classifier.6.weight", "classifier.6.bias"]
    assert keys[:3] == ["features.0.weight", "features.0.bias", "features.2.weight"]


def test_alexnet_matches_torch_port():
    torch.manual_seed(0)
    ref = torch_port("alexnet").AlexNet(num_classes=10, lrn=True)
    compare(example("alexnet").AlexNet(num_classes=10, lrn=True), ref, (1, 3, 224, 224))
    keys = list(example("alexnet").AlexNet().state_dict())
    assert keys[:4] == ["features.0.weight", "features.0.bias", "features.3.weight",
                        "features.3.bias"]  # torchvision's indices without LRN
