"""``kiln.nn``: PyTorch-compatible layers over the DSL."""

from kiln.frontend.nn import functional, init
from kiln.frontend.nn.activation import (
    ELU,
    GELU,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    LogSoftmax,
    Mish,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softplus,
    Tanh,
)
from kiln.frontend.nn.attention import MultiheadAttention, scaled_dot_product_attention
from kiln.frontend.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    PixelShuffle,
    Unflatten,
    Upsample,
)
from kiln.frontend.nn.module import (
    Buffer,
    Module,
    ModuleList,
    Parameter,
    Sequential,
    generator,
    manual_seed,
)
from kiln.frontend.nn.normalization import (
    BatchNorm1d,
    BatchNorm2d,
    GroupNorm,
    InstanceNorm2d,
    LayerNorm,
    LocalResponseNorm,
)
from kiln.frontend.nn.recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNBase, RNNCell
from kiln.frontend.nn.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = ["Buffer", "Module", "ModuleList", "Parameter", "Sequential", "generator",
           "manual_seed",
           "RNN", "LSTM", "GRU", "RNNBase", "RNNCell", "LSTMCell", "GRUCell",
           "MultiheadAttention", "scaled_dot_product_attention", "TransformerEncoderLayer",
           "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder", "Transformer",
           "init", "Linear", "Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d",
           "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "LocalResponseNorm",
           "Embedding", "Dropout", "Flatten", "Unflatten", "Identity", "ReLU", "LeakyReLU",
           "ELU", "GELU", "Hardswish", "Hardtanh", "ReLU6", "Sigmoid", "Tanh", "SiLU", "Softplus",
           "Softmax", "LogSoftmax", "functional", "GroupNorm", "InstanceNorm2d", "Hardsigmoid",
           "Mish", "PixelShuffle", "Upsample"]
