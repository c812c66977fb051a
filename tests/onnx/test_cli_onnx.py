"""The command line with ONNX: kiln export, show/interpret of .onnx files, and kiln compile of
a PyTorch-exported model, run with kiln run."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from kiln.cli import main
from tests.onnx.util import EXAMPLES, ort_run, rand, torch_export

MLP = os.path.join(EXAMPLES, "mlp.py") + ":MLP"


@pytest.fixture
def mlp_onnx(tmp_path):
    path = str(tmp_path / "mlp.onnx")
    assert main(["export", MLP, "--input", "x=Nx784", "-o", path]) == 0
    return path


def test_export_writes_a_valid_model(tmp_path, capsys):
    path = str(tmp_path / "mlp.onnx")
    assert main(["export", MLP, "--input", "x=Nx784", "-o", path]) == 0
    assert f"wrote {path}: opset 17" in capsys.readouterr().out
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.opset_import[0].version == 17


def test_show_an_onnx_model(mlp_onnx, capsys):
    assert main(["show", mlp_onnx]) == 0
    out = capsys.readouterr().out
    assert "graph MLP(%x: float32[N, 784])" in out and "# onnx:" in out
    assert "matmul" in out and "total" in out


def test_show_fixes_symbolic_dims(mlp_onnx, capsys):
    assert main(["show", mlp_onnx, "--input", "N=2", "--summary-only"]) == 0
    assert main(["show", mlp_onnx, "--input", "x=3x784"]) == 0
    assert "%x: float32[3, 784]" in capsys.readouterr().out


def test_interpret_an_onnx_model(mlp_onnx, capsys):
    assert main(["interpret", mlp_onnx, "--input", "N=2"]) == 0
    assert "output: float32[2, 10]" in capsys.readouterr().out


def test_onnx_errors_are_reported(mlp_onnx, tmp_path, capsys):
    assert main(["show", mlp_onnx, "--input", "y=2x3"]) == 2
    assert "has no input 'y'" in capsys.readouterr().err
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["show", str(bad)]) == 2
    assert "kiln show: error:" in capsys.readouterr().err
    assert main(["export", MLP, "--input", "x=1x784", "-o", str(tmp_path / "a.onnx"),
                 "--opset", "9"]) == 2
    assert "exports opsets 13" in capsys.readouterr().err


def _torch_mlp_onnx(path, dynamic: bool) -> bytes:
    """A small PyTorch MLP exported by PyTorch's exporter to ``path`` (batch 'batch' if
    ``dynamic``)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4),
                                torch.nn.Softmax(-1))
    data = torch_export(model, (rand(2, 8),), ["x"],
                        {"x": {0: "batch"}} if dynamic else None)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "symbolic_batch"])
def test_compile_and_run_an_onnx_model(tmp_path, capsys, dynamic):
    """kiln compile model.onnx -o model.kiln, then kiln run: the outputs match onnxruntime's.
    A symbolic batch is fixed at compile time with --input batch=3."""
    onnx_path = tmp_path / "mlp.onnx"
    data = _torch_mlp_onnx(onnx_path, dynamic)
    artifact = str(tmp_path / "mlp.kiln")
    sizes = ["--input", "batch=3"] if dynamic else []
    assert main(["compile", str(onnx_path), *sizes, "-o", artifact]) == 0
    out = capsys.readouterr().out
    assert "compiled " in out and f"wrote {artifact}" in out
    assert os.path.isfile(os.path.join(artifact, "manifest.json"))

    x = rand(3 if dynamic else 2, 8, seed=1)
    np.save(tmp_path / "x.npy", x)
    outdir = tmp_path / "out"
    assert main(["run", artifact, "--input", f"x={tmp_path / 'x.npy'}", "--out",
                 str(outdir)]) == 0
    assert "sha256=" in capsys.readouterr().out
    (name,) = [o.name for o in onnx.load_from_string(data).graph.output]
    got = np.load(outdir / f"{name}.npy")
    np.testing.assert_allclose(got, ort_run(data, {"x": x})[0], rtol=1e-4, atol=1e-6)


def test_compile_keeps_a_symbolic_dim(tmp_path, capsys):
    """A model with a symbolic batch compiles as it is: one artifact runs every batch size
    within the range --input gives, and refuses one outside it."""
    onnx_path = tmp_path / "mlp.onnx"
    data = _torch_mlp_onnx(onnx_path, dynamic=True)
    artifact = str(tmp_path / "m.kiln")
    assert main(["compile", str(onnx_path), "-o", artifact, "--input", "batch=1..4"]) == 0
    assert "symbolic sizes batch=1..4" in capsys.readouterr().out
    for n in (1, 4):
        x = rand(n, 8, seed=n)
        np.save(tmp_path / "x.npy", x)
        outdir = tmp_path / f"out{n}"
        assert main(["run", artifact, "--input", f"x={tmp_path / 'x.npy'}", "--out",
                     str(outdir)]) == 0
        (name,) = [o.name for o in onnx.load_from_string(data).graph.output]
        np.testing.assert_allclose(np.load(outdir / f"{name}.npy"),
                                   ort_run(data, {"x": x})[0], rtol=1e-4, atol=1e-6)
    assert main(["run", artifact, "--input", "batch=5"]) != 0
    assert "size batch is 5, outside the range 1..4" in capsys.readouterr().err
