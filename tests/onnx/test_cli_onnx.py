"""The command line with ONNX: kiln export, and show/interpret of .onnx files."""

from __future__ import annotations

import os

import onnx
import pytest

from kiln.cli import main
from tests.onnx.util import EXAMPLES

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
