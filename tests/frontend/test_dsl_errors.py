"""DSL mistakes are TraceErrors that name the user's line: missing or misnamed input specs, a
layer called with the wrong arguments, and any other error raised by the traced code."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import kiln
from kiln import nn, ops
from kiln.errors import ShapeError, TraceError

HERE = pathlib.Path(__file__)


def line_of(marker: str) -> str:
    """'test_dsl_errors.py:N' of the line of this file that ends with ``# marker``."""
    lines = HERE.read_text().splitlines()
    number = next(i for i, text in enumerate(lines, 1) if text.endswith(f"# {marker}"))
    return f"{HERE.name}:{number}"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return ops.relu(self.fc(x))


class CallsLayerWrong(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x, x)  # TWO ARGS


class Buggy(nn.Module):
    def forward(self, x):
        return x.no_such_method()  # BUG


def test_a_missing_input_spec_names_the_parameter_and_the_line():
    with pytest.raises(TraceError) as info:
        kiln.trace(Tiny())  # NO SPEC
    text = str(info.value)
    assert text.startswith(line_of("NO SPEC")), text
    assert "Tiny takes (x): no spec for 'x'" in text


def test_a_misnamed_input_spec_says_which_names_fit():
    with pytest.raises(TraceError, match=r"Tiny takes \(x\): no spec for 'x'; no input named "
                                         r"'y'"):
        kiln.trace(Tiny(), y=kiln.TensorSpec((2, 3)))

    def pair(a, b):
        return a + b

    with pytest.raises(TraceError, match=r"pair takes \(a, b\): no spec for 'b'"):
        kiln.trace(pair, a=kiln.TensorSpec((2,)))


def test_a_layer_called_with_the_wrong_arguments_names_the_callers_line():
    with pytest.raises(TraceError) as info:
        kiln.trace(CallsLayerWrong(), x=kiln.TensorSpec((2, 3)))
    text = str(info.value)
    assert text.startswith(f"{line_of('TWO ARGS')} [CallsLayerWrong]: fc (Linear) called "
                           "with 2 positional"), text
    assert "too many positional arguments; it takes (x)" in text


def test_other_errors_of_the_traced_code_name_its_line_and_keep_the_cause():
    with pytest.raises(TraceError) as info:
        kiln.trace(Buggy(), x=kiln.TensorSpec((2,)))
    assert str(info.value).startswith(f"{line_of('BUG')}: tracing Buggy failed: "
                                      "AttributeError:")
    assert isinstance(info.value.__cause__, AttributeError)


def test_kiln_errors_of_the_traced_code_pass_unchanged():
    with pytest.raises(ShapeError, match=r"float32\[2, 5\]"):
        kiln.trace(Tiny(), x=kiln.TensorSpec((2, 5)))


def test_a_correct_model_still_traces_and_runs():
    graph = kiln.trace(Tiny(), x=kiln.TensorSpec((2, 3)))
    (out,) = kiln.interpret(graph, {"x": np.ones((2, 3), np.float32)})
    assert out.shape == (2, 4)


def test_tracing_something_that_is_not_a_model():
    with pytest.raises(TraceError) as info:
        kiln.trace(3, x=kiln.TensorSpec((2,)))  # NOT A MODEL
    assert str(info.value) == (f"{line_of('NOT A MODEL')}: kiln.trace takes a kiln.nn.Module "
                               "or a function, not int")
