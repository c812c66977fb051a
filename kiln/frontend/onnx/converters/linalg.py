"""Einsum, as transposes, reshapes, sums and batched matmuls.

Operands are contracted left to right, two at a time: labels both share and still need are
batch dims, labels both share and no longer need are contracted by one matmul, and a label
only one operand has and nobody needs is summed away first. Repeated labels within one operand
(diagonals) are not supported.
"""

from __future__ import annotations

import re
import string

from kiln.frontend.onnx.context import NodeContext, Ref
from kiln.frontend.onnx.converters.shape import prod_dim
from kiln.frontend.onnx.registry import converter
from kiln.frontend.onnx.validate import Spec

_ELLIPSIS_LABELS = string.digits  # labels for the dims '...' stands for


def parse(n: NodeContext, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Per-operand labels and the output labels, with '...' spelled out right-aligned."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise n.unsupported(f"Einsum {equation!r} names {len(terms)} operands, got {len(ranks)}")
    spans = [rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks)]
    width = max([s for t, s in zip(terms, spans) if "..." in t], default=0)
    ell = _ELLIPSIS_LABELS[10 - width:] if width else ""
    out_terms = []
    for t, s in zip(terms, spans):
        out_terms.append(t.replace("...", ell[len(ell) - s:] if s else ""))
    if arrow:
        out = rhs.replace("...", ell)
    else:  # implicit: the labels used once, in alphabetical order, after '...'
        counts = {c: sum(t.count(c) for t in out_terms) for c in "".join(out_terms)}
        out = ell + "".join(sorted(c for c, k in counts.items() if k == 1 and c not in ell))
    for t, rank in zip(out_terms, ranks):
        if len(t) != rank:
            raise n.unsupported(f"Einsum term {t!r} does not fit an operand of rank {rank}")
        if len(set(t)) != len(t):
            raise n.unsupported(f"Einsum {equation!r} repeats a label in one operand "
                                "(a diagonal), which kiln does not support")
    return out_terms, out


def _sum_away(n: NodeContext, x: Ref, labels: str, keep: set[str]) -> tuple[Ref, str]:
    gone = tuple(i for i, c in enumerate(labels) if c not in keep)
    if not gone:
        return x, labels
    return n.op("sum", x, axes=gone), "".join(c for c in labels if c in keep)


def _permute(n: NodeContext, x: Ref, labels: str, order: str) -> Ref:
    if labels == order:
        return x
    return n.op("transpose", x, perm=tuple(labels.index(c) for c in order))


def _group(n: NodeContext, dims: list) -> object:
    d = prod_dim(tuple(dims))
    if d is None:
        raise n.unsupported(f"Einsum would merge symbolic dims {dims}; fix them with "
                            "from_onnx(..., input_shapes=...)")
    return d


def _contract(n: NodeContext, a: Ref, la: str, b: Ref, lb: str,
              keep: set[str]) -> tuple[Ref, str]:
    a, la = _sum_away(n, a, la, keep | set(lb))
    b, lb = _sum_away(n, b, lb, keep | set(la))
    batch = "".join(c for c in la if c in lb and c in keep)
    summed = "".join(c for c in la if c in lb and c not in keep)
    left = "".join(c for c in la if c not in lb)
    right = "".join(c for c in lb if c not in la)
    size = {c: d for lab, x in ((la, a), (lb, b)) for c, d in zip(lab, x.shape)}
    dims_a = {c: d for c, d in zip(la, a.shape)}
    dims_b = {c: d for c, d in zip(lb, b.shape)}
    a = _permute(n, a, la, batch + left + summed)
    b = _permute(n, b, lb, batch + summed + right)
    k = _group(n, [dims_a[c] for c in summed])
    a = n.op("reshape", a, shape=tuple(dims_a[c] for c in batch)
             + (_group(n, [dims_a[c] for c in left]), k))
    b = n.op("reshape", b, shape=tuple(dims_b[c] for c in batch)
             + (k, _group(n, [dims_b[c] for c in right])))
    y = n.op("matmul", a, b)
    out_shape = tuple(y.shape[:len(batch)]) + tuple(size[c] for c in left + right)
    if out_shape != y.shape:
        y = n.op("reshape", y, shape=out_shape)
    return y, batch + left + right


_TERM = r"[A-Za-z]*(?:\.\.\.)?[A-Za-z]*"


def _equation(n: NodeContext) -> str | None:
    """An equation of one term per input ('...' at most once in each), an optional output
    term naming only labels the inputs have, each once."""
    eq = n.attr("equation").replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if not all(re.fullmatch(_TERM, t) for t in terms + [rhs]) or "->" in rhs:
        return f"equation {eq!r} is not of the form 'ab,bc->ac'"
    if len(terms) != len(n.inputs):
        return f"equation {eq!r} has {len(terms)} term(s) for {len(n.inputs)} input(s)"
    for t, x in zip(terms, n.inputs):
        letters = len(t.replace("...", ""))
        if letters > x.rank or ("..." not in t and letters != x.rank):
            return f"term {t!r} of {eq!r} does not fit input {x.type}"
    labels = set("".join(terms))
    if arrow and (set(rhs.replace("...", "")) - labels or
                  len(set(rhs.replace("...", ""))) != len(rhs.replace("...", ""))):
        return f"the output {rhs!r} of {eq!r} names a label twice or one no input has"
    if "..." in rhs and not any("..." in t for t in terms):
        return f"the output {rhs!r} of {eq!r} has '...', which no input term has"
    return None


@converter("Einsum", 12, 28, spec=Spec(checks=(_equation,)))
def einsum(n: NodeContext) -> Ref:
    terms, out = parse(n, n.attr("equation"), [r.rank for r in n.inputs])
    x, labels = n.inputs[0], terms[0]
    for i in range(1, len(terms)):
        later = set(out).union(*terms[i + 1:])
        x, labels = _contract(n, x, labels, n.inputs[i], terms[i], later)
    x, labels = _sum_away(n, x, labels, set(out))
    return _permute(n, x, labels, out)

