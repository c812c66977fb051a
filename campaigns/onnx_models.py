"""A campaign of malformed ONNX models: kiln must refuse each with a KilnError, or compile
it and agree with onnxruntime. Never a raw exception, a crash, a hang or a wrong answer.

    python campaigns/onnx_models.py --count 1000 --seed 0 --jobs 2
    python campaigns/onnx_models.py --seed 0 --case 17     # one case here, with its traceback
    python campaigns/onnx_models.py --seed 0 --case 17 --save case17.onnx

Each case starts from a small valid model of one op family (Conv, MatMul, Gemm, Gather,
Reshape, Concat, Softmax, LSTM, BatchNormalization, ...) and applies one or two mutations
drawn from the case's own generator (seeded by ``--seed`` and the case number, so a case is
reproducible alone): inputs and outputs dropped or added, attributes wrong, huge, negative,
missing, unknown or of the wrong type, names and op types that are not UTF-8 (written into
the serialized bytes, as onnx's helpers refuse them), dangling edges, cycles, duplicate
names, initializers whose dims, dtype or raw data disagree, declared shapes that contradict
the weights, unknown opsets and domains, empty graphs, truncated and bit-flipped bytes, huge
dims. Every twentieth round over the bases leaves them valid, which checks the comparison
itself.

Workers are child processes, each running cases one at a time, killed and replaced when a
case outlives ``--timeout`` (a hang) or kills it (a crash). A case is imported, compiled at
opt level 2, run on random inputs, and compared with onnxruntime when onnxruntime accepts
the model. Classes:

    refused         a KilnError that kiln raised on purpose             good
    match           compiled, ran, agrees with onnxruntime              good
    no-oracle       compiled and ran; onnxruntime refuses the model     good (counted apart)
    internal        a KilnError wrapping a Python error (IndexError...) bad
    exception       any other exception                                 bad
    crash           the worker died (signal or exit)                    bad
    hang            no answer within --timeout seconds                  bad
    wrong           compiled, but its outputs differ from onnxruntime's bad

The counts are printed; the exit status is 1 if any case is in a bad class.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BAD = ("internal", "exception", "crash", "hang", "wrong")
GOOD = ("refused", "match", "no-oracle")

F = TensorProto.FLOAT
I64 = TensorProto.INT64


# -- base models: tiny and valid -----------------------------------------------------------------


def _vi(name: str, elem: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _w(rng: random.Random, *shape: int) -> np.ndarray:
    gen = np.random.default_rng(rng.randrange(2**32))
    return gen.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "base", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8 if opset <= 17 else 9)


def _mlp(rng):
    return _model(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
         helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
         helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        [_vi("x", F, [2, 4])], [_vi("y", F, [2, 2])],
        [_init("w1", _w(rng, 4, 3)), _init("b1", _w(rng, 3)), _init("w2", _w(rng, 3, 2))])


def _conv(rng):
    return _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                          strides=[1, 1], kernel_shape=[3, 3]),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2],
                          strides=[2, 2])],
        [_vi("x", F, [1, 2, 4, 4])], [_vi("y", F, [1, 3, 2, 2])],
        [_init("w", _w(rng, 3, 2, 3, 3)), _init("b", _w(rng, 3))])


def _conv_grouped(rng):
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="gconv", group=2, dilations=[1, 2],
                          pads=[1, 2, 1, 2]),
         helper.make_node("Conv", ["c", "w2"], ["y"], name="same", auto_pad="SAME_LOWER",
                          strides=[2, 2])],
        [_vi("x", F, [1, 4, 5, 5])], [_vi("y", F, [1, 2, 3, 3])],
        [_init("w", _w(rng, 4, 2, 3, 3)), _init("w2", _w(rng, 2, 4, 2, 2))])


def _conv_transpose(rng):
    return _model(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="deconv", strides=[2, 2])],
        [_vi("x", F, [1, 2, 3, 3])], [_vi("y", F, [1, 3, 6, 6])],
        [_init("w", _w(rng, 2, 3, 2, 2))])


def _gemm(rng):
    return _model(
        [helper.make_node("Gemm", ["a", "b", "c"], ["y"], name="gemm", transB=1, alpha=0.5,
                          beta=2.0)],
        [_vi("a", F, [2, 3])], [_vi("y", F, [2, 4])],
        [_init("b", _w(rng, 4, 3)), _init("c", _w(rng, 4))])


def _flatten_gemm(rng):
    return _model(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
         helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)],
        [_vi("x", F, [2, 2, 3])], [_vi("y", F, [2, 4])], [_init("w", _w(rng, 4, 6))])


def _gather(rng):
    return _model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed", axis=0)],
        [_vi("ids", I64, [2, 2])], [_vi("y", F, [2, 2, 3])], [_init("table", _w(rng, 3, 3))])


def _gather_axis(rng):
    return _model(
        [helper.make_node("Gather", ["x", "idx"], ["y"], name="pick", axis=1)],
        [_vi("x", F, [2, 4])], [_vi("y", F, [2, 3])],
        [_init("idx", np.array([3, 0, -1], np.int64))])


def _gather_elements(rng):
    return _model(
        [helper.make_node("GatherElements", ["x", "idx"], ["y"], name="ge", axis=1),
         helper.make_node("GatherND", ["x", "nd"], ["z"], name="gnd")],
        [_vi("x", F, [2, 3])], [_vi("y", F, [2, 2]), _vi("z", F, [2])],
        [_init("idx", np.array([[0, 2], [1, 1]], np.int64)),
         _init("nd", np.array([[0, 1], [1, 2]], np.int64))])


def _reshape(rng):
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
         helper.make_node("Transpose", ["r"], ["y"], name="transpose", perm=[1, 0])],
        [_vi("x", F, [2, 3, 4])], [_vi("y", F, [6, 4])],
        [_init("shape", np.array([4, -1], np.int64))])


def _shape_chain(rng):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as exporters write a flatten."""
    return _model(
        [helper.make_node("Shape", ["x"], ["s"], name="shape"),
         helper.make_node("Gather", ["s", "zero"], ["n"], name="first", axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
         helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
         helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")],
        [_vi("x", F, [2, 3, 2])], [_vi("y", F, [2, 6])],
        [_init("zero", np.array(0, np.int64)), _init("axes", np.array([0], np.int64)),
         _init("minus1", np.array([-1], np.int64))])


def _concat(rng):
    return _model(
        [helper.make_node("Concat", ["x", "y", "c"], ["cat"], name="concat", axis=1),
         helper.make_node("Softmax", ["cat"], ["out"], name="softmax", axis=-1)],
        [_vi("x", F, [2, 3]), _vi("y", F, [2, 2])], [_vi("out", F, [2, 6])],
        [_init("c", _w(rng, 2, 1))])


def _softmax(rng):
    return _model(
        [helper.make_node("Softmax", ["x"], ["s"], name="softmax", axis=1),
         helper.make_node("LogSoftmax", ["x"], ["l"], name="logsoftmax", axis=0)],
        [_vi("x", F, [2, 5])], [_vi("s", F, [2, 5]), _vi("l", F, [2, 5])], opset=13)


def _recurrent(kind: str, gates: int, outputs: int):
    def make(rng):
        h = 3
        outs = ["y", "y_h", "y_c"][:outputs]
        node = helper.make_node(kind, ["x", "w", "r", "b"], outs, name=kind.lower(),
                                hidden_size=h)
        return _model(
            [node], [_vi("x", F, [3, 1, 2])],
            [_vi("y", F, [3, 1, 1, h]), _vi("y_h", F, [1, 1, h]), _vi("y_c", F, [1, 1, h])
             ][:outputs],
            [_init("w", _w(rng, 1, gates * h, 2) * 0.5),
             _init("r", _w(rng, 1, gates * h, h) * 0.5), _init("b", _w(rng, 1, 2 * gates * h))],
            opset=14)
    return make


def _batchnorm(rng):
    var = np.abs(_w(rng, 3)) + 0.5
    return _model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn",
                          epsilon=1e-5)],
        [_vi("x", F, [1, 3, 2, 2])], [_vi("y", F, [1, 3, 2, 2])],
        [_init("s", _w(rng, 3)), _init("b", _w(rng, 3)), _init("m", _w(rng, 3)),
         _init("v", var)], opset=15)


