"""Parse the text form printed by ``kiln.ir.printer`` back into a Graph.

Types are re-inferred while parsing: a declared type that disagrees with inference, an
undefined value or a syntax error is a ParseError naming the line.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import numpy as np

from kiln.errors import KilnError, ParseError
from kiln.ir.dims import Dim, parse_dim
from kiln.ir.graph import Graph, GraphBuilder, Value
from kiln.ir.types import TensorType

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<value>%(?:[A-Za-z0-9_.]+|"(?:[^"\\\n]|\\.)*"))
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d*\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[()\[\]{},:=])
  | (?P<arith>//|[-+*])
    """,
    re.VERBOSE,
)


class _Tokens:
    def __init__(self, text: str):
        self.items: list[tuple[str, str, int]] = []  # (kind, text, line)
        line, pos = 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ParseError(f"line {line}: unexpected character {text[pos]!r}")
            kind = m.lastgroup
            if kind == "newline":
                line += 1
            if kind != "space":
                self.items.append((kind, m.group(), line))
            pos = m.end()
        self.items.append(("eof", "", line))
        self.i = 0

    def peek(self, skip_newlines: bool = True) -> tuple[str, str, int]:
        j = self.i
        while skip_newlines and self.items[j][0] == "newline":
            j += 1
        return self.items[j]

    def next(self, skip_newlines: bool = True) -> tuple[str, str, int]:
        while skip_newlines and self.items[self.i][0] == "newline":
            self.i += 1
        tok = self.items[self.i]
        if tok[0] != "eof":
            self.i += 1
        return tok

    def expect(self, text: str) -> None:
        kind, got, line = self.next()
        if got != text:
            raise ParseError(f"line {line}: expected {text!r}, got {got or 'end of text'!r}")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text:
            self.next()
            return True
        return False

    def comment(self) -> str:
        """The comment ending the current line (the node's origin), if any."""
        kind, text, _ = self.items[self.i]
        if kind == "comment":
            self.i += 1
            return text[1:].strip()
        return ""


def _unquote(text: str, line: int) -> str:
    try:
        return json.loads(text)
    except ValueError as e:
        raise ParseError(f"line {line}: bad string {text}: {e}") from None


def _name(tok: tuple[str, str, int]) -> str:
    kind, text, line = tok
    if kind != "value":
        raise ParseError(f"line {line}: expected a %value, got {text!r}")
    body = text[1:]
    return _unquote(body, line) if body.startswith('"') else body


def _type(toks: _Tokens) -> TensorType:
    kind, dtype, line = toks.next()
    toks.expect("[")
    dims: list[Dim] = []
    while not toks.accept("]"):
        dims.append(_dim(toks))
        if toks.peek()[1] != "]":
            toks.expect(",")
    try:
        return TensorType(tuple(dims), dtype)
    except KilnError as e:
        raise ParseError(f"line {line}: {e}") from None


def _dim(toks: _Tokens) -> Dim:
    """One dimension of a type: a number, a name or an expression of them (``2*N + 1``),
    up to the next comma or closing bracket outside parentheses."""
    parts, depth, line = [], 0, toks.peek()[2]
    while True:
        kind, text, line = toks.peek()
        if kind == "eof" or (depth == 0 and text in (",", "]", ")")):
            break
        if (kind not in ("number", "ident", "arith") and text not in "()") or (
                kind == "number" and not text.lstrip("-").isdigit()):
            raise ParseError(f"line {line}: {text!r} is not a dimension")
        depth += {"(": 1, ")": -1}.get(text, 0)
        parts.append(text)
        toks.next()
    if not parts:
        raise ParseError(f"line {line}: {text or 'end of text'!r} is not a dimension")
    try:
        dim = parse_dim(" ".join(parts))
    except KilnError as e:
        raise ParseError(f"line {line}: {e}") from None
    if isinstance(dim, int) and dim < 0:
        raise ParseError(f"line {line}: {' '.join(parts)!r} is not a dimension")
    return dim


