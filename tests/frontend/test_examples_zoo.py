"""The zoo's later families (GoogLeNet, DCGAN, DQN, a DDPM denoiser) at tiny sizes: traced and
interpreted against torch twins built from the same example source (``from torch import nn``,
torch functions for its few ``ops``) with the same weights, then compiled once each (O2) and
checked against the interpreter, the DQN's gradients and the diffusion sampler included."""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest
import torch

import kiln
from kiln.ir import verify
from tests.examples_util import example, randomize_norms
from tests.examples_util import torch_port as _torch_port

tnn = torch.nn
RTOL, ATOL = 1e-4, 1e-5  # float32 re-association; compiled and torch alike
f32 = np.float32


def _arange(start, stop=None, step=1, dtype="int64"):
    start, stop = (0, start) if stop is None else (start, stop)
    return torch.arange(start, stop, step, dtype=getattr(torch, dtype))


# the kiln.ops the examples use, as torch functions
TORCH_OPS = types.SimpleNamespace(
    concat=lambda xs, axis=0: torch.cat(list(xs), dim=axis), exp=torch.exp, sin=torch.sin,
    cos=torch.cos, arange=_arange,
    take_along_axis=lambda x, i, axis: torch.take_along_dim(x, i, dim=axis),
    where=torch.where)


@functools.cache
def torch_port(name: str) -> types.ModuleType:
    return _torch_port(name, TORCH_OPS)



def load_from(ours, ref: tnn.Module):
    """``ref``'s weights (same keys and shapes) loaded into ``ours``; both in eval mode."""
    ref.eval()
    ref_state, ours_state = ref.state_dict(), ours.state_dict()
    assert list(ours_state) == list(ref_state)
    assert all(ours_state[k].shape == tuple(v.shape) for k, v in ref_state.items())
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref_state.items()})
    return ours


class Case:
    """A kiln model with a torch twin's weights, traced on ``inputs``, interpreted once."""

    def __init__(self, ours, ref: tnn.Module, inputs: dict[str, np.ndarray]):
        self.model, self.ref, self.inputs = load_from(ours, ref), ref, inputs
        specs = {k: kiln.TensorSpec(v.shape, v.dtype.name) for k, v in inputs.items()}
        self.graph = verify(kiln.trace(self.model, **specs))
        self.expected = kiln.interpret(self.graph, inputs)

    def torch_outputs(self) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.ref(*(torch.from_numpy(v) for v in self.inputs.values()))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _googlenet() -> Case:
    torch.manual_seed(0)
    ref = torch_port("inception").GoogLeNet(10, width=1 / 16, init_weights=False)
    randomize_norms(ref)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(f32)
    return Case(example("inception").googlenet_tiny(), ref, {"x": x})


def _generator() -> Case:
    torch.manual_seed(1)
    ref = torch_port("gan").Generator(nz=16, ngf=8, nc=1, image_size=16)
    randomize_norms(ref)
    z = np.random.default_rng(1).standard_normal((2, 16, 1, 1)).astype(f32)
    return Case(example("gan").generator_tiny(), ref, {"z": z})


def _discriminator() -> Case:
    torch.manual_seed(2)
    ref = torch_port("gan").Discriminator(ndf=8, nc=1, image_size=16)
    randomize_norms(ref)
    x = np.tanh(np.random.default_rng(2).standard_normal((3, 1, 16, 16))).astype(f32)
    return Case(example("gan").discriminator_tiny(), ref, {"x": x})


def _dqn() -> Case:
    torch.manual_seed(3)
    ref = torch_port("dqn").DQN(4, input_size=44, channels=(8, 16, 16), hidden=32)
    frames = np.random.default_rng(3).uniform(0, 255, (2, 4, 44, 44)).astype(f32)
    return Case(example("dqn").dqn_small(), ref, {"x": frames})