def _pools(rng):
    return _model(
        [helper.make_node("AveragePool", ["x"], ["a"], name="avg", kernel_shape=[2, 2],
                          pads=[1, 1, 0, 0], count_include_pad=0),
         helper.make_node("MaxPool", ["x"], ["m"], name="max", kernel_shape=[3, 3],
                          strides=[2, 2], ceil_mode=1),
         helper.make_node("GlobalAveragePool", ["x"], ["g"], name="gap")],
        [_vi("x", F, [1, 2, 5, 5])],
        [_vi("a", F, [1, 2, 5, 5]), _vi("m", F, [1, 2, 2, 2]), _vi("g", F, [1, 2, 1, 1])])


def _slice_split(rng):
    return _model(
        [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"],
                          name="slice"),
         helper.make_node("Split", ["x", "split"], ["p", "q"], name="split", axis=1)],
        [_vi("x", F, [4, 6])],
        [_vi("s", F, [2, 3]), _vi("p", F, [4, 2]), _vi("q", F, [4, 4])],
        [_init("starts", np.array([1, 0], np.int64)), _init("ends", np.array([3, 6], np.int64)),
         _init("axes", np.array([0, 1], np.int64)), _init("steps", np.array([1, 2], np.int64)),
         _init("split", np.array([2, 4], np.int64))])


def _squeeze(rng):
    return _model(
        [helper.make_node("Unsqueeze", ["x", "ax"], ["u"], name="unsqueeze"),
         helper.make_node("Squeeze", ["u", "ax"], ["y"], name="squeeze")],
        [_vi("x", F, [3, 4])], [_vi("y", F, [3, 4])], [_init("ax", np.array([0], np.int64))])


def _reduce(rng):
    return _model(
        [helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[1], keepdims=0),
         helper.make_node("ReduceSum", ["x", "axes"], ["s"], name="sum", keepdims=1),
         helper.make_node("ReduceMax", ["x"], ["mx"], name="max", axes=[-1])],
        [_vi("x", F, [2, 3, 4])],
        [_vi("m", F, [2, 4]), _vi("s", F, [2, 1, 4]), _vi("mx", F, [2, 3, 1])],
        [_init("axes", np.array([1], np.int64))], opset=13)


def _argmax(rng):
    return _model(
        [helper.make_node("ArgMax", ["x"], ["a"], name="argmax", axis=1, keepdims=0),
         helper.make_node("ArgMin", ["x"], ["b"], name="argmin", axis=0,
                          select_last_index=1)],
        [_vi("x", F, [3, 4])], [_vi("a", I64, [3]), _vi("b", I64, [1, 4])])


def _pad(rng):
    return _model(
        [helper.make_node("Pad", ["x", "pads", "value"], ["y"], name="pad", mode="constant")],
        [_vi("x", F, [2, 3])], [_vi("y", F, [3, 5])],
        [_init("pads", np.array([1, 0, 0, 2], np.int64)),
         _init("value", np.array(1.5, np.float32))])


def _resize(rng):
    return _model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="linear")],
        [_vi("x", F, [1, 1, 2, 3])], [_vi("y", F, [1, 1, 4, 6])],
        [_init("scales", np.array([1, 1, 2, 2], np.float32))], opset=13)


def _layernorm(rng):
    return _model(
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], name="ln", axis=-1,
                          epsilon=1e-5)],
        [_vi("x", F, [2, 4])], [_vi("y", F, [2, 4])],
        [_init("g", _w(rng, 4)), _init("b", _w(rng, 4))])


def _instance_norm(rng):
    return _model(
        [helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], name="in")],
        [_vi("x", F, [1, 2, 3, 3])], [_vi("y", F, [1, 2, 3, 3])],
        [_init("s", _w(rng, 2)), _init("b", _w(rng, 2))])


def _elementwise(rng):
    return _model(
        [helper.make_node("Cast", ["x"], ["i"], name="cast", to=TensorProto.INT32),
         helper.make_node("Cast", ["i"], ["f"], name="back", to=F),
         helper.make_node("Clip", ["f", "lo", "hi"], ["c"], name="clip"),
         helper.make_node("Where", ["cond", "c", "x"], ["w"], name="where"),
         helper.make_node("LeakyRelu", ["w"], ["l"], name="leaky", alpha=0.2),
         helper.make_node("Pow", ["l", "two"], ["y"], name="pow")],
        [_vi("x", F, [2, 3]), _vi("cond", TensorProto.BOOL, [2, 3])], [_vi("y", F, [2, 3])],
        [_init("lo", np.array(-1, np.float32)), _init("hi", np.array(1, np.float32)),
         _init("two", np.array(2, np.float32))])


def _expand_tile(rng):
    return _model(
        [helper.make_node("Expand", ["x", "shape"], ["e"], name="expand"),
         helper.make_node("Tile", ["x", "reps"], ["t"], name="tile")],
        [_vi("x", F, [3, 1])], [_vi("e", F, [2, 3, 4]), _vi("t", F, [6, 2])],
        [_init("shape", np.array([2, 3, 4], np.int64)), _init("reps", np.array([2, 2], np.int64))])


def _depth_to_space(rng):
    return _model(
        [helper.make_node("DepthToSpace", ["x"], ["d"], name="d2s", blocksize=2, mode="CRD"),
         helper.make_node("SpaceToDepth", ["d"], ["y"], name="s2d", blocksize=2)],
        [_vi("x", F, [1, 4, 2, 2])], [_vi("y", F, [1, 4, 2, 2])])


def _einsum(rng):
    return _model(
        [helper.make_node("Einsum", ["a", "b"], ["y"], name="einsum", equation="bij,jk->bik")],
        [_vi("a", F, [2, 3, 4])], [_vi("y", F, [2, 3, 2])], [_init("b", _w(rng, 4, 2))])


def _constants(rng):
    return _model(
        [helper.make_node("Constant", [], ["k"], name="const",
                          value=numpy_helper.from_array(_w(rng, 2, 3))),
         helper.make_node("ConstantOfShape", ["shape"], ["z"], name="zeros",
                          value=numpy_helper.from_array(np.array([0.5], np.float32))),
         helper.make_node("Add", ["x", "k"], ["a"], name="add"),
         helper.make_node("Mul", ["a", "z"], ["y"], name="mul")],
        [_vi("x", F, [2, 3])], [_vi("y", F, [2, 3])],
        [_init("shape", np.array([2, 3], np.int64))])


