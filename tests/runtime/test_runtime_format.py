"""Manifest validation: what the writer refuses and the loader rejects (no TVM needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runtime_helpers import model_manifest

from kiln.errors import ArtifactError
from kiln.runtime import format as fmt
from kiln.runtime.planner import plan_memory


def manifest():
    m = model_manifest("small")
    m.update(format=fmt.FORMAT_NAME, format_version=fmt.FORMAT_VERSION)
    m["memory"] = plan_memory(m["kernels"], m["values"], {"x", "w", "b", "y"})
    m["files"] = {name: "0" * 64 for name in fmt.REQUIRED_FILES}
    return m


def test_the_test_manifest_is_valid():
    fmt.validate_manifest(manifest())


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(format="onnx"), "not a kiln artifact"),
    (lambda m: m.update(format_version=fmt.FORMAT_VERSION + 1), "upgrade kiln"),
    (lambda m: m.update(format_version=0), "rebuild it"),
    (lambda m: m.pop("kernels"), "'kernels' is missing"),
    (lambda m: m["target"].update(kind="vulkan"), "target kind 'vulkan'"),
    (lambda m: m["values"]["t"].update(dtype="complex64"), "unknown dtype 'complex64'"),
    (lambda m: m["values"]["t"].update(shape=[4, "n"]), "no static shape"),
    (lambda m: m["inputs"][0].update(shape=[1, 1]), "does not match its entry"),
    (lambda m: m["kernels"][0].update(args=["x", "w", "nope"]), "'nope', which is not in"),
    (lambda m: m["kernels"][0].update(num_outputs=0), "num_outputs"),
    (lambda m: m["kernels"][0].update(args=["x", "w", "w"]), "writes the input or constant"),
    (lambda m: m["kernels"][1].update(args=["t", "b", "t"]), "written twice"),
    (lambda m: m["kernels"].reverse(), "before any kernel writes it"),
    (lambda m: m["kernels"].pop(), "'y' is produced by no kernel"),
    (lambda m: m["memory"]["assign"].pop("u"), "assigns no buffer to \\['u'\\]"),
    (lambda m: m["memory"]["assign"].update(u=7), "unknown buffer 7"),
    (lambda m: m["constants"].append("x"), "both a graph input and a constant"),
    # types and bounds: a bool is not an int, a float is not an int, sizes stay bounded
    (lambda m: m.update(format_version=float(fmt.FORMAT_VERSION)), "format_version 2.0"),
    (lambda m: m["values"]["t"].update(shape=[True, 16]), "no static shape"),
    (lambda m: m["values"]["t"].update(shape=[4, -16]), "no static shape"),
    (lambda m: m["values"]["t"].update(shape=[1] * 33), "no static shape"),
    (lambda m: m["values"]["t"].update(shape=[1 << 20, 1 << 20, 1 << 10]), "more than the"),
    (lambda m: m["values"]["t"].update(dtype=["float32"]), "unknown dtype"),
    (lambda m: m["inputs"][0].update(name=7), "an entry of 'inputs' has no name"),
    (lambda m: m["kernels"][0].update(num_outputs=True), "num_outputs"),
    (lambda m: m["kernels"][0].update(args=["x", "w", 3]), "value names"),
    (lambda m: m["kernels"][0].update(func="../evil"), "C identifier"),
    (lambda m: m["kernels"][0].update(flops=-1), "'flops' -1"),
    (lambda m: m["kernels"][0].update(flops=1.5), "'flops' 1.5"),
    (lambda m: m["kernels"][0].update(sources=[1]), "'sources'"),
    (lambda m: m.update(cpu_features="avx2"), "'cpu_features'"),
    (lambda m: m.update(build=["tvm"]), "'build'"),
    (lambda m: m.update(kiln_version=1), "'kiln_version'"),
    (lambda m: m["target"].update(mcpu=5), "target 'mcpu'"),
    (lambda m: m["target"].update({"num-cores": 0}), "'num-cores' is 0"),
    (lambda m: m["constants"].append("w"), "listed twice"),
    (lambda m: m["files"].update(extra="0" * 64), "not exactly"),
    (lambda m: m["files"].update({fmt.KERNELS: "A" * 64}), "lowercase hex"),
    (lambda m: m["memory"]["buffers"][0].update(nbytes=100), "positive multiple of 64"),
    (lambda m: m["memory"]["buffers"][0].update(nbytes=-64), "positive multiple of 64"),
    (lambda m: m["memory"]["buffers"][0].update(id=True), "must be"),
    (lambda m: m["memory"]["assign"].update(u=True), "unknown buffer True"),
    (lambda m: m["memory"].update(peak_bytes="64"), "'peak_bytes'"),
    (lambda m: m["memory"].update(peak_bytes=64), "peak_bytes is 64"),
    (lambda m: m["memory"]["buffers"].append({"id": 2, "nbytes": 64}), "holds no value"),
    (lambda m: m["memory"]["buffers"][0].update(nbytes=4096), "largest value it holds"),
    (lambda m: m["memory"]["assign"].update(v=1), "share buffer 1"),
])
def test_malformed_manifests_are_rejected(edit, message):
    m = manifest()
    edit(m)
    with pytest.raises(ArtifactError, match=message):
        fmt.validate_manifest(m)


def test_messages_say_what_to_do():
    m = manifest()
    m["kernels"][0]["num_outputs"] = 5
    with pytest.raises(ArtifactError, match="kiln compile"):
        fmt.validate_manifest(m)


def test_not_an_object():
    with pytest.raises(ArtifactError, match="not a JSON object"):
        fmt.validate_manifest([1, 2])


def test_sizes():
    assert fmt.value_nbytes({"shape": [3, 5], "dtype": "float16"}) == 30
    assert fmt.value_nbytes({"shape": [], "dtype": "int64"}) == 8
    assert fmt.round_up(0) == 64 and fmt.round_up(65) == 128 and fmt.round_up(128) == 128


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["float32", "x", "t", "u", "llvm", "k"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)


def json_paths(tree, prefix=()):
    items = tree.items() if isinstance(tree, dict) else (
        enumerate(tree) if isinstance(tree, list) else ())
    for key, sub in items:
        yield prefix + (key,)
        yield from json_paths(sub, prefix + (key,))


@settings(max_examples=400)
@given(st.data())
def test_any_field_replaced_by_any_json_is_valid_or_an_artifact_error(data):
    """Whatever JSON value lands in whatever field, validation answers with an ArtifactError
    or accepts: never a TypeError (an unhashable list where a name belongs), never a
    KeyError."""
    m = manifest()
    path = data.draw(st.sampled_from(sorted(json_paths(m), key=repr)))
    parent = m
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        parent[path[-1]] = data.draw(JSON)
    else:
        del parent[path[-1]]
    try:
        fmt.validate_manifest(m)
    except ArtifactError:
        pass
