"""Symbolic sizes in an artifact: reading them off the inputs, checking them, and the static
manifest of one call size.

A model compiled with symbolic dimensions (docs/shapes.md) describes its values with dims
that are ints or size expressions (``"N"``, ``"2*N + 1"``, ``"N*S"``, ``"(S + 1)//2"``: names,
integers, ``+ - *`` and floor division by a positive integer), and its manifest has a
``sizes`` section::

    "sizes": {"names": ["N", "S"],                 # each the plain dim of some input
              "bounds": {"S": [1, 512]},          # optional, inclusive; null: no upper
              "require": [["S", 1, null, "slice ..."]]}  # ranges some nodes need

Each kernel that depends on them lists ``"sizes"``: their values follow its tensors as
int32 arguments. ``concrete_manifest`` makes the static manifest of one call size (shapes
evaluated, kernels given ``size_values``, memory planned for that size), which the ordinary
executor runs.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from typing import Any, Mapping

from kiln.errors import ArtifactError, InputError

#: the most a symbolic size may be (int32 kernel arguments)
MAX_SIZE = (1 << 31) - 1
_EXPR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|//|[-+*() ]")


@lru_cache(maxsize=4096)
def _parsed(dim: str) -> ast.expr:
    """A size expression's syntax tree (parsed once: ``bind_inputs`` runs on every call)."""
    return ast.parse(dim, mode="eval").body


def is_expression(dim: Any) -> bool:
    """Whether ``dim`` is a size expression that ``size_value`` can evaluate."""
    if not isinstance(dim, str) or not dim or len(dim) > 1000:
        return False
    if "".join(_EXPR.findall(dim)) != dim:
        return False
    try:
        _check_node(_parsed(dim))
    except (SyntaxError, ValueError):
        return False
    return True


def _check_node(node: ast.AST) -> None:
    if isinstance(node, ast.Name) or (isinstance(node, ast.Constant)
                                      and type(node.value) is int):
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        _check_node(node.operand)
        return
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult,
                                                             ast.FloorDiv)):
        if isinstance(node.op, ast.FloorDiv) and not (
                isinstance(node.right, ast.Constant) and type(node.right.value) is int
                and node.right.value > 0):
            raise ValueError("floor division by a positive integer only")
        _check_node(node.left)
        _check_node(node.right)
        return
    raise ValueError(f"not a size expression: {ast.dump(node)}")


def names_in(dim: Any) -> set[str]:
    """The size names a dim uses (none for an int)."""
    if isinstance(dim, int):
        return set()
    return {n.id for n in ast.walk(_parsed(dim)) if isinstance(n, ast.Name)}


def size_value(dim: int | str, sizes: Mapping[str, int]) -> int:
    """A dim's value with the named sizes ``sizes``."""
    if isinstance(dim, int):
        return dim
    return _value(_parsed(dim), sizes)


def _value(node: ast.AST, sizes: Mapping[str, int]) -> int:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return sizes[node.id]
    if isinstance(node, ast.UnaryOp):
        v = _value(node.operand, sizes)
        return -v if isinstance(node.op, ast.USub) else v
    a, b = _value(node.left, sizes), _value(node.right, sizes)
    if isinstance(node.op, ast.Add):
        return a + b
    if isinstance(node.op, ast.Sub):
        return a - b
    if isinstance(node.op, ast.Mult):
        return a * b
    return a // b


def is_symbolic(manifest: Mapping[str, Any]) -> bool:
    """Whether the manifest describes a model with symbolic sizes."""
    return "sizes" in manifest