def _quantize(rng):
    return _model(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant"),
         helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dequant")],
        [_vi("x", F, [2, 3])], [_vi("y", F, [2, 3])],
        [_init("scale", np.array(0.05, np.float32)), _init("zp", np.array(128, np.uint8))])


def _misc(rng):
    return _model(
        [helper.make_node("CumSum", ["x", "axis"], ["c"], name="cumsum"),
         helper.make_node("Trilu", ["c"], ["t"], name="trilu", upper=0),
         helper.make_node("OneHot", ["ids", "depth", "vals"], ["o"], name="onehot", axis=-1),
         helper.make_node("InstanceNormalization", ["x4", "s", "b"], ["n"], name="inorm")],
        [_vi("x", F, [3, 3]), _vi("ids", I64, [2]), _vi("x4", F, [1, 2, 2, 2])],
        [_vi("t", F, [3, 3]), _vi("o", F, [2, 4]), _vi("n", F, [1, 2, 2, 2])],
        [_init("axis", np.array(1, np.int64)), _init("depth", np.array(4, np.int64)),
         _init("vals", np.array([0, 1], np.float32)), _init("s", _w(rng, 2)),
         _init("b", _w(rng, 2))])


def _reduce18(rng):
    return _model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["m"], name="mean", keepdims=1),
         helper.make_node("ReduceL2", ["x", "axes"], ["l2"], name="l2", keepdims=0),
         helper.make_node("Mod", ["x", "d"], ["md"], name="mod", fmod=1)],
        [_vi("x", F, [2, 3])],
        [_vi("m", F, [2, 1]), _vi("l2", F, [2]), _vi("md", F, [2, 3])],
        [_init("axes", np.array([-1], np.int64)), _init("d", np.array(0.7, np.float32))],
        opset=18)


def _norms(rng):
    return _model(
        [helper.make_node("GroupNormalization", ["x", "gs", "gb"], ["g"], name="gn",
                          num_groups=2, epsilon=1e-5),
         helper.make_node("LRN", ["x"], ["l"], name="lrn", size=3),
         helper.make_node("MeanVarianceNormalization", ["x"], ["m"], name="mvn", axes=[0, 2, 3]),
         helper.make_node("LpNormalization", ["x"], ["p"], name="lp", axis=1, p=2)],
        [_vi("x", F, [1, 4, 2, 2])],
        [_vi(n, F, [1, 4, 2, 2]) for n in ("g", "l", "m", "p")],
        [_init("gs", _w(rng, 4)), _init("gb", _w(rng, 4))], opset=21)


def _losses(rng):
    return _model(
        [helper.make_node("SoftmaxCrossEntropyLoss", ["s", "t"], ["loss"], name="sce",
                          reduction="mean"),
         helper.make_node("LogSoftmax", ["s"], ["ls"], name="logsm", axis=1),
         helper.make_node("NegativeLogLikelihoodLoss", ["ls", "t", "w"], ["nll"], name="nll",
                          reduction="sum", ignore_index=1)],
        [_vi("s", F, [3, 4]), _vi("t", I64, [3])], [_vi("loss", F, []), _vi("nll", F, [])],
        [_init("w", np.abs(_w(rng, 4)))])


def _activations(rng):
    ops = [("Celu", {"alpha": 1.5}), ("Selu", {}), ("Shrink", {"lambd": 0.3}),
           ("HardSigmoid", {"alpha": 0.3}), ("ThresholdedRelu", {"alpha": 0.2}),
           ("Hardmax", {"axis": 0}), ("Softsign", {}), ("Elu", {"alpha": 0.5})]
    nodes = [helper.make_node(op, ["x"], [f"y{i}"], name=op.lower(), **attrs)
             for i, (op, attrs) in enumerate(ops)]
    nodes += [helper.make_node("PRelu", ["x", "slope"], ["pr"], name="prelu"),
              helper.make_node("IsInf", ["x"], ["inf"], name="isinf", detect_negative=0)]
    outs = [_vi(f"y{i}", F, [2, 3]) for i in range(len(ops))]
    outs += [_vi("pr", F, [2, 3]), _vi("inf", TensorProto.BOOL, [2, 3])]
    return _model(nodes, [_vi("x", F, [2, 3])], outs, [_init("slope", _w(rng, 3))])


def _shape_misc(rng):
    return _model(
        [helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
         helper.make_node("EyeLike", ["x"], ["eye"], name="eye", k=1),
         helper.make_node("Compress", ["x", "cond"], ["c"], name="compress", axis=1),
         helper.make_node("CenterCropPad", ["x", "crop"], ["cc"], name="crop"),
         helper.make_node("ReverseSequence", ["x", "lens"], ["rs"], name="revseq",
                          time_axis=1, batch_axis=0),
         helper.make_node("Shape", ["x"], ["sh"], name="shape", start=1),
         helper.make_node("Size", ["x"], ["sz"], name="size")],
        [_vi("x", F, [3, 4])],
        [_vi("r", I64, [4]), _vi("eye", F, [3, 4]), _vi("c", F, [3, 2]), _vi("cc", F, [2, 5]),
         _vi("rs", F, [3, 4]), _vi("sh", I64, [1]), _vi("sz", I64, [])],
        [_init("start", np.array(1, np.int64)), _init("limit", np.array(9, np.int64)),
         _init("delta", np.array(2, np.int64)), _init("cond", np.array([True, False, True])),
         _init("crop", np.array([2, 5], np.int64)), _init("lens", np.array([4, 1, 3]))],
        opset=18)


def _split18(rng):
    return _model(
        [helper.make_node("Split", ["x"], ["a", "b", "c"], name="split", axis=1, num_outputs=3),
         helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], name="pad", mode="reflect"),
         helper.make_node("LpPool", ["x4"], ["lp"], name="lppool", kernel_shape=[2, 2], p=2),
         helper.make_node("GlobalMaxPool", ["x4"], ["gm"], name="gmp")],
        [_vi("x", F, [2, 7]), _vi("x4", F, [1, 2, 3, 3])],
        [_vi("a", F, [2, 3]), _vi("b", F, [2, 3]), _vi("c", F, [2, 1]), _vi("p", F, [2, 9]),
         _vi("lp", F, [1, 2, 2, 2]), _vi("gm", F, [1, 2, 1, 1])],
        [_init("pads", np.array([1, 1], np.int64)), _init("axes", np.array([1], np.int64))],
        opset=18)


def _conv1d(rng):
    return _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1d", pads=[1, 1]),
         helper.make_node("ConvTranspose", ["c", "wt"], ["y"], name="deconv1d", strides=[2],
                          output_padding=[1])],
        [_vi("x", F, [1, 2, 5])], [_vi("y", F, [1, 2, 12])],
        [_init("w", _w(rng, 3, 2, 3)), _init("b", _w(rng, 3)), _init("wt", _w(rng, 3, 2, 3))])


def _int_quant(rng):
    return _model(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql"),
         helper.make_node("MatMulInteger", ["q", "w", "z", "wz"], ["y"], name="mmi")],
        [_vi("x", F, [2, 3])],
        [_vi("y", TensorProto.INT32, [2, 2]), _vi("s", F, []), _vi("z", TensorProto.UINT8, [])],
        [_init("w", np.array([[1, 2], [3, 4], [5, 6]], np.uint8)),
         _init("wz", np.array(3, np.uint8))])


