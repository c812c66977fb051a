"""Op test cases for codegen: hypothesis draws shapes, ``check_cases`` builds every case of a
batch into ONE graph (one tvm.compile), runs it and compares each output with the
interpreter, within the case's stated tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from kiln.codegen.build import build
from kiln.ir import GraphBuilder, TensorType, interpret

# float32 tolerances (rtol, atol) by kind of computation
EXACT = (0.0, 0.0)  # data movement, comparisons, integer math
ELEMWISE = (1e-6, 1e-6)  # one rounding per op
FAST_MATH = (2e-6, 2e-6)  # topi's fast exp/tanh/erf: 3.1e-7 rel / 3.8e-7 abs measured
REDUCE = (1e-5, 1e-5)  # summation order differs from numpy's pairwise sums
GEMM = (1e-4, 1e-4)  # dot products of length K in another order


@dataclass
class Case:
    """``op`` on ``args`` (arrays); positions in ``consts`` become graph parameters."""

    op: str
    args: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    tol: tuple[float, float] = ELEMWISE
    consts: tuple[int, ...] = ()

    def label(self) -> str:
        shapes = ", ".join(f"{a.dtype.name}{list(a.shape)}" for a in self.args)
        return f"{self.op}({shapes}) {self.attrs}"


def case_graph(cases: list[Case]):
    """One graph holding every case side by side; returns (graph, inputs, outputs per case)."""
    b = GraphBuilder("cases")
    feeds: dict[str, np.ndarray] = {}
    outs_per_case = []
    for i, case in enumerate(cases):
        vals = []
        for j, arr in enumerate(case.args):
            name = f"c{i}_{j}"
            if j in case.consts:
                vals.append(b.param(name, arr))
            else:
                vals.append(b.input(name, TensorType.of(arr)))
                feeds[name] = arr
        outs = b.op(case.op, vals, case.attrs)
        outs_per_case.append(len(outs))
        b.output(*outs)
    return b.build(), feeds, outs_per_case


def compiled_and_interpreted(cases: list[Case]) -> Iterator[tuple[Case, np.ndarray, np.ndarray]]:
    """Build all ``cases`` as one graph and run it: (case, compiled, interpreted) per output."""
    graph, feeds, counts = case_graph(cases)
    want = interpret(graph, feeds)
    got = iter(zip(build(graph).run(feeds), want))
    for case, count in zip(cases, counts):
        for _ in range(count):
            yield (case, *next(got))


def check_cases(cases: list[Case]) -> None:
    """Build all ``cases`` at once and compare compiled results with the interpreter."""
    for case, g, w in compiled_and_interpreted(cases):
        assert g.dtype == w.dtype and g.shape == w.shape, case.label()
        rtol, atol = case.tol
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True,
                                       err_msg=case.label())
        else:
            np.testing.assert_array_equal(g, w, err_msg=case.label())


def randn(rng, shape, dtype="float32", scale=1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def positive(rng, shape, dtype="float32", low=0.1, high=4.0) -> np.ndarray:
    return rng.uniform(low, high, shape).astype(dtype)
