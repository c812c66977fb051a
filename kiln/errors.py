"""kiln's one exception family.

This module is a leaf: every layer (the runtime included) imports it, and it imports nothing.
A message names what is at fault (node, op, shapes, origin) and, where it can, what to do.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base class of every error kiln raises on purpose."""


class ShapeError(KilnError):
    """Inputs of an op do not fit together (shapes, ranks or dtypes)."""


class AttributeError_(KilnError):
    """An op attribute is unknown, missing or out of range."""


class UnsupportedOpError(KilnError):
    """An op (or an op/opset pair) has no implementation in the layer that needs it."""


class VerifyError(KilnError):
    """A graph breaks an IR invariant (SSA, order, types, dangling values)."""


class ParseError(KilnError):
    """The text form of a graph could not be parsed."""


class TraceError(KilnError):
    """Tracing a DSL model failed (wrong inputs, shape mistakes in user code)."""


class InputError(KilnError):
    """Inputs given to run a graph or artifact do not match its signature."""


class ArtifactError(KilnError):
    """A compiled artifact is missing, corrupt, foreign or built for another machine."""


class CLIError(KilnError):
    """A command-line argument is malformed."""


class PrecisionWarning(UserWarning):
    """A reduced precision was asked for where the target has no fast instructions for it
    (kiln compiles in float32 then, rather than slower)."""
