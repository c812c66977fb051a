"""What the layout pass chooses from: conv problems (the cache key), candidates (channel block
and register tile, measured or not), the heuristic, the per-group choice, the report, and the
options of ``block_layout`` (the registered pass makes them from its PassContext)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

BLOCKS = (32, 16, 8)  # channel blocks the pass may choose (each must divide the channels)


@dataclass(frozen=True)
class ConvProblem:
    """Everything a conv2d kernel's speed depends on, besides the target: the cache key."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    dtype: str = "float32"

    def key(self) -> str:
        return (f"conv2d {self.dtype} x[{self.n},{self.c},{self.h},{self.w}] "
                f"w[{self.o},{self.c},{self.kernel[0]},{self.kernel[1]}] s{list(self.strides)} "
                f"p{list(self.pads)} d{list(self.dilations)}")

    @property
    def out_size(self) -> tuple[int, int]:
        """(OH, OW)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        return ((self.h + self.pads[0] + self.pads[2] - dh * (kh - 1) - 1) // sh + 1,
                (self.w + self.pads[1] + self.pads[3] - dw * (kw - 1) - 1) // sw + 1)

    @property
    def flops(self) -> int:
        oh, ow = self.out_size
        return 2 * self.n * self.o * oh * ow * self.c * self.kernel[0] * self.kernel[1]


@dataclass(frozen=True)
class Candidate:
    """One way to compile a conv: output channel block, register tile (None: the codegen's
    heuristic), and its measured time (None when not measured)."""

    block: int
    tile: tuple[int, int] | None = None
    seconds: float | None = None
    source: str = "heuristic"  # "measured", "cache" or "heuristic"


# problems -> for each, its candidates (at least one); measured ones carry seconds
Chooser = Callable[[Sequence[ConvProblem]], Mapping[ConvProblem, Sequence[Candidate]]]


@dataclass
class LayoutChoice:
    value: str
    problem: ConvProblem
    in_block: int
    choice: Candidate

    def to_json(self) -> dict:
        return {"value": self.value, "conv": self.problem.key(), "ic": self.in_block,
                "oc": self.choice.block, "tile": list(self.choice.tile or ()) or None,
                "source": self.choice.source, "seconds": self.choice.seconds}


@dataclass
class LayoutReport:
    """What the layout pass chose for every conv, and the transforms it kept."""

    choices: list[LayoutChoice] = field(default_factory=list)
    transforms: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"choices": [c.to_json() for c in self.choices], "transforms": self.transforms,
                "notes": list(self.notes)}

    def __str__(self) -> str:
        lines = [f"layout: {len(self.choices)} conv(s) blocked, {self.transforms} runtime "
                 "transform(s)"]
        for c in self.choices:
            t = c.choice
            took = f" {t.seconds * 1e3:.3f} ms" if t.seconds is not None else ""
            lines.append(f"  %{c.value:<14} {c.problem.key():<62} ic={c.in_block:<3} "
                         f"oc={t.block:<3} tile={t.tile} {t.source}{took}")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


@dataclass(frozen=True)
class LayoutOptions:
    """How ``block_layout`` chooses: ``lanes`` (vector width in float32 lanes, for the
    heuristic), an optional measuring ``chooser``, a ``report`` to fill, ``bf16``:
    whether bfloat16 convs run blocked too (the target has kiln's native bf16 GEMM), and
    ``only``: the convolutions (by output value name) that may run blocked (None: all;
    ``kiln bisect`` narrows a layout difference to one with it)."""

    lanes: int = 16
    chooser: Chooser | None = None
    report: LayoutReport | None = None
    bf16: bool = False
    only: frozenset[str] | None = None


def heuristic_block(channels: int, lanes: int) -> int | None:
    """One vector when it divides ``channels``, else the largest block of BLOCKS that does."""
    if lanes in BLOCKS and channels % lanes == 0:
        return lanes
    return next((b for b in BLOCKS if channels % b == 0), None)


def in_block(channels: int, lanes: int) -> int:
    """Input block of a conv reading NCHW: the largest divisor of C up to one vector."""
    return max(d for d in range(1, min(channels, lanes) + 1) if channels % d == 0)


def tile_of(oh: int, ow: int, pixels: int) -> tuple[int, int]:
    """A register tile (rows, cols) of about ``pixels`` output pixels: cols a divisor of OW
    when one is large enough (else OW is padded), rows filling the rest."""
    cols = max((d for d in range(1, min(ow, pixels) + 1) if ow % d == 0), default=1)
    if cols < 4 and ow > pixels:
        cols = pixels
    return max(1, min(oh, pixels // cols)), cols


def heuristic(problems: Sequence[ConvProblem], lanes: int = 16
              ) -> dict[ConvProblem, list[Candidate]]:
    """The budget-0 choice, one unmeasured candidate per problem: two vectors of output
    channels (32 float32 on AVX-512) with a 7-pixel register tile when 2 x lanes divides O,
    else one vector with the codegen's tile. Measured on the 2-core AVX-512 machine, the
    two-vector block won all 23 ResNet-50 conv shapes (a 7-pixel tile 16 times, 14 pixels 7
    times), 1.11-1.37x faster than one vector with the codegen's 28-pixel tile; its 14
    accumulators also fit AVX2's 16 registers."""
    out = {}
    for p in problems:
        if 2 * lanes in BLOCKS and p.o % (2 * lanes) == 0:
            out[p] = [Candidate(2 * lanes, tile_of(*p.out_size, 7))]
        else:
            out[p] = [Candidate(heuristic_block(p.o, lanes))]
    return out


def best_block(cand_lists: list[Sequence[Candidate]], problems: list[ConvProblem],
               channels: set[int]) -> int:
    """The block of a group of convs (sharing one block through elementwise ops, pools and
    concats), which must divide every count in ``channels``: the least summed time over the
    measured convs (those left unmeasured by the budget follow them), else the first
    candidate of the group's largest conv, else the largest of BLOCKS that fits."""
    fits = [b for b in BLOCKS if all(c % b == 0 for c in channels)]
    timed = [cl for cl in cand_lists if any(c.seconds is not None for c in cl)]
    scored = []
    for b in fits:
        times = [min((c.seconds for c in cl if c.block == b and c.seconds is not None),
                     default=None) for cl in timed]
        if timed and None not in times:
            scored.append((sum(times), b))
    if scored:
        return min(scored)[1]
    biggest = max(range(len(problems)), key=lambda i: problems[i].flops)
    first = cand_lists[biggest][0].block
    return first if first in fits else fits[0]


def best_with(cands: Sequence[Candidate], block: int) -> Candidate:
    """A conv's fastest candidate of ``block`` (an unmeasured one of it, or the block alone
    with the codegen's tile)."""
    same = [c for c in cands if c.block == block]
    timed = [c for c in same if c.seconds is not None]
    if timed:
        return min(timed, key=lambda c: c.seconds)
    return same[0] if same else Candidate(block)