BASES: list[tuple[str, Callable]] = [
    ("mlp", _mlp), ("conv", _conv), ("conv_grouped", _conv_grouped),
    ("conv_transpose", _conv_transpose), ("gemm", _gemm), ("flatten_gemm", _flatten_gemm),
    ("gather", _gather), ("gather_axis", _gather_axis), ("gather_elements", _gather_elements),
    ("reshape", _reshape), ("shape_chain", _shape_chain), ("concat", _concat),
    ("softmax", _softmax), ("lstm", _recurrent("LSTM", 4, 3)), ("gru", _recurrent("GRU", 3, 2)),
    ("rnn", _recurrent("RNN", 1, 2)), ("batchnorm", _batchnorm), ("pools", _pools),
    ("slice_split", _slice_split), ("squeeze", _squeeze), ("reduce", _reduce),
    ("argmax", _argmax), ("pad", _pad), ("resize", _resize), ("layernorm", _layernorm),
    ("instance_norm", _instance_norm), ("elementwise", _elementwise),
    ("expand_tile", _expand_tile), ("depth_to_space", _depth_to_space), ("einsum", _einsum),
    ("constants", _constants), ("quantize", _quantize), ("misc", _misc),
    ("reduce18", _reduce18), ("norms", _norms), ("losses", _losses),
    ("activations", _activations), ("shape_misc", _shape_misc), ("split18", _split18),
    ("conv1d", _conv1d), ("int_quant", _int_quant),
]


# -- mutations -------------------------------------------------------------------------------------
# Each takes a ModelProto (its own copy) and the case's generator, and returns the malformed
# model as a ModelProto or as bytes (for what protobuf itself would refuse to hold).

_HUGE = [2**31, 2**40, 2**62, 2**63 - 1]
_EDGE_INTS = [-(2**63), -(2**31), -7, -2, -1, 0, 1, 2, 3, 5, 64, 2**31 - 1] + _HUGE
_EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e-45, 1e30, -3.5]
_EDGE_STRINGS = ["", "bogus", "NOTSET", "SAME_LOWER", "VALID", "nearest", "bidirectional",
                 "reverse", "Sigmoid", "x" * 300, "ij,jk", "->", "..."]
_ELEM_TYPES = [0, TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.UINT16,
               TensorProto.FLOAT8E4M3FN, TensorProto.INT4, 99, TensorProto.DOUBLE,
               TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32, TensorProto.INT8,
               TensorProto.BOOL, TensorProto.INT64, TensorProto.UINT8]


def _pick_node(m: onnx.ModelProto, rng: random.Random) -> onnx.NodeProto | None:
    return rng.choice(m.graph.node) if m.graph.node else None


def _all_names(m: onnx.ModelProto) -> list[str]:
    g = m.graph
    names = [v.name for v in g.input] + [t.name for t in g.initializer]
    return names + [o for n in g.node for o in n.output if o]


def _drop_one(names, rng) -> None:
    """Delete one of a node's input or output names, or blank it ("" = an omitted optional)."""
    i = rng.randrange(len(names))
    if rng.random() < 0.5:
        del names[i]
    else:
        names[i] = ""


def drop_input(m, rng):
    n = _pick_node(m, rng)
    if n is not None and n.input:
        _drop_one(n.input, rng)
    return m


def extra_input(m, rng):
    n = _pick_node(m, rng)
    if n is not None:
        for _ in range(rng.choice([1, 1, 2, 6])):
            n.input.append(rng.choice(_all_names(m) + ["", "ghost"]))
    return m


def drop_output(m, rng):
    n = _pick_node(m, rng)
    if n is not None and n.output:
        _drop_one(n.output, rng)
    return m


def extra_output(m, rng):
    n = _pick_node(m, rng)
    if n is not None:
        for k in range(rng.choice([1, 2, 5])):
            n.output.append(f"extra{k}")
        if rng.random() < 0.5:
            m.graph.output.append(_vi("extra0", F, [2]))
    return m


def no_inputs_or_outputs(m, rng):
    n = _pick_node(m, rng)
    what = rng.choice(["node_inputs", "node_outputs", "graph_inputs", "graph_outputs"])
    if what == "node_inputs" and n is not None:
        del n.input[:]
    elif what == "node_outputs" and n is not None:
        del n.output[:]
    elif what == "graph_inputs":
        del m.graph.input[:]
    else:
        del m.graph.output[:]
    return m


def dangling(m, rng):
    n = _pick_node(m, rng)
    if n is not None and n.input:
        n.input[rng.randrange(len(n.input))] = rng.choice(["nowhere", "y", "out", " x"])
    elif m.graph.output:
        m.graph.output[0].name = "nowhere"
    return m


def cycle(m, rng):
    g = m.graph
    if not g.node:
        return m
    first, last = g.node[0], g.node[len(g.node) - 1]
    kind = rng.choice(["back_edge", "self_loop", "swap"])
    if kind == "self_loop" and first.input and first.output:
        first.input[0] = first.output[0]
    elif kind == "swap" and len(g.node) > 1:
        nodes = list(g.node)
        rng.shuffle(nodes)
        del g.node[:]
        g.node.extend(nodes)
    elif first.input and last.output:
        first.input[0] = last.output[0]
    return m


def duplicate_names(m, rng):
    g = m.graph
    kind = rng.choice(["output_twice", "output_is_input", "output_is_init", "init_twice",
                       "input_twice", "node_names", "graph_output_twice"])
    if kind == "output_twice" and len(g.node) > 1:
        g.node[len(g.node) - 1].output[0] = g.node[0].output[0]
    elif kind == "output_is_input" and g.node and g.input:
        g.node[0].output[0] = g.input[0].name
    elif kind == "output_is_init" and g.node and g.initializer:
        g.node[len(g.node) - 1].output[0] = g.initializer[0].name
    elif kind == "init_twice" and g.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(rng.choice(g.initializer))
        if rng.random() < 0.5:
            t.dims.append(1)
        g.initializer.append(t)
    elif kind == "input_twice" and g.input:
        g.input.append(g.input[0])
    elif kind == "node_names":
        for n in g.node:
            n.name = "same"
    elif g.output:
        g.output.append(g.output[0])
    return m


def empty_graph(m, rng):
    g = m.graph
    kind = rng.choice(["no_nodes", "identity_only", "nothing"])
    del g.node[:]
    if kind == "identity_only" and g.input:  # still a valid model: the output is the input
        del g.output[:]
        g.output.append(g.input[0])
    elif kind == "nothing":
        del g.input[:], g.output[:], g.initializer[:]
    return m


# -- attributes ------------------------------------------------------------------------------------


def _schema(n: onnx.NodeProto, m: onnx.ModelProto):
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 17)
    try:
        return onnx.defs.get_schema(n.op_type, opset, n.domain)
    except Exception:
        return None