def _denoiser() -> Case:
    torch.manual_seed(4)
    ref = torch_port("diffusion").UNet(in_channels=1, base_channels=8, channel_mults=(1, 2))
    randomize_norms(ref)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 1, 16, 16)).astype(f32)
    t = np.array([999, 17], f32)  # large timesteps: sin/cos of arguments up to 999
    return Case(example("diffusion").denoiser_tiny(), ref, {"x": x, "t": t})


MAKERS = {"googlenet": _googlenet, "generator": _generator, "discriminator": _discriminator,
          "dqn": _dqn, "denoiser": _denoiser}


@pytest.fixture(scope="module")
def cases():
    return {name: make() for name, make in MAKERS.items()}


@pytest.fixture(scope="module")
def compiled(cases):
    """Each case compiled once (O2), on first use."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = kiln.compile(cases[name].graph, opt_level=2)
        return cache[name]

    return get


# -- the torch twins --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_interpreted_matches_torch(cases, name):
    case = cases[name]
    for got, want in zip(case.expected, case.torch_outputs(), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    assert np.abs(case.expected[0]).max() > 1e-2  # not a vanishing signal


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_compiled_matches_interpreted(cases, compiled, name):
    case = cases[name]
    for got, want in zip(compiled(name).run(case.inputs), case.expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# -- GoogLeNet --------------------------------------------------------------------------------


def test_googlenet_is_torchvisions():
    inception = example("inception")
    model = inception.GoogLeNet(aux_logits=True, init_weights=False)
    state = model.state_dict()
    assert inception.googlenet().num_parameters() == 6_624_904  # torchvision's figures
    assert model.num_parameters() == 13_004_888
    assert len(state) == 364
    assert state["inception3a.branch3.1.conv.weight"].shape == (32, 16, 3, 3)  # "5x5"
    assert state["inception5b.branch4.1.conv.weight"].shape == (128, 832, 1, 1)
    assert state["aux2.fc1.weight"].shape == (1024, 2048)
    assert state["fc.weight"].shape == (1000, 1024)
    ref = torch_port("inception").GoogLeNet(aux_logits=True, init_weights=False)
    assert list(ref.state_dict()) == list(state)


def test_googlenet_variants_match_torch():
    """The paper's 5x5 branch and torchvision's input transform, interpreted."""
    torch.manual_seed(5)
    kwargs = dict(num_classes=7, width=1 / 16, five_by_five=True, transform_input=True,
                  init_weights=False)
    ref = torch_port("inception").GoogLeNet(**kwargs)
    randomize_norms(ref)
    case = Case(example("inception").GoogLeNet(**kwargs), ref,
                {"x": np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype(f32)})
    np.testing.assert_allclose(case.expected[0], case.torch_outputs()[0], rtol=RTOL, atol=ATOL)


def test_googlenet_training_mode_returns_the_aux_logits():
    """In training mode: (logits, aux2, aux1), batch statistics in every batch norm (no
    dropout, so that torch's mask does not matter); 64x64 images put the aux heads on 4x4."""
    torch.manual_seed(6)
    kwargs = dict(num_classes=5, aux_logits=True, width=1 / 16, dropout=0.0, dropout_aux=0.0,
                  init_weights=False)
    ref = torch_port("inception").GoogLeNet(**kwargs).train()
    ours = example("inception").GoogLeNet(**kwargs)
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(f32)
    got = kiln.interpret(kiln.trace(ours.train(), x=kiln.TensorSpec(x.shape)), {"x": x})
    with torch.no_grad():
        want = ref(torch.from_numpy(x))
    assert [g.shape for g in got] == [(2, 5)] * 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=RTOL, atol=ATOL)


def test_inception_module_concatenates_its_branches():
    block = example("inception").Inception(8, 4, 2, 6, 2, 3, 5)
    graph = kiln.trace(block, x=kiln.TensorSpec((1, 8, 5, 5)))
    assert graph.outputs[0].type.shape == (1, 4 + 6 + 3 + 5, 5, 5)


# -- DCGAN ------------------------------------------------------------------------------------


