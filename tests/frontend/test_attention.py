"""MultiheadAttention and the Transformer layers against torch.nn, with torch's weights loaded
(eval mode), plus the example Transformer models against torch twins."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from kiln import nn
from kiln.errors import KilnError, ShapeError, UnsupportedOpError
from kiln.frontend.dsl import TensorSpec, trace
from kiln.ir.interpreter import interpret
from kiln.ir.verifier import verify
from tests.examples_util import module_at

RTOL, ATOL = 1e-4, 1e-5
E, HEADS, N, L, S = 8, 2, 2, 4, 3
tnn = torch.nn
pytestmark = [pytest.mark.filterwarnings("ignore:Support for mismatched"),
              pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")]


def load(ours: nn.Module, theirs: tnn.Module) -> None:
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    theirs.eval()


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def run(model, **inputs: np.ndarray) -> list[np.ndarray]:
    specs = {k: TensorSpec(v.shape, v.dtype.name) for k, v in inputs.items()}
    return interpret(verify(trace(model, **specs)), inputs)


def check(ours: list[np.ndarray], theirs) -> None:
    if isinstance(theirs, torch.Tensor):
        theirs = [theirs]
    want = [t.detach().numpy() for t in theirs if t is not None]
    assert len(ours) == len(want)
    for a, b in zip(ours, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def t(a: np.ndarray | None):
    return None if a is None else torch.from_numpy(a)


def causal(length: int, source: int | None = None) -> np.ndarray:
    return np.triu(np.full((length, source or length), -np.inf, np.float32), 1)


class Call(nn.Module):
    """Calls ``module`` with the traced inputs as keyword arguments, plus fixed ``kwargs``;
    an input named ``x`` is passed as query, key and value (self-attention)."""

    def __init__(self, module: nn.Module, **kwargs):
        super().__init__()
        self.module, self.kwargs = module, kwargs

    def forward(self, **inputs):
        if "x" in inputs:
            x = inputs.pop("x")
            inputs.update(query=x, key=x, value=x)
        return self.module(**inputs, **self.kwargs)


def mha_twins(**kw):
    theirs, ours = tnn.MultiheadAttention(E, HEADS, **kw), nn.MultiheadAttention(E, HEADS, **kw)
    load(ours, theirs)
    return ours, theirs


# -- MultiheadAttention ----------------------------------------------------------------------

KPM = np.array([[False] * L, [False] * (L - 1) + [True]])  # batch 1 pads its last key
ATTN_BOOL = np.triu(np.ones((L, L), bool), 2)  # never masks a whole row
MASKS = {
    "none": {},
    "attn_bool": {"attn_mask": ATTN_BOOL},
    "attn_float": {"attn_mask": rand(L, L)},
    "attn_3d": {"attn_mask": rand(N * HEADS, L, L)},
    "attn_3d_bool": {"attn_mask": np.broadcast_to(ATTN_BOOL, (N * HEADS, L, L)).copy()},
    "kpm_bool": {"key_padding_mask": KPM},
    "kpm_float": {"key_padding_mask": rand(N, L)},
    "kpm_and_attn": {"key_padding_mask": KPM, "attn_mask": rand(L, L)},
}


@pytest.mark.parametrize("masks", list(MASKS) + ["causal", "causal_kpm"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_self_attention_masks(masks, batch_first):
    ours, theirs = mha_twins(batch_first=batch_first)
    x = rand(N, L, E) if batch_first else rand(L, N, E)
    given = dict(MASKS.get(masks, {"key_padding_mask": KPM} if masks == "causal_kpm" else {}))
    torch_masks = {k: t(v) for k, v in given.items()}
    is_causal = masks.startswith("causal")
    if is_causal:  # PyTorch wants the mask as well; kiln builds it from is_causal alone
        torch_masks["attn_mask"] = t(causal(L))
    with torch.no_grad():
        want = theirs(t(x), t(x), t(x), is_causal=is_causal, **torch_masks)
    check(run(Call(ours, is_causal=is_causal), x=x, **given), want)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_mha_weights_cross_attention(batch_first, need_weights, average):
    ours, theirs = mha_twins(batch_first=batch_first)
    q = rand(N, L, E) if batch_first else rand(L, N, E)
    kv = rand(N, S, E, seed=1) if batch_first else rand(S, N, E, seed=1)
    kpm = np.array([[False] * S, [False] * (S - 1) + [True]])
    mask = rand(L, S)
    with torch.no_grad():
        want = theirs(t(q), t(kv), t(kv), key_padding_mask=t(kpm), attn_mask=t(mask),
                      need_weights=need_weights, average_attn_weights=average)
    got = run(Call(ours, need_weights=need_weights, average_attn_weights=average),
              query=q, key=kv, value=kv, key_padding_mask=kpm, attn_mask=mask)
    check(got, want)
    if need_weights:
        assert got[1].shape == ((N, L, S) if average else (N, HEADS, L, S))


@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_distinct_key_value_causal_cross(batch_first):
    ours, theirs = mha_twins(batch_first=batch_first)
    q, k, v = seq(L, batch_first), seq(S, batch_first, seed=1), seq(S, batch_first, seed=2)
    with torch.no_grad():
        want = theirs(t(q), t(k), t(v), attn_mask=t(causal(L, S)))
    check(run(Call(ours, is_causal=True), query=q, key=k, value=v), want)


@pytest.mark.parametrize("mask_shape", [None, (L, S), (HEADS, L, S)])
def test_mha_unbatched(mask_shape):
    ours, theirs = mha_twins()
    q, kv = rand(L, E), rand(S, E, seed=1)
    masks = {"key_padding_mask": np.array([False] * (S - 1) + [True])}
    if mask_shape:
        masks["attn_mask"] = rand(*mask_shape)
    with torch.no_grad():
        want = theirs(t(q), t(kv), t(kv), **{k: t(v) for k, v in masks.items()})
    check(run(Call(ours), query=q, key=kv, value=kv, **masks), want)


def test_mha_no_bias_and_symbolic_batch():
    ours, theirs = mha_twins(bias=False, batch_first=True)
    assert list(ours.state_dict()) == ["in_proj_weight", "out_proj.weight"]
    graph = trace(Call(ours), x=TensorSpec(("B", L, E)), key_padding_mask=TensorSpec(
        ("B", L), "bool"))
    assert [v.type.shape for v in graph.outputs] == [("B", L, E), ("B", L, L)]
    x, kpm = rand(3, L, E), np.zeros((3, L), bool)
    kpm[1, -2:] = True
    with torch.no_grad():
        want = theirs(t(x), t(x), t(x), key_padding_mask=t(kpm))
    check(interpret(graph, {"x": x, "key_padding_mask": kpm}), want)


def test_mha_scores_spelling_and_init():
    ours = nn.MultiheadAttention(E, HEADS)
    assert not ours.state_dict()["in_proj_bias"].any()
    assert not ours.state_dict()["out_proj.bias"].any()
    bound = np.sqrt(6 / (E + 3 * E))
    assert 0.5 * bound < np.abs(ours.in_proj_weight.data).max() <= bound
    graph = trace(Call(ours, is_causal=True, need_weights=False), x=TensorSpec((L, N, E)))
    ops = [n.op for n in graph.nodes if n.op != "full"]
    assert ops.count("matmul") == 4 and ops.count("split") == 1  # q, k, v: one projection
    i = ops.index("softmax")
    assert ops[i - 3:i] == ["matmul", "mul", "add"]  # softmax(q @ k^T * s + mask)
    assert "triu" in ops and "where" not in ops and "dropout" not in ops
    train_ops = [n.op for n in trace(Call(ours.train()), x=TensorSpec((L, N, E))).nodes]
    assert train_ops.count("dropout") == 0  # dropout=0.0
    train_ops = [n.op for n in trace(Call(nn.MultiheadAttention(E, HEADS, dropout=0.5).train()),
                                     x=TensorSpec((L, N, E))).nodes]
    assert train_ops.count("dropout") == 1


def test_scaled_dot_product_attention():
    q, k, v = rand(N, HEADS, L, E), rand(N, HEADS, S, E, seed=1), rand(N, HEADS, S, 3, seed=2)
    allowed = np.ones((L, S), bool)
    allowed[0, 1:] = False
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": allowed}, {"scale": 0.3}):
        def fn(q, k, v, kwargs=kwargs):
            return nn.scaled_dot_product_attention(q, k, v, **kwargs)
        with torch.no_grad():
            want = torch.nn.functional.scaled_dot_product_attention(
                t(q), t(k), t(v), **{a: t(b) if isinstance(b, np.ndarray) else b
                                     for a, b in kwargs.items()})
        check(run(fn, q=q, k=k, v=v), want)


@pytest.mark.parametrize("shapes,masks,match", [
    (((L, N, E + 1),) * 3, {}, r"MultiheadAttention at .*: query float32\[4, 2, 9\], key "
                               r"float32\[4, 2, 9\] and value float32\[4, 2, 9\] must be "
                               r"\[L, N, E\].*E = embed_dim = 8"),
    (((1, L, N, E),) * 3, {}, r"query float32\[1, 4, 2, 8\]"),
    (((L, N, E), (S, N, E), (L, N, E)), {}, r"key and value of one length"),
    (((L, N, E), (S, N + 1, E), (S, N + 1, E)), {}, r"one batch size"),
    (((L, N, E),) * 3, {"key_padding_mask": ((N, L + 1), "bool")},
     r"key_padding_mask bool\[2, 5\] must be \[2, 4\]"),
    (((L, N, E),) * 3, {"attn_mask": ((L, L + 1), "float32")},
     r"attn_mask float32\[4, 5\] must be \[L, S\] = \[4, 4\] or \[N \* num_heads, L, S\]"),
    (((L, N, E),) * 3, {"attn_mask": ((3, L, L), "float32")}, r"attn_mask float32\[3, 4, 4\]"),
    (((L, N, E),) * 3, {"attn_mask": ((L, L), "int64")}, r"only bool and floating-point masks"),
])
def test_mha_bad_inputs(shapes, masks, match):
    specs = {name: TensorSpec(s) for name, s in zip(("query", "key", "value"), shapes)}
    specs.update({name: TensorSpec(*spec) for name, spec in masks.items()})
    with pytest.raises(ShapeError, match=match):
        trace(Call(nn.MultiheadAttention(E, HEADS)), **specs)


def test_mha_causal_at_a_symbolic_length_matches_the_static_one():
    mha = nn.MultiheadAttention(E, HEADS)
    symbolic = trace(Call(mha, is_causal=True), x=TensorSpec(("T", N, E)))
    static = trace(Call(mha, is_causal=True), x=TensorSpec((5, N, E)))
    x = np.random.default_rng(0).standard_normal((5, N, E)).astype(np.float32)
    np.testing.assert_allclose(interpret(symbolic, {"x": x})[0],
                               interpret(static, {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make,error,match", [
    (lambda: nn.MultiheadAttention(E, HEADS, kdim=4), UnsupportedOpError, "kdim=4"),
    (lambda: nn.MultiheadAttention(E, HEADS, vdim=4), UnsupportedOpError, "only kdim = vdim"),
    (lambda: nn.MultiheadAttention(E, HEADS, add_bias_kv=True), UnsupportedOpError,
     "add_bias_kv"),
    (lambda: nn.MultiheadAttention(E, 3), KilnError, "divisible by num_heads 3"),
    (lambda: nn.TransformerEncoderLayer(E, HEADS, activation="tanh"), KilnError,
     "'relu' or 'gelu'"),
    (lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(E, HEADS), 0), KilnError,
     "num_layers"),
])
def test_bad_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


# -- Transformer layers ----------------------------------------------------------------------


def layer_twins(kind: str, **kw):
    theirs = getattr(tnn, kind)(E, HEADS, 16, **kw)
    ours = getattr(nn, kind)(E, HEADS, 16, **kw)
    load(ours, theirs)
    return ours, theirs


def seq(length: int, batch_first: bool, seed: int = 0) -> np.ndarray:
    return rand(N, length, E, seed=seed) if batch_first else rand(length, N, E, seed=seed)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_layer(norm_first, activation, batch_first):
    ours, theirs = layer_twins("TransformerEncoderLayer", activation=activation,
                               norm_first=norm_first, batch_first=batch_first)
    x = seq(L, batch_first)
    with torch.no_grad():
        want = theirs(t(x), src_mask=t(causal(L)), src_key_padding_mask=t(KPM), is_causal=True)
    check(run(Call(ours, is_causal=True), src=x, src_key_padding_mask=KPM), want)
    with torch.no_grad():
        check(run(ours, src=x), theirs(t(x)))


def test_encoder_layer_module_activation_no_bias():
    theirs = tnn.TransformerEncoderLayer(E, HEADS, 16, activation=tnn.GELU("tanh"), bias=False)
    ours = nn.TransformerEncoderLayer(E, HEADS, 16, activation=nn.GELU("tanh"), bias=False)
    load(ours, theirs)
    x, mask = seq(L, False), rand(L, L)
    with torch.no_grad():
        check(run(ours, src=x, src_mask=mask), theirs(t(x), t(mask)))


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_decoder_layer(norm_first, activation, batch_first):
    ours, theirs = layer_twins("TransformerDecoderLayer", activation=activation,
                               norm_first=norm_first, batch_first=batch_first)
    tgt, memory = seq(L, batch_first), seq(S, batch_first, seed=1)
    masks = {"tgt_key_padding_mask": KPM, "memory_mask": rand(L, S),
             "memory_key_padding_mask": np.array([[False] * S, [False] * (S - 1) + [True]])}
    with torch.no_grad():
        want = theirs(t(tgt), t(memory), tgt_mask=t(causal(L)), tgt_is_causal=True,
                      **{k: t(v) for k, v in masks.items()})
    check(run(Call(ours, tgt_is_causal=True), tgt=tgt, memory=memory, **masks), want)


def test_stacks_and_transformer():
    enc = tnn.TransformerEncoder(tnn.TransformerEncoderLayer(E, HEADS, 16), 2, tnn.LayerNorm(E),
                                 enable_nested_tensor=False)
    ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, HEADS, 16), 2, nn.LayerNorm(E))
    load(ours, enc)
    x, mask = seq(L, False), rand(L, L)
    with torch.no_grad():
        check(run(ours, src=x, mask=mask, src_key_padding_mask=KPM), enc(t(x), t(mask), t(KPM)))
    dec = tnn.TransformerDecoder(tnn.TransformerDecoderLayer(E, HEADS, 16, batch_first=True), 2)
    ours = nn.TransformerDecoder(nn.TransformerDecoderLayer(E, HEADS, 16, batch_first=True), 2)
    load(ours, dec)
    tgt, memory = seq(L, True), seq(S, True, seed=1)
    with torch.no_grad():
        want = dec(t(tgt), t(memory), tgt_mask=t(causal(L)), tgt_is_causal=True)
    check(run(Call(ours, tgt_is_causal=True), tgt=tgt, memory=memory), want)
    full = tnn.Transformer(E, HEADS, 1, 2, 16)
    ours = nn.Transformer(E, HEADS, 1, 2, 16)
    load(ours, full)
    src = seq(S, False, seed=2)
    with torch.no_grad():
        want = full(t(src), t(tgt.transpose(1, 0, 2)), tgt_mask=t(causal(L)), tgt_is_causal=True)
    check(run(Call(ours, tgt_is_causal=True), src=src, tgt=tgt.transpose(1, 0, 2)), want)
    mask = nn.Transformer.generate_square_subsequent_mask(L)
    assert np.array_equal(mask, tnn.Transformer.generate_square_subsequent_mask(L).numpy())


def test_stack_copies_layers_and_dropout_in_training():
    stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, HEADS, 16), 2)
    a, b = stack.layers[0].linear1.weight, stack.layers[1].linear1.weight
    assert a is not b and np.array_equal(a.data, b.data)
    assert [n.op for n in trace(stack, src=TensorSpec((L, N, E))).nodes].count("dropout") == 0
    train_ops = [n.op for n in trace(stack.train(), src=TensorSpec((L, N, E))).nodes]
    assert train_ops.count("dropout") == 2 * 4  # attention, feed-forward, two residuals
    seeds = {n.attrs["seed"] for n in trace(stack, src=TensorSpec((L, N, E))).nodes
             if n.op == "dropout"}
    assert len(seeds) == 8


def test_layer_error_names_layer():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, HEADS, 16), 2)
    with pytest.raises(ShapeError, match=r"MultiheadAttention at .*\[layers.0.self_attn "
                                         r"\(MultiheadAttention\)\].*float32\[4, 2, 6\]"):
        trace(model, src=TensorSpec((L, N, 6)))


# -- the example models ----------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[2]


def example(name: str):
    return module_at(ROOT / "examples" / f"{name}.py", f"_example_{name}")


class TorchEmbeddings(tnn.Module):
    def __init__(self, vocab_size: int, max_len: int, d_model: int):
        super().__init__()
        self.tokens = tnn.Embedding(vocab_size, d_model)
        self.positions = tnn.Embedding(max_len, d_model)

    def forward(self, ids):
        return self.tokens(ids) + self.positions(torch.arange(ids.shape[-1]))


class TorchBert(tnn.Module):
    """examples/transformer.py's Bert, in PyTorch."""

    def __init__(self, vocab_size=1000, max_len=64, d_model=64, nhead=4, num_layers=2,
                 dim_feedforward=128, dropout=0.1, layer_norm_eps=1e-12):
        super().__init__()
        self.embeddings = TorchEmbeddings(vocab_size, max_len, d_model)
        self.norm = tnn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = tnn.Dropout(dropout)
        layer = tnn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, "gelu",
                                            layer_norm_eps, batch_first=True)
        self.encoder = tnn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pooler = tnn.Linear(d_model, d_model)

    def forward(self, ids, padding_mask=None):
        x = self.dropout(self.norm(self.embeddings(ids)))
        x = self.encoder(x, src_key_padding_mask=padding_mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class TorchGPT(tnn.Module):
    """examples/transformer.py's GPT, in PyTorch."""

    def __init__(self, vocab_size=1000, max_len=64, d_model=64, nhead=4, num_layers=2,
                 dropout=0.1, tie_weights=True):
        super().__init__()
        self.embeddings = TorchEmbeddings(vocab_size, max_len, d_model)
        self.dropout = tnn.Dropout(dropout)
        block = tnn.TransformerEncoderLayer(d_model, nhead, 4 * d_model, dropout,
                                            tnn.GELU(approximate="tanh"), batch_first=True,
                                            norm_first=True)
        self.blocks = tnn.TransformerEncoder(block, num_layers, enable_nested_tensor=False)
        self.norm = tnn.LayerNorm(d_model)
        self.tie_weights = tie_weights
        if not tie_weights:
            self.lm_head = tnn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids):
        mask = torch.from_numpy(causal(ids.shape[-1]))
        x = self.norm(self.blocks(self.dropout(self.embeddings(ids)), mask, is_causal=True))
        if self.tie_weights:
            return torch.nn.functional.linear(x, self.embeddings.tokens.weight)
        return self.lm_head(x)


