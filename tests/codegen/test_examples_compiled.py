"""The model zoo compiled end to end: each example compiles (O0 and O2), matches the
interpreter, saves, and runs again in a fresh process through the runtime alone."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kiln
import kiln.runtime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

RTOL, ATOL = 1e-4, 1e-4  # float32 GEMM/conv re-association, fast exp/erf/tanh (see codegen)


def _cases():
    import lenet
    import lstm
    import mlp
    import resnet
    import transformer

    rng = np.random.default_rng(0)
    f32 = np.float32
    mask = np.zeros((2, 6), bool)
    mask[1, 4:] = True  # the second sequence is padded after 4 tokens
    return {
        "mlp": (mlp.worked_example, {"x": np.array([[1, 0.5, 0.3]], f32)}),
        "lenet": (lenet.LeNet5, {"x": rng.standard_normal((2, 1, 32, 32)).astype(f32)}),
        "resnet_block": (resnet.resnet_block,
                         {"x": rng.standard_normal((1, 64, 14, 14)).astype(f32)}),
        "lstm": (lstm.LSTMClassifier, {"x": rng.standard_normal((5, 2, 16)).astype(f32)}),
        "transformer": (transformer.CausalEncoder,
                        {"x": rng.standard_normal((2, 6, 32)).astype(f32),
                         "padding_mask": mask}),
    }


CASES = _cases()


def _trace(name):
    make, inputs = CASES[name]
    specs = {k: kiln.TensorSpec(v.shape, v.dtype.name) for k, v in inputs.items()}
    return kiln.trace(make(), name=name, **specs), inputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_compiles_and_matches_the_interpreter(name, tmp_path):
    graph, inputs = _trace(name)
    expected = kiln.interpret(graph, inputs)
    compiled = kiln.compile(graph, opt_level=2)
    for got, want in zip(compiled.run(inputs), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)

    path = compiled.save(tmp_path / f"{name}.kiln")
    for key, array in inputs.items():
        np.save(tmp_path / f"{key}.npy", array)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import kiln.runtime
        model = kiln.runtime.load({str(path)!r})
        inputs = {{i.name: np.load({str(tmp_path)!r} + "/" + i.name + ".npy")
                  for i in model.inputs}}
        outs = model.run(inputs)
        for i, out in enumerate(outs):
            np.save({str(tmp_path)!r} + f"/out{{i}}.npy", out)
        loaded = [m for m in sys.modules if m == "tvm" or m.startswith(("kiln.ir",
                  "kiln.codegen", "kiln.frontend", "kiln.passes"))]
        print(json.dumps(loaded))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []  # the runtime alone
    for i, want in enumerate(expected):
        np.testing.assert_allclose(np.load(tmp_path / f"out{i}.npy"), want, rtol=RTOL,
                                   atol=ATOL)


def test_opt_levels_agree_and_fusion_cuts_kernels():
    graph, inputs = _trace("resnet_block")
    expected = kiln.interpret(graph, inputs)[0]
    kernels = {}
    for level in (0, 1, 2):
        compiled = kiln.compile(graph, opt_level=level)
        np.testing.assert_allclose(compiled.run(inputs)[0], expected, rtol=RTOL, atol=ATOL)
        kernels[level] = len(compiled.build.kernels)
    assert kernels[2] < kernels[1] <= kernels[0]
    o3 = kiln.compile(graph, opt_level=3, layout_budget=0, layout_cache=False)
    np.testing.assert_allclose(o3.run(inputs)[0], expected, rtol=RTOL, atol=ATOL)
    assert len(o3.build.kernels) <= kernels[2] + 2  # the edge transforms, at most


def test_save_replaces_an_old_artifact_but_never_a_foreign_folder(tmp_path):
    graph, inputs = _trace("mlp")
    compiled = kiln.compile(graph)
    path = tmp_path / "m.kiln"
    compiled.save(path)
    compiled.save(path)  # compiling again to the same name replaces the old artifact
    np.testing.assert_allclose(kiln.runtime.load(path).run(inputs)[0],
                               compiled.run(inputs)[0])
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(kiln.KilnError, match="not a kiln artifact"):
        compiled.save(foreign)
    assert (foreign / "todo.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.kiln", "notes"]  # no temp left


def test_pytorch_style_layers_compile():
    """GroupNorm, Mish, PixelShuffle, Upsample, InstanceNorm2d, Hardsigmoid: compiled ==
    interpreted."""
    import kiln.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.act = nn.Conv2d(4, 16, 3, padding=1), nn.GroupNorm(4, 16), \
                nn.Mish()
            self.shuffle, self.up = nn.PixelShuffle(2), nn.Upsample(scale_factor=2)
            self.inorm, self.gate = nn.InstanceNorm2d(4), nn.Hardsigmoid()

        def forward(self, x):
            h = self.up(self.shuffle(self.act(self.norm(self.conv(x)))))
            return self.gate(self.inorm(h))

    graph = kiln.trace(Net(), x=kiln.TensorSpec((2, 4, 6, 6)))
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype(np.float32)
    (want,) = kiln.interpret(graph, {"x": x})
    (got,) = kiln.compile(graph, opt_level=2).run({"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