def _value_of_type(t: int, rng: random.Random):
    A = onnx.AttributeProto
    if t == A.INT:
        return rng.choice(_EDGE_INTS)
    if t == A.FLOAT:
        return rng.choice(_EDGE_FLOATS)
    if t == A.STRING:
        return rng.choice(_EDGE_STRINGS)
    if t == A.INTS:
        length = rng.choice([0, 1, 2, 3, 4, 6, 9])
        return [rng.choice(_EDGE_INTS[:12]) if rng.random() < 0.7 else rng.choice(_EDGE_INTS)
                for _ in range(length)]
    if t == A.FLOATS:
        return [rng.choice(_EDGE_FLOATS) for _ in range(rng.choice([0, 1, 3]))]
    if t == A.STRINGS:
        return [rng.choice(_EDGE_STRINGS) for _ in range(rng.choice([0, 1, 2, 7]))]
    if t == A.TENSOR:
        return numpy_helper.from_array(rng.choice([
            np.zeros((0,), np.float32), np.array([1, 2], np.int64), np.array(7, np.int32),
            np.ones((2, 2), np.float64), np.array([True]), np.array(["s"], dtype=object)]))
    if t == A.GRAPH:
        return helper.make_graph([], "sub", [], [])
    return rng.choice(_EDGE_INTS)


def _make_attr(name: str, t: int, rng: random.Random) -> onnx.AttributeProto:
    value = _value_of_type(t, rng)
    A = onnx.AttributeProto
    if t in (A.INTS, A.FLOATS, A.STRINGS) and not value:
        a = A(name=name, type=t)  # an empty list: make_attribute cannot infer its type
        return a
    return helper.make_attribute(name, value, attr_type=t)


_ATTR_TYPES = [onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING,
               onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS,
               onnx.AttributeProto.STRINGS, onnx.AttributeProto.TENSOR,
               onnx.AttributeProto.GRAPH]


def _set_attr(n: onnx.NodeProto, a: onnx.AttributeProto) -> None:
    for i, old in enumerate(n.attribute):
        if old.name == a.name:
            n.attribute[i].CopyFrom(a)
            return
    n.attribute.append(a)


def attr_value(m, rng):
    """An attribute of the op's schema (present or not), with an edge value of its type."""
    n = _pick_node(m, rng)
    schema = n and _schema(n, m)
    if not schema or not schema.attributes:
        return attr_unknown(m, rng)
    name = rng.choice(sorted(schema.attributes))
    _set_attr(n, _make_attr(name, int(schema.attributes[name].type), rng))
    return m


def attr_type(m, rng):
    """An attribute of the op's schema with a value of another type."""
    n = _pick_node(m, rng)
    schema = n and _schema(n, m)
    names = sorted(schema.attributes) if schema else []
    names += [a.name for a in n.attribute] if n is not None else []
    if not names:
        return attr_unknown(m, rng)
    name = rng.choice(names)
    declared = int(schema.attributes[name].type) if schema and name in schema.attributes else 0
    t = rng.choice([t for t in _ATTR_TYPES if t != declared])
    _set_attr(n, _make_attr(name, t, rng))
    return m


def attr_drop(m, rng):
    n = _pick_node(m, rng)
    if n is not None and n.attribute:
        del n.attribute[rng.randrange(len(n.attribute))]
    return m


def attr_unknown(m, rng):
    n = _pick_node(m, rng)
    if n is not None:
        n.attribute.append(_make_attr(rng.choice(["bogus", "axis_", "Kernel_shape"]),
                                      rng.choice(_ATTR_TYPES), rng))
    return m


def attr_broken(m, rng):
    """An AttributeProto that contradicts itself: an undefined type, a type whose field is
    empty, a duplicate with another value, or an empty name."""
    n = _pick_node(m, rng)
    if n is None:
        return m
    A = onnx.AttributeProto
    kind = rng.choice(["undefined", "empty_field", "duplicate", "no_name", "ref_attr"])
    if kind == "undefined":
        n.attribute.append(A(name=rng.choice([a.name for a in n.attribute] or ["axis"]),
                             type=A.UNDEFINED, i=3))
    elif kind == "empty_field" and n.attribute:
        a = rng.choice(n.attribute)
        a.type = rng.choice([A.TENSOR, A.GRAPH, A.SPARSE_TENSOR, A.TYPE_PROTO, A.INTS])
    elif kind == "duplicate" and n.attribute:
        a = A()
        a.CopyFrom(rng.choice(n.attribute))
        a.i, a.f = a.i + 1, a.f + 1.0
        n.attribute.append(a)
    elif kind == "no_name":
        n.attribute.append(helper.make_attribute("", 3))
    else:  # a reference to an attribute of an enclosing function, outside any function
        a = A(name=rng.choice([a.name for a in n.attribute] or ["axis"]), type=A.INT,
              ref_attr_name="outer")
        _set_attr(n, a)
    return m


# -- encoding -------------------------------------------------------------------------------------

_MARK = "QXZMARK"  # placeholder, replaced in the serialized bytes by invalid UTF-8
_BAD_UTF8 = [b"\xff\xfe\xfd\xfc\xfb\xfa\xf9", b"ab\xc3\x28cde", b"\xed\xa0\x80abcd",
             b"\xc0\xafabcd\xff", b"\xf8\x88\x80\x80\x80ab", b"abcdef\x80"]


def non_utf8(m, rng):
    g = m.graph
    n = _pick_node(m, rng)
    where = rng.choice(["op_type", "node_name", "edge", "input_only", "output_only",
                        "graph_name", "attr_name", "attr_string", "dim_param", "init_name",
                        "domain", "doc_string", "opset_domain", "graph_input"])
    if where == "op_type" and n is not None:
        n.op_type = _MARK
    elif where == "node_name" and n is not None:
        n.name = _MARK
    elif where == "edge" and n is not None and n.output:  # renamed at producer and readers
        old = n.output[0]
        for node in g.node:
            for seq in (node.input, node.output):
                for i, name in enumerate(seq):
                    if name == old:
                        seq[i] = _MARK
        for vi in g.output:
            if vi.name == old:
                vi.name = _MARK
    elif where == "input_only" and n is not None and n.input:
        n.input[0] = _MARK
    elif where == "output_only" and n is not None and n.output:
        n.output[0] = _MARK
    elif where == "graph_name":
        g.name = _MARK
    elif where == "attr_name" and n is not None:
        n.attribute.append(helper.make_attribute(_MARK, 1))
    elif where == "attr_string" and n is not None:
        strings = [a for a in n.attribute if a.type == onnx.AttributeProto.STRING]
        if strings:
            strings[0].s = _MARK.encode()
        else:
            n.attribute.append(helper.make_attribute("auto_pad", _MARK))
    elif where == "dim_param" and g.input:
        g.input[0].type.tensor_type.shape.dim[0].dim_param = _MARK
    elif where == "init_name" and g.initializer:
        g.initializer[0].name = _MARK
    elif where == "domain" and n is not None:
        n.domain = _MARK
    elif where == "doc_string" and n is not None:
        n.doc_string = _MARK
    elif where == "opset_domain":
        m.opset_import.append(helper.make_opsetid(_MARK, 1))
    elif g.input:
        g.input[0].name = _MARK
    return m.SerializeToString().replace(_MARK.encode(), rng.choice(_BAD_UTF8))


# -- tensors ---------------------------------------------------------------------------------------


def _pick_init(m, rng) -> onnx.TensorProto | None:
    return rng.choice(m.graph.initializer) if m.graph.initializer else None


