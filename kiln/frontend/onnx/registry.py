"""The converter table: ONNX op type -> {schema version: converter}, as the ONNX reference
evaluator keys its ops.

A converter is registered for the exact ONNX schema versions whose semantics it implements.
The importer looks up the schema version in effect for the model's opset (the newest version
not newer than the opset) and uses the converter registered for exactly that version: a model
whose op changed meaning in a version kiln has not reviewed is reported as unsupported, never
converted with an older converter.
"""

from __future__ import annotations

import functools
from typing import Callable

import onnx.defs

from kiln.frontend.onnx.validate import Spec

# op type -> {since_version: converter}; only the default ONNX domain is supported
CONVERTERS: dict[str, dict[int, Callable]] = {}
# op type -> what its converter needs of a node beyond the ONNX schema (validate.Spec)
SPECS: dict[str, Spec] = {}


def converter(op_type: str, *versions: int, spec: Spec | None = None
              ) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` converts ``op_type`` at each of the given schema versions; ``spec``
    says what the importer checks of a node before calling it (``validate.py``)."""

    def wrap(fn: Callable) -> Callable:
        table = CONVERTERS.setdefault(op_type, {})
        for v in versions:
            if v in table:
                raise RuntimeError(f"ONNX converter {op_type}-{v} is registered twice")
            table[v] = fn
        if spec is not None:
            SPECS[op_type] = spec
        return fn

    return wrap


@functools.cache
def schema_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The since_version of ``op_type``'s schema in effect at ``opset``; None if ONNX has no
    such op at that opset."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain).since_version
    except onnx.defs.SchemaError:
        return None


def find_converter(op_type: str, domain: str, opset: int) -> tuple[Callable | None, str]:
    """(converter, '') or (None, why kiln cannot convert this op at this opset)."""
    if domain not in ("", "ai.onnx"):
        return None, f"domain {domain!r} is not supported (kiln converts the default domain)"
    table = CONVERTERS.get(op_type)
    version = schema_version(op_type, opset)
    if version is None:
        return None, f"ONNX defines no op {op_type!r} at opset {opset}"
    if not table:
        return None, "kiln has no converter for this op"
    if version not in table:
        have = ", ".join(str(v) for v in sorted(table))
        return None, (f"opset {opset} uses {op_type}-{version}; kiln converts versions {have}")
    return table[version], ""
