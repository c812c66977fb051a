"""kiln.nn layers against torch.nn: same state-dict keys, shapes and reprs; the same outputs
after loading torch's weights (traced, then run by the numpy interpreter)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kiln
from kiln import nn
from kiln.errors import KilnError, ShapeError, UnsupportedOpError
from kiln.ir import verify

tnn = torch.nn

# (id, kiln layer, torch layer, input shape, input dtype): the same constructor call in both
CASES = [
    ("linear", lambda m: m.Linear(6, 5), (3, 6)),
    ("linear_nobias_3d", lambda m: m.Linear(6, 4, bias=False), (2, 3, 6)),
    ("conv1d", lambda m: m.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 11)),
    ("conv1d_same_dil", lambda m: m.Conv1d(4, 6, 4, padding="same", dilation=2, groups=2),
     (1, 4, 9)),
    ("conv2d", lambda m: m.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 9)),
    ("conv2d_strided", lambda m: m.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2),
                                          dilation=(1, 2), groups=2, bias=False), (1, 4, 10, 12)),
    ("conv2d_same", lambda m: m.Conv2d(2, 3, 4, padding="same"), (1, 2, 7, 8)),
    ("conv2d_valid", lambda m: m.Conv2d(2, 3, 3, padding="valid"), (1, 2, 7, 8)),
    ("conv2d_reflect", lambda m: m.Conv2d(2, 3, 3, padding=2, padding_mode="reflect"),
     (1, 2, 7, 8)),
    ("conv2d_replicate_same", lambda m: m.Conv2d(2, 3, 4, padding="same",
                                                 padding_mode="replicate"), (1, 2, 6, 5)),
    ("conv_transpose2d", lambda m: m.ConvTranspose2d(4, 6, 3, stride=2, padding=1,
                                                     output_padding=1, groups=2), (2, 4, 5, 6)),
    ("conv_transpose2d_dil", lambda m: m.ConvTranspose2d(3, 2, (2, 3), dilation=2, bias=False),
     (1, 3, 4, 4)),
    ("max_pool2d", lambda m: m.MaxPool2d(2), (2, 3, 8, 9)),
    ("max_pool2d_full", lambda m: m.MaxPool2d(3, stride=2, padding=1, dilation=1,
                                              ceil_mode=True), (1, 2, 10, 11)),
    ("max_pool2d_dil", lambda m: m.MaxPool2d((2, 3), stride=1, dilation=2), (1, 2, 8, 9)),
    ("avg_pool2d", lambda m: m.AvgPool2d(2), (2, 3, 8, 8)),
    ("avg_pool2d_pad", lambda m: m.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                             count_include_pad=False), (1, 2, 10, 11)),
    ("avg_pool2d_incl", lambda m: m.AvgPool2d((3, 2), stride=(2, 1), padding=1), (1, 2, 7, 6)),
    ("adaptive_1", lambda m: m.AdaptiveAvgPool2d(1), (2, 3, 5, 7)),
    ("adaptive_div", lambda m: m.AdaptiveAvgPool2d((2, 3)), (2, 3, 6, 9)),
    ("adaptive_none", lambda m: m.AdaptiveAvgPool2d((None, 1)), (2, 3, 6, 9)),
    ("batch_norm1d", lambda m: m.BatchNorm1d(5), (4, 5)),
    ("batch_norm1d_3d", lambda m: m.BatchNorm1d(5, eps=1e-3, momentum=None), (2, 5, 7)),
    ("batch_norm2d", lambda m: m.BatchNorm2d(3), (2, 3, 4, 5)),
    ("batch_norm2d_noaffine", lambda m: m.BatchNorm2d(3, affine=False), (2, 3, 4, 5)),
    ("batch_norm2d_nobias", lambda m: m.BatchNorm2d(3, bias=False), (2, 3, 4, 5)),
    ("batch_norm2d_nostats", lambda m: m.BatchNorm2d(3, track_running_stats=False),
     (2, 3, 4, 5)),
    ("layer_norm", lambda m: m.LayerNorm(6), (2, 3, 6)),
    ("layer_norm_2d", lambda m: m.LayerNorm((3, 6), eps=1e-6), (2, 3, 6)),
    ("layer_norm_noaffine", lambda m: m.LayerNorm(6, elementwise_affine=False), (2, 6)),
    ("layer_norm_nobias", lambda m: m.LayerNorm(6, bias=False), (2, 6)),
    ("lrn", lambda m: m.LocalResponseNorm(3, alpha=1e-2, beta=0.7, k=2.0), (2, 6, 4, 4)),
    ("lrn_even", lambda m: m.LocalResponseNorm(4), (1, 5, 3)),
    ("embedding", lambda m: m.Embedding(10, 4), (2, 5)),
    ("embedding_pad", lambda m: m.Embedding(10, 4, padding_idx=-1), (7,)),
    ("dropout", lambda m: m.Dropout(0.3), (3, 4)),
    ("relu", lambda m: m.ReLU(), (3, 4)),
    ("relu_inplace", lambda m: m.ReLU(inplace=True), (3, 4)),
    ("leaky_relu", lambda m: m.LeakyReLU(0.2), (3, 4)),
    ("elu", lambda m: m.ELU(alpha=0.5), (3, 4)),
    ("gelu", lambda m: m.GELU(), (3, 4)),
    ("gelu_tanh", lambda m: m.GELU(approximate="tanh"), (3, 4)),
    ("hardtanh", lambda m: m.Hardtanh(-0.5, 0.7), (3, 4)),
    ("relu6", lambda m: m.ReLU6(), (3, 4)),
    ("sigmoid", lambda m: m.Sigmoid(), (3, 4)),
    ("tanh", lambda m: m.Tanh(), (3, 4)),
    ("silu", lambda m: m.SiLU(), (3, 4)),
    ("hardswish", lambda m: m.Hardswish(), (2, 8)),
    ("softplus", lambda m: m.Softplus(beta=2.0, threshold=5.0), (3, 4)),
    ("softmax", lambda m: m.Softmax(dim=1), (3, 4)),
    ("softmax_legacy_dim", lambda m: m.Softmax(), (2, 3, 4)),
    ("log_softmax", lambda m: m.LogSoftmax(dim=-1), (3, 4)),
    ("flatten", lambda m: m.Flatten(), (2, 3, 4, 5)),
    ("flatten_mid", lambda m: m.Flatten(1, 2), (2, 3, 4, 5)),
    ("unflatten", lambda m: m.Unflatten(1, (2, -1)), (3, 12)),
    ("identity", lambda m: m.Identity(54, unused="x"), (3, 4)),
]


def to_numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights and statistics (torch's defaults are ones and zeros for norms)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)


def make_input(case_id: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(1)
    if case_id.startswith("embedding"):
        return rng.integers(0, 10, shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32) * 2


def run_kiln(model: nn.Module, x: np.ndarray) -> np.ndarray:
    graph = verify(kiln.trace(model, x=kiln.TensorSpec(x.shape, x.dtype.name)))
    return kiln.interpret(graph, {"x": x})[0]


@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@pytest.mark.filterwarnings("ignore:Implicit dimension choice:UserWarning")
@pytest.mark.parametrize("case_id, build, shape", CASES, ids=[c[0] for c in CASES])
def test_layer_matches_torch(case_id, build, shape):
    torch.manual_seed(0)
    ref = build(tnn).eval()
    randomize(ref)
    ours = build(nn)
    assert repr(ours) == repr(ref)
    ours_state, ref_state = ours.state_dict(), ref.state_dict()
    assert list(ours_state) == list(ref_state)
    for k in ref_state:
        assert ours_state[k].shape == tuple(ref_state[k].shape), k
        assert ours_state[k].dtype == ref_state[k].numpy().dtype, k
    ours.load_state_dict(to_numpy_state(ref))
    x = make_input(case_id, shape)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = run_kiln(ours, x)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("build, shape", [
    (lambda m: m.BatchNorm2d(3), (4, 3, 5, 5)),
    (lambda m: m.BatchNorm1d(3, affine=False), (6, 3)),
], ids=["bn2d", "bn1d"])
def test_batch_norm_training_uses_batch_statistics(build, shape):
    ref = build(tnn).train()
    randomize(ref)
    ours = build(nn)
    ours.load_state_dict(ref.state_dict())  # torch tensors load too
    ours.train()
    x = make_input("bn", shape)
    want = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(run_kiln(ours, x), want, rtol=1e-4, atol=1e-5)


def test_torch_default_init_bounds():
    """Weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as PyTorch's defaults."""
    nn.manual_seed(3)
    for layer, fan_in in [(nn.Linear(400, 300), 400), (nn.Conv2d(8, 16, 5, groups=2), 4 * 25),
                          (nn.ConvTranspose2d(6, 8, 3, groups=2), 4 * 9),
                          (nn.Conv1d(5, 40, 7), 35)]:
        bound = 1 / math.sqrt(fan_in)
        for p in (layer.weight.data, layer.bias.data):
            assert p.dtype == np.float32
            assert np.abs(p).max() <= bound
            assert np.abs(p).max() > 0.9 * bound
        w = layer.weight.data
        assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound
    emb = nn.Embedding(50, 30, padding_idx=3)
    assert (emb.weight.data[3] == 0).all() and abs(emb.weight.data.std() - 1) < 0.1


