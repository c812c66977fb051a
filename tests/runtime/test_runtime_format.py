"""Manifest validation: what the writer refuses and the loader rejects (no TVM needed)."""

from __future__ import annotations

import pytest
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
    (lambda m: m["values"]["t"].update(dtype="bfloat16"), "cannot hold yet"),
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