def _attr_value(toks: _Tokens) -> Any:
    kind, text, line = toks.peek()
    if text == "(":
        toks.next()
        items = []
        while not toks.accept(")"):
            items.append(_attr_value(toks))
            if toks.peek()[1] != ")":
                toks.expect(",")
        return tuple(items)
    if text == "graph":
        return _graph(toks, None)
    toks.next()
    if kind == "number":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "string":
        return _unquote(text, line)
    constants = {"True": True, "False": False, "None": None, "inf": math.inf,
                 "-inf": -math.inf, "nan": math.nan}
    if kind == "ident" and text in constants:
        return constants[text]
    raise ParseError(f"line {line}: {text!r} is not an attribute value")


def _graph(toks: _Tokens, weights: Mapping[str, np.ndarray] | None) -> Graph:
    toks.expect("graph")
    kind, name, line = toks.next()
    name = _unquote(name, line) if kind == "string" else name
    b = GraphBuilder(name)
    scope: dict[str, Value] = {}

    def define(n: str, v: Value, line: int) -> None:
        fresh(n, line)
        scope[n] = v

    def fresh(n: str, line: int) -> str:
        if n in scope:
            raise ParseError(f"line {line}: %{n} is defined twice")
        return n

    toks.expect("(")
    while not toks.accept(")"):
        tok = toks.next()
        toks.expect(":")
        n = fresh(_name(tok), tok[2])
        define(n, b.input(n, _type(toks)), tok[2])
        if toks.peek()[1] != ")":
            toks.expect(",")
    toks.expect("{")
    while True:
        kind, text, line = toks.peek()
        if text == "param":
            toks.next()
            n = fresh(_name(toks.next()), line)
            toks.expect(":")
            t = _type(toks)
            if weights is not None and n in weights:
                w = np.asarray(weights[n])
                if TensorType.of(w) != t:
                    raise ParseError(f"line {line}: %{n} is {t} but its weight is "
                                     f"{TensorType.of(w)}")
                define(n, b.param(n, w), line)
            else:
                define(n, b.param(n, type=t), line)
        elif text == "return":
            toks.next()
            outs = []
            while toks.peek(skip_newlines=False)[0] == "value":
                n = _name(toks.next())
                if n not in scope:
                    raise ParseError(f"line {line}: return of undefined %{n}")
                outs.append(scope[n])
                if not toks.accept(","):
                    break
            b.output(*outs)
            toks.expect("}")
            return b.build()
        elif kind == "value":
            _node(toks, b, scope, define)
        else:
            raise ParseError(f"line {line}: expected 'param', a node or 'return', got {text!r}")


def _node(toks: _Tokens, b: GraphBuilder, scope: dict, define) -> None:
    line = toks.peek()[2]
    outs: list[tuple[str, TensorType]] = []
    while True:
        n = _name(toks.next())
        toks.expect(":")
        outs.append((n, _type(toks)))
        if not toks.accept(","):
            break
    toks.expect("=")
    op = toks.next()[1]
    toks.expect("(")
    args = []
    while not toks.accept(")"):
        n = _name(toks.next())
        if n not in scope:
            raise ParseError(f"line {line}: %{n} is used before it is defined")
        args.append(scope[n])
        if toks.peek()[1] != ")":
            toks.expect(",")
    attrs = {}
    if toks.peek(skip_newlines=False)[1] == "{":
        toks.next()
        while not toks.accept("}"):
            key = toks.next()[1]
            toks.expect("=")
            attrs[key] = _attr_value(toks)
            if toks.peek()[1] != "}":
                toks.expect(",")
    origin = toks.comment()
    try:
        values = b.op(op, args, attrs, origin=origin, names=[n for n, _ in outs])
    except KilnError as e:
        raise ParseError(f"line {line}: {e}") from None
    for (n, declared), v in zip(outs, values):
        if v.name != n:
            raise ParseError(f"line {line}: %{n} is defined twice")
        if v.type != declared:
            raise ParseError(f"line {line}: %{n} is declared {declared} but {op} gives {v.type}")
        define(n, v, line)


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse one graph. ``weights`` supplies parameter values by name (optional)."""
    toks = _Tokens(text)
    graph = _graph(toks, weights)
    kind, rest, line = toks.next()
    if kind != "eof":
        raise ParseError(f"line {line}: unexpected {rest!r} after the graph")
    return graph