def test_init_functions():
    nn.manual_seed(0)
    a = nn.init.xavier_uniform_((200, 100))
    bound = math.sqrt(6 / 300)
    assert a.dtype == np.float32 and np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    k = nn.init.kaiming_normal_((256, 64, 3, 3), mode="fan_out", nonlinearity="relu")
    assert abs(k.std() - math.sqrt(2 / (256 * 9))) < 0.01 * math.sqrt(2 / (256 * 9)) * 5
    p = nn.Parameter(np.zeros((3, 4), np.float32))
    assert nn.init.ones_(p) is p.data and (p.data == 1).all()
    arr = np.zeros((5,), np.float32)
    assert nn.init.uniform_(arr, 2, 3) is arr and (arr >= 2).all() and (arr < 3).all()
    assert nn.init.normal_((1000,), 5, 0.1).mean() == pytest.approx(5, abs=0.05)
    assert (nn.init.zeros_((2, 2)) == 0).all()
    assert nn.init.calculate_gain("leaky_relu", math.sqrt(5)) == pytest.approx(math.sqrt(1 / 3))
    with pytest.raises(KilnError, match="rank >= 2"):
        nn.init.xavier_uniform_((5,))


def test_seeded_init_is_deterministic():
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                             nn.Linear(36, 2), nn.Embedding(5, 2))

    nn.manual_seed(0)
    a = build().state_dict()
    nn.manual_seed(0)
    b = build().state_dict()
    nn.manual_seed(1)
    c = build().state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], c["0.weight"])


