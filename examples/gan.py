"""DCGAN (Radford et al., 2015, "Unsupervised representation learning with deep convolutional
generative adversarial networks") as PyTorch's ``examples/dcgan`` writes it, with its module
names (``main.0``, ``main.1``, ...) and weight initialization, so its checkpoints load.

- ``Generator``: a latent vector z [N, nz, 1, 1] -> an image [N, nc, S, S] in [-1, 1]: a 4x4
  transposed convolution, then stride-2 transposed convolutions that double the size and
  halve the channels, each followed by BatchNorm2d and ReLU, and a tanh at the end.
- ``Discriminator``: the mirror image, [N, nc, S, S] -> the probability [N] that the image
  is real: stride-2 convolutions with LeakyReLU(0.2) (and batch norm after all but the
  first), a last 4x4 convolution to one value, and a sigmoid.

``image_size`` S (a power of two, at least 8) sets the depth; S = 64 is the paper's net,
with PyTorch's indices. Run with the kiln CLI::

    kiln show examples/gan.py:dcgan_generator --input z=1x100x1x1:float32
    kiln show examples/gan.py:dcgan_discriminator --input x=1x3x64x64:float32
    kiln interpret examples/gan.py:generator_tiny --input z=2x16x1x1
"""

from __future__ import annotations

from typing import Any

from kiln import nn


def _depth(image_size: int) -> int:
    """The number of stride-2 layers between 4x4 and ``image_size``."""
    depth = image_size.bit_length() - 3
    if image_size < 8 or image_size != 4 << depth:
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
    return depth


class Generator(nn.Module):
    """z [N, nz, 1, 1] -> images [N, nc, image_size, image_size]; the widest layer has
    ``ngf * image_size / 8`` channels (ngf * 8 at 64x64)."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64):
        super().__init__()
        depth = _depth(image_size)
        mult = 2 ** (depth - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ngf * mult, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(ngf * mult), nn.ReLU(True)]
        for _ in range(depth - 1):  # 4x4 -> ... -> image_size / 2, halving the channels
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
            mult //= 2
        layers += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Any) -> Any:
        return self.main(z)


class Discriminator(nn.Module):
    """images [N, nc, image_size, image_size] -> the probability [N] of being real."""

    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64):
        super().__init__()
        depth = _depth(image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
                                   nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for _ in range(depth - 1):  # image_size / 2 -> ... -> 4x4, doubling the channels
            layers += [nn.Conv2d(ndf * mult, ndf * mult * 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult * 2), nn.LeakyReLU(0.2, inplace=True)]
            mult *= 2
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: Any) -> Any:
        return self.main(x).view(-1, 1).squeeze(1)


def weights_init(m: nn.Module) -> None:
    """DCGAN's initialization (``model.apply(weights_init)``): convolutions N(0, 0.02), batch
    norm scales N(1, 0.02) and shifts 0."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0)


def dcgan_generator() -> Generator:
    """The paper's generator: z of 100 -> 3x64x64 (3.6M parameters)."""
    return Generator().apply(weights_init)


def dcgan_discriminator() -> Discriminator:
    """The paper's discriminator: 3x64x64 -> P(real) (2.8M parameters)."""
    return Discriminator().apply(weights_init)


def generator_tiny() -> Generator:
    """z of 16 -> 1x16x16 images, 8 base filters (z=Nx16x1x1)."""
    return Generator(nz=16, ngf=8, nc=1, image_size=16).apply(weights_init)


def discriminator_tiny() -> Discriminator:
    """1x16x16 images -> P(real), 8 base filters."""
    return Discriminator(ndf=8, nc=1, image_size=16).apply(weights_init)
