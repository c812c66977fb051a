"""ONNX conformance: onnx's backend node test cases through ``from_onnx`` + ``kiln.interpret``
(and, in ``coverage_compiled``, through ``kiln.compile``). Test tooling, not part of kiln.

``python -m tests.onnx.coverage > docs/onnx_coverage.md`` (from the repository root, with the
test extras installed) writes the coverage matrix:
per ONNX op, the schema versions kiln converts, the cases passed out of the cases run (through
the interpreter and through the compiler), and why each failing case fails.
tests/onnx/test_conformance.py and test_conformance_compiled.py run the same cases with the
same harness (``run_case``, ``coverage_compiled.run_batch``).

Inputs that ONNX passes as tensors but kiln needs at import time (a Reshape's shape, a Slice's
starts, a Range's bounds, ...) are made initializers before import: kiln compiles static
graphs, where those are constants.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections import defaultdict
from functools import lru_cache

import numpy as np
import onnx
from onnx import numpy_helper

# ops whose inputs at these positions kiln needs as constants, whatever their dtype
_CONST_POSITIONS = {"Range": (0, 1, 2), "ConstantOfShape": (0,), "OneHot": (1,), "Trilu": (1,),
                    "Pad": (2,), "Resize": (1, 2, 3),
                    "Compress": (1,), "HannWindow": (0,), "HammingWindow": (0,),
                    "BlackmanWindow": (0,), "Dropout": (1, 2)}


@lru_cache(maxsize=1)
def load_cases() -> tuple:
    """onnx's node test cases (built in memory; a few seconds), sorted by name."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        np_err = np.seterr(all="ignore")
        try:
            cases = list(node.collect_testcases(None))
        finally:
            np.seterr(**np_err)
    return tuple(sorted(cases, key=lambda c: c.name))


@lru_cache(maxsize=1)
def case_ops() -> dict[str, str]:
    """Case name -> the op it tests (an expanded case tests the op of its unexpanded twin)."""
    single = {c.name: c.model.graph.node[0].op_type for c in load_cases()
              if len(c.model.graph.node) == 1}
    out = {}
    for c in load_cases():
        base = re.sub(r"_expanded.*$", "", c.name)
        out[c.name] = single.get(c.name) or single.get(base) or c.model.graph.node[0].op_type
    return out


@lru_cache(maxsize=1)
def cases_by_name() -> dict:
    return {c.name: c for c in load_cases()}


def _frozen_inputs(case, inputs: list) -> set[str]:
    """Graph inputs that kiln needs as constants (shape-like operands): by their position at
    the op under test (an expanded case's inputs are named as its unexpanded twin's), and
    small integer tensors that any node takes after its first input."""
    model = case.model
    arrays = dict(zip([vi.name for vi in model.graph.input], inputs))
    base = re.sub(r"_expanded.*$", "", case.name)
    tested = cases_by_name().get(base, case).model.graph.node[0]
    out = {tested.input[p] for p in _CONST_POSITIONS.get(tested.op_type, ())
           if p < len(tested.input) and tested.input[p] in arrays}
    for node in list(model.graph.node) + [tested]:
        for pos, name in enumerate(node.input):
            a = arrays.get(name)
            if isinstance(a, np.ndarray) and pos >= 1 and a.ndim <= 1 and np.issubdtype(
                    a.dtype, np.integer):
                out.add(name)
    return out


def _array(x):
    """A test-case value as a numpy array (lists stay: sequence inputs kiln has not)."""
    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    return x


def prepare(case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list]:
    """(model with shape-like inputs frozen, remaining inputs by name, expected outputs)."""
    inputs, expected = case.data_sets[0]
    inputs, expected = [_array(x) for x in inputs], [_array(x) for x in expected]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    names = [vi.name for vi in model.graph.input]
    frozen = _frozen_inputs(case, list(inputs))
    feed = {}
    for name, array in zip(names, inputs):
        if name in frozen:
            model.graph.initializer.append(numpy_helper.from_array(array, name))
        else:
            feed[name] = array
    kept = [vi for vi in model.graph.input if vi.name not in frozen]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, feed, list(expected)