def init_dims(m, rng):
    t = _pick_init(m, rng)
    if t is None:
        return input_shape(m, rng)
    kind = rng.choice(["grow", "add_dim", "drop_dim", "negative", "huge", "zero"])
    dims = list(t.dims)
    if kind == "grow" and dims:
        dims[rng.randrange(len(dims))] += rng.choice([1, 2])
    elif kind == "add_dim":
        dims.insert(rng.randrange(len(dims) + 1), rng.choice([1, 2]))
    elif kind == "drop_dim" and dims:
        del dims[rng.randrange(len(dims))]
    elif kind == "negative" and dims:
        dims[0] = rng.choice([-1, -3, -(2**62)])
    elif kind == "huge":
        dims = (dims or [1])[:-1] + [rng.choice(_HUGE)]
    else:
        dims = (dims or [1])[:-1] + [0]
    del t.dims[:]
    t.dims.extend(dims)
    return m


def init_dtype(m, rng):
    t = _pick_init(m, rng)
    if t is None:
        return input_shape(m, rng)
    t.data_type = rng.choice(_ELEM_TYPES)
    return m


def init_data(m, rng):
    """raw_data of the wrong length, or data in the wrong field, or in two fields."""
    t = _pick_init(m, rng)
    if t is None:
        return input_shape(m, rng)
    raw = t.raw_data
    kind = rng.choice(["short", "long", "float_data", "both", "int64_data", "empty", "odd"])
    if kind == "short":
        t.raw_data = raw[: max(0, len(raw) - rng.choice([1, 4, len(raw)]))]
    elif kind == "long":
        t.raw_data = raw + b"\x00" * rng.choice([1, 4, 64])
    elif kind == "float_data":
        t.ClearField("raw_data")
        t.float_data.extend([1.0] * rng.choice([0, 1, 3, 100]))
    elif kind == "both":
        t.float_data.extend([1.0, 2.0])
    elif kind == "int64_data":
        t.ClearField("raw_data")
        t.int64_data.extend([1, 2, 3])
    elif kind == "empty":
        t.ClearField("raw_data")
    else:
        t.raw_data = raw[:-1] + b"\x00\x00\x00" if raw else b"\x01\x02\x03"
    return m


def init_external(m, rng):
    t = _pick_init(m, rng)
    if t is None:
        return input_shape(m, rng)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    location = rng.choice(["missing.bin", "../../../../etc/passwd", "/dev/zero", "/etc/hostname",
                           "", "."])
    entries = {"location": location}
    if rng.random() < 0.5:
        entries.update(offset=str(rng.choice([0, -1, 2**62])),
                       length=str(rng.choice([0, 4, 2**40])))
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    return m


def init_misc(m, rng):
    t = _pick_init(m, rng)
    if t is None:
        return input_shape(m, rng)
    kind = rng.choice(["segment", "empty_name", "string_data", "doubled"])
    if kind == "segment":
        t.segment.begin, t.segment.end = 0, 1
    elif kind == "empty_name":
        t.name = ""
    elif kind == "string_data":
        t.string_data.append(b"abc")
    else:
        t.raw_data = t.raw_data * 2
    return m


# -- declared types --------------------------------------------------------------------------------


def _mutate_type(vi: onnx.ValueInfoProto, rng: random.Random) -> None:
    tt = vi.type.tensor_type
    kind = rng.choice(["dim", "rank", "negative", "zero", "huge", "params", "no_shape",
                       "elem", "not_tensor", "no_type"])
    dims = tt.shape.dim
    if kind == "dim" and dims:
        d = dims[rng.randrange(len(dims))]
        d.dim_value = (d.dim_value or 1) + rng.choice([1, 2, 5])
    elif kind == "rank":
        if dims and rng.random() < 0.5:
            del dims[len(dims) - 1]
        else:
            dims.add().dim_value = 1
    elif kind == "negative" and dims:
        dims[0].dim_value = rng.choice([-1, -5])
    elif kind == "zero" and dims:
        dims[rng.randrange(len(dims))].dim_value = 0
    elif kind == "huge" and dims:
        dims[rng.randrange(len(dims))].dim_value = rng.choice(_HUGE)
    elif kind == "params":
        for i, d in enumerate(dims):
            d.dim_param = rng.choice(["N", f"d{i}", "1bad name", ""])
    elif kind == "no_shape":
        tt.ClearField("shape")
    elif kind == "elem":
        tt.elem_type = rng.choice(_ELEM_TYPES)
    elif kind == "not_tensor":
        vi.type.sequence_type.elem_type.tensor_type.elem_type = F
    else:
        vi.ClearField("type")


def input_shape(m, rng):
    if not m.graph.input:
        return output_shape(m, rng)
    _mutate_type(rng.choice(m.graph.input), rng)
    return m


def output_shape(m, rng):
    if not m.graph.output:
        return m
    _mutate_type(rng.choice(m.graph.output), rng)
    return m


def value_info(m, rng):
    """A declared type of an intermediate value that contradicts what the node computes."""
    inner = [o for n in m.graph.node for o in n.output if o]
    if not inner:
        return output_shape(m, rng)
    vi = _vi(rng.choice(inner), rng.choice([F, I64, TensorProto.FLOAT16]),
             [rng.choice([1, 2, 3, 7]) for _ in range(rng.choice([0, 1, 2, 3, 4]))])
    m.graph.value_info.append(vi)
    return m


def init_declared(m, rng):
    """An initializer also listed as a graph input, declared with another shape or dtype."""
    t = _pick_init(m, rng)
    if t is None:
        return input_shape(m, rng)
    dims = list(t.dims)
    if dims and rng.random() < 0.6:
        dims[rng.randrange(len(dims))] += 1
    else:
        dims = dims + [1]
    elem = t.data_type if rng.random() < 0.7 else rng.choice([F, I64, TensorProto.INT32])
    m.graph.input.append(_vi(t.name, elem, dims))
    return m


# -- opsets, domains, versions ---------------------------------------------------------------------


def opset(m, rng):
    kind = rng.choice(["version", "remove", "duplicate", "node_domain", "ir_version",
                       "ml_domain", "local_function"])
    default = next((o for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if kind == "version" and default is not None:
        default.version = rng.choice([0, 1, 6, 9, 12, 999, -3, 2**40])
    elif kind == "remove":
        del m.opset_import[:]
        if rng.random() < 0.5:
            m.opset_import.append(helper.make_opsetid("com.example", 1))
    elif kind == "duplicate":
        m.opset_import.append(helper.make_opsetid(rng.choice(["", "ai.onnx"]),
                                                  rng.choice([11, 13, 18])))
    elif kind == "node_domain" and m.graph.node:
        _pick_node(m, rng).domain = rng.choice(["com.example", "ai.onnx.ml", "com.microsoft"])
    elif kind == "ir_version":
        m.ir_version = rng.choice([0, 1, 3, 99, 2**40])
    elif kind == "ml_domain" and m.graph.node:
        n = _pick_node(m, rng)
        n.domain = "ai.onnx.ml"
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", rng.choice([1, 3, 99])))
    else:
        _local_function(m, rng)
    return m


def _local_function(m: onnx.ModelProto, rng: random.Random) -> None:
    """A node calling a model-local function whose body is broken (recursive, dangling,
    or calling an unknown op)."""
    if not m.graph.node:
        return
    n = m.graph.node[0]
    body_kind = rng.choice(["recursive", "dangling", "unknown_op"])
    if body_kind == "recursive":
        body = [helper.make_node("F", ["a"], ["b"], domain="local")]
    elif body_kind == "dangling":
        body = [helper.make_node("Relu", ["zz"], ["b"])]
    else:
        body = [helper.make_node("NoSuchOp", ["a"], ["b"])]
    fn = helper.make_function("local", "F", ["a"], ["b"], body,
                              [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("local", 1))
    n.op_type, n.domain = "F", "local"
    del n.input[1:]
    del n.output[1:]
    del n.attribute[:]


# -- bytes -----------------------------------------------------------------------------------------


def truncate(m, rng):
    data = m.SerializeToString()
    return data[: rng.randrange(len(data))]


def bitflip(m, rng):
    data = bytearray(m.SerializeToString())
    for _ in range(rng.choice([1, 1, 2, 4, 8])):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def garbage(m, rng):
    data = m.SerializeToString()
    kind = rng.choice(["random", "empty", "twice", "huge_length", "zeros", "splice"])
    if kind == "random":
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 10, 300])))
    if kind == "empty":
        return b""
    if kind == "twice":  # protobuf merges the two: every node and initializer twice
        return data + data
    if kind == "huge_length":  # field 7 (graph), length-delimited, claims 2**62 bytes
        return b"\x3a" + b"\xff" * 8 + b"\x3f" + data
    if kind == "zeros":
        return b"\x00" * 64
    i, j = sorted(rng.randrange(len(data)) for _ in range(2))
    k = rng.randrange(len(data))
    return data[:k] + data[i:j] + data[k:]


