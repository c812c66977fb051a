"""The op set. Importing this package registers every op in ``OPS``."""

from kiln.ir.ops import activation, constant, elementwise, linalg, nn, reduce, shape  # noqa: F401
from kiln.ir.ops.registry import OPS, REQUIRED, OpDef, get_op, infer_node, register

__all__ = ["OPS", "REQUIRED", "OpDef", "get_op", "infer_node", "register"]
