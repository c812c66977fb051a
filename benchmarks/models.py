"""Real models, random weights: kiln (O2, O3) vs onnxruntime vs OpenVINO vs PyTorch eager.

    python benchmarks/models.py                                  # every model, 2 threads
    python benchmarks/models.py --models squeezenet,lstm_lm --repeat 5
    python benchmarks/models.py --models resnet50@8,bert --engines kiln,onnxruntime
    python benchmarks/models.py --list
    python benchmarks/models.py --json results.json             # also save the figures
    python benchmarks/models.py --precision bf16                 # kiln bf16 vs OpenVINO's default
    python benchmarks/models.py --precision int8                 # quantized models, 3 engines

Seventeen architectures (``--list``) are built from their configurations with random weights:
the transformers with ``transformers``' model classes (BERT-base, DistilBERT, GPT-2 small,
T5-small's encoder, ViT-B/16, ResNet-50, MobileNetV2, EfficientNet-B0, RegNetY-400MF,
ConvNeXt-tiny), the image classifiers that ``transformers`` lacks with torchvision's layer
structure (``vision_models.py``: ResNet-18, DenseNet-121, Inception v3, SqueezeNet 1.1,
MobileNetV3-small), and two recurrent language models of plain ``torch.nn`` (a 2-layer LSTM,
a 2-layer GRU). Nothing is downloaded. Every batch norm gets random affine weights and
running statistics measured on random images, then jittered (so that folding a batch norm
into its conv is exercised with non-trivial values and activations stay O(1)).

Each model is exported once by PyTorch's TorchScript exporter (opset 17, batch 1 unless
``--batch`` or ``NAME@BATCH``) and cached under ``--cache`` (default
``~/.cache/kiln/bench-models``), keyed by name, batch and ``CACHE_VERSION`` (re-exported when
torch or transformers changes). Every model runs in a child process of its own (this script
with a hidden flag), killed after ``--timeout`` seconds: memory and thread pools do not leak
from one model to the next, and a model that fails or hangs gets a row saying why.

In the child: onnxruntime (default settings, ``intra_op_num_threads = --threads``) gives the
reference outputs; kiln (``kiln.from_onnx`` + ``kiln.compile`` at each ``--levels``, O3 with
its default layout budget), OpenVINO (CPU, ``INFERENCE_PRECISION_HINT=f32``,
``INFERENCE_NUM_THREADS = --threads``, latency hint) and PyTorch eager
(``torch.set_num_threads``) are checked against it: largest absolute error and that error
over the output's largest magnitude; above ``--tol`` (1e-3) it is flagged ``!`` in the table.
Then all engines are timed in alternating blocks of calls (``timing.paired_medians``).
``ort/kiln`` = onnxruntime ms / best kiln ms, ``ov/kiln`` the same for OpenVINO: above 1 kiln
is faster. ``compile s`` is kiln's ONNX import + compile at O2 / O3 (O3's layout measurements
are cached in ``~/.cache/kiln/layout.json``: a first run compiles slower). ``others`` is the
share of the CPUs that other processes used while the model was timed (from /proc/stat):
well above 0, the figures are noisy, PyTorch's most (its OpenMP threads wait for each other
at every op, and a busy core makes that wait long).

``--precision bf16`` (or fp16) adds kiln compiled with that precision (``kiln bf16``, at the
highest of ``--levels``) and OpenVINO at its default precision (``openvino default``: bf16 on
CPUs with AMX or AVX512-BF16), and prints a second table: their times beside kiln fp32 and
onnxruntime, and their accuracy against onnxruntime fp32 (largest error and mean error, both
over the output's largest magnitude, and top-1 agreement over the rows of a logits output);
above ``--low-tol`` (0.25: bf16 on these random-weight CNNs errs by up to 0.11, OpenVINO's
bf16 alike) an output is flagged ``!``.

``--precision int8`` quantizes each exported model as an onnxruntime user does:
``onnxruntime.quantization.quantize_static`` (QDQ form, uint8 activations and int8 weights
per channel: the x86 form, VNNI's; OpenVINO 2026.4 refuses to compile int8 activations with
"No suitable implementations"), calibrated on ``CALIBRATION`` inputs (the image classifiers:
random crops of photographs, ``images.py``; the others: random inputs like the model's), cached
beside the float model, and runs that model on kiln (``kiln int8``, at the highest of
``--levels``), onnxruntime (``onnxruntime int8``) and OpenVINO (``openvino int8``); the
second table gives their times beside kiln fp32, kiln's largest error against onnxruntime
int8 (the same quantized model: flagged above ``--low-tol``), and each engine's accuracy
against onnxruntime fp32 (the quantization's error, which all three share, plus its own).

At int8 the image classifiers' check and timing input is the first photograph (below), not
random noise: a model calibrated on photographs saturates on noise, where the engines then
differ by their rounding alone (up to 0.4 of the output's magnitude, OpenVINO as much as
kiln). With a reduced precision, the image classifiers also run on photographs: the two dozen views
of the colour photographs that ship inside scikit-image (``images.py``: centre crops and their
mirror images, ImageNet's normalization), and a third table gives each reduced-precision
engine's top-1 agreement with onnxruntime fp32 on them and its errors, beside the number of
distinct classes fp32 picks (random weights favour a few classes: where it picks one, top-1
agreement says little).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
# not benchmarks/ on the path: its kernels.py would shadow the ``kernels`` package that
# transformers imports; the sibling modules are loaded by file (``sibling``)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def sibling(name: str):
    """benchmarks/<name>.py, imported by its path."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


CACHE_VERSION = 2
OPSET = 17
DEFAULT_EXTRAS = ("resnet50@8", "bert@8")
ENGINES = ("kiln", "onnxruntime", "openvino", "pytorch")


