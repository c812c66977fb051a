"""Failures of code generation are KilnErrors that name the kiln node or kernel: dtypes TVM
cannot compile are refused before TVM runs, TVM's own failures are wrapped, and targets kiln
cannot build for (another triple, an unknown CPU) are refused with what is supported."""

from __future__ import annotations

import sys

import pytest

from kiln.codegen.build import NO_CODE_FOR, build, export
from kiln.errors import KilnError, UnsupportedOpError
from kiln.ir import GraphBuilder, TensorType
from kiln.targets import resolve_target

build_module = sys.modules["kiln.codegen.build"]  # kiln.codegen.build is also the function

# shapes and attributes that each op of NO_CODE_FOR takes
_SHAPES = {"max_pool2d": (1, 2, 4, 4), "lrn": (1, 2, 4, 4)}
_ATTRS = {"max_pool2d": {"kernel_shape": (2, 2)}, "lrn": {"size": 3}}
_ARITY = {"add": 2, "mul": 2, "maximum": 2, "minimum": 2, "pow": 2}


def graph_of(op: str, dtype: str):
    """One node of ``op`` on ``dtype`` inputs (a cast of bool to bool for 'bool->bool')."""
    b = GraphBuilder("g")
    src, _, dst = dtype.partition("->")
    shape = _SHAPES.get(op, (2, 3))
    ins = [b.input(f"x{i}", TensorType(shape, src)) for i in range(_ARITY.get(op, 1))]
    attrs = {"dtype": dst} if op == "cast" else dict(_ATTRS.get(op, {}))
    b.output(*b.op(op, ins, attrs))
    return b.build()


def test_bfloat16_argmax_is_refused_before_tvm_naming_node_op_and_dtype():
    with pytest.raises(UnsupportedOpError) as info:
        build(graph_of("argmax", "bfloat16"))
    text = str(info.value)
    assert "node %" in text and "argmax" in text and "bfloat16[2, 3]" in text
    assert "kiln cannot compile argmax on bfloat16" in text


@pytest.mark.parametrize("op, dtype", sorted(NO_CODE_FOR))
def test_every_refused_dtype_does_fail_in_tvm(monkeypatch, op, dtype):
    """Without the table TVM fails on each entry (so none is refused needlessly), and that
    failure is a KilnError naming the node or kernel, not TVM's error."""
    monkeypatch.setattr(build_module, "NO_CODE_FOR", {})
    with pytest.raises(KilnError) as info:
        build(graph_of(op, dtype))
    text = str(info.value)
    assert f"({op}" in text and ("node %" in text or "kernel k" in text), text


def test_a_kernel_tvm_cannot_compile_is_named_among_good_ones(monkeypatch):
    """When tvm.compile fails, each kernel is compiled alone to name the ones that fail."""
    import tvm

    real = tvm.compile

    def compile_without_exp(module, target):
        if any("exp" in gv.name_hint for gv in module.get_global_vars()):
            raise RuntimeError("InternalError: Check failed: (a) is false: \nmore lines")
        return real(module, target)

    monkeypatch.setattr(tvm, "compile", compile_without_exp)
    b = GraphBuilder("g")
    x = b.input("x", TensorType((4,), "float32"))
    b.output(*b.op("exp", [x]), *b.op("relu", [b.input("y", TensorType((3,), "float32"))]))
    with pytest.raises(KilnError) as info:
        build(b.build())
    text = str(info.value)
    assert "TVM could not compile 1 kernel(s) for {'kind': 'llvm'" in text
    assert "kernel k0_exp (from node %" in text and "Check failed: (a) is false" in text
    assert "relu" not in text and "more lines" not in text


def test_a_linker_failure_names_the_target_and_the_linkers_error(tmp_path):
    result = build(graph_of("relu", "float32"))

    class Executable:
        def export_library(self, path):
            raise RuntimeError("Compilation error:\n/usr/bin/ld: lib0.o: Relocations in "
                               "generic ELF (EM: 183)\n/usr/bin/ld: lib0.o: error adding "
                               "symbols: file in wrong format\ncollect2: error: ld returned 1")

    result.executable = Executable()
    with pytest.raises(KilnError, match=r"linking the kernels of 'g' for \{'kind': 'llvm'.*"
                                        r"error adding symbols: file in wrong format"):
        export(result, str(tmp_path))


@pytest.mark.parametrize("target, message", [
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu"},
     "target triple 'aarch64-linux-gnu' is not supported: kiln builds for the machine it runs on"),
    ("llvm -mtriple=x86_64-pc-windows-msvc", "'x86_64-pc-windows-msvc' is not supported"),
    ({"kind": "llvm", "mtriple": "bogus"}, "'bogus' is not a target triple"),
    ('{"kind": "llvm", "mattr": "avx"}', "'mattr' must be a list or tuple"),
    ("llvm -num-cores=two", "-num-cores takes a number"),
    ('{"kind": "llvm"', "is not valid JSON"),
])
def test_targets_kiln_cannot_build_for(target, message):
    with pytest.raises(KilnError, match=message):
        resolve_target(target)


def test_text_and_json_targets():
    t = resolve_target("llvm -mcpu=haswell -mattr=+avx2,+fma -num-cores=3")
    assert (t.mcpu, t.mattr, t.num_cores) == ("haswell", ("+avx2", "+fma"), 3)
    assert resolve_target('{"kind": "llvm", "mcpu": "znver4"}').mcpu == "znver4"


def test_an_unknown_cpu_is_refused_rather_than_compiled_for_a_generic_one():
    with pytest.raises(KilnError, match="LLVM knows no CPU 'notacpu'"):
        build(graph_of("relu", "float32"), target={"kind": "llvm", "mcpu": "notacpu"})
