"""The pass context: what a pass may read besides the graph, handed explicitly to every pass
by the manager (no pass reads globals or environment variables).

``kiln.optimize`` and ``kiln.compile`` make one with the same function
(``kiln.codegen.api.pass_context``), so that both run the same passes with the same options
and give the same graph. A context made here directly has no measuring chooser: the layout
pass then takes its heuristic block sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.passes.layout_choice import Chooser
from kiln.targets import Target, host_target


@dataclass
class PassContext:
    """``target`` decides which passes apply and the vector width the layout pass plans
    for; ``layout_chooser`` measures conv block candidates (None: the heuristic). Passes
    leave what they decided in ``reports``, keyed by pass name (``layout``: a LayoutReport,
    ``fuse``: a FusionReport)."""

    target: Target = field(default_factory=host_target)
    opt_level: int = 2
    layout_chooser: Chooser | None = None
    precision: str = "float32"  # the mixed-precision policy's type (kiln/passes/precision.py)
    # the convolutions (output value names) the layout pass may block; None: all (bisect)
    layout_only: frozenset[str] | None = None
    reports: dict[str, Any] = field(default_factory=dict)
