"""Schedule strategies, one per target kind (``Target.kind``): ``cpu`` and ``cuda``
(``schedules/gpu``).

A strategy is a module with two functions:
- ``tiling(node, target) -> Tiling``: the vector width and register tiles that the node's
  TE compute is built for (``lower.lower_group`` hands it to the builder; builders hold no
  target constants);
- ``schedule(func, target) -> PrimFunc``: the schedule of one unscheduled PrimFunc (a node
  or a fused group).
A new target kind adds a package beside ``cpu/`` and one line to ``STRATEGIES``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

from kiln.codegen.lower import Tiling
from kiln.errors import KilnError
from kiln.ir.graph import Node
from kiln.targets import Target

STRATEGIES = {"cpu": "kiln.codegen.schedules.cpu", "cuda": "kiln.codegen.schedules.gpu"}


def strategy(target: Target) -> ModuleType:
    """The strategy module of ``target``'s kind."""
    module = STRATEGIES.get(target.kind)
    if module is None:
        raise KilnError(f"no schedule strategy for targets of kind {target.kind!r}; kiln has "
                        f"{sorted(STRATEGIES)}")
    return importlib.import_module(module)


def tiling_for(target: Target) -> Callable[[Node], Tiling]:
    """``node -> Tiling`` of ``target``'s strategy, for ``lower_group``."""
    fn = strategy(target).tiling
    return lambda node: fn(node, target)


def schedule(func, target: Target):
    """Schedule ``func`` with ``target``'s strategy."""
    return strategy(target).schedule(func, target)