def test_example_causal_encoder():
    theirs = tnn.Module()
    theirs.encoder = tnn.TransformerEncoder(
        tnn.TransformerEncoderLayer(32, 4, 64, 0.1, batch_first=True), 2,
        enable_nested_tensor=False)
    ours = example("transformer").CausalEncoder()
    load(ours, theirs)
    x, pad = rand(2, 8, 32), np.zeros((2, 8), bool)
    pad[1, 5:] = True
    with torch.no_grad():
        want = theirs.encoder(t(x), t(causal(8)), t(pad), is_causal=True)
    check(run(ours, x=x, padding_mask=pad), want)


@pytest.mark.parametrize("factory,twin", [("bert", TorchBert), ("gpt", TorchGPT),
                                          ("gpt_untied", lambda: TorchGPT(tie_weights=False))])
def test_example_language_models(factory, twin):
    ours, theirs = getattr(example("transformer"), factory)(), twin()
    load(ours, theirs)
    ids = np.random.default_rng(0).integers(0, 1000, (2, 12))
    # With grad enabled: under no_grad PyTorch's fast path computes GELU(approximate="tanh")
    # as the exact GELU (it checks only isinstance(activation, nn.GELU)).
    check(run(ours, ids=ids), theirs(t(ids)))
    if factory == "bert":
        pad = np.zeros((2, 12), bool)
        pad[0, 9:] = True
        with torch.no_grad():
            check(run(ours, ids=ids, padding_mask=pad), theirs(t(ids), t(pad)))
    if factory == "gpt":
        assert "lm_head.weight" not in ours.state_dict()


def test_example_bert_base_layer():
    ours = example("transformer").bert_base_layer()
    theirs = tnn.TransformerEncoderLayer(768, 12, 3072, 0.1, "gelu", 1e-12, batch_first=True)
    load(ours, theirs)
    x = rand(1, 6, 768)
    with torch.no_grad():
        check(run(ours, src=x), theirs(t(x)))