def test_dropout_training_mask_is_seeded_per_layer():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Dropout(0.5), nn.Dropout(0.5)

        def forward(self, x):
            return self.a(x), self.b(x)

    model = Two().train()
    x = np.ones((64, 64), np.float32)
    graph = kiln.trace(model, x=kiln.TensorSpec(x.shape))
    ya, yb = kiln.interpret(graph, {"x": x})
    for y in (ya, yb):
        assert set(np.unique(y)) == {0.0, 2.0}
        assert 0.45 < (y == 0).mean() < 0.55
    assert not np.array_equal(ya, yb)
    again = kiln.interpret(kiln.trace(model, x=kiln.TensorSpec(x.shape)), {"x": x})
    assert np.array_equal(again[0], ya)
    model.eval()
    assert np.array_equal(run_kiln(nn.Sequential(nn.Dropout(0.5)), x), x)
    all_dropped = nn.Dropout(1.0).train()
    assert (run_kiln(all_dropped, x) == 0).all()


@pytest.mark.parametrize("build, error, match", [
    (lambda: nn.Conv2d(3, 4, 3, groups=2), KilnError, "groups=2"),
    (lambda: nn.Conv2d(4, 4, 3, groups=0), KilnError, "groups=0"),
    (lambda: nn.Conv2d(3, 4, 3, padding="full"), KilnError, "'full'"),
    (lambda: nn.Conv2d(3, 4, 3, stride=2, padding="same"), KilnError, "stride 1"),
    (lambda: nn.Conv2d(3, 4, 3, padding_mode="circular"), UnsupportedOpError, "circular"),
    (lambda: nn.Conv2d(3, 4, (3, 3, 3)), KilnError, "kernel_size"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, padding_mode="reflect"), UnsupportedOpError,
     "reflect"),
    (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, output_padding=2), KilnError,
     "output_padding"),
    (lambda: nn.Linear(-1, 3), KilnError, "sizes"),
    (lambda: nn.MaxPool2d(2, return_indices=True), UnsupportedOpError, "return_indices"),
    (lambda: nn.AvgPool2d(2, divisor_override=3), UnsupportedOpError, "divisor_override"),
    (lambda: nn.Dropout(1.5), KilnError, r"\[0, 1\]"),
    (lambda: nn.Embedding(10, 3, padding_idx=10), KilnError, "padding_idx"),
    (lambda: nn.Embedding(10, 3, max_norm=1.0), UnsupportedOpError, "max_norm"),
    (lambda: nn.GELU(approximate="sigmoid"), KilnError, "approximate"),
    (lambda: nn.BatchNorm2d(0), KilnError, "num_features"),
    (lambda: nn.LocalResponseNorm(0), KilnError, "size"),
])
def test_bad_constructor_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("layer, shape, dtype, match", [
    (lambda: nn.Linear(6, 5), (2, 4), "float32", r"float32\[2, 4\].*in_features=6"),
    (lambda: nn.Conv2d(3, 4, 3), (1, 2, 8, 8), "float32", r"float32\[1, 2, 8, 8\].*\[N, 3, H"),
    (lambda: nn.Conv1d(3, 4, 3), (1, 3, 8, 8), "float32", r"\[N, 3, W\]"),
    (lambda: nn.BatchNorm2d(3), (2, 3, 4), "float32", "4-D with 3 channels"),
    (lambda: nn.BatchNorm1d(3), (2, 4), "float32", r"2-D or 3-D with 3 channels"),
    (lambda: nn.LayerNorm((3, 4)), (2, 4, 3), "float32", r"normalized_shape \[3, 4\]"),
    (lambda: nn.Embedding(5, 2), (3,), "float32", "int32 or int64"),
    (lambda: nn.MaxPool2d(2), (1, 3, 8), "float32", "rank 4"),
])
def test_shape_mistakes_name_the_layer(layer, shape, dtype, match):
    model = nn.Sequential(nn.Identity(), layer())
    with pytest.raises(ShapeError, match=match) as info:
        kiln.trace(model, x=kiln.TensorSpec(shape, dtype))
    assert f"[1 ({type(model[1]).__name__})]" in str(info.value)