def run_case(case) -> None:
    """Import and interpret one case; raise (KilnError, AssertionError) if kiln fails it."""
    from kiln.frontend.onnx.importer import from_onnx
    from kiln.ir.interpreter import interpret
    from kiln.ir.verifier import verify

    model, feed, expected = prepare(case)
    for name, a in feed.items():
        if not isinstance(a, np.ndarray):
            raise AssertionError(f"input {name!r} is a {type(a).__name__}, not a tensor")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = verify(from_onnx(model))
        with np.errstate(all="ignore"):
            got = interpret(graph, feed)
    check_outputs(case, got, expected)


def check_outputs(case, got: list, expected: list) -> None:
    """Raise AssertionError unless ``got`` matches the case's ``expected`` outputs: same
    dtypes and shapes, values within the case's rtol/atol (at least 1e-2/1e-3 for float16
    and bfloat16)."""
    if len(got) != len(expected):
        raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
    for i, (g, want) in enumerate(zip(got, expected)):
        g, want = np.asarray(g), np.asarray(want)
        if g.dtype != want.dtype or g.shape != want.shape:
            raise AssertionError(f"output {i} is {g.dtype}{list(g.shape)}, expected "
                                 f"{want.dtype}{list(want.shape)}")
        rtol, atol = case.rtol, case.atol
        if want.dtype in (np.float16,) or want.dtype.name == "bfloat16":
            rtol, atol = max(rtol, 1e-2), max(atol, 1e-3)
        np.testing.assert_allclose(g.astype(np.float64) if g.dtype.kind == "f" else g,
                                   want.astype(np.float64) if want.dtype.kind == "f" else want,
                                   rtol=rtol, atol=atol, err_msg=f"output {i}")


def supported_ops() -> set[str]:
    from kiln.frontend.onnx.registry import CONVERTERS

    return set(CONVERTERS)


def run_all() -> dict[str, str | None]:
    """Case name -> None (passed) or the first line of why it failed, for the cases of every
    op kiln converts."""
    ops, supported = case_ops(), supported_ops()
    out = {}
    for case in load_cases():
        if ops[case.name] not in supported:
            continue
        try:
            run_case(case)
            out[case.name] = None
        except Exception as e:  # report every kind of failure, with its kind
            out[case.name] = failure(e)
    return out


def failure(e: Exception) -> str:
    """An exception as one line: its type and message."""
    text = " ".join(ln.strip() for ln in str(e).strip().splitlines() if ln.strip())
    return f"{type(e).__name__}: {text}"[:300]


# why a case fails, from its error: (pattern, reason); the first match wins
_REASONS = [
    (r"has element type (\w+)", "kiln has no {0} dtype"),
    (r"element type (\w+), which kiln lacks", "kiln has no {0} dtype"),
    (r"input '[^']*' is a list", "sequence or optional inputs: kiln has tensors only"),
    (r"over 3 spatial", "3-D spatial op: kiln has 1-D and 2-D convolutions and pools"),
    (r"(Average|Lp)Pool with dilations", "dilated average pooling: kiln's avg_pool2d has none"),
    (r"Indices output", "MaxPool's Indices output"),
    (r"training mode", "training mode: kiln imports inference graphs"),
    (r"repeats a label", "Einsum diagonal (a label repeated in one operand)"),
    (r"(\w+) \(opset \d+\): kiln has no converter",
     "its expansion uses {0}, which kiln does not convert"),
    # failures through kiln.compile only
    (r"has dtype (\w+), which the kiln runtime cannot hold",
     "the kiln runtime cannot hold {0} tensors"),
    (r"Mismatched \w+\.strides .*compact array|`k\w*\(.*Tensor\(\[[^]]*\b0\b",
     "a 0-size tensor: numpy gives it zero strides, which TVM's compact-array check rejects"),
    (r"power only applies to float|kiln cannot compile pow on int",
     "integer pow: TVM's power lowers floats only"),
    (r"\(reshape, .* on \w+\[0, .*Divide by zero",
     "reshape of a 0-size tensor: its lowering divides by the zero dim"),
]


def reason(message: str) -> str:
    """A short reason for a failure message (the message itself if no rule knows it)."""
    for pattern, text in _REASONS:
        m = re.search(pattern, message)
        if m:
            return text.format(*m.groups())
    return message


