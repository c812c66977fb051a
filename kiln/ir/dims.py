"""Symbolic sizes: a dimension that is not a number is an expression of named sizes.

A ``Sym`` is a polynomial with integer coefficients over named sizes (``N``, ``seq``) and
over floor divisions of such polynomials by positive integers: the arithmetic models do on
shapes (``2*N``, ``N*S``, ``S//2 + 1``, ``heads*64``). Every expression has one canonical
form, so sums and products compare equal whatever arithmetic made them, and a constant result
is a plain ``int`` (``(2*N)//N`` is ``2``). A floor division keeps only its remainder part
(``(2*N + 1)//2`` is ``N``) and nested ones merge; two that are equal in value but not in form
(``(N + 2)//4``, ``(N//2 + 1)//2``) compare unequal, which shape inference then reports.

``Sym`` subclasses ``str``: its string is that canonical text (a name alone is the simplest
Sym), which is what kiln prints, parses back, stores in artifacts and writes as an ONNX
``dim_param``, and every place that asks ``isinstance(d, str)`` to tell a symbolic dim from a
static one keeps working. Its arithmetic is that of sizes, not of strings: ``Sym("N") * 2``
is ``2*N``, never ``"NN"``, and asking a Sym for an int value (``range(d)``, ``int(d)``)
raises a ShapeError naming it.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from kiln.errors import KilnError, ShapeError

# A polynomial: {monomial: coefficient}, a monomial a sorted tuple of atoms (repeated for
# powers; () is the constant term), an atom a name (str) or a _FloorDiv. Never zero terms.
Poly = dict


@dataclass(frozen=True)
class _FloorDiv:
    """``num // k`` that does not simplify: num's coefficients lie in [1, k), its constant
    in [0, k)."""

    num: tuple  # the polynomial's items, sorted (hashable)
    k: int

    @property
    def text(self) -> str:
        """'N//2' for a name alone, '(N + 1)//2' otherwise."""
        inner = _poly_text(dict(self.num))
        (monomial, coef), *more = self.num
        name_alone = not more and coef == 1 and len(monomial) == 1 and isinstance(
            monomial[0], str)
        return f"{inner}//{self.k}" if name_alone else f"({inner})//{self.k}"


def _key(atom) -> str:
    return atom if isinstance(atom, str) else atom.text


def _const(c: int) -> Poly:
    return {(): c} if c else {}


def _accumulate(out: Poly, m: tuple, c: int) -> None:
    """Add the term ``c * m`` to ``out`` (a term that cancels goes: no zero terms)."""
    c += out.get(m, 0)
    if c:
        out[m] = c
    else:
        out.pop(m, None)


def _add(a: Poly, b: Poly, sign: int = 1) -> Poly:
    out = dict(a)
    for m, c in b.items():
        _accumulate(out, m, sign * c)
    return out


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            _accumulate(out, tuple(sorted(ma + mb, key=_key)), ca * cb)
    return out


def _floordiv_int(a: Poly, k: int) -> Poly:
    """``a // k`` for an integer k >= 1: the part of ``a`` that k divides comes out whole
    (floor((k*q + r) / k) = q + floor(r / k) for integer q), the rest stays one atom."""
    whole: Poly = {}
    rest: Poly = {}
    for m, c in a.items():
        q, r = divmod(c, k)
        if q:
            whole[m] = q
        if r:
            rest[m] = r
    if not rest:
        return whole
    if list(rest) == [()]:  # only a constant remainder in [1, k): it floors to 0
        return whole
    # (x // a) // b == x // (a*b) for positive a, b
    if len(rest) == 1 and () not in rest:
        (m, c), = rest.items()
        if c == 1 and len(m) == 1 and isinstance(m[0], _FloorDiv):
            return _add(whole, {(_FloorDiv(m[0].num, m[0].k * k),): 1})
    return _add(whole, {(_FloorDiv(tuple(sorted(rest.items(), key=_item_key)), k),): 1})


def _divide_exact(a: Poly, b: Poly) -> Poly | None:
    """``a / b`` where ``b`` is one term c*m and divides every term of ``a``; else None."""
    if len(b) != 1:
        return None
    (mb, cb), = b.items()
    out: Poly = {}
    for ma, ca in a.items():
        rest = list(ma)
        for atom in mb:
            if atom not in rest:
                return None
            rest.remove(atom)
        if ca % cb:
            return None
        out[tuple(rest)] = ca // cb
    return out


def _item_key(item) -> tuple:
    m, _ = item
    return (len(m) == 0, -len(m), [_key(x) for x in m])


def _atom_text(atom, alone: bool) -> str:
    if isinstance(atom, str):
        return atom
    return atom.text if alone else f"({atom.text})"


def _poly_text(p: Poly) -> str:
    if not p:
        return "0"
    parts = []
    for m, c in sorted(p.items(), key=_item_key):
        # (a leading minus binds tighter than //: -(N//2) must not print as -N//2)
        alone = len(m) == 1 and (c == 1 or (c == -1 and bool(parts)))
        body = "*".join(_atom_text(x, alone) for x in m)
        mag = abs(c)
        term = str(mag) if not m else (body if mag == 1 else f"{mag}*{body}")
        if not parts:
            parts.append(("-" if c < 0 else "") + term)
        else:
            parts.append((" - " if c < 0 else " + ") + term)
    return "".join(parts)


def _names(p: Poly) -> set[str]:
    out: set[str] = set()
    for m in p:
        for atom in m:
            out |= {atom} if isinstance(atom, str) else _names(dict(atom.num))
    return out


def _value(p: Poly, bindings: Mapping[str, int]) -> int:
    total = 0
    for m, c in p.items():
        term = c
        for atom in m:
            if isinstance(atom, str):
                if atom not in bindings:
                    raise ShapeError(f"symbolic size {atom} has no value here")
                term *= int(bindings[atom])
            else:
                term *= _value(dict(atom.num), bindings) // atom.k
        total += term
    return total


class Sym(str):
    """A symbolic size (see the module's docstring): ``Sym("N")``, ``Sym("2*N + 1")``."""

    _poly: Poly
    __array_ufunc__ = None  # numpy's ints hand arithmetic with a Sym to the Sym

    def __new__(cls, text: str) -> Sym:
        value = parse_dim(text) if not isinstance(text, Sym) else text
        if isinstance(value, int):
            raise KilnError(f"size expression {text!r} is the constant {value}, not a symbol")
        return value

    @classmethod
    def _of(cls, poly: Poly) -> Dim:
        """The canonical Dim of a polynomial: an int where it is constant."""
        if not poly:
            return 0
        if list(poly) == [()]:
            return poly[()]
        s = str.__new__(cls, _poly_text(poly))
        s._poly = poly
        return s

    # -- what it is made of ---------------------------------------------------------------------
    @property
    def symbols(self) -> frozenset[str]:
        """The names it depends on."""
        return frozenset(_names(self._poly))

    @property
    def is_name(self) -> bool:
        """A name alone (``N``), not an expression of names."""
        return len(self._poly) == 1 and next(iter(self._poly.items())) == ((str(self),), 1)

    @property
    def terms(self) -> list[tuple[int, list]]:
        """Its sum as (coefficient, factors) pairs, a factor a name or (numerator, divisor)
        for a floor division: what a backend needs to compute it from the named sizes."""
        out = []
        for m, c in sorted(self._poly.items(), key=_item_key):
            factors = [a if isinstance(a, str) else (Sym._of(dict(a.num)), a.k) for a in m]
            out.append((c, factors))
        return out

    def evaluate(self, bindings: Mapping[str, int]) -> int:
        """Its value once every name it uses has one."""
        return _value(self._poly, bindings)

    # -- arithmetic -----------------------------------------------------------------------------
    def __add__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else Sym._of(_add(self._poly, o))

    def __radd__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else Sym._of(_add(o, self._poly))

    def __sub__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else Sym._of(_add(self._poly, o, -1))

    def __rsub__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else Sym._of(_add(o, self._poly, -1))

    def __neg__(self):
        return Sym._of({m: -c for m, c in self._poly.items()})

    def __pos__(self):
        return self

    def __mul__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else Sym._of(_mul(self._poly, o))

    __rmul__ = __mul__

    def __floordiv__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else _floordiv(self._poly, o, self, other)

    def __rfloordiv__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else _floordiv(o, self._poly, other, self)

    def __truediv__(self, other):
        """Exact division only (``(2*N) / 2`` is ``N``): a size is an integer."""
        o = _poly_of(other)
        if o is None:
            return NotImplemented
        q = _divide_exact(self._poly, o)
        if q is None:
            raise ShapeError(f"{self} / {other} is not a whole size; use // for floor division")
        return Sym._of(q)

    def __mod__(self, other):
        o = _poly_of(other)
        if o is None:
            return NotImplemented
        return self - other * (self // other)

    def __rmod__(self, other):
        o = _poly_of(other)
        return NotImplemented if o is None else other - self * (other // self)

    # -- never a number -------------------------------------------------------------------------
    def _no_value(self, *_):
        raise ShapeError(f"symbolic size {self} has no fixed value here (it is known when "
                         "the model runs); fix it to a number to use it as one")

    __index__ = __int__ = __float__ = _no_value

    def __bool__(self) -> bool:
        return True  # a symbolic size is never the constant 0


def _poly_of(x) -> Poly | None:
    """A polynomial for an int or a Sym; None for anything else (a plain str included: its
    + and * stay string operations)."""
    if isinstance(x, Sym):
        return x._poly
    if isinstance(x, bool):
        return None
    if isinstance(x, numbers.Integral):  # numpy's integers too
        return _const(int(x))
    return None


def _floordiv(a: Poly, b: Poly, left, right) -> Dim:
    exact = _divide_exact(a, b)
    if exact is not None:
        return Sym._of(exact)
    if list(b) == [()] and b[()] > 0:
        return Sym._of(_floordiv_int(a, b[()]))
    raise ShapeError(f"{left} // {right}: kiln divides sizes by a positive number, or by a "
                     "size that divides every term")


Dim = Union[int, Sym]

# -- text -----------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(//|[-+*()]))")


def parse_dim(text: str) -> Dim:
    """A dimension from its text: ``"3"`` -> 3, ``"N"``, ``"2*N + 1"``, ``"(S + 1)//2"``
    (+, -, *, // by a number, parentheses; as Python evaluates them)."""
    tokens = []
    pos, text = 0, str(text)
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise KilnError(f"{text!r} is not a size: expected a number, a name or one of "
                            f"+ - * // ( ) at {text[pos:]!r}")
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    if not tokens:
        raise KilnError(f"{text!r} is not a size: it is empty")
    parser = _Parser(tokens, text)
    value = parser.sum()
    if parser.i != len(tokens):
        raise KilnError(f"{text!r} is not a size: unexpected {tokens[parser.i]!r}")
    return value


class _Parser:
    def __init__(self, tokens: list[str], text: str):
        self.tokens, self.text, self.i = tokens, text, 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise KilnError(f"{self.text!r} is not a size: it ends too early")
        self.i += 1
        return tok

    def sum(self) -> Dim:
        value = self.product()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def product(self) -> Dim:
        value = self.unary()
        while self.peek() in ("*", "//"):
            op = self.take()
            rhs = self.unary()
            try:
                value = value * rhs if op == "*" else value // rhs
            except (ShapeError, ZeroDivisionError) as e:
                raise KilnError(f"{self.text!r} is not a size: {e}") from None
        return value

    def unary(self) -> Dim:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        tok = self.take()
        if tok == "(":
            value = self.sum()
            if self.take() != ")":
                raise KilnError(f"{self.text!r} is not a size: unbalanced parentheses")
            return value
        if tok.isdigit():
            return int(tok)
        if tok[0].isalpha() or tok[0] == "_":
            return symbol(tok)
        raise KilnError(f"{self.text!r} is not a size: unexpected {tok!r}")


# -- helpers over shapes --------------------------------------------------------------------------


def as_dim(d) -> Dim:
    """A dimension from an int (numpy's too), a Sym or its text; KilnError otherwise."""
    if isinstance(d, Sym):
        return d
    if isinstance(d, str):
        return parse_dim(d)
    if isinstance(d, bool):
        raise KilnError(f"dimension {d!r} is neither an int nor a size expression")
    try:
        return int(d.__index__())
    except (AttributeError, TypeError):
        raise KilnError(f"dimension {d!r} is neither an int nor a size expression") from None


def symbol(name: str) -> Sym:
    """The symbolic size called ``name`` (an identifier)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise KilnError(f"a symbolic size is named by an identifier, not {name!r}")
    s = str.__new__(Sym, name)
    s._poly = {(name,): 1}
    return s


def product(dims: Iterable[Dim]) -> Dim:
    """The product of dims (1 for none)."""
    return math.prod(dims, start=1)


def exact_quotient(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` where ``b`` divides ``a`` for every value of the symbols; else None."""
    pa, pb = _poly_of(a), _poly_of(b)
    if pa is None or pb is None:
        raise KilnError(f"{a!r} / {b!r}: not sizes")
    q = _divide_exact(pa, pb)
    return None if q is None else Sym._of(q)


def evaluate(d: Dim, bindings: Mapping[str, int]) -> int:
    """A dim's value: itself if static, else evaluated with ``bindings``."""
    return d.evaluate(bindings) if isinstance(d, Sym) else d


def rebuild(d: Dim, name: Callable[[str], Any], floordiv: Callable[[Any, int], Any]) -> Any:
    """``d`` computed in another algebra: each name as ``name(n)``, each floor division by
    ``floordiv(x, k)`` (a backend's expression of the sizes, or a partial substitution)."""
    if not isinstance(d, Sym):
        return d
    total: Any = 0
    for coefficient, factors in d.terms:
        term: Any = coefficient
        for f in factors:
            term = term * (name(f) if isinstance(f, str) else
                           floordiv(rebuild(f[0], name, floordiv), f[1]))
        total = total + term
    return total


def substitute(d: Dim, sizes: Mapping[str, int]) -> Dim:
    """``d`` with the named sizes in ``sizes`` replaced by their values (the others kept):
    ``substitute(Sym("N*S + 1"), {"S": 1})`` is ``N + 1``."""
    if not isinstance(d, Sym) or not d.symbols & sizes.keys():
        return d
    return rebuild(d, lambda n: sizes[n] if n in sizes else symbol(n), lambda x, k: x // k)


def symbols_in(dims: Iterable) -> set[str]:
    """The names the symbolic dims among ``dims`` use."""
    return {s for d in dims if isinstance(d, Sym) for s in d.symbols}
