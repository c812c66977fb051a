"""The kiln command line: show, interpret, compile/run/bench, fuzz, and its error messages."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kiln
from kiln.cli import load_graph, main, parse_input
from kiln.errors import CLIError

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

MODEL = textwrap.dedent("""
    import numpy as np
    from kiln import nn, ops

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.full((3, 4), 0.5, np.float32))

        def forward(self, x):
            return ops.relu(x @ self.w)

    def make_tiny():
        return Tiny()

    def pair(x, y):
        return x + y, x * y
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(MODEL)
    return str(path)


def test_show_prints_ir_and_summary(model_file, capsys, tmp_path):
    dot = tmp_path / "g.dot"
    assert main(["show", f"{model_file}:Tiny", "--input", "x=N,3", "--dot", str(dot)]) == 0
    out = capsys.readouterr().out
    assert "graph Tiny(%x: float32[N, 3])" in out
    assert "param %w: float32[3, 4]" in out
    assert "matmul" in out and "total" in out
    assert dot.read_text().startswith('digraph "Tiny"')


@pytest.mark.parametrize("name", ["Tiny", "make_tiny"])
def test_interpret_runs_class_or_factory(model_file, capsys, name):
    assert main(["interpret", f"{model_file}:{name}", "-i", "x=2x3"]) == 0
    assert "output: float32[2, 4]" in capsys.readouterr().out


def test_interpret_function_with_npy_inputs(model_file, capsys, tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x)
    args = ["interpret", f"{model_file}:pair", "-i", f"x={tmp_path}/x.npy",
            "-i", f"y={tmp_path}/y.npy", "--save", str(tmp_path / "out")]
    assert main(args) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "output_1.npy"), x * x)


@pytest.mark.parametrize("argv, message", [
    (["show", "nofile.py:A", "-i", "x=1"], "no such file"),
    (["show", "{model}:Nope", "-i", "x=1"], "has no 'Nope'; it defines"),
    (["show", "{model}", "-i", "x=1"], "expected FILE.py:NAME"),
    (["show", "{model}:Tiny", "-i", "x=2@3"], "bad dimension"),
    (["show", "{model}:Tiny", "-i", "x"], "expected NAME=SHAPE"),
    (["show", "{model}:Tiny", "-i", "x=2x3:float99"], "unknown dtype"),
    (["show", "{model}:Tiny", "-i", "x=missing.npy"], "does not exist"),
    (["show", "{model}:Tiny"], "at least one --input"),
    (["show", "{model}:Tiny", "-i", "x=2x5"], r"matmul.*float32\[2, 5\]"),
    (["interpret", "{model}:Tiny", "-i", "x=N,3"], "symbolic shape"),
])
def test_errors_are_clear(model_file, capsys, argv, message):
    argv = [a.replace("{model}", model_file) for a in argv]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)


def test_parse_input_forms():
    assert parse_input("x=1x3x224x224:float32")[1].shape == (1, 3, 224, 224)
    assert parse_input("ids=N,128:int64")[1].shape == ("N", 128)
    assert parse_input("s=scalar")[1].shape == ()
    with pytest.raises(CLIError):
        parse_input("1x=2")