def check_sizes_section(m: Mapping[str, Any]) -> None:
    """The ``sizes`` section's types, and that every symbolic dim of every value uses only
    its names, each of which some input has as a plain dim (raises ArtifactError)."""
    sizes = m["sizes"]
    if not isinstance(sizes, dict) or not isinstance(sizes.get("names"), list) \
            or not all(isinstance(n, str) and n.isidentifier() for n in sizes["names"]):
        raise ArtifactError("manifest 'sizes' needs 'names', a list of identifiers")
    names = set(sizes["names"])
    bounds = sizes.get("bounds", {})
    if not isinstance(bounds, dict) or not all(
            k in names and isinstance(b, list) and len(b) == 2 and _bound(b[0])
            and (b[1] is None or _bound(b[1]) and b[1] >= b[0]) for k, b in bounds.items()):
        raise ArtifactError("manifest 'sizes' has 'bounds' that are not {name: [low, high]} "
                            "of its names")
    require = sizes.get("require", [])
    if not isinstance(require, list) or not all(
            isinstance(r, list) and len(r) == 4 and is_expression(r[0])
            and names_in(r[0]) <= names and _bound(r[1])
            and (r[2] is None or _bound(r[2])) and isinstance(r[3], str) for r in require):
        raise ArtifactError("manifest 'sizes' has 'require' entries that are not "
                            "[size expression, least value, greatest value or null, where]")
    plain = {d for s in m["inputs"] for d in s["shape"] if isinstance(d, str)
             and d.isidentifier()}
    if not names <= plain:
        raise ArtifactError(f"manifest 'sizes' names {sorted(names - plain)}, which no input "
                            "has as a dimension")
    for name, info in m["values"].items():
        for d in info.get("shape", []):
            if isinstance(d, str) and not names_in(d) <= names:
                raise ArtifactError(f"value {name!r} has dimension {d!r}, which uses sizes "
                                    "the manifest does not name")
    for i, k in enumerate(m["kernels"]):
        ks = k.get("sizes", [])
        if not isinstance(ks, list) or not all(n in names for n in ks):
            raise ArtifactError(f"kernel #{i} ({k.get('func')}) has 'sizes' that are not "
                                "names of the manifest's sizes")


