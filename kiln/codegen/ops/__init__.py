"""TE builders, one module per op family (mirrors ``kiln/ir/ops``). Importing this package
fills ``kiln.codegen.lower.LOWERINGS`` (and the compile-time packers of ``pack.py``)."""

from kiln.codegen.ops import (  # noqa: F401
    constant,
    conv,
    elementwise,
    layout,
    linalg,
    nn,
    reduce,
    shape,
)
