"""PyTorch twins of kiln's example models, exported with PyTorch's exporter by the ONNX tests
(tests/onnx/test_models.py, small sizes) and by benchmarks/onnx_bench.py (larger ones)."""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.f1, self.f2, self.f3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.avg_pool2d(torch.relu(self.c2(x)), 2)
        return self.f3(torch.relu(self.f2(torch.relu(self.f1(torch.flatten(x, 1))))))


class ResBlock(nn.Module):
    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride=2, bias=False),
                                  nn.BatchNorm2d(2 * c))
        self.conv3 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)

    def forward(self, x):
        y = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)
        return torch.relu(self.conv3(y) + self.down(y)).mean((2, 3))


class Recurrent(nn.Module):
    """A 2-layer bidirectional LSTM/GRU/RNN and a classifier on its last step."""

    def __init__(self, cell: str, d_in: int = 6, hidden: int = 5):
        super().__init__()
        self.rnn = getattr(nn, cell)(d_in, hidden, num_layers=2, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][-1])


class EncoderLayer(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4, norm_first: bool = False):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d, heads, 2 * d, batch_first=True,
                                                norm_first=norm_first)

    def forward(self, x):
        # the TorchScript exporter needs is_causal spelled out
        return self.layer(x, is_causal=False)


class Embeddings(nn.Module):
    def __init__(self, vocab: int, max_len: int, d: int):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, d), nn.Embedding(max_len, d)

    def forward(self, ids):
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[-1]))


class Bert(nn.Module):
    """examples/transformer.py's Bert, in PyTorch."""

    def __init__(self, vocab=50, max_len=16, d=16, heads=2, layers=2):
        super().__init__()
        self.embeddings = Embeddings(vocab, max_len, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, 0.1, "gelu", 1e-12,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pooler = nn.Linear(d, d)

    def forward(self, ids, padding_mask):
        x = self.encoder(self.norm(self.embeddings(ids)), src_key_padding_mask=padding_mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class GPT(nn.Module):
    """examples/transformer.py's GPT, in PyTorch: pre-norm causal blocks with tanh-GELU and a
    tied LM head."""

    def __init__(self, vocab=50, max_len=16, d=16, heads=2, layers=2):
        super().__init__()
        self.embeddings = Embeddings(vocab, max_len, d)
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, 0.1, nn.GELU(approximate="tanh"),
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def forward(self, ids):
        n = ids.shape[-1]
        mask = torch.triu(torch.full((n, n), float("-inf")), 1)
        x = self.norm(self.blocks(self.embeddings(ids), mask=mask))
        return nn.functional.linear(x, self.embeddings.tokens.weight)