def _bound(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_SIZE


def bind_inputs(m: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """The sizes that the inputs' shapes give (``{input name: shape}``), checked against
    every input's dims, the bounds and the requirements; raises InputError naming the input,
    the dimension and the allowed range."""
    sizes: dict[str, int] = {}
    where: dict[str, str] = {}
    for sig in m["inputs"]:
        shape = shapes[sig["name"]]
        if len(shape) != len(sig["shape"]):
            raise InputError(f"input {sig['name']!r} has shape {list(shape)}, expected "
                             f"{_show(sig['shape'])}")
        for axis, (want, got) in enumerate(zip(sig["shape"], shape)):
            if isinstance(want, str) and want.isidentifier():
                if sizes.setdefault(want, got) != got:
                    raise InputError(f"input {sig['name']!r} has shape {list(shape)}: its "
                                     f"dimension {axis} is {want} = {got}, but {want} = "
                                     f"{sizes[want]} in {where[want]}")
                where.setdefault(want, f"input {sig['name']!r}")
    bounds = m["sizes"].get("bounds", {})
    for name, value in sizes.items():
        low, high = bounds.get(name, (0, None))
        high = MAX_SIZE if high is None else high
        if not low <= value <= high:
            raise InputError(f"{where[name]}: size {name} is {value}, outside the range "
                             f"{low}..{high} the model was compiled for")
    for sig in m["inputs"]:
        for axis, (want, got) in enumerate(zip(sig["shape"], shapes[sig["name"]])):
            expected = size_value(want, sizes)
            if expected != got:
                hint = f" ({want} with {_given(want, sizes)})" if isinstance(want, str) else ""
                raise InputError(f"input {sig['name']!r} has shape "
                                 f"{list(shapes[sig['name']])}, expected "
                                 f"{_show(sig['shape'])}: dimension {axis} must be "
                                 f"{expected}{hint}")
    for expr, low, high, at in m["sizes"].get("require", []):
        value = size_value(expr, sizes)
        if value < low or high is not None and value > high:
            allowed = f"at least {low}" if high is None else f"within {low}..{high}"
            raise InputError(f"{at} needs {expr} to be {allowed}; with {_given(expr, sizes)} "
                             f"it is {value}")
    return sizes


def _given(dim: str, sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{n}={sizes[n]}" for n in sorted(names_in(dim)))


def _show(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def variant_manifests(m: Mapping[str, Any]) -> list[tuple[dict[str, int], dict[str, Any]]]:
    """The manifest's specializations (``variants``: the model with some sizes fixed, its own
    kernels in the same library), each as (fixed sizes, a manifest of its own), in order."""
    out = []
    base = {k: v for k, v in m.items() if k != "variants"}
    for var in m.get("variants", []):
        fixed = var["sizes"]
        sizes = dict(m["sizes"])
        sizes["names"] = [n for n in m["sizes"]["names"] if n not in fixed]
        sizes["bounds"] = {n: b for n, b in m["sizes"].get("bounds", {}).items()
                           if n not in fixed}
        sizes["require"] = [r for r in m["sizes"].get("require", [])
                            if not names_in(r[0]) & set(fixed)]
        out.append((dict(fixed), {**base, "inputs": var["inputs"], "outputs": var["outputs"],
                                  "values": var["values"], "kernels": var["kernels"],
                                  "constants": [c for c in m["constants"]
                                                if c in var["values"]],
                                  "sizes": sizes, "memory": {}}))
    return out


def check_variants(m: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``variants`` section's shape (each fixes some of the sizes to values, and
    describes the same inputs and outputs); returns their manifests to validate."""
    variants = m.get("variants", [])
    names = set(m["sizes"]["names"])
    if not isinstance(variants, list) or not all(
            isinstance(v, dict) and isinstance(v.get("sizes"), dict) and v["sizes"]
            and set(v["sizes"]) <= names and all(_bound(x) for x in v["sizes"].values())
            and all(isinstance(v.get(k), t) for k, t in (("inputs", list), ("outputs", list),
                                                        ("values", dict), ("kernels", list)))
            for v in variants):
        raise ArtifactError("manifest 'variants' must be a list of {sizes: {name: value} of "
                            "its sizes, inputs, outputs, values, kernels}")
    out = []
    for fixed, vm in variant_manifests(m):
        want = [(s["name"], s["dtype"]) for s in m["inputs"] + m["outputs"]]
        got = [(s.get("name"), s.get("dtype")) for s in vm["inputs"] + vm["outputs"]]
        if want != got:
            raise ArtifactError(f"the variant for {fixed} has other inputs or outputs")
        out.append(vm)
    return out


def concrete_manifest(m: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, Any]:
    """The static manifest of the call size ``sizes``: every shape evaluated, each kernel's
    size arguments as ``size_values``, flops counted, and the memory planned for it."""
    from kiln.runtime.planner import plan_memory

    def shape(s: list) -> list[int]:
        out = [size_value(d, sizes) for d in s]
        if any(d < 0 for d in out):
            raise InputError(f"with {sizes} a value would have the shape {out}")
        return out

    c = {k: v for k, v in m.items() if k not in ("sizes", "memory")}
    c["values"] = {n: {**info, "shape": shape(info["shape"])}
                   for n, info in m["values"].items()}
    c["inputs"] = [{**s, "shape": shape(s["shape"])} for s in m["inputs"]]
    c["outputs"] = [{**s, "shape": shape(s["shape"])} for s in m["outputs"]]
    kernels = []
    for k in m["kernels"]:
        k = dict(k)
        if "sizes" in k:
            k["size_values"] = [sizes[n] for n in k.pop("sizes")]
        if isinstance(k.get("flops"), str):
            k["flops"] = max(0, size_value(k["flops"], sizes))
        kernels.append(k)
    c["kernels"] = kernels
    keep = {s["name"] for s in c["inputs"]} | set(c["constants"]) | \
        {s["name"] for s in c["outputs"]}
    c["memory"] = plan_memory(kernels, c["values"], keep)
    return c

