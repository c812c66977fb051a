"""``kiln.nn``, importable as PyTorch's is (``import kiln.nn as nn``, ``from kiln.nn import
Linear``, ``import kiln.nn.functional as F``): the DSL's layers, defined in
``kiln.frontend.nn``."""

from kiln.frontend.nn import *  # noqa: F403
from kiln.frontend.nn import __all__  # noqa: F401
from kiln.nn import functional  # noqa: F401  (this package's own, ``kiln.nn.functional``)
