"""Dtypes and tensor types.

A dimension is an ``int`` (static) or a ``Sym`` (``kiln.ir.dims``: a symbolic size such as a
batch or a sequence length, or an expression of them like ``2*N``). A ``TensorType`` is a shape
of such dimensions and a dtype name; dims given as text (``"N"``, ``"S//2"``) are parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError
from kiln.ir.dims import Dim as Dim  # (re-exported: the types of shapes live here too)
from kiln.ir.dims import Sym, as_dim

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int8", "uint8", "int32", "int64")
DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)
#: the 16-bit floats: stored in 16 bits, computed in float32
HALF_DTYPES = ("float16", "bfloat16")


def _bfloat16() -> np.dtype:
    import ml_dtypes  # shipped with onnx; only needed when bfloat16 is used

    return np.dtype(ml_dtypes.bfloat16)


def check_dtype(dtype: str) -> str:
    """Return ``dtype`` if kiln knows it, else raise a KilnError listing the known ones."""
    if dtype not in DTYPES:
        raise KilnError(f"unknown dtype {dtype!r}; kiln knows {', '.join(DTYPES)}")
    return dtype


def to_numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype for a kiln dtype name."""
    check_dtype(dtype)
    return _bfloat16() if dtype == "bfloat16" else np.dtype(dtype)


def from_numpy_dtype(dtype: np.dtype | type) -> str:
    """The kiln dtype name for a numpy dtype (raises for dtypes kiln lacks)."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise KilnError(f"numpy dtype {name!r} has no kiln equivalent; kiln knows {DTYPES}")
    return name


def is_float(dtype: str) -> bool:
    return dtype in FLOAT_DTYPES


def is_int(dtype: str) -> bool:
    return dtype in INT_DTYPES


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: a shape (ints and symbolic sizes) and a dtype."""

    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        dims = []
        for d in shape:
            if not isinstance(d, (Sym, int)) or isinstance(d, bool):
                try:
                    d = as_dim(d)
                except KilnError as e:
                    raise KilnError(f"dimension {d!r} in shape {shape}: {e}") from None
            if isinstance(d, int) and d < 0:
                raise KilnError(f"negative dimension in shape {shape}")
            dims.append(d if isinstance(d, Sym) else int(d))
        object.__setattr__(self, "shape", tuple(dims))
        check_dtype(self.dtype)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def size(self) -> int:
        """Number of elements (static shapes only)."""
        if not self.is_static:
            raise KilnError(f"{self} has symbolic dimensions; its size is not known")
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * to_numpy_dtype(self.dtype).itemsize

    def with_shape(self, shape: tuple[Dim, ...]) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype: str) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @staticmethod
    def of(array: np.ndarray) -> TensorType:
        """The type of a concrete array."""
        return TensorType(tuple(array.shape), from_numpy_dtype(array.dtype))


def format_types(types) -> str:
    """'float32[2, 3], int64[4]' for error messages."""
    return ", ".join(str(t) for t in types)
