"""ONNX -> kiln converters by family; importing this package fills ``registry.CONVERTERS``."""

from kiln.frontend.onnx.converters import (  # noqa: F401
    activation,
    elementwise,
    linalg,
    loss,
    nn,
    norm,
    quant,
    recurrent,
    reduce,
    resize,
    shape,
    tensor,
)
