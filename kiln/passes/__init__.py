"""Graph passes: autodiff (``grad``), training-step construction, and the pass manager's
rewrites."""

from kiln.passes.autodiff import grad

__all__ = ["grad"]