# -- huge and edge values in the tensors that hold shapes, axes and indices ------------------------


def shape_values(m, rng):
    ints = [t for t in m.graph.initializer if t.data_type in (I64, TensorProto.INT32)]
    if not ints:
        return huge_dims(m, rng)
    t = rng.choice(ints)
    arr = numpy_helper.to_array(t).copy()
    if arr.size:
        flat = arr.reshape(-1)
        flat[rng.randrange(flat.size)] = rng.choice(
            [v for v in _EDGE_INTS if np.iinfo(arr.dtype).min <= v <= np.iinfo(arr.dtype).max])
    elif rng.random() < 0.5:
        arr = np.array([rng.choice(_EDGE_INTS[:12])], arr.dtype)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return m


def symbolic_dims(m, rng):
    """Graph input dims made symbolic (dim_param), one or all: converters see names where
    they may expect sizes."""
    for vi in m.graph.input if rng.random() < 0.5 else m.graph.input[:1]:
        dims = vi.type.tensor_type.shape.dim
        chosen = range(len(dims)) if rng.random() < 0.5 else [rng.randrange(len(dims))] \
            if len(dims) else []
        for i in chosen:
            dims[i].dim_param = rng.choice(["N", "S", f"d{i}"])
    return m


def huge_dims(m, rng):
    """A graph input of huge size, or an int initializer holding huge values."""
    g = m.graph
    ints = [t for t in g.initializer if t.data_type == I64]
    if ints and rng.random() < 0.5:
        t = rng.choice(ints)
        arr = numpy_helper.to_array(t).copy().reshape(-1)
        if arr.size:
            arr[rng.randrange(arr.size)] = rng.choice([2**20, 2**31, 2**40, 10**6])
            t.CopyFrom(numpy_helper.from_array(arr.reshape(list(t.dims)), t.name))
        return m
    if g.input:
        dims = rng.choice(g.input).type.tensor_type.shape.dim
        if len(dims):
            dims[rng.randrange(len(dims))].dim_value = rng.choice([2**20, 2**31, 2**40, 10**7])
    return m


MUTATIONS: list[tuple[str, Callable, int]] = [  # (name, function, weight)
    ("drop_input", drop_input, 4), ("extra_input", extra_input, 3),
    ("drop_output", drop_output, 3), ("extra_output", extra_output, 2),
    ("no_inputs_or_outputs", no_inputs_or_outputs, 2), ("dangling", dangling, 2),
    ("cycle", cycle, 2), ("duplicate_names", duplicate_names, 3),
    ("empty_graph", empty_graph, 1), ("attr_value", attr_value, 10),
    ("attr_type", attr_type, 5), ("attr_drop", attr_drop, 3),
    ("attr_unknown", attr_unknown, 2), ("attr_broken", attr_broken, 3),
    ("non_utf8", non_utf8, 5), ("init_dims", init_dims, 3), ("init_dtype", init_dtype, 3),
    ("init_data", init_data, 3), ("init_external", init_external, 2),
    ("init_misc", init_misc, 2), ("input_shape", input_shape, 4),
    ("output_shape", output_shape, 3), ("value_info", value_info, 2),
    ("init_declared", init_declared, 2), ("opset", opset, 4), ("truncate", truncate, 2),
    ("bitflip", bitflip, 3), ("garbage", garbage, 1), ("shape_values", shape_values, 5),
    ("huge_dims", huge_dims, 3), ("symbolic_dims", symbolic_dims, 3),
]