def test_load_state_dict_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    state = dict(model.state_dict())
    with pytest.raises(KilnError, match=r"missing keys \['1.running_var'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "1.running_var"})
    with pytest.raises(KilnError, match=r"unexpected keys \['2.weight'\]"):
        model.load_state_dict({**state, "2.weight": np.zeros(3)})
    with pytest.raises(KilnError, match=r"0.weight: model has \(4, 3\), state has \(3, 4\)"):
        model.load_state_dict({**state, "0.weight": np.zeros((3, 4))})
    model.load_state_dict({"0.bias": np.ones(4)}, strict=False)
    assert (model[0].bias.data == 1).all() and model[0].bias.data.dtype == np.float32


def test_num_batches_tracked_is_an_int64_scalar():
    bn = nn.BatchNorm2d(3)
    assert bn.state_dict()["num_batches_tracked"].shape == ()
    bn.load_state_dict(tnn.BatchNorm2d(3).state_dict())
    assert bn.state_dict()["num_batches_tracked"].shape == ()
    assert bn.state_dict()["num_batches_tracked"].dtype == np.int64


def test_embedding_from_pretrained_and_int32_ids():
    weights = np.arange(12, dtype=np.float32).reshape(4, 3)
    emb = nn.Embedding.from_pretrained(weights)
    assert not emb.weight.requires_grad
    ids = np.array([[3, 0], [1, 1]], np.int32)
    np.testing.assert_array_equal(run_kiln(emb, ids), weights[ids])


def test_symbolic_batch_dimension():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3), nn.Softmax(dim=1))
    graph = kiln.trace(model, x=kiln.TensorSpec(("N", 1, 4, 4)))
    out = kiln.interpret(graph, {"x": np.ones((5, 1, 4, 4), np.float32)})[0]
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)


