"""A small DDPM-style denoiser (Ho et al., 2020, "Denoising diffusion probabilistic models")
and the ancestral sampling loop that runs it, compiled, step by step.

``UNet`` predicts the noise eps in a noisy image x_t [N, C, H, W] at timestep t [N] (float32):

- the timestep becomes a sinusoidal embedding (the Transformer's positional encoding, as in
  DDPM; here in OpenAI's improved-diffusion form ``[cos(t f_i), sin(t f_i)]`` with
  frequencies f_i = 10000^(-i / half), built in the graph from arange, exp, cos and sin),
  then an MLP (Linear, SiLU, Linear);
- a down path of residual blocks (BatchNorm, SiLU, 3x3 conv; the projected embedding is
  added to the feature maps between the two convolutions), with stride-2 convolutions
  between resolutions; a middle block; an up path whose blocks take the matching down
  block's output concatenated on channels (the U's skips), with stride-2 transposed
  convolutions between resolutions; and a 3x3 convolution back to the image channels.

DDPM uses GroupNorm and self-attention at 16x16; this sketch uses BatchNorm (in eval mode an
affine map per channel) and no attention, one residual block per resolution. The same source
with ``from torch import nn`` (and torch functions for the few ``ops``) builds a torch twin.

``ddpm_sample`` is DDPM's ancestral sampler (algorithm 2) with a linear beta schedule, in
numpy; it calls any runner ``{"x": x_t, "t": t} -> [eps]``: a compiled model's ``run`` or the
interpreter::

    graph = kiln.trace(denoiser_tiny(), x=kiln.TensorSpec((4, 1, 16, 16)),
                       t=kiln.TensorSpec((4,)))
    model = kiln.compile(graph, opt_level=2)
    images = ddpm_sample(model.run, (4, 1, 16, 16), linear_betas(1000))

Run with the kiln CLI::

    kiln show examples/diffusion.py:denoiser_tiny --input x=2x1x16x16:float32 \\
        --input t=2:float32
    kiln show examples/diffusion.py:ddpm_unet --input x=1x3x32x32:float32 --input t=1:float32
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kiln import nn, ops


class SinusoidalEmbedding(nn.Module):
    """Timesteps t [N] (float) -> [N, dim]: cos(t f_i) then sin(t f_i), i < dim / 2."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"the embedding dimension must be even, got {dim}")
        self.dim, self.max_period = dim, max_period

    def forward(self, t: Any) -> Any:
        half = self.dim // 2
        freqs = ops.exp(ops.arange(half, dtype="float32") * (-math.log(self.max_period) / half))
        args = t.unsqueeze(1) * freqs.unsqueeze(0)
        return ops.concat([ops.cos(args), ops.sin(args)], axis=1)


class ResBlock(nn.Module):
    """norm-act-conv, + the timestep embedding projected to the channels, norm-act-conv, plus
    a shortcut (a 1x1 convolution when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.SiLU()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Any, emb: Any) -> Any:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb_proj(self.act(emb))[:, :, None, None]  # broadcast over H and W
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """Noise prediction eps(x_t, t): x [N, in_channels, S, S] and t [N] -> [N, in_channels,
    S, S]. Resolution i has ``base_channels * channel_mults[i]`` channels; S must be divisible
    by 2^(len(channel_mults) - 1)."""

    def __init__(self, in_channels: int = 1, base_channels: int = 8,
                 channel_mults: Sequence[int] = (1, 2), emb_dim: int | None = None):
        super().__init__()
        emb_dim = emb_dim or 4 * base_channels
        self.time_embed = nn.Sequential(SinusoidalEmbedding(base_channels),
                                        nn.Linear(base_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch, skips = base_channels, []
        for i, mult in enumerate(channel_mults):
            self.down.append(ResBlock(ch, base_channels * mult, emb_dim))
            ch = base_channels * mult
            skips.append(ch)
            if i < len(channel_mults) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.mid = ResBlock(ch, ch, emb_dim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            self.up.append(ResBlock(ch + skips.pop(), base_channels * mult, emb_dim))
            ch = base_channels * mult
            if i > 0:
                self.upsample.append(nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1))
        self.norm_out = nn.BatchNorm2d(ch)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x: Any, t: Any) -> Any:
        emb = self.time_embed(t)
        h, skips = self.conv_in(x), []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(ops.concat([h, skips.pop()], axis=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(self.act(self.norm_out(h)))


def linear_betas(timesteps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear noise schedule beta_1..beta_T (float64)."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


Runner = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


def ddpm_sample(run: Runner, shape: Sequence[int], betas: np.ndarray, seed: int = 0,
                steps: int | None = None) -> np.ndarray:
    """DDPM ancestral sampling: x_T ~ N(0, I), then for t = T-1 .. 0::

        x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps(x_t, t)) / sqrt(alpha_t)
                  + sqrt(beta_t) * z,   z ~ N(0, I) (no noise at the last step)

    ``run({"x": x_t, "t": t})[0]`` is the model's noise prediction (t: float32 [N], the same
    step for the whole batch). ``steps`` stops after that many steps (default: all T);
    returns x as float32. The noise comes from numpy's generator seeded with ``seed``, so two
    runners can be compared step by step.
    """
    rng = np.random.default_rng(seed)
    alphas = 1.0 - betas
    alpha_bars = np.cumprod(alphas)
    x = rng.standard_normal(shape).astype(np.float32)
    timesteps = len(betas)
    stop = 0 if steps is None else max(0, timesteps - steps)
    for t in range(timesteps - 1, stop - 1, -1):
        eps = np.asarray(run({"x": x, "t": np.full(shape[0], t, np.float32)})[0])
        mean = (x - betas[t] / np.sqrt(1.0 - alpha_bars[t]) * eps) / np.sqrt(alphas[t])
        if t > 0:
            mean = mean + np.sqrt(betas[t]) * rng.standard_normal(shape)
        x = mean.astype(np.float32)
    return x


def denoiser_tiny() -> UNet:
    """A 1-channel denoiser for 16x16 images: 8 and 16 channels at 16x16 and 8x8."""
    return UNet(in_channels=1, base_channels=8, channel_mults=(1, 2))


def ddpm_unet() -> UNet:
    """DDPM's CIFAR-10 widths (3x32x32, 128 channels, multipliers 1, 2, 2, 2) without its
    attention and with one residual block per resolution."""
    return UNet(in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2))
