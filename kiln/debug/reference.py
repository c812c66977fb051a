"""Reference values for a comparison, by value name: every value of the graph as kiln's numpy
interpreter computes it, or every tensor of an ONNX file as onnxruntime computes it (kiln's
ONNX importer keeps ONNX tensor names as value names, so the two meet by name)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from kiln.errors import KilnError
from kiln.ir.graph import Graph
from kiln.ir.interpreter import interpret_values

REFERENCES = ("interpreter", "onnxruntime")


def reference_values(graph: Graph, inputs: Mapping[str, np.ndarray], reference: str,
                     onnx_model: Any = None) -> dict[str, np.ndarray]:
    """``{value name: array}`` from ``reference``: "interpreter" (``graph`` in kiln's numpy
    interpreter) or "onnxruntime" (``onnx_model``, a path or ModelProto)."""
    if reference == "interpreter":
        return interpret_values(graph, inputs)
    if reference == "onnxruntime":
        if onnx_model is None:
            raise KilnError("the onnxruntime reference runs an ONNX file: give the model "
                            "(kiln compare MODEL.onnx, or --reference-model OTHER.onnx)")
        return onnxruntime_values(onnx_model, inputs)
    raise KilnError(f"unknown reference {reference!r}; use one of {', '.join(REFERENCES)}")


def onnxruntime_values(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor an ONNX model computes (each node output made a graph output), and its
    inputs and initializers, from onnxruntime (CPU, default settings)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KilnError("the onnxruntime reference needs onnxruntime: pip install "
                        "onnxruntime") from None
    import onnx
    from onnx import numpy_helper

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    model = _copy(model)
    graph = model.graph
    have = {o.name for o in graph.output}
    for node in graph.node:
        for name in node.output:
            if name and name not in have:
                graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
    feeds = {vi.name: np.asarray(inputs[vi.name]) for vi in graph.input if vi.name in inputs}
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds)))
    values.update({t.name: numpy_helper.to_array(t) for t in graph.initializer})
    values.update(feeds)
    return values


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
