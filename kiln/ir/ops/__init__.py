"""The op set. Importing this package registers every op in ``OPS``."""

from kiln.ir.ops import (  # noqa: F401
    activation,
    constant,
    elementwise,
    fused,
    layout,
    linalg,
    nn,
    reduce,
    shape,
)
from kiln.ir.ops.registry import OPS, REQUIRED, OpDef, get_op, infer_node, register

__all__ = ["OPS", "REQUIRED", "OpDef", "get_op", "infer_node", "register"]
