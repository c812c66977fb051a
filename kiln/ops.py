"""``kiln.ops``, importable (``import kiln.ops as ops``): the DSL's functions, one per op,
defined in ``kiln.frontend.ops``."""

from kiln.frontend.ops import *  # noqa: F403
from kiln.frontend.ops import __all__  # noqa: F401
