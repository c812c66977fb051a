"""Transformer models: a causal encoder with a key padding mask, a BERT-style encoder, a
GPT-style decoder-only language model, and one BERT-base layer (for benchmarks).

All are batch first. Run with the kiln CLI::

    kiln show examples/transformer.py:CausalEncoder --input x=2x8x32:float32 \\
        --input padding_mask=2x8:bool
    kiln show examples/transformer.py:bert --input ids=2x16:int64
    kiln show examples/transformer.py:gpt --input ids=2x16:int64
    kiln show examples/transformer.py:gpt_untied --input ids=1x16:int64
    kiln show examples/transformer.py:bert_base_layer --input src=1x128x768:float32

or from Python::

    import kiln, numpy as np
    from examples.transformer import gpt
    graph = kiln.trace(gpt(), ids=kiln.TensorSpec((1, 16), "int64"))
    kiln.interpret(graph, {"ids": np.arange(16).reshape(1, 16)})
"""

from __future__ import annotations

from typing import Any

from kiln import nn, ops


class CausalEncoder(nn.Module):
    """``num_layers`` Transformer encoder layers over x [N, L, d_model] with causal
    self-attention and a key padding mask [N, L] (True = padding)."""

    def __init__(self, d_model: int = 32, nhead: int = 4, dim_feedforward: int = 64,
                 num_layers: int = 2, dropout: float = 0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers)

    def forward(self, x: Any, padding_mask: Any) -> Any:
        return self.encoder(x, src_key_padding_mask=padding_mask, is_causal=True)


class Embeddings(nn.Module):
    """Token plus learned position embeddings; positions are 0..L-1, made in the graph."""

    def __init__(self, vocab_size: int, max_len: int, d_model: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(max_len, d_model)

    def forward(self, ids: Any) -> Any:
        length = ids.shape[-1]
        return self.tokens(ids) + self.positions(ops.arange(length))


class Bert(nn.Module):
    """A BERT-style encoder: embeddings, LayerNorm, post-norm GELU encoder layers, and a
    pooler (Linear + tanh on the first token). ``ids`` [N, L] int64, ``padding_mask`` [N, L]
    bool (True = padding). Returns (hidden states [N, L, d_model], pooled [N, d_model])."""

    def __init__(self, vocab_size: int = 1000, max_len: int = 64, d_model: int = 64,
                 nhead: int = 4, num_layers: int = 2, dim_feedforward: int = 128,
                 dropout: float = 0.1, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.embeddings = Embeddings(vocab_size, max_len, d_model)
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, "gelu",
                                           layer_norm_eps, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers)
        self.pooler = nn.Linear(d_model, d_model)

    def forward(self, ids: Any, padding_mask: Any = None) -> Any:
        x = self.dropout(self.norm(self.embeddings(ids)))
        x = self.encoder(x, src_key_padding_mask=padding_mask)
        return x, ops.tanh(self.pooler(x[:, 0]))


class GPT(nn.Module):
    """A GPT-style decoder-only language model: embeddings, pre-norm causal self-attention
    blocks (tanh-approximated GELU), a final LayerNorm and an LM head, tied to the token
    embedding (``tie_weights``) or its own Linear. ``ids`` [N, L] -> logits [N, L, vocab]."""

    def __init__(self, vocab_size: int = 1000, max_len: int = 64, d_model: int = 64,
                 nhead: int = 4, num_layers: int = 2, dropout: float = 0.1,
                 tie_weights: bool = True):
        super().__init__()
        self.embeddings = Embeddings(vocab_size, max_len, d_model)
        self.dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout,
                                           nn.GELU(approximate="tanh"), batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, num_layers)
        self.norm = nn.LayerNorm(d_model)
        self.tie_weights = tie_weights
        if not tie_weights:
            self.lm_head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids: Any) -> Any:
        x = self.dropout(self.embeddings(ids))
        x = self.norm(self.blocks(x, is_causal=True))
        if self.tie_weights:
            return ops.linear(x, self.embeddings.tokens.weight)
        return self.lm_head(x)


def bert() -> Bert:
    """A small BERT: 2 layers, hidden 64, 4 heads, FFN 128, vocabulary 1000."""
    return Bert()


def gpt() -> GPT:
    """A small GPT with its LM head tied to the token embedding."""
    return GPT()


def gpt_untied() -> GPT:
    """A small GPT with its own LM head."""
    return GPT(tie_weights=False)


def bert_base_layer() -> nn.TransformerEncoderLayer:
    """One BERT-base encoder layer: hidden 768, 12 heads, FFN 3072, GELU, post-norm, batch
    first, LayerNorm eps 1e-12 (BERT's). Input ``src`` [N, L, 768]."""
    return nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.1, activation="gelu",
                                      layer_norm_eps=1e-12, batch_first=True)
