"""Multi-head attention as PyTorch's ``nn.MultiheadAttention`` and
``F.scaled_dot_product_attention``.

Scores are spelled one way, ``softmax(q @ k^T * (1/sqrt(head_dim)) + mask)``, the pattern the
fusion pass looks for. Masks follow PyTorch: a bool mask of ``MultiheadAttention`` is True
where attention is NOT allowed (``F.scaled_dot_product_attention``'s bool mask is the other
way round, as in PyTorch); a float mask is added to the scores. Bool masks become additive
``-inf``/0 masks on the mask alone, so the scores see a single add.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from kiln.errors import KilnError, ShapeError, UnsupportedOpError
from kiln.frontend import ops
from kiln.frontend.dsl import Tensor, as_tensor, current_tracer
from kiln.frontend.nn import init
from kiln.frontend.nn.layers import Linear, _describe, _shape_error
from kiln.frontend.nn.module import Module, Parameter
from kiln.ir.types import is_float


def causal_mask(length: int, source_length: int | None = None,
                dtype: str = "float32") -> Tensor:
    """An in-graph additive causal mask [L, S]: -inf above the diagonal, 0 elsewhere
    (top-left aligned, as PyTorch's ``is_causal``)."""
    s = length if source_length is None else source_length
    return ops.triu(ops.full((length, s), float("-inf"), dtype), 1)


def additive_mask(mask: Any, dtype: str, what: str, true_means_masked: bool = True) -> Tensor:
    """A bool mask as an additive float mask (-inf where masked, else 0); float masks as they
    are. Other dtypes are an error, as in PyTorch."""
    m = as_tensor(mask)
    if m.dtype == "bool":
        masked, kept = (float("-inf"), 0.0) if true_means_masked else (0.0, float("-inf"))
        return ops.where(m, ops.full((), masked, dtype), ops.full((), kept, dtype))
    if not is_float(m.dtype):
        raise ShapeError(f"{what} {_describe(m)}: only bool and floating-point masks are "
                         "supported")
    if m.dtype != dtype:
        raise ShapeError(f"{what} {_describe(m)} must have the query's dtype {dtype}")
    return m


def _attend(q: Tensor, k_t: Tensor, v: Tensor, mask: Tensor | None, scale: float,
            dropout_p: float, seed: int) -> tuple[Tensor, Tensor]:
    """(softmax(q @ k_t * scale + mask) @ v, the attention weights); k_t is k transposed."""
    scores = ops.matmul(q, k_t) * scale
    if mask is not None:
        scores = scores + mask
    weights = ops.softmax(scores, axis=-1)
    if dropout_p:
        weights = ops.dropout(weights, dropout_p, training=True, seed=seed)
    return ops.matmul(weights, v), weights


def scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Any = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, seed: int = 0) -> Tensor:
    """PyTorch's ``F.scaled_dot_product_attention`` on [..., L, E] / [..., S, E] tensors.

    A bool ``attn_mask`` is True where attention IS allowed; a float one is added to the
    scores. ``is_causal`` masks out key positions after the query's (top-left aligned).
    """
    q, k = as_tensor(query), as_tensor(key)
    if q.ndim < 2 or k.ndim < 2 or q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"scaled_dot_product_attention: query {_describe(q)} and key "
                         f"{_describe(k)} must be [..., L, E] and [..., S, E]")
    if is_causal and attn_mask is not None:
        raise KilnError("scaled_dot_product_attention: give attn_mask or is_causal, not both "
                        "(as PyTorch)")
    mask = None
    if attn_mask is not None:
        mask = additive_mask(attn_mask, q.dtype, "attn_mask", true_means_masked=False)
    elif is_causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return _attend(q, ops.swapaxes(k, -1, -2), value, mask, scale, dropout_p, seed)[0]