def run_compiled(passed: list[str]) -> dict[str, str | None]:
    """Case name -> None or why it failed, through ``kiln.compile``, for ``passed`` (cases
    that pass the interpreter), in batches (``coverage_compiled``)."""
    from tests.onnx.coverage_compiled import run_all_compiled

    return run_all_compiled(passed)


def _groups(results: dict[str, str | None]) -> list[str]:
    """Failing cases grouped by reason, as Markdown list items (most cases first)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, why in sorted(results.items()):
        if why is not None:
            groups[reason(why)].append(name)
    lines = [f"- {why.replace('|', '/')} ({len(names)}): " + ", ".join(f"`{n}`" for n in names)
             for why, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    return lines or ["None."]


def matrix() -> str:
    """The coverage matrix in Markdown."""
    import onnx.defs

    from kiln.frontend.onnx.registry import CONVERTERS

    results, ops = run_all(), case_ops()
    compiled = run_compiled(sorted(n for n, r in results.items() if r is None))
    by_op: dict[str, list[str]] = defaultdict(list)
    for name in ops:
        by_op[ops[name]].append(name)
    passed = sum(r is None for r in results.values())
    passed_c = sum(r is None for r in compiled.values())
    lines = [
        "# ONNX coverage",
        "",
        "Generated by `python -m tests.onnx.coverage > docs/onnx_coverage.md` (run it from the "
        "repository root, with the test extras installed, to regenerate this file; "
        f"onnx {onnx.__version__}, opsets up to {onnx.defs.onnx_opset_version()}).",
        "Cases are onnx's backend node tests, imported with `kiln.from_onnx` and run with "
        "`kiln.interpret`; models older than opset 13 are converted up first. Each case that "
        "passes the interpreter is also compiled with `kiln.compile` (O2, in batches of cases "
        "side by side) and run with kiln's runtime: the *compiled* column.",
        "",
        f"**{passed} of {len(results)} cases pass through the interpreter, {passed_c} through "
        f"the compiler**, for the {len(CONVERTERS)} ONNX ops kiln converts "
        f"({sum(len(v) for v in by_op.values())} cases exist for {len(by_op)} ops).",
        "",
        "| op | versions kiln converts | interpreted | compiled | cases |",
        "|---|---|---|---|---|",
    ]
    for op in sorted(set(by_op) | set(CONVERTERS)):
        names = by_op.get(op, [])
        if op in CONVERTERS:
            ran = [n for n in names if n in results]
            ok = sum(results[n] is None for n in ran)
            ok_c = sum(compiled.get(n, "") is None for n in ran)
            versions = ", ".join(str(v) for v in sorted(CONVERTERS[op]))
            lines.append(f"| {op} | {versions} | {ok} | {ok_c} | {len(ran)} |")
        else:
            lines.append(f"| {op} | - | not converted | - | {len(names)} |")
    lines += ["", "## Failing cases, by reason", "", *_groups(results)]
    lines += ["", "## Cases that fail only when compiled, by reason", "", *_groups(compiled)]
    return "\n".join(lines) + "\n"


def _as_dict(name: str, results: dict[str, str | None]) -> str:
    """``results``' failures as the Python source of a dict ``name`` of reasons."""
    lines = [f"{name} = {{"]
    for case, why in sorted(results.items()):
        if why is not None:
            line = f"    {case!r}: {reason(why)!r},"
            lines.append(line if len(line) <= 100 else f"    {case!r}:\n        {reason(why)!r},")
    return "\n".join(lines + ["}"]) + "\n"


def known_failures() -> str:
    """tests/onnx/test_conformance.py's KNOWN_FAILURES, as Python source."""
    return _as_dict("KNOWN_FAILURES", run_all())


def compiled_failures() -> str:
    """tests/onnx/test_conformance_compiled.py's COMPILED_FAILURES, as Python source."""
    results = run_all()
    return _as_dict("COMPILED_FAILURES",
                    run_compiled(sorted(n for n, r in results.items() if r is None)))


def main(argv: list[str] | None = None) -> int:
    """Print the coverage matrix (or, with --known-failures or --compiled-failures, the
    tests' lists of failures)."""
    args = sys.argv[1:] if argv is None else argv
    if "--known-failures" in args:
        sys.stdout.write(known_failures())
    elif "--compiled-failures" in args:
        sys.stdout.write(compiled_failures())
    else:
        sys.stdout.write(matrix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