def test_adaptive_pool_needs_an_exact_divisor():
    with pytest.raises(UnsupportedOpError, match="7x7 to 3x3"):
        kiln.trace(nn.AdaptiveAvgPool2d(3), x=kiln.TensorSpec((1, 2, 7, 7)))


# -- layers and functions PyTorch users reach for ----------------------------------------------

TORCH_LAYERS = {
    "GroupNorm": (lambda: kiln.nn.GroupNorm(2, 8), lambda: torch.nn.GroupNorm(2, 8)),
    "GroupNorm(affine=False)": (lambda: kiln.nn.GroupNorm(4, 8, affine=False),
                                lambda: torch.nn.GroupNorm(4, 8, affine=False)),
    "InstanceNorm2d": (lambda: kiln.nn.InstanceNorm2d(8), lambda: torch.nn.InstanceNorm2d(8)),
    "Hardsigmoid": (kiln.nn.Hardsigmoid, torch.nn.Hardsigmoid),
    "Mish": (kiln.nn.Mish, torch.nn.Mish),
    "PixelShuffle": (lambda: kiln.nn.PixelShuffle(2), lambda: torch.nn.PixelShuffle(2)),
    "Upsample": (lambda: kiln.nn.Upsample(scale_factor=2),
                 lambda: torch.nn.Upsample(scale_factor=2)),
}


@pytest.mark.parametrize("name", TORCH_LAYERS)
def test_more_torch_layers_match_pytorch(name):
    make_kiln, make_torch = TORCH_LAYERS[name]
    ours, theirs = make_kiln(), make_torch()
    state = {k: np.random.default_rng(1).standard_normal(v.shape).astype(np.float32)
             for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = np.random.default_rng(0).standard_normal((2, 8, 4, 6)).astype(np.float32)
    graph = kiln.trace(ours, x=kiln.TensorSpec(x.shape))
    (got,) = kiln.interpret(graph, {"x": x})
    np.testing.assert_allclose(got, theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_functional_is_importable_with_torch_names():
    import torch.nn.functional as TF

    import kiln.nn.functional as F
    import kiln.ops
    from kiln.frontend import ops as frontend_ops

    assert kiln.ops.sum is frontend_ops.sum and F.relu is kiln.ops.relu
    x = np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)
    t = torch.from_numpy(x)
    cases = [(lambda v: F.softmax(v, dim=1), lambda v: TF.softmax(v, dim=1)),
             (lambda v: F.normalize(v, dim=1), lambda v: TF.normalize(v, dim=1)),
             (lambda v: F.interpolate(v, size=(8, 12)), lambda v: TF.interpolate(v, size=(8, 12))),
             (lambda v: F.group_norm(v, 4), lambda v: TF.group_norm(v, 4)),
             (lambda v: F.pixel_shuffle(v, 2), lambda v: TF.pixel_shuffle(v, 2)),
             (lambda v: F.hardsigmoid(v), lambda v: TF.hardsigmoid(v)),
             (lambda v: F.mish(v), lambda v: TF.mish(v)),
             (lambda v: F.relu6(v), lambda v: TF.relu6(v))]
    for ours, theirs in cases:
        (got,) = kiln.interpret(kiln.trace(ours, v=kiln.TensorSpec(x.shape)), {"v": x})
        np.testing.assert_allclose(got, theirs(t).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(kiln.KilnError, match="whole factors"):
        kiln.trace(lambda v: F.interpolate(v, scale_factor=1.5), v=kiln.TensorSpec(x.shape))
    with pytest.raises(kiln.KilnError, match="divisible by num_groups"):
        kiln.nn.GroupNorm(3, 8)
