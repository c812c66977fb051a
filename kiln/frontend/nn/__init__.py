"""``kiln.nn``: PyTorch-compatible layers over the DSL."""

from kiln.frontend.nn.module import (
    Buffer,
    Module,
    ModuleList,
    Parameter,
    Sequential,
    generator,
    manual_seed,
)

__all__ = ["Buffer", "Module", "ModuleList", "Parameter", "Sequential", "generator",
           "manual_seed"]