def log(msg: str) -> None:
    print(f"[models {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ the models
@dataclass(frozen=True)
class Spec:
    family: str
    about: str
    build: Callable[[], Any]  # () -> torch module with random weights
    inputs: Callable[[int], dict]  # batch -> {input name: numpy array}
    forward_kw: dict = field(default_factory=dict)  # fixed keyword arguments of forward


def _images(size: int = 224) -> Callable[[int], dict]:
    def make(batch: int) -> dict:
        import numpy as np

        rng = np.random.default_rng(size)
        return {"pixel_values": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
    return make


def _tokens(seq: int, vocab: int, mask: bool = True) -> Callable[[int], dict]:
    """Token ids, and an attention mask whose last seq/8 positions are padding."""
    def make(batch: int) -> dict:
        import numpy as np

        rng = np.random.default_rng(seq)
        out = {"input_ids": rng.integers(0, vocab, (batch, seq)).astype(np.int64)}
        if mask:
            m = np.ones((batch, seq), np.int64)
            m[:, seq - seq // 8:] = 0
            out["attention_mask"] = m
        return out
    return make


HF = {"return_dict": False}  # transformers' models: a tuple of outputs


def _hf(cls: str, config: str, **kw) -> Callable[[], Any]:
    def build():
        import transformers

        cfg = getattr(transformers, config)(**kw)
        return getattr(transformers, cls)(cfg)
    return build


def _efficientnet_b0() -> Any:
    """transformers' EfficientNet-B0, its pooler (``AvgPool2d(1280, ceil_mode=True)`` over a
    7x7 map: a global average whose ONNX AveragePool, kernel larger than its input,
    OpenVINO's importer rejects) replaced by that global average, as torchvision has it."""
    from torch import nn

    model = _hf("EfficientNetForImageClassification", "EfficientNetConfig",
                width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
                dropout_rate=0.2, num_labels=1000)()
    model.efficientnet.pooler = nn.AdaptiveAvgPool2d(1)
    return model


def _tv(fn: str) -> Callable[[], Any]:
    def build():
        return getattr(sibling("vision_models"), fn)()
    return build


def _rnn(kind: str, vocab: int = 10000, d: int = 512, layers: int = 2) -> Callable[[], Any]:
    def build():
        from torch import nn

        class LanguageModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(vocab, d)
                self.rnn = getattr(nn, kind)(d, d, num_layers=layers, batch_first=True)
                self.head = nn.Linear(d, vocab)

            def forward(self, input_ids):
                return self.head(self.rnn(self.embed(input_ids))[0])
        return LanguageModel()
    return build


MODELS: dict[str, Spec] = {
    "bert": Spec("transformer", "BERT-base (12 layers, 768 wide), seq 128",
                 _hf("BertModel", "BertConfig"), _tokens(128, 30522), HF),
    "distilbert": Spec("transformer", "DistilBERT-base (6 layers), seq 128",
                       _hf("DistilBertModel", "DistilBertConfig"), _tokens(128, 30522), HF),
    "gpt2": Spec("transformer", "GPT-2 small (12 layers, causal), seq 64, no KV cache",
                 _hf("GPT2Model", "GPT2Config", use_cache=False), _tokens(64, 50257),
                 dict(HF, use_cache=False)),
    "t5_encoder": Spec("transformer", "T5-small encoder (6 layers, 512 wide), seq 128",
                       _hf("T5EncoderModel", "T5Config"), _tokens(128, 32128), HF),
    "vit_b16": Spec("transformer", "ViT-B/16 classifier, 224x224",
                    _hf("ViTForImageClassification", "ViTConfig", num_labels=1000),
                    _images(), HF),
    "resnet18": Spec("cnn", "ResNet-18 (torchvision layers), 224x224", _tv("resnet18"),
                     _images()),
    "resnet50": Spec("cnn", "ResNet-50 classifier (transformers), 224x224",
                     _hf("ResNetForImageClassification", "ResNetConfig", num_labels=1000),
                     _images(), HF),
    "mobilenet_v2": Spec("cnn", "MobileNetV2 1.0 classifier (transformers), 224x224",
                         _hf("MobileNetV2ForImageClassification", "MobileNetV2Config",
                             num_labels=1000), _images(), HF),
    "mobilenet_v3_small": Spec("cnn", "MobileNetV3-small (torchvision layers), 224x224",
                               _tv("mobilenet_v3_small"), _images()),
    "efficientnet_b0": Spec("cnn", "EfficientNet-B0 classifier (transformers), 224x224",
                            _efficientnet_b0, _images(), HF),
    "regnety_400mf": Spec("cnn", "RegNetY-400MF classifier (transformers), 224x224",
                          _hf("RegNetForImageClassification", "RegNetConfig",
                              depths=[1, 3, 6, 6], hidden_sizes=[48, 104, 208, 440],
                              groups_width=8, layer_type="y", num_labels=1000),
                          _images(), HF),
    "densenet121": Spec("cnn", "DenseNet-121 (torchvision layers), 224x224",
                        _tv("densenet121"), _images()),
    "inception_v3": Spec("cnn", "Inception v3 (torchvision layers, no aux head), 299x299",
                         _tv("inception_v3"), _images(299)),
    "squeezenet": Spec("cnn", "SqueezeNet 1.1 (torchvision layers), 224x224",
                       _tv("squeezenet1_1"), _images()),
    "convnext_tiny": Spec("cnn", "ConvNeXt-tiny classifier (transformers), 224x224",
                          _hf("ConvNextForImageClassification", "ConvNextConfig",
                              num_labels=1000), _images(), HF),
    "lstm_lm": Spec("recurrent", "2-layer LSTM language model, 512 wide, vocab 10k, seq 32",
                    _rnn("LSTM"), _tokens(32, 10000, mask=False)),
    "gru_lm": Spec("recurrent", "2-layer GRU language model, 512 wide, vocab 10k, seq 32",
                   _rnn("GRU"), _tokens(32, 10000, mask=False)),
}


def prepare(model, inputs: dict):
    """Random batch-norm affine weights and running statistics, then eval mode.

    The statistics are measured in one training-mode pass over two random inputs (so that
    activations stay O(1) through a hundred layers), then jittered: each mean moves by up to
    a tenth of its standard deviation, each variance is scaled by 0.8 to 1.25."""
    import numpy as np
    import torch
    from torch import nn

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    g = torch.Generator().manual_seed(1)

    def uniform(n: int):  # in [-1, 1)
        return 2 * torch.rand(n, generator=g) - 1

    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(1 + 0.5 * uniform(bn.num_features))
            bn.bias.copy_(0.2 * torch.randn(bn.num_features, generator=g))
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average over the calibration pass
        calib = [torch.randn((2, *v.shape[1:]), generator=g) if v.dtype.kind == "f" else
                 torch.from_numpy(np.repeat(v[:1], 2, axis=0)) for v in inputs.values()]
        model.train()
        model(*calib)
        for bn in bns:
            bn.running_mean += 0.1 * bn.running_var.sqrt() * uniform(bn.num_features)
            bn.running_var *= torch.exp(math.log(1.25) * uniform(bn.num_features))
            bn.momentum = 0.1
    return model.eval()


def wrap(model, names: list[str], forward_kw: dict):
    """``model`` taking the inputs positionally and returning a tuple of tensors (models
    with ``forward_kw``, transformers' ones, are called with the inputs by name)."""
    import torch

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            out = (self.model(**dict(zip(names, args)), **forward_kw) if forward_kw
                   else self.model(*args))
            if isinstance(out, torch.Tensor):
                return (out,)
            return tuple(o for o in out if isinstance(o, torch.Tensor))

    return Positional()


def build_model(name: str, batch: int):
    """(torch module in eval mode, {input name: numpy array}); the same weights every time
    for a given name (and torch/transformers version)."""
    import torch

    spec = MODELS[name]
    inputs = spec.inputs(batch)
    torch.manual_seed(0)
    model = wrap(spec.build(), list(inputs), spec.forward_kw)
    return prepare(model, inputs), inputs


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("kiln", "apache-tvm", "torch", "transformers", "onnx", "onnxruntime",
                "openvino", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def cached_onnx(name: str, batch: int, cache: Path, model, inputs: dict) -> tuple[Path, bool]:
    """The model's ONNX file in ``cache``, exported now unless an export made by the same
    script version, torch and transformers is there. (path, whether it was exported now)"""
    import torch

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}-b{batch}-v{CACHE_VERSION}.onnx"
    meta_path = path.with_suffix(".json")
    v = versions()
    meta = {"model": name, "batch": batch, "cache_version": CACHE_VERSION, "opset": OPSET,
            "torch": v["torch"], "transformers": v["transformers"],
            "inputs": {k: [list(a.shape), str(a.dtype)] for k, a in inputs.items()}}
    if path.exists() and meta_path.exists():
        try:
            if json.loads(meta_path.read_text()) == meta:
                return path, False
        except ValueError:
            pass
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=cache)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, tuple(torch.from_numpy(a) for a in inputs.values()), tmp,
                              input_names=list(inputs), opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta_path.write_text(json.dumps(meta, indent=1))
    return path, True


# ------------------------------------------------------------------------- the child process
def compare(got, want: list) -> tuple[float, float]:
    """(largest absolute error, that error / the reference's largest magnitude), over all
    outputs; inf where an output is missing, misshapen or not finite where the reference is."""
    import numpy as np

    got = list(got)
    if len(got) != len(want):
        return math.inf, math.inf
    worst_abs = worst_rel = 0.0
    for g, w in zip(got, want):
        g = np.asarray(g.numpy() if hasattr(g, "numpy") else g)
        w = np.asarray(w)
        if g.shape != w.shape:
            return math.inf, math.inf
        diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
        err = float(diff.max()) if diff.size else 0.0
        if not math.isfinite(err):
            err = math.inf
        scale = float(np.abs(w).max()) if w.size else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
    return worst_abs, worst_rel


def accuracy(got, want: list) -> dict[str, Any]:
    """Of a reduced-precision run against the float32 reference: the mean absolute error over
    the largest magnitude (all outputs), and for outputs of logits (rank >= 2, a last axis
    above 1, the first output only) the share of rows whose argmax agrees."""
    import numpy as np

    errs, scales = [], []
    for g, w in zip(got, want):
        g = np.asarray(g.numpy() if hasattr(g, "numpy") else g, np.float64)
        w = np.asarray(w, np.float64)
        if g.shape == w.shape and w.size:
            errs.append(np.abs(g - w).mean())
            scales.append(np.abs(w).max())
    out: dict[str, Any] = {"mean_rel": max((e / s for e, s in zip(errs, scales) if s > 0),
                                           default=None)}
    g, w = (np.asarray(x.numpy() if hasattr(x, "numpy") else x) for x in (got[0], want[0]))
    if w.ndim >= 2 and w.shape[-1] > 1 and g.shape == w.shape:
        out["top1"] = float((g.argmax(-1) == w.argmax(-1)).mean())
    return out


def photo_accuracy(run: Callable[[dict], Any], feeds: list[dict], want: list) -> dict:
    """A reduced-precision engine on the photographs (``images.evaluation``) against the
    float32 reference's logits ``want``: top-1 agreement over all the images, and the largest
    and mean absolute error over the logits' largest magnitude."""
    import numpy as np

    firsts = [run(f)[0] for f in feeds]
    got = np.concatenate([np.asarray(x.numpy() if hasattr(x, "numpy") else x, np.float64)
                          for x in firsts])
    ref = np.concatenate(want).astype(np.float64)
    scale = np.abs(ref).max()
    return {"top1": float((got.argmax(-1) == ref.argmax(-1)).mean()), "count": len(ref),
            "max_rel": float(np.abs(got - ref).max() / scale),
            "mean_rel": float(np.abs(got - ref).mean() / scale)}


def image_size(inputs: dict) -> int | None:
    """The side of an image classifier's square input (its one input, ``pixel_values``)."""
    a = inputs.get("pixel_values")
    return a.shape[-1] if a is not None and len(inputs) == 1 else None


CALIBRATION = 8  # inputs that calibrate a static quantization
QUANT_VERSION = 2  # in the quantized model's file name; 2: image models calibrate on photos


def calibration_inputs(inputs: dict, count: int = CALIBRATION) -> list[dict]:
    """Inputs like ``inputs``: for image classifiers, random crops of the photographs
    (``images.calibration``), for others the float inputs drawn anew (standard normal) and
    integer ones (token ids, masks) kept."""
    import numpy as np

    size = image_size(inputs)
    if size is not None:
        batch = inputs["pixel_values"].shape[0]
        return [{"pixel_values": a} for a in sibling("images").calibration(size, batch, count)]
    rng = np.random.default_rng(2024)
    return [{k: rng.standard_normal(a.shape).astype(a.dtype) if a.dtype.kind == "f" else a
             for k, a in inputs.items()} for _ in range(count)]


def cached_int8(path: Path, inputs: dict) -> tuple[Path, bool]:
    """``path`` quantized by onnxruntime's static quantization (QDQ, uint8 activations,
    int8 per-channel weights), made once beside it. (path, whether it was made now)"""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    out = path.with_name(path.stem + f"-u8s8-q{QUANT_VERSION}.onnx")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out, False

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(calibration_inputs(inputs))

        def get_next(self):
            return next(self.feeds, None)

    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        quantize_static(str(path), tmp, Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out, True


def child(args) -> int:
    """Build, export, compile, check and time one model; results (also partial ones, stage
    by stage) go to ``args._result`` as JSON."""
    item = args._child
    name, batch = parse_item(item, args.batch)
    result_path = Path(args._result)
    res: dict[str, Any] = {"model": item, "name": name, "batch": batch, "engines": {},
                           "stage": "start"}

    def stage(what: str) -> None:
        res["stage"] = what
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, result_path)
        if what != "done":
            log(f"{item}: {what}")

    set_threads(args.threads)
    stage("building the model")
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    model, inputs = build_model(name, batch)
    if args.precision == "int8" and image_size(inputs) is not None:
        # calibrated on photographs, the quantized model is checked and timed on one: far
        # outside its calibrated ranges (random noise) engines differ by their rounding alone
        inputs = {"pixel_values": sibling("images").evaluation(image_size(inputs), batch)[0]}
    stage("exporting to ONNX (or reading the cache)")
    t0 = time.perf_counter()
    path, fresh = cached_onnx(name, batch, Path(args.cache).expanduser(), model, inputs)
    res["onnx"], res["exported"] = str(path), fresh
    res["export_s"] = time.perf_counter() - t0
    res["inputs"] = {k: [list(a.shape), str(a.dtype)] for k, a in inputs.items()}
    import onnx

    res["onnx_nodes"] = len(onnx.load(str(path), load_external_data=False).graph.node)
    log(f"{item}: {'exported' if fresh else 'cached'} {path} ({res['onnx_nodes']} nodes)")

    engines = set(args.engines)
    timed: list[tuple[str, Callable[[], Any]]] = []

    def record(label: str, make: Callable[[], tuple[Callable[[], Any], dict]],
               against: str = "reference") -> None:
        """Build an engine (``make`` -> (run, info)), check it against the reference (or,
        ``against="int8"``, against onnxruntime's run of the same quantized model, its
        accuracy still measured against the float32 reference) and queue it for timing; a
        failure is recorded, not raised."""
        if label in args._skip:
            return
        stage(f"{label}: building")
        entry: dict[str, Any] = {}
        res["engines"][label] = entry
        try:
            run, info = make()
            entry.update(info)
            stage(f"{label}: checking")
            got = run()
            checked = (int8_reference if against == "int8" and int8_reference is not None
                       else reference)
            entry["max_abs"], entry["max_rel"] = compare(got, checked)
            entry["mismatch"] = not entry["max_rel"] <= (args.low_tol if info.get("low")
                                                         else args.tol)
            if info.get("low"):
                entry.update(accuracy(got, reference))
                entry["fp32_max_rel"] = compare(got, reference)[1]
                if photo_feeds:
                    stage(f"{label}: {len(photo_feeds)} batches of photographs")
                    entry["photos"] = photo_accuracy(run, photo_feeds, photo_reference)
            timed.append((label, run))
            log(f"{item}: {label}: max error {entry['max_abs']:.2e} abs, {entry['max_rel']:.2e} "
                f"rel{'  MISMATCH' if entry['mismatch'] else ''}"
                + (f"; compiled in {info['compile_s']:.1f} s" if "compile_s" in info else ""))
        except Exception as e:  # report why and go on with the other engines
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc()
            log(f"{item}: {label} FAILED: {entry['error'][:2000]}")

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    stage("onnxruntime: building")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    reference = sess.run(None, inputs)
    photo_feeds, photo_reference = [], []
    if args.precision != "fp32" and image_size(inputs) is not None:
        photo_feeds = [{"pixel_values": a} for a in
                       sibling("images").evaluation(image_size(inputs), batch)]
        photo_reference = [sess.run(None, f)[0] for f in photo_feeds]
        # how many classes fp32 picks among the photographs: with random weights, few (then
        # top-1 agreement says little)
        res["photo_classes"] = len({int(i) for w in photo_reference for i in w.argmax(-1)})
    ort_entry = {"compile_s": time.perf_counter() - t0, "max_abs": 0.0, "max_rel": 0.0,
                 "mismatch": False}
    if "onnxruntime" in engines:
        res["engines"]["onnxruntime"] = ort_entry
        timed.append(("onnxruntime", lambda feed=inputs: sess.run(None, feed)))
    else:
        res["reference"] = ort_entry  # (not timed)
    int8_path = int8_reference = None
    if args.precision == "int8":
        stage("quantizing with onnxruntime.quantization (or reading the cache)")
        t0 = time.perf_counter()
        int8_path, fresh = cached_int8(path, inputs)
        res["int8_onnx"], res["quantize_s"] = str(int8_path), time.perf_counter() - t0
        log(f"{item}: {'quantized' if fresh else 'cached'} {int8_path}")
        s8 = ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
        try:
            int8_reference = s8.run(None, inputs)
        except Exception as e:  # (T5: quantize_static quantized its position buckets)
            res["engines"]["onnxruntime int8"] = {"error": f"{type(e).__name__}: {e}"}
            log(f"{item}: onnxruntime int8 FAILED: {e}")
        if "onnxruntime" in engines and int8_reference is not None:
            record("onnxruntime int8", lambda: ((lambda feed=inputs: s8.run(None, feed)),
                                                {"low": True}), "int8")

    if "kiln" in engines:
        import kiln

        for level in args.levels:
            def make_kiln(level=level):
                t0 = time.perf_counter()
                graph = kiln.from_onnx(str(path))
                t1 = time.perf_counter()
                compiled = kiln.compile(graph, opt_level=level)
                info = {"compile_s": time.perf_counter() - t0, "import_s": t1 - t0,
                        "kernels": len(compiled.build.kernels)}
                return (lambda feed=inputs: compiled.run(feed)), info
            record(f"kiln O{level}", make_kiln)
        if args.precision != "fp32":
            def make_kiln_low():
                t0 = time.perf_counter()
                graph = kiln.from_onnx(str(int8_path or path))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    compiled = kiln.compile(graph, opt_level=max(args.levels),
                                            precision="fp32" if int8_path else args.precision)
                info = {"compile_s": time.perf_counter() - t0,
                        "kernels": len(compiled.build.kernels), "low": True,
                        "warnings": [str(w.message) for w in caught
                                     if w.category.__name__ == "PrecisionWarning"]}
                return (lambda feed=inputs: compiled.run(feed)), info
            record(f"kiln {args.precision}", make_kiln_low,
                   "int8" if int8_path is not None else "reference")

    if "openvino" in engines:
        def make_openvino(default: bool = False, model_path: Path = path):
            import openvino as ov

            t0 = time.perf_counter()
            core = ov.Core()
            config = {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"}
            if not default:
                config["INFERENCE_PRECISION_HINT"] = "f32"
            compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
            request = compiled.create_infer_request()
            outputs = compiled.outputs

            def run(feed=inputs):
                result = request.infer(feed)
                return [result[o] for o in outputs]
            props = {k: str(compiled.get_property(k)) for k in (
                "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS")}
            return run, {"compile_s": time.perf_counter() - t0, "properties": props,
                         "low": default}
        record("openvino", make_openvino)
        if int8_path is not None:
            record("openvino int8", lambda: make_openvino(default=True, model_path=int8_path),
                   "int8")
        elif args.precision != "fp32":
            record("openvino default", lambda: make_openvino(default=True))

    if "pytorch" in engines:
        def make_torch():
            tin = tuple(torch.from_numpy(a) for a in inputs.values())

            def run():
                with torch.inference_mode():
                    return model(*tin)
            return run, {}
        record("pytorch", make_torch)

    stage(f"timing {len(timed)} engines")
    paired_medians = sibling("timing").paired_medians
    before = cpu_snapshot()
    for (label, _), s in zip(timed, paired_medians([fn for _, fn in timed], args.repeat)):
        res["engines"][label]["ms"] = s * 1e3
    res["others_cpu"] = others_cpu(before, cpu_snapshot())
    res["elapsed_s"] = time.perf_counter() - t_start
    log(f"{item}: " + ", ".join(f"{label} {res['engines'][label]['ms']:.3f} ms"
                                 for label, _ in timed)
        + (f"; other processes used {res['others_cpu']:.0%} of the CPUs meanwhile"
           if res["others_cpu"] is not None else ""))
    stage("done")
    # the results are written: skip the engines' slow teardown (thread pools, atexit hooks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, this process's CPU s, the machine's busy CPU s incl. time stolen by the
    hypervisor), from /proc/stat; None where that cannot be read."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    busy = (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.perf_counter(), t.user + t.system, busy


def others_cpu(a, b) -> float | None:
    """The share of all CPUs that other processes (and other virtual machines' steal) used
    between two ``cpu_snapshot``s: timing is noisy when it is well above 0."""
    if a is None or b is None or b[0] <= a[0]:
        return None
    other = (b[2] - a[2]) - (b[1] - a[1])
    return max(0.0, min(1.0, other / ((b[0] - a[0]) * (os.cpu_count() or 1))))


# ------------------------------------------------------------------------- the parent process
def set_threads(n: int) -> None:
    """Before any engine loads: every thread pool gets ``n`` threads."""
    for var in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def parse_item(item: str, default_batch: int) -> tuple[str, int]:
    name, _, batch = item.partition("@")
    return name, int(batch) if batch else default_batch


def run_child(item: str, args) -> dict[str, Any]:
    """``item`` benchmarked in a child process; a row (with "error" when it failed). A child
    that an engine crashed while building (OpenVINO's int8 plugin segfaults on DenseNet's
    quantized model) runs again without that engine, which gets an error row instead."""
    row = _run_child(item, args, skip=())
    crashed = row.get("error", "").startswith("child killed") and row.get("stage", "").endswith(
        ": building")
    if crashed:
        engine = row["stage"].rsplit(":", 1)[0]
        again = _run_child(item, args, skip=(engine,))
        again.setdefault("engines", {})[engine] = {"error": f"the child crashed: {row['error']}"}
        return again
    return row


def _run_child(item: str, args, skip: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kiln-models-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", item, "--_result",
               str(result), "--batch", str(args.batch), "--threads", str(args.threads),
               "--repeat", str(args.repeat), "--levels", ",".join(map(str, args.levels)),
               "--engines", ",".join(args.engines), "--cache", str(args.cache),
               "--tol", str(args.tol), "--precision", args.precision,
               "--low-tol", str(args.low_tol)] + [f"--_skip={e}" for e in skip]
        # TMPDIR: the compiled models' directories land in ``tmp``, removed here; the child
        # ends with os._exit (or is killed), so their own cleanup never runs (~0.5 GB a model)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore", TMPDIR=tmp)
        t0 = time.perf_counter()
        # the child's stdout (TVM, exporter chatter) goes to stderr: stdout keeps the table
        proc = subprocess.Popen(cmd, stdout=sys.stderr.fileno(), env=env,
                                start_new_session=True)
        rc: int | None
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:  # timed out or interrupted: end the child's group
                _kill_group(proc)
        name, batch = parse_item(item, args.batch)
        row: dict[str, Any] = {"model": item, "name": name, "batch": batch, "engines": {},
                               "stage": "start"}
        if result.exists():
            row = json.loads(result.read_text())
        row["wall_s"] = time.perf_counter() - t0
        # a child that reached "done" counts as finished, whatever its exit took
        if row.get("stage") != "done" and rc is None:
            row["error"] = f"timed out after {args.timeout:.0f} s during '{row['stage']}'"
        elif row.get("stage") != "done":
            how = (f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}")
            row["error"] = f"child {how} during '{row['stage']}'"
        return row


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def cpu_info() -> dict[str, Any]:
    name, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "amx_int8"]
    return {"model": name, "cpus": os.cpu_count(), "flags": {f: f in flags for f in wanted}}


def _ms(row: dict, label: str, tol_flag: bool = True) -> str:
    e = row.get("engines", {}).get(label)
    if e is None:
        return "-"
    if "error" in e:
        return "ERR"
    if "ms" not in e:
        return "?"  # built, but the child stopped before timing it
    return _ms_text(e["ms"]) + ("!" if tol_flag and e.get("mismatch") else "")


def _ms_text(ms: float | None) -> str:
    if ms is None:
        return "-"
    return (f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1
            else f"{ms:.3f}")


def best_kiln(row: dict, levels: list[int]) -> dict | None:
    """The fastest kiln level that ran (its "mismatch" travels with it)."""
    runs = [row["engines"][f"kiln O{lv}"] for lv in levels
            if "ms" in row.get("engines", {}).get(f"kiln O{lv}", {})]
    return min(runs, key=lambda e: e["ms"]) if runs else None


def ratio(row: dict, label: str, levels: list[int]) -> tuple[float | None, bool]:
    """(engine ms / best kiln ms, whether either side's output was flagged)"""
    kiln, other = best_kiln(row, levels), row.get("engines", {}).get(label, {})
    if kiln is None or "ms" not in other:
        return None, False
    return other["ms"] / kiln["ms"], bool(kiln.get("mismatch") or other.get("mismatch"))


def print_report(rows: list[dict], args, meta: dict) -> None:
    levels = args.levels
    cpu = meta["cpu"]
    flags = " ".join(f"{f}={'yes' if v else 'no'}" for f, v in cpu["flags"].items())
    print(f"CPU: {cpu['model']} ({cpu['cpus']} logical CPUs); {flags}")
    print(f"threads: {args.threads} per engine; batch {args.batch} unless NAME@BATCH; "
          f"repeat {args.repeat}; " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print("median latency in ms; ort/kiln and ov/kiln = that engine's ms / best kiln ms "
          f"(above 1: kiln faster); ! = output differs from onnxruntime by more than "
          f"{args.tol:g} of its largest magnitude; ERR = engine failed (see below); others = "
          "share of the CPUs that other processes used while the model was timed\n")
    kiln_cols = [f"kiln O{lv}" for lv in levels]
    cols = kiln_cols + ["onnxruntime", "openvino", "pytorch"]
    heads = [f"O{lv} ms" for lv in levels] + ["ort ms", "OV ms", "torch ms"]
    width = max([len(r["model"]) for r in rows] + [5]) + 2
    print(f"{'model':<{width}}" + "".join(f"{h:>10}" for h in heads)
          + f"{'ort/kiln':>10}{'ov/kiln':>9}{'others':>8}  compile s "
          + "/".join(f"O{lv}" for lv in levels))
    notes: list[str] = []
    for r in rows:
        line = f"{r['model']:<{width}}"
        if r.get("error") and not any("ms" in e for e in r.get("engines", {}).values()):
            print(line + f"FAILED: {r['error']}")
            for label, e in r.get("engines", {}).items():
                if "error" in e:
                    notes.append(f"{r['model']}: {label}: {e['error']}")
            continue
        line += "".join(f"{_ms(r, c):>10}" for c in cols)
        for label, w in (("onnxruntime", 10), ("openvino", 9)):
            x, flagged = ratio(r, label, levels)
            line += f"{(f'{x:.2f}' + ('!' if flagged else '')) if x else '-':>{w}}"
        busy = r.get("others_cpu")
        line += f"{f'{busy:.0%}' if busy is not None else '-':>8}"
        comp = [r["engines"].get(c, {}).get("compile_s") for c in kiln_cols]
        line += "  " + " / ".join(f"{c:.1f}" if c is not None else "-" for c in comp)
        print(line)
        if r.get("error"):
            notes.append(f"{r['model']}: {r['error']}")
        for label, e in r.get("engines", {}).items():
            if "error" in e:
                notes.append(f"{r['model']}: {label}: {e['error']}")
            elif e.get("mismatch"):
                notes.append(f"{r['model']}: {label}: output mismatch, max error "
                             f"{e['max_abs']:.3g} abs = {e['max_rel']:.3g} of the output's "
                             "largest magnitude")
    for label, short in (("onnxruntime", "ort"), ("openvino", "ov")):
        ratios = [ratio(r, label, levels) for r in rows]
        clean = [x for x, flagged in ratios if x and not flagged]
        flagged = sum(1 for x, f in ratios if x and f)
        if clean:
            geo = math.exp(sum(math.log(x) for x in clean) / len(clean))
            print(f"geometric mean {short}/kiln: {geo:.2f} over {len(clean)} models"
                  + (f" ({flagged} flagged rows left out)" if flagged else ""))
    print("\nmax error vs onnxruntime: absolute (relative to the output's largest magnitude)")
    err_cols = kiln_cols + ["openvino", "pytorch"]
    print(f"{'model':<{width}}" + "".join(f"{c:>22}" for c in err_cols))
    for r in rows:
        cells = []
        for c in err_cols:
            e = r.get("engines", {}).get(c)
            cells.append("-" if e is None else "ERR" if "error" in e else "?"
                         if "max_abs" not in e else
                         f"{e['max_abs']:.1e} ({e['max_rel']:.1e})" + ("!" if e["mismatch"]
                                                                         else ""))
        print(f"{r['model']:<{width}}" + "".join(f"{c:>22}" for c in cells))
    if notes:
        print("\nfailures and mismatches:")
        for n in notes:
            print("  " + n.replace("\n", "\n    ")[:3000])
    sys.stdout.flush()


def print_precision_report(rows: list[dict], args) -> None:
    """kiln at ``--precision`` beside kiln fp32, OpenVINO's default and onnxruntime, with the
    reduced-precision engines' accuracy against onnxruntime fp32 (int8: beside onnxruntime
    and OpenVINO on the same quantized model)."""
    low, ovd = f"kiln {args.precision}", "openvino default"
    if args.precision == "int8":
        return print_int8_report(rows, args)

    def ms(r, label):
        e = r.get("engines", {}).get(label, {})
        return e.get("ms") if not e.get("mismatch") else None

    def fmt(x, spec="{:.2f}"):
        return "-" if x is None else spec.format(x)

    print(f"\n{args.precision}: kiln fp32 = best of O{'/O'.join(map(str, args.levels))}; "
          f"{low} at O{max(args.levels)}; speedup = kiln fp32 ms / {low} ms; ov/kiln = "
          f"OpenVINO default ms / {low} ms; errors vs onnxruntime fp32, over the output's "
          "largest magnitude; top-1 = argmax agreement over the logits' rows")
    width = max([len(r["model"]) for r in rows] + [5]) + 2
    heads = ["fp32 ms", f"{args.precision} ms", "speedup", "OV def ms", "ov/kiln", "ort ms",
             "max err", "mean err", "top-1", "OV max", "OV top-1"]
    print(f"{'model':<{width}}" + "".join(f"{h:>10}" for h in heads))
    speedups, vs_ov = [], []
    for r in rows:
        best = best_kiln(r, args.levels)
        k32 = best["ms"] if best and not best.get("mismatch") else None
        e, o = r.get("engines", {}).get(low, {}), r.get("engines", {}).get(ovd, {})
        k16, ov = ms(r, low), ms(r, ovd)
        up = k32 / k16 if k32 and k16 else None
        rel = ov / k16 if ov and k16 else None
        if up:
            speedups.append(up)
        if rel:
            vs_ov.append(rel)
        cells = [_ms_text(k32), _ms(r, low), fmt(up),
                 _ms(r, ovd), fmt(rel), _ms(r, "onnxruntime"),
                 fmt(e.get("max_rel"), "{:.1e}"), fmt(e.get("mean_rel"), "{:.1e}"),
                 fmt(e.get("top1"), "{:.0%}"), fmt(o.get("max_rel"), "{:.1e}"),
                 fmt(o.get("top1"), "{:.0%}")]
        print(f"{r['model']:<{width}}" + "".join(f"{c:>10}" for c in cells))
        for w in e.get("warnings", []):
            print(f"  {r['model']}: {low}: {w}")
    for what, xs in (("speedup (kiln fp32 / kiln " + args.precision + ")", speedups),
                     ("ov/kiln (OpenVINO default / kiln " + args.precision + ")", vs_ov)):
        if xs:
            geo = math.exp(sum(math.log(x) for x in xs) / len(xs))
            print(f"geometric mean {what}: {geo:.2f} over {len(xs)} models")
    sys.stdout.flush()


def print_photo_report(rows: list[dict], args) -> None:
    """The reduced-precision engines on the photographs (image classifiers only): top-1
    agreement with onnxruntime fp32 and the mean error over the logits' largest magnitude."""
    labels = ([f"kiln {args.precision}", "openvino default"] if args.precision != "int8" else
              ["kiln int8", "onnxruntime int8", "openvino int8"])
    rows = [r for r in rows if any("photos" in r.get("engines", {}).get(label, {})
                                   for label in labels)]
    if not rows:
        return
    count = next(e["photos"]["count"] for r in rows for e in r["engines"].values()
                 if "photos" in e)
    print(f"\n{args.precision} on {count} photographs (scikit-image's, centre crops and their "
          "mirror images): classes = distinct fp32 top-1 classes among them (random weights: "
          "few; then top-1 agreement says little); top-1 = argmax agreement with onnxruntime "
          "fp32; mean, max = error over the logits' largest magnitude")
    width = max([len(r["model"]) for r in rows] + [5]) + 2
    heads = [f"{label.replace('openvino', 'OV').replace('onnxruntime', 'ort')} {what}"
             for label in labels for what in ("top-1", "mean", "max")]
    print(f"{'model':<{width}}{'classes':>8}" + "".join(f"{h:>17}" for h in heads))
    for r in rows:
        cells = []
        for label in labels:
            p = r["engines"].get(label, {}).get("photos", {})
            cells += ["-" if "top1" not in p else f"{p['top1']:.0%}",
                      "-" if "mean_rel" not in p else f"{p['mean_rel']:.1e}",
                      "-" if "max_rel" not in p else f"{p['max_rel']:.1e}"]
        print(f"{r['model']:<{width}}{r.get('photo_classes', '-'):>8}"
              + "".join(f"{c:>17}" for c in cells))
    sys.stdout.flush()


def print_int8_report(rows: list[dict], args) -> None:
    low, o8, ov8 = "kiln int8", "onnxruntime int8", "openvino int8"
    print(f"\nint8 (onnxruntime's quantize_static: QDQ, uint8 activations, int8 per-channel "
          f"weights): kiln fp32 = best "
          f"of O{'/O'.join(map(str, args.levels))}; kiln int8 at O{max(args.levels)}; speedup "
          "= kiln fp32 ms / kiln int8 ms; ort8/kiln, ov8/kiln = onnxruntime's, OpenVINO's "
          "int8 ms / kiln int8 ms (above 1: kiln faster); vs ort8 = kiln int8's largest "
          "error against onnxruntime int8 (the same quantized model; above --low-tol: '!'); "
          "max err = against onnxruntime fp32, over the output's largest magnitude; top-1 = "
          "argmax agreement with fp32 over the logits' rows")
    width = max([len(r["model"]) for r in rows] + [5]) + 2
    heads = ["fp32 ms", "int8 ms", "speedup", "ort8 ms", "ort8/kiln", "OV8 ms", "ov8/kiln",
             "vs ort8", "max err", "top-1", "ort8 max", "ort8 top1", "OV8 top1"]
    print(f"{'model':<{width}}" + "".join(f"{h:>10}" for h in heads))
    columns: dict[str, list[float]] = {"speedup": [], "ort8": [], "ov8": []}

    def got(r, label):
        e = r.get("engines", {}).get(label, {})
        return e, (e.get("ms") if not e.get("mismatch") else None)

    def fmt(x, spec="{:.2f}"):
        return "-" if x is None else spec.format(x)

    for r in rows:
        best = best_kiln(r, args.levels)
        k32 = best["ms"] if best and not best.get("mismatch") else None
        (e, k8), (oe, ort8), (ve, ov8_ms) = got(r, low), got(r, o8), got(r, ov8)
        ratios = {"speedup": k32 / k8 if k32 and k8 else None,
                  "ort8": ort8 / k8 if ort8 and k8 else None,
                  "ov8": ov8_ms / k8 if ov8_ms and k8 else None}
        for k, v in ratios.items():
            if v:
                columns[k].append(v)
        cells = [_ms_text(k32), _ms(r, low), fmt(ratios["speedup"]), _ms(r, o8),
                 fmt(ratios["ort8"]), _ms(r, ov8), fmt(ratios["ov8"]),
                 fmt(e.get("max_rel"), "{:.1e}"), fmt(e.get("fp32_max_rel"), "{:.1e}"),
                 fmt(e.get("top1"), "{:.0%}"), fmt(oe.get("fp32_max_rel"), "{:.1e}"),
                 fmt(oe.get("top1"), "{:.0%}"), fmt(ve.get("top1"), "{:.0%}")]
        print(f"{r['model']:<{width}}" + "".join(f"{c:>10}" for c in cells))
    for what, key in (("speedup (kiln fp32 / kiln int8)", "speedup"),
                      ("ort8/kiln (onnxruntime int8 / kiln int8)", "ort8"),
                      ("ov8/kiln (OpenVINO int8 / kiln int8)", "ov8")):
        xs = columns[key]
        if xs:
            geo = math.exp(sum(math.log(x) for x in xs) / len(xs))
            print(f"geometric mean {what}: {geo:.2f} over {len(xs)} models")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None,
                   help="comma-separated NAME or NAME@BATCH (default: all at --batch, plus "
                        + ", ".join(DEFAULT_EXTRAS) + ")")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help="of " + ",".join(ENGINES) + " (onnxruntime always gives the reference)")
    p.add_argument("--levels", default="2,3", help="kiln opt levels")
    p.add_argument("--repeat", type=int, default=30, help="timed calls per engine (at most)")
    p.add_argument("--threads", type=int, default=2, help="threads of every engine")
    p.add_argument("--batch", type=int, default=1, help="batch of the models named without @")
    p.add_argument("--cache", default="~/.cache/kiln/bench-models",
                   help="where the exported ONNX files are kept")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per model")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="largest error allowed, relative to the output's largest magnitude")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "int8"),
                   help="also run kiln at this precision and OpenVINO at its default one "
                        "(int8: the model quantized by onnxruntime, on all three)")
    p.add_argument("--low-tol", type=float, default=0.25,
                   help="--tol for the reduced-precision engines (bf16 on random-weight "
                        "CNNs errs by 0.05-0.11 of the logits' largest magnitude, OpenVINO's "
                        "alike)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_result", help=argparse.SUPPRESS)
    p.add_argument("--_skip", action="append", default=[], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",") if x]
    args.engines = [e for e in args.engines.split(",") if e]
    for e in args.engines:
        if e not in ENGINES:
            p.error(f"unknown engine {e!r}; choose from {', '.join(ENGINES)}")
    if args._child:
        return child(args)
    if args.list:
        for name, spec in MODELS.items():
            shapes = ", ".join(f"{k} {'x'.join(map(str, a.shape))} {a.dtype}"
                               for k, a in spec.inputs(args.batch).items())
            print(f"{name:<20}{spec.family:<13}{spec.about}  [{shapes}]")
        print("default extra rows: " + ", ".join(DEFAULT_EXTRAS))
        return 0
    if args.models:
        items = [m.strip() for m in args.models.split(",") if m.strip()]
    else:
        items = list(MODELS) + [x for x in DEFAULT_EXTRAS if parse_item(x, 0)[1] != args.batch]
    for i, item in enumerate(items):
        name, batch = parse_item(item, args.batch)
        if name not in MODELS:
            p.error(f"unknown model {name!r}; --list shows them")
        items[i] = name if batch == 1 else f"{name}@{batch}"
    items = list(dict.fromkeys(items))
    args.cache = str(Path(args.cache).expanduser())
    meta = {"cpu": cpu_info(), "threads": args.threads, "versions": versions(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:],
            "levels": args.levels, "engines": args.engines, "repeat": args.repeat,
            "batch": args.batch, "tol": args.tol, "precision": args.precision}
    cpu = meta["cpu"]
    log(f"CPU {cpu['model']}, {args.threads} threads; {len(items)} models: {', '.join(items)}")
    rows: list[dict] = []
    for i, item in enumerate(items):
        log(f"[{i + 1}/{len(items)}] {item}")
        row = run_child(item, args)
        for label, key in (("onnxruntime", "ort_over_kiln"), ("openvino", "ov_over_kiln")):
            row[key], row[key + "_flagged"] = ratio(row, label, args.levels)
        rows.append(row)
        log(f"[{i + 1}/{len(items)}] {item}: "
            + (f"FAILED: {row['error']}" if row.get("error") else "done")
            + f" in {row['wall_s']:.0f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print_report(rows, args, meta)
    if args.precision != "fp32":
        print_precision_report(rows, args)
        print_photo_report(rows, args)
    return 1 if any(r.get("error") or any("error" in e or e.get("mismatch") for e in
                                           r.get("engines", {}).values()) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