def test_dcgan_shapes_and_names():
    gan = example("gan")
    g, d = gan.dcgan_generator(), gan.dcgan_discriminator()
    assert g.num_parameters() == 3_576_704 and d.num_parameters() == 2_765_568
    assert g.state_dict()["main.0.weight"].shape == (100, 512, 4, 4)
    assert d.state_dict()["main.11.weight"].shape == (1, 512, 4, 4)
    ref_g, ref_d = torch_port("gan").Generator(), torch_port("gan").Discriminator()
    assert list(g.state_dict()) == list(ref_g.state_dict())
    assert list(d.state_dict()) == list(ref_d.state_dict())
    with pytest.raises(ValueError, match="power of two"):
        gan.Generator(image_size=48)


def test_generator_feeds_the_discriminator(cases):
    gen, disc = cases["generator"], cases["discriminator"]
    images = gen.expected[0]
    assert images.shape == (2, 1, 16, 16) and np.abs(images).max() <= 1
    p = kiln.interpret(kiln.trace(disc.model, x=kiln.TensorSpec(images.shape)), {"x": images})[0]
    with torch.no_grad():
        want = disc.ref(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(p, want, rtol=RTOL, atol=ATOL)
    assert p.shape == (2,) and ((p > 0) & (p < 1)).all()


# -- DQN --------------------------------------------------------------------------------------


def _transitions(batch: int, actions: int, seed: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"obs": rng.uniform(0, 255, (batch, 4, 44, 44)).astype(f32),
            "action": rng.integers(0, actions, batch).astype(np.int64),
            "reward": (rng.standard_normal(batch) * 2).astype(f32),  # both sides of |td| = 1
            "done": (rng.random(batch) < 0.3).astype(f32),
            "next_q": rng.standard_normal((batch, actions)).astype(f32)}


def _torch_dqn_loss(ref, data, gamma, huber):
    ref.zero_grad()
    t = {k: torch.from_numpy(v) for k, v in data.items()}
    q = ref(t["obs"]).gather(1, t["action"][:, None]).squeeze(1)
    target = t["reward"] + gamma * (1 - t["done"]) * t["next_q"].max(1).values
    fn = tnn.functional.smooth_l1_loss if huber else tnn.functional.mse_loss
    loss = fn(q, target)
    loss.backward()
    return loss.item(), {k: p.grad.numpy() for k, p in ref.named_parameters()}


@pytest.fixture(scope="module")
def dqn_loss(cases):
    """The Huber TD loss and its gradients, traced for the tiny DQN, with a batch of 8."""
    graph = example("dqn").dqn_loss_graph(cases["dqn"].model, 8, gamma=0.9)
    data = _transitions(8, 4)
    return graph, data, kiln.interpret(graph, data)


def test_dqn_loss_and_gradients_match_torch(cases, dqn_loss):
    graph, data, (loss, *grads) = dqn_loss
    ref = cases["dqn"].ref
    want_loss, want_grads = _torch_dqn_loss(ref, data, 0.9, huber=True)
    with torch.no_grad():
        q = ref(torch.from_numpy(data["obs"])).numpy()[np.arange(8), data["action"]]
    td_errors = q - (data["reward"] + 0.9 * (1 - data["done"]) * data["next_q"].max(1))
    assert (abs(td_errors) < 1).any() and (abs(td_errors) > 1).any()  # both Huber arms
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
    names = [v.name for v in graph.outputs[1:]]
    assert names == [f"grad_q_net.{k}" for k in want_grads]
    for got, (key, want) in zip(grads, want_grads.items(), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=key)


def test_dqn_squared_error_loss_matches_torch(cases):
    dqn = example("dqn")
    data = _transitions(4, 4, seed=7)
    graph = kiln.trace(dqn.DQNLoss(cases["dqn"].model, gamma=0.99, huber=False),
                       **{k: kiln.TensorSpec(v.shape, v.dtype.name) for k, v in data.items()})
    want, _ = _torch_dqn_loss(cases["dqn"].ref, data, 0.99, huber=False)
    np.testing.assert_allclose(kiln.interpret(graph, data)[0], want, rtol=RTOL)


def test_dqn_loss_gradients_compile(dqn_loss):
    graph, data, expected = dqn_loss
    for got, want in zip(kiln.compile(graph, opt_level=2).run(data), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_dqn_compiled_training_step_is_torchs_sgd_step(cases):
    """dqn_trainer: one compiled step (forward, Huber TD loss, backward, SGD) gives torch's
    loss and moves every parameter by -lr * torch's gradient."""
    from kiln.passes.optim import SGD

    data = _transitions(8, 4, seed=11)
    trainer = example("dqn").dqn_trainer(cases["dqn"].model, 8, SGD(lr=0.05), gamma=0.9)
    before = {k: np.array(v) for k, v in trainer.params.items()}
    loss = trainer.step(**data)
    want_loss, want_grads = _torch_dqn_loss(cases["dqn"].ref, data, 0.9, huber=True)
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
    for key, g in want_grads.items():
        np.testing.assert_allclose(trainer.params[f"q_net.{key}"],
                                   before[f"q_net.{key}"] - 0.05 * g, rtol=RTOL, atol=ATOL,
                                   err_msg=key)


def test_nature_dqn_sizes():
    model = example("dqn").dqn()
    assert model.num_parameters() == 1_693_362
    assert model.state_dict()["network.7.weight"].shape == (512, 3136)
    graph = kiln.trace(model, x=kiln.TensorSpec((1, 4, 84, 84)))
    assert graph.outputs[0].type.shape == (1, 18)


# -- diffusion --------------------------------------------------------------------------------


def test_sinusoidal_embedding():
    emb = example("diffusion").SinusoidalEmbedding(6)
    t = np.array([0, 3, 250], f32)
    got = kiln.interpret(kiln.trace(emb, t=kiln.TensorSpec((3,))), {"t": t})[0]
    freqs = 10000.0 ** (-np.arange(3) / 3)
    args = t[:, None] * freqs[None]
    np.testing.assert_allclose(got, np.concatenate([np.cos(args), np.sin(args)], 1),
                               rtol=1e-5, atol=1e-5)


def test_sampler_compiled_equals_interpreted(cases, compiled):
    diffusion = example("diffusion")
    case = cases["denoiser"]
    betas, shape = diffusion.linear_betas(1000), case.inputs["x"].shape
    run = {
        "compiled": compiled("denoiser").run,
        "interpreted": lambda feeds: kiln.interpret(case.graph, feeds),
    }
    with torch.no_grad():
        run["torch"] = lambda feeds: [case.ref(*map(torch.from_numpy, feeds.values())).numpy()]
        samples = {k: diffusion.ddpm_sample(r, shape, betas, seed=3, steps=3)
                   for k, r in run.items()}
    np.testing.assert_allclose(samples["compiled"], samples["interpreted"], rtol=RTOL,
                               atol=ATOL)
    np.testing.assert_allclose(samples["torch"], samples["interpreted"], rtol=RTOL, atol=ATOL)
    again = diffusion.ddpm_sample(run["compiled"], shape, betas, seed=3, steps=3)
    np.testing.assert_array_equal(again, samples["compiled"])


def test_sampler_steps_follow_ddpm():
    """With eps = 0 every step is x / sqrt(alpha_t) + sqrt(beta_t) z, and the last has no z."""
    diffusion = example("diffusion")
    betas = diffusion.linear_betas(2, 0.1, 0.2)
    got = diffusion.ddpm_sample(lambda feeds: [np.zeros_like(feeds["x"])], (1, 3), betas, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3)).astype(f32)
    x = (x / np.sqrt(0.8) + np.sqrt(0.2) * rng.standard_normal((1, 3))).astype(f32)
    np.testing.assert_allclose(got, x / np.sqrt(0.9), rtol=1e-6)
