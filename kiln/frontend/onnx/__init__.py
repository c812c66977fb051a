"""ONNX import and export: ``from_onnx(path_or_model)`` and ``to_onnx(graph)``.

``importer`` and the ``converters`` package map ONNX onto kiln's ops (the table in
``registry``); ``exporter`` with ``export_ops``/``export_nn`` maps kiln's ops back.
tests/onnx/coverage.py runs onnx's backend test cases and writes docs/onnx_coverage.md.
"""

from kiln.frontend.onnx.exporter import to_onnx
from kiln.frontend.onnx.importer import from_onnx

__all__ = ["from_onnx", "to_onnx"]
