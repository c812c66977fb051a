"""``kiln.nn.functional``, importable as PyTorch's is (``import kiln.nn.functional as F``):
``torch.nn.functional``'s names for kiln's ops, defined in ``kiln.frontend.nn.functional``."""

from kiln.frontend.nn.functional import *  # noqa: F403
from kiln.frontend.nn.functional import __all__  # noqa: F401
