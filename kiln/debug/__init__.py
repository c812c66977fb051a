"""Seeing where compiled code and its reference part ways.

- ``compare`` (``kiln compare``): the compiled model's every kernel output against the
  reference value of the same source node, in execution order; the first divergence, with
  what reproduces it alone (``compare.py``).
- ``bisect`` (``kiln bisect``): which pass, and for fusion which fused group, makes the
  compiled model differ from its reference (``bisect.py``).
- ``reference.py``: the reference values: kiln's numpy interpreter, or onnxruntime on an
  ONNX file with its intermediate tensors exposed as outputs.
"""

from kiln.debug.bisect import Bisection, bisect
from kiln.debug.compare import Comparison, compare

__all__ = ["Bisection", "Comparison", "bisect", "compare"]
