"""ONNX element types and kiln dtypes, both ways."""

from __future__ import annotations

from onnx import TensorProto

from kiln.errors import UnsupportedOpError

# ONNX TensorProto.DataType -> kiln dtype name
ONNX_TO_KILN: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.DOUBLE: "float64",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool",
}
KILN_TO_ONNX: dict[str, int] = {v: k for k, v in ONNX_TO_KILN.items()}


def onnx_type_name(elem_type: int) -> str:
    """'UINT16' for messages."""
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"data type {elem_type}"


def to_kiln_dtype(elem_type: int, what: str) -> str:
    """The kiln dtype of an ONNX element type; UnsupportedOpError naming ``what`` if none."""
    if elem_type not in ONNX_TO_KILN:
        known = ", ".join(onnx_type_name(t) for t in ONNX_TO_KILN)
        raise UnsupportedOpError(
            f"{what} has element type {onnx_type_name(elem_type)}, which kiln lacks "
            f"(kiln has {known})")
    return ONNX_TO_KILN[elem_type]


def to_onnx_dtype(dtype: str) -> int:
    """The ONNX element type of a kiln dtype."""
    return KILN_TO_ONNX[dtype]