def make_case(seed: int, case: int) -> tuple[str, bytes]:
    """(description, serialized model) of case ``case``: a base model and its mutations."""
    rng = random.Random(f"{seed}:{case}")
    base_name, base = BASES[case % len(BASES)]
    model = base(rng)
    if (case // len(BASES)) % 20 == 0:
        return f"{base_name} (valid)", model.SerializeToString()
    names, fns, weights = zip(*MUTATIONS)
    applied = []
    result: onnx.ModelProto | bytes = model
    for _ in range(1 if rng.random() < 0.75 else 2):
        if isinstance(result, bytes):
            break  # a byte-level mutation ends the chain
        k = rng.choices(range(len(fns)), weights)[0]
        applied.append(names[k])
        try:
            result = fns[k](result, rng)
        except Exception:  # noqa: BLE001  (onnx's helpers refuse what an earlier one broke)
            applied[-1] += " (failed)"
            break
    data = result if isinstance(result, bytes) else result.SerializeToString()
    return f"{base_name} + {' + '.join(applied)}", data


# -- running one case ------------------------------------------------------------------------------


_PYTHON_ERRORS = (IndexError, TypeError, KeyError, AttributeError, ValueError, ZeroDivisionError,
                  UnboundLocalError, AssertionError, NameError, RecursionError, OverflowError,
                  UnicodeError, MemoryError, RuntimeError)


def _internal(e: BaseException) -> bool:
    """A KilnError whose message is a Python (or TVM) error it wraps: kiln did not check
    what it should have, and says so in words meant for its own developers."""
    text = str(e)
    cause = e.__cause__
    while cause is not None:
        if isinstance(cause, _PYTHON_ERRORS) and (
                f"{type(cause).__name__}:" in text or (str(cause) and str(cause) in text)):
            return True
        cause = cause.__cause__
    return any(s in text for s in ("conversion failed:", "lowering failed:",
                                   "list index out of range", "object is not",
                                   "unsupported operand", "has no attribute"))


def _inputs(infos, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for info in infos:
        shape, dtype = tuple(info.shape), info.dtype
        if dtype == "bool":
            feeds[info.name] = rng.random(shape) < 0.5
        elif dtype.startswith(("int", "uint")):
            feeds[info.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _ort(data: bytes, feeds: dict[str, np.ndarray]):
    """onnxruntime's outputs, or the reason it refuses the model (a string)."""
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        if sorted(names) != sorted(feeds):
            return f"onnxruntime wants inputs {names}"
        return sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001  (any refusal of onnxruntime's)
        return f"onnxruntime: {_last_line(str(e))}"


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _same(got: list[np.ndarray], want: list[np.ndarray]) -> str | None:
    """Why ``got`` differs from ``want`` (None if it does not)."""
    if len(got) != len(want):
        return f"{len(got)} outputs, onnxruntime gives {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w)
        if g.shape != w.shape or g.dtype != w.dtype:
            return f"output {i}: {g.dtype}{list(g.shape)}, onnxruntime {w.dtype}{list(w.shape)}"
        if np.issubdtype(w.dtype, np.floating):
            tol = 1e-2 if w.dtype == np.float16 else 1e-3
            if not np.array_equal(np.isnan(g), np.isnan(w)):
                return f"output {i}: NaN at other positions"
            if not np.allclose(g, w, rtol=tol, atol=tol, equal_nan=True):
                return f"output {i}: max difference {np.nanmax(np.abs(g - w))}"
        elif not np.array_equal(g, w):
            return f"output {i}: {int((g != w).sum())} elements differ"
    return None


def run_case(data: bytes, seed: int = 0, phase: Callable[[str], None] = lambda p: None
             ) -> tuple[str, str]:
    """(class, detail) of one model: import, compile at O2, run, compare with onnxruntime.
    ``phase("oracle")`` is called before onnxruntime runs (which may crash on its own)."""
    import warnings

    import kiln
    from kiln.errors import KilnError

    warnings.simplefilter("ignore")
    try:
        graph = kiln.from_onnx(data)
        compiled = kiln.compile(graph, opt_level=2)
        feeds = _inputs(compiled.inputs, np.random.default_rng(seed))
        got = compiled.run(feeds)
    except KilnError as e:
        if _internal(e):
            return "internal", f"{type(e).__name__}: {_last_line(str(e))}"
        return "refused", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    except Exception as e:  # noqa: BLE001  (what this campaign looks for)
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        return "exception", f"{type(e).__name__}: {_last_line(str(e))}{where}"
    if any(a.dtype.name == "bfloat16" for a in feeds.values()):
        return "no-oracle", "bfloat16 inputs (onnxruntime takes no numpy bfloat16)"
    phase("oracle")
    want = _ort(data, feeds)
    if isinstance(want, str):
        return "no-oracle", want
    why = _same(got, want)
    return ("wrong", why) if why else ("match", "")


# -- workers ---------------------------------------------------------------------------------------


def worker(seed: int) -> None:
    """Read case numbers on stdin, answer one JSON line per case on the original stdout."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever kiln or TVM prints goes to stderr, not into the answers

    def say(answer: dict) -> None:
        out.write(json.dumps(answer) + "\n")
        out.flush()

    for line in sys.stdin:
        case = int(line)
        desc, data = make_case(seed, case)
        cls, detail = run_case(data, seed + case,
                               lambda p, case=case: say({"case": case, "phase": p}))
        say({"case": case, "class": cls, "detail": detail})


class Worker:
    """One child process running cases; replaced when a case kills or hangs it."""

    def __init__(self, seed: int, memory_gb: float):
        self.seed, self.memory_gb = seed, memory_gb
        self.proc: subprocess.Popen | None = None
        self.buffer = b""

    def start(self) -> None:
        limit = int(self.memory_gb * 2**30)

        def limits():  # a runaway allocation fails in the child instead of the machine
            import resource

            os.setsid()
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(self.seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=limits)
        self.buffer = b""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.proc = None

    def run(self, case: int, timeout: float) -> dict:
        """The worker's answer for ``case``; a hang or crash once kiln is done and
        onnxruntime runs is onnxruntime's, so no oracle rather than a bad class."""
        if self.proc is None:
            self.start()
        try:
            self.proc.stdin.write(f"{case}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._died(case, False)
        deadline, oracle = time.monotonic() + timeout, False
        while True:
            line = self._line(deadline)
            if line is None:
                self.stop()
                if oracle:
                    return {"case": case, "class": "no-oracle", "detail": "onnxruntime hangs"}
                return {"case": case, "class": "hang", "detail": f"no answer in {timeout:.0f} s"}
            if not line:
                return self._died(case, oracle)
            answer = json.loads(line)
            if "class" in answer:
                return answer
            oracle = answer.get("phase") == "oracle"

    def _line(self, deadline: float) -> bytes | None:
        """The next line from the worker; b"" when it died, None past the deadline."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def _died(self, case: int, oracle: bool) -> dict:
        code = self.proc.wait()
        self.proc = None
        how = f"signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit {code}"
        if oracle:
            return {"case": case, "class": "no-oracle", "detail": f"onnxruntime died: {how}"}
        return {"case": case, "class": "crash", "detail": f"the worker died: {how}"}


def campaign(seed: int, cases: list[int], jobs: int, timeout: float, memory_gb: float,
             progress: bool) -> list[dict]:
    todo: queue.Queue[int] = queue.Queue()
    for c in cases:
        todo.put(c)
    results: list[dict] = []
    lock = threading.Lock()

    def loop():
        w = Worker(seed, memory_gb)
        try:
            while True:
                try:
                    case = todo.get_nowait()
                except queue.Empty:
                    return
                r = w.run(case, timeout)
                with lock:
                    results.append(r)
                    if progress and len(results) % 50 == 0:
                        counts = Counter(x["class"] for x in results)
                        print(f"  {len(results)}/{len(cases)}: {dict(counts)}", file=sys.stderr,
                              flush=True)
        finally:
            w.stop()

    threads = [threading.Thread(target=loop) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r["case"])


def report(seed: int, results: list[dict], seconds: float, show: tuple[str, ...] = ()) -> int:
    counts = Counter(r["class"] for r in results)
    bad = [r for r in results if r["class"] in BAD]
    for r in (r for r in results if r["class"] in BAD + tuple(show)):
        desc, _ = make_case(seed, r["case"])
        print(f"{r['class']:<9} case {r['case']:>5} ({desc}): {r['detail']}")
    print(f"\n{len(results)} malformed ONNX models (seed {seed}) in {seconds:.0f} s")
    for cls in GOOD + BAD:
        mark = " <-- bad" if cls in BAD and counts[cls] else ""
        print(f"  {cls:<10} {counts[cls]:>6}{mark}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help="cases to run (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--start", type=int, default=0, help="first case number")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    p.add_argument("--memory-gb", type=float, default=8.0, help="data limit per worker")
    p.add_argument("--case", type=int, help="run this one case here, traceback shown")
    p.add_argument("--save", metavar="FILE", help="with --case: write its model to FILE")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--show", action="append", default=[], choices=GOOD,
                   help="also list the cases of this good class")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.seed)
        return 0
    if args.case is not None:
        return _one(args.seed, args.case, args.save)
    t0 = time.time()
    results = campaign(args.seed, list(range(args.start, args.start + args.count)), args.jobs,
                       args.timeout, args.memory_gb, not args.quiet)
    return report(args.seed, results, time.time() - t0, tuple(args.show))


def _one(seed: int, case: int, save: str | None) -> int:
    desc, data = make_case(seed, case)
    print(f"case {case}: {desc} ({len(data)} bytes)")
    if save:
        with open(save, "wb") as f:
            f.write(data)
    import kiln
    from kiln.errors import KilnError

    try:
        compiled = kiln.compile(kiln.from_onnx(data), opt_level=2)
    except KilnError as e:
        print(f"{type(e).__name__}: {e}")
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__)
        return 0
    print("compiled")
    cls, detail = run_case(data, seed + case)
    print(f"{cls}: {detail}")
    del compiled
    return 1 if cls in BAD else 0


if __name__ == "__main__":
    sys.exit(main())
