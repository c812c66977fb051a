"""kiln show --dot: the DOT text of plain and fused graphs, and its rendering fallbacks."""

from __future__ import annotations

import re
import shutil
import sys

import pytest

import kiln
from kiln.cli import main
from kiln.ir.picture import to_dot
from tests.debug_model import Net


def _graph(level: int):
    return kiln.optimize(kiln.trace(Net(), x=kiln.TensorSpec((3, 8))), level)


def _check_dot(dot: str) -> None:
    """Balanced braces, and every edge between declared nodes (an ID quoted or not is the
    same ID in DOT)."""
    assert dot.count("{") == dot.count("}")
    declared = {i.strip('"') for i in re.findall(r'^\s*("[^"]+"|n[\d_]+) \[', dot, re.M)}
    for a, b in re.findall(r'^\s*("[^"]+"|n[\d_]+) -> ("[^"]+"|n[\d_]+)', dot, re.M):
        assert a.strip('"') in declared and b.strip('"') in declared, (a, b)


def test_fused_groups_are_clusters_with_their_pattern_and_layers():
    dot = to_dot(_graph(2))
    _check_dot(dot)
    assert dot.count("subgraph cluster_") == 3
    assert '"matmul+add+relu (fc1 (Linear))"' in dot
    assert "fc2 (Linear)" in dot and "tanh" in dot
    assert '"w:fc1.bias" [shape=box' in dot and "style=dashed" in dot
    assert "float32[3, 16]" in dot  # edges carry types


def test_plain_graphs_and_no_weights():
    dot = to_dot(_graph(0), weights=False)
    _check_dot(dot)
    assert "cluster" not in dot and "w:" not in dot
    assert '"in:x"' in dot and '"out:output"' in dot


def test_cli_show_draws_or_falls_back_to_dot_text(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz fails
    out = tmp_path / "net.svg"
    model = "tests/debug_model.py:Net"
    assert main(["show", model, "--input", "x=3x8", "-O", "2", "--dot", str(out),
                 "--summary-only"]) == 0
    said = capsys.readouterr().out
    assert "Graphviz is not installed" in said and not out.exists()
    assert "subgraph cluster_" in (tmp_path / "net.svg.dot").read_text()
    dot_file = tmp_path / "net.dot"
    assert main(["show", model, "--input", "x=3x8", "--dot", str(dot_file)]) == 0
    assert dot_file.read_text().startswith('digraph "Net"')


@pytest.mark.skipif(not shutil.which("dot"), reason="rendering needs Graphviz's dot program "
                    "(apt install graphviz), which CI lacks; the DOT text and the fallback "
                    "without it are tested above")
def test_cli_show_renders_svg_with_graphviz(tmp_path):
    out = tmp_path / "net.svg"
    assert main(["show", "tests/debug_model.py:Net", "--input", "x=3x8", "-O", "2",
                 "--dot", str(out), "--summary-only"]) == 0
    assert out.read_text().lstrip().startswith(("<?xml", "<svg"))
