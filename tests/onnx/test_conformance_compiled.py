"""ONNX conformance through the code generator: every onnx backend node case that passes the
interpreter (tests/onnx/test_conformance.py) is also imported, compiled with ``kiln.compile``
(O2), run with kiln's runtime and checked against the case's expected outputs.

Tolerances are the case's own rtol/atol (onnx's defaults, rtol=1e-3, atol=1e-7), raised to
1e-2/1e-3 for float16 and bfloat16 outputs exactly as for the interpreter: kiln's fast float32
exp/tanh/erf (relative error about 3e-7) and LLVM's contractions needed no more than that.

Compiling each case alone would cost about 0.1 s a case (plus the failures' retries); the
cases are compiled in batches instead (``tests/onnx/coverage_compiled.py``): up to 150
cases side by side in one graph, 7 batches compiled and run once each, about 45 s in all on
the 2-core CI machine. Cases that fail only when
compiled are in COMPILED_FAILURES with the reason; each is compiled alone and must fail for
that reason (then it is reported as xfailed): one that starts passing, or fails for another
reason, fails the test. ``python -m tests.onnx.coverage --compiled-failures`` prints
the list anew.
"""

from __future__ import annotations

from functools import lru_cache

import pytest

from tests.onnx.coverage import case_ops, reason, supported_ops
from tests.onnx.coverage_compiled import batches, run_batch
from tests.onnx.test_conformance import KNOWN_FAILURES

COMPILED_FAILURES = {
    'test_pow_types_int32_int32': "integer pow: TVM's power lowers floats only",
    'test_pow_types_int64_int64': "integer pow: TVM's power lowers floats only",
    'test_reduce_l1_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_l1_empty_set_expanded':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_l2_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_l2_empty_set_expanded':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_log_sum_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_log_sum_empty_set_expanded':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_log_sum_exp_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_log_sum_exp_empty_set_expanded':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_prod_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_sum_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_sum_empty_set_non_reduced_axis_zero':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_sum_square_empty_set':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reduce_sum_square_empty_set_expanded':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_reshape_allowzero_reordered':
        'reshape of a 0-size tensor: its lowering divides by the zero dim',
    'test_slice_start_out_of_bounds':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
    'test_tril_zero':
        "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects",
}


def compiled_cases() -> list[str]:
    """The cases of converted ops that pass the interpreter (the ones compiled here)."""
    ops, supported = case_ops(), supported_ops()
    return sorted(n for n, op in ops.items() if op in supported and n not in KNOWN_FAILURES)


@lru_cache(maxsize=1)
def _batch_of() -> dict[str, tuple[str, ...]]:
    """Case name -> the batch it compiles in (known failures each compile alone)."""
    names = [n for n in compiled_cases() if n not in COMPILED_FAILURES]
    out = {n: b for b in batches(names) for n in b}
    out.update({n: (n,) for n in COMPILED_FAILURES})
    return out


@pytest.mark.parametrize("name", compiled_cases())
def test_compiled_case(name: str) -> None:
    got = run_batch(_batch_of()[name])[name]
    expected = COMPILED_FAILURES.get(name)
    if expected is None:
        assert got is None, f"{name} fails when compiled: {got}"
        return
    assert got is not None, f"{name} passes when compiled now: take it off COMPILED_FAILURES"
    assert reason(got) == expected, f"{name} fails for another reason than listed: {got}"
    pytest.xfail(expected)


def test_compiled_failures_are_compiled_cases() -> None:
    """The list holds no stale names: each is a case that passes the interpreter."""
    stale = sorted(set(COMPILED_FAILURES) - set(compiled_cases()))
    assert not stale, f"remove from COMPILED_FAILURES: {stale}"