class MultiheadAttention(Module):
    """PyTorch's ``nn.MultiheadAttention`` with kdim = vdim = embed_dim.

    Parameters: ``in_proj_weight`` [3E, E] (q, k, v stacked), ``in_proj_bias`` [3E] and the
    Linear ``out_proj``. ``forward`` returns ``(attn_output, attn_weights or None)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: int | None = None, vdim: int | None = None,
                 batch_first: bool = False) -> None:
        super().__init__()
        if add_bias_kv or add_zero_attn:
            raise UnsupportedOpError("MultiheadAttention: add_bias_kv and add_zero_attn are "
                                     "not supported")
        if kdim not in (None, embed_dim) or vdim not in (None, embed_dim):
            raise UnsupportedOpError(
                f"MultiheadAttention: kdim={kdim}, vdim={vdim}: kiln supports only kdim = vdim "
                f"= embed_dim ({embed_dim}); project keys and values to embed_dim first")
        if num_heads <= 0 or embed_dim % num_heads:
            raise KilnError(f"MultiheadAttention: embed_dim {embed_dim} must be divisible by "
                            f"num_heads {num_heads}")
        if not 0.0 <= dropout <= 1.0:
            raise KilnError(f"MultiheadAttention: dropout must be in [0, 1], got {dropout}")
        self.embed_dim, self.kdim, self.vdim = embed_dim, embed_dim, embed_dim
        self._qkv_same_embed_dim = True
        self.num_heads, self.dropout, self.batch_first = num_heads, float(dropout), batch_first
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = Parameter(np.zeros((3 * embed_dim, embed_dim), np.float32))
        self.register_parameter(
            "in_proj_bias", Parameter(np.zeros(3 * embed_dim, np.float32)) if bias else None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        init.xavier_uniform_(self.in_proj_weight)  # PyTorch's _reset_parameters
        if bias:
            init.zeros_(self.out_proj.bias)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"

    def forward(self, query: Any, key: Any, value: Any, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None,
                average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Inputs [L, N, E] ([N, L, E] if batch_first) or unbatched [L, E]; masks: bool (True
        = masked out) or float (added). ``key_padding_mask`` [N, S]; ``attn_mask`` [L, S] or
        [N * num_heads, L, S]. ``is_causal`` without ``attn_mask`` builds the causal mask.
        Returns (output, weights [N, L, S] averaged over heads, or [N, heads, L, S])."""
        q, k, v = as_tensor(query), as_tensor(key), as_tensor(value)
        batched = self._check(q, k, v)
        e, h, d = self.embed_dim, self.num_heads, self.head_dim
        kv_same = k.value is v.value
        self_attention = kv_same and q.value is k.value
        q = self._batch_major(q, batched)
        k = q if self_attention else self._batch_major(k, batched)
        v = k if kv_same else self._batch_major(v, batched)
        n, tgt, src = q.shape[0], q.shape[1], k.shape[1]
        mask = self._mask(key_padding_mask, attn_mask, is_causal, batched, n, tgt, src, q.dtype)

        w, b = self.in_proj_weight, self.in_proj_bias
        if self_attention:  # one projection for q, k and v
            q, k, v = ops.chunk(ops.linear(q, w, b), 3, axis=-1)
        else:
            ws = ops.chunk(w, 3, axis=0)
            bs = ops.chunk(b, 3, axis=0) if b is not None else [None] * 3
            if kv_same:
                q = ops.linear(q, ws[0], bs[0])
                k, v = ops.chunk(ops.linear(k, ops.concat(ws[1:]),
                                            None if b is None else ops.concat(bs[1:])), 2, -1)
            else:
                q, k, v = (ops.linear(t, wi, bi) for t, wi, bi in zip((q, k, v), ws, bs))
        q = ops.transpose(ops.reshape(q, (n, tgt, h, d)), (0, 2, 1, 3))  # [N, h, L, d]
        k_t = ops.transpose(ops.reshape(k, (n, src, h, d)), (0, 2, 3, 1))  # [N, h, d, S]
        v = ops.transpose(ops.reshape(v, (n, src, h, d)), (0, 2, 1, 3))  # [N, h, S, d]
        p = self.dropout if self.training else 0.0
        seed = zlib.crc32(f"MultiheadAttention:{self._name()}".encode())
        out, weights = _attend(q, k_t, v, mask, 1.0 / math.sqrt(d), p, seed)
        out = ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (n, tgt, e))
        out = self.out_proj(out)
        if not batched:
            out = ops.squeeze(out, 0)
        elif not self.batch_first:
            out = ops.swapaxes(out, 0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = ops.mean(weights, axis=1)
        return out, (weights if batched else ops.squeeze(weights, 0))

    def _name(self) -> str:
        return current_tracer().module_names.get(id(self), "")

    def _check(self, q: Tensor, k: Tensor, v: Tensor) -> bool:
        """Validate ranks and sizes; returns whether the inputs are batched."""
        e = self.embed_dim
        layout = "[N, L, E]" if self.batch_first else "[L, N, E]"
        bad = q.ndim not in (2, 3) or k.ndim != q.ndim or v.ndim != q.ndim or any(
            t.shape[-1] != e for t in (q, k, v))
        if not bad and q.ndim == 3:
            b = 0 if self.batch_first else 1
            bad = not (q.shape[b] == k.shape[b] == v.shape[b])
        if bad or k.shape[:-1] != v.shape[:-1]:
            raise _shape_error(self, f"query {_describe(q)}, key {_describe(k)} and value "
                                     f"{_describe(v)} must be {layout} (or unbatched [L, E]) "
                                     f"with E = embed_dim = {e}, one batch size, and key and "
                                     "value of one length")
        return q.ndim == 3

    def _batch_major(self, t: Tensor, batched: bool) -> Tensor:
        if not batched:
            return ops.unsqueeze(t, 0)
        return t if self.batch_first else ops.swapaxes(t, 0, 1)

    def _mask(self, key_padding_mask: Any, attn_mask: Any, is_causal: bool, batched: bool,
              n: Any, tgt: Any, src: Any, dtype: str) -> Tensor | None:
        """The sum of the additive masks, broadcastable to the scores [N, h, L, S]."""
        masks = []
        if key_padding_mask is not None:
            kpm = as_tensor(key_padding_mask)
            want = (n, src) if batched else (src,)
            if tuple(kpm.shape) != want:
                raise _shape_error(self, f"key_padding_mask {_describe(kpm)} must be "
                                         f"{list(want)} ([N, S], or [S] unbatched)")
            kpm = additive_mask(kpm, dtype, "key_padding_mask")
            masks.append(ops.reshape(kpm, (n, 1, 1, src) if batched else (1, 1, 1, src)))
        if attn_mask is not None:
            am = as_tensor(attn_mask)
            heads = self.num_heads * n if batched and isinstance(n, int) else None
            if not batched:
                heads = self.num_heads
            ok = (am.ndim == 2 and tuple(am.shape) == (tgt, src)) or (
                am.ndim == 3 and tuple(am.shape[1:]) == (tgt, src)
                and (heads is None or am.shape[0] == heads))
            if not ok:
                raise _shape_error(self, f"attn_mask {_describe(am)} must be [L, S] = "
                                         f"{[tgt, src]} or [N * num_heads, L, S]")
            am = additive_mask(am, dtype, "attn_mask")
            if am.ndim == 3:
                am = ops.reshape(am, (-1, self.num_heads, tgt, src))
            masks.append(am)
        elif is_causal:
            masks.append(causal_mask(tgt, src, dtype))
        if not masks:
            return None
        return masks[0] if len(masks) == 1 else masks[0] + masks[1]


__all__ = ["MultiheadAttention", "scaled_dot_product_attention", "causal_mask",
           "additive_mask"]