def test_console_script_entry_point(model_file):
    proc = subprocess.run([sys.executable, "-m", "kiln.cli", "show", f"{model_file}:Tiny",
                           "-i", "x=1x3", "--summary-only"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "matmul" in proc.stdout


def test_fuzz_command_reports_no_mismatch(capsys, tmp_path):
    assert main(["fuzz", "--examples", "15", "--seed", "2", "--out", str(tmp_path)]) == 0
    assert "fuzzed 15 graphs (seed 2)" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


CONV_MODEL = textwrap.dedent("""
    from kiln import nn, ops

    def small_cnn():
        return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(16 * 4 * 4, 5))
""")


def test_compile_run_bench_a_dsl_model_at_o3(tmp_path, capsys, monkeypatch):
    """kiln compile -O 3 (layout tuning from the cache and heuristic only), then kiln run and
    kiln bench on the artifact; the outputs match the interpreter, the manifest holds the
    layout choices."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "cnn.py"
    path.write_text(CONV_MODEL)
    artifact = str(tmp_path / "cnn.kiln")
    kiln.nn.manual_seed(0)  # the same weights as the graph traced below
    assert main(["compile", f"{path}:small_cnn", "-i", "x=1x3x8x8", "-O", "3",
                 "--layout-budget", "0", "-o", artifact]) == 0
    assert "(O3)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "cnn.kiln" / "manifest.json").read_text())
    assert {c["source"] for c in manifest["tuning"]["layout"]["choices"]} == {"heuristic"}

    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", artifact, "-i", f"x={tmp_path / 'x.npy'}", "--out",
                 str(tmp_path / "out")]) == 0
    (got,) = [np.load(p) for p in (tmp_path / "out").iterdir()]
    kiln.nn.manual_seed(0)
    graph, _ = load_graph(f"{path}:small_cnn", ["x=1x3x8x8"])
    np.testing.assert_allclose(got, kiln.interpret(graph, {"x": x})[0], rtol=1e-4, atol=1e-5)

    assert main(["bench", artifact, "--repeat", "3"]) == 0
    out = capsys.readouterr().out
    assert "latency over 3 runs" in out and "conv2d_nchwc" in out
    assert re.search(r"\(\d+ threads.*: median [\d.]+ ms, min [\d.]+, 90th percentile", out)
    assert re.search(r"intermediates +[\d.]+ MiB", out) and "{" not in out  # not a dict
    table = out[out.index("kernels, slowest first"):].splitlines()[1:]
    assert table[0].split()[:4] == ["kernel", "ms", "%", "GFLOP/s"]
    shares = [float(line.split()[2]) for line in table[1:] if not line.startswith("...")]
    assert 99 <= sum(shares) <= 101 or "more kernels" in out


MISTAKES = textwrap.dedent("""
    from kiln import nn, ops

    class CallsLayerWrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(x, x)

    class NeedsArgs(nn.Module):
        def __init__(self, width):
            super().__init__()
""")


def errors(stderr: str) -> str:
    """stderr without the progress lines (``kiln [  1.2 s] ...``) that precede an error."""
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if not line.startswith("kiln ["))


@pytest.mark.parametrize("argv, message", [
    (["show", "{model}:Tiny", "-i", "y=2x3"],
     r"^kiln show: error: --input: Tiny takes \(x\): no spec for 'x'; no input named 'y'"),
    (["show", "{model}:pair", "-i", "x=2x3"], r"pair takes \(x, y\): no spec for 'y'"),
    (["show", "{model}:Tiny", "-i", "x=2x3", "-i", "x=2x3"], r"--input gives 'x' more than once"),
    (["show", "{mistakes}:CallsLayerWrong", "-i", "x=2x3"],
     r"^kiln show: error: TraceError: mistakes.py:10 \[CallsLayerWrong\]: fc \(Linear\) called "
     r"with 2 positional"),
    (["show", "{mistakes}:NeedsArgs", "-i", "x=2x3"],
     r"NeedsArgs\(\) failed: TypeError: .*missing 1 required positional argument: 'width'"),
    (["compile", "{model}:Tiny", "-i", "x=2x3", "-o", "{tmp}/t.kiln", "--target",
      "llvm -mtriple=aarch64-linux-gnu"],
     r"^kiln compile: error: target triple 'aarch64-linux-gnu' is not supported"),
])
def test_mistakes_are_one_line_without_a_traceback(model_file, tmp_path, capsys, argv, message):
    mistakes = tmp_path / "mistakes.py"
    mistakes.write_text(MISTAKES)
    argv = [a.format(model=model_file, mistakes=mistakes, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = errors(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(message, err), err


def test_the_console_prints_one_line_and_the_traceback_only_with_kiln_debug(model_file):
    argv = [sys.executable, "-m", "kiln.cli", "show", f"{model_file}:Tiny", "-i", "y=2x3"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("kiln show: error: --input:")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    debug = subprocess.run(argv, capture_output=True, text=True,
                           env={**os.environ, "KILN_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr


def test_an_error_listing_several_problems_keeps_them_under_its_line(capsys, tmp_path):
    path = tmp_path / "lists.py"
    path.write_text("from kiln import ops\n\ndef two(x):\n"
                    "    return ops.argmax(x), ops.argmax(x * 2.0)\n")
    assert main(["compile", f"{path}:two", "-i", "x=2x3:bfloat16", "-o",
                 str(tmp_path / "t.kiln")]) == 2
    lines = errors(capsys.readouterr().err).splitlines()
    assert lines[0] == "kiln compile: error: UnsupportedOpError: 2 node(s) cannot be compiled:"
    assert len(lines) == 3 and all(line.startswith("    node %") for line in lines[1:])
    assert "kiln cannot compile argmax on bfloat16" in lines[1]


def test_a_bug_in_kiln_is_one_line_too(monkeypatch, model_file, capsys):
    def broken(args):
        raise IndexError("list index out of range")

    monkeypatch.setattr("kiln.cli.show.cmd_show", broken)
    assert main(["show", f"{model_file}:Tiny", "-i", "x=2x3"]) == 1
    err = capsys.readouterr().err
    assert err == ("kiln show: internal error: IndexError: list index out of range (a bug in "
                   "kiln; KILN_DEBUG=1 shows where)\n")
    monkeypatch.setenv("KILN_DEBUG", "1")
    with pytest.raises(IndexError):
        main(["show", f"{model_file}:Tiny", "-i", "x=2x3"])


def test_compile_with_a_reduced_precision(model_file, tmp_path, capsys):
    from kiln.targets import host_target

    out = tmp_path / "tiny.kiln"
    argv = ["compile", f"{model_file}:make_tiny", "-i", "x=2x3", "-o", str(out),
            "--precision", "bf16"]
    if "avx512_bf16" in host_target().features:
        assert main(argv + ["--report-fusion"]) == 0
        text = capsys.readouterr().out
        assert "matmul" in text and "cast" in text  # the policy's casts, as fusion sees them
        assert re.search(r"precision bf16: \d+ of \d+ values in bfloat16; weights", text)
        assert "native kernels: kiln_gemm_bf16" in text
        assert main(["run", str(out)]) == 0
    with pytest.warns(kiln.errors.PrecisionWarning, match="no AVX512-BF16"):
        assert main(argv + ["--target", "x86-64-v3"]) == 0
    assert "nothing runs in bfloat16" in capsys.readouterr().out


def test_compile_a_quantized_model_says_what_runs_on_integer_kernels(tmp_path, capsys):
    """onnxruntime's quantize_static model: the int8 line counts the integer matmuls and
    convolutions and says why the others stay float (the depthwise one)."""
    import onnx

    from kiln.targets import host_target
    from tests.quantized_models import quantized

    path = tmp_path / "q.onnx"
    onnx.save(quantized(tmp_path), path)
    assert main(["compile", str(path), "-o", str(tmp_path / "q.kiln")]) == 0
    text = capsys.readouterr().out
    if "avx512_vnni" in host_target().features:
        assert ("int8: 4 of 5 quantized matmuls/convolutions on integer kernels; float: 1 "
                "grouped and depthwise convolutions; native kernels: kiln_gemm_u8s8") in text
    else:
        assert "int8:" not in text  # (the pass applies only with VNNI)
    assert main(["compile", str(path), "-o", str(tmp_path / "f.kiln"), "--disable",
                 "int8"]) == 0
    assert "int8:" not in capsys.readouterr().out


def test_a_closed_pipe_ends_quietly(model_file, monkeypatch, capsys):
    """``kiln show ... | head -1``: the reader left, writing raises BrokenPipeError; kiln
    stops quietly (status 0), no internal error."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    closed = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    assert main(["show", f"{model_file}:make_tiny", "-i", "x=2x3"]) == 0
    closed.close()
    assert "internal error" not in capsys.readouterr().err


def test_the_command_line_says_what_it_does(tmp_path, capsys):
    """--version; progress lines with elapsed seconds on a stderr that is not a terminal;
    random inputs announced; run --print; interpret and run print the same summary."""
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.match(r"kiln \d+\.\d+", capsys.readouterr().out)
    model = os.path.join(EXAMPLES, "mlp.py") + ":MLP"
    artifact = str(tmp_path / "mlp.kiln")
    kiln.nn.manual_seed(0)  # (each command builds the model anew, as its own process would)
    assert main(["compile", model, "--input", "x=1x784", "-o", artifact]) == 0
    err = capsys.readouterr().err
    assert re.search(r"kiln \[ *[\d.]+ s\] optimizing 'MLP'", err), err
    kiln.nn.manual_seed(0)
    assert main(["compile", model, "--input", "x=1x784", "-o", artifact, "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["run", artifact, "--print"]) == 0
    ran = capsys.readouterr().out
    assert "random inputs (seed 0) for x" in ran and "[[" in ran
    kiln.nn.manual_seed(0)
    assert main(["interpret", model, "--input", "x=1x784"]) == 0
    interpreted = capsys.readouterr().out

    def sums(text):
        return re.findall(r"output: float32\[1, 10\]  sum=(\S+)", text)
    assert sums(ran) and sums(ran) == sums(interpreted)


def test_compile_writes_a_report(tmp_path, capsys):
    model = os.path.join(EXAMPLES, "mlp.py") + ":MLP"
    md, page = tmp_path / "r.md", tmp_path / "r.html"
    for path in (md, page):
        assert main(["compile", model, "--input", "x=2x784", "-o", str(tmp_path / "m.kiln"),
                     "-q", "--report", str(path)]) == 0
        assert f"wrote the report to {path}" in capsys.readouterr().out
    text = md.read_text()
    for title in ("## Passes", "## Fused groups", "## Memory", "## Per-kernel profile"):
        assert title in text
    assert "| fuse |" in text and "3 fused groups: 2 x `matmul+add+relu`" in text
    assert re.search(r"\| `k0_fused_matmul_add_relu` \| [\d.]+ \| [\d.]+ \|", text)
    html_text = page.read_text()
    assert html_text.startswith("<!DOCTYPE html>")
    assert "<td><code>k0_fused_matmul_add_relu</code></td>" in html_text
    assert html_text.count("<table>") == 4  # passes, kernels, memory, profile (no layout at O2)
    with pytest.raises(SystemExit):
        main(["compile", model, "--input", "x=2x784", "-o", str(tmp_path / "m.kiln"),
              "--report"])
    assert main(["compile", model, "--input", "x=2x784", "-o", str(tmp_path / "m.kiln"),
                 "-q", "--report", str(tmp_path / "r.txt")]) == 2
    assert "write FILE.md" in capsys.readouterr().err
