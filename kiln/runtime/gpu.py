"""Running a CUDA artifact: device buffers made once, inputs copied in, the kernel sequence
launched, outputs copied out.

What a GPU deployment needs beside numpy and apache-tvm-ffi: the artifact's own
``libtvm_runtime.so`` and ``libtvm_runtime_cuda.so`` (TVM's CUDA device API and module
loader, 0.45 MB), the CUDA 13 runtime library ``libcudart.so.13`` (found on the library path,
or in PyPI's ``nvidia-cuda-runtime`` / a CUDA build of PyTorch), and an NVIDIA driver that
serves CUDA 13 (``libcuda.so.1``, release 580 or newer). The kernels are the artifact's fat
binary (``kernels.cuda``), loaded with ``cuModuleLoadData`` and imported into the host
library, whose functions check the arguments and launch them.

Every value gets its own device buffer (no reuse across the memory plan yet): constants are
copied in at load time, inputs at each run. An input may also be a tensor that speaks
DLPack and lives on the same GPU (a PyTorch CUDA tensor): it is passed without a copy.
Kernels are launched on the default stream; reading the outputs waits for them. The
executor takes its device as an argument, so the same code runs a CPU artifact on the CPU
(the tests exercise it there).
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kiln.errors import ArtifactError, InputError, KilnError
from kiln.runtime import format as fmt
from kiln.runtime.executor import KernelProfile, TensorInfo, median_seconds, numpy_dtype
from kiln.runtime.format import DTYPE_SIZES

CUDA_RUNTIME = "libcudart.so.13"
#: where pip puts libcudart.so.13, below site-packages
_CUDART_DIRS = ("nvidia/cu13/lib", "nvidia/cuda_runtime/lib", "torch/lib")
_cuda_loaded: list[str] = []
_cuda_lock = threading.Lock()


def load_cuda_runtime(cuda_lib: Path) -> None:
    """Load the CUDA runtime and TVM's CUDA library (once per process), so that the
    ``cuda`` device and module loader exist; an ArtifactError says what is missing."""
    with _cuda_lock:
        if _cuda_loaded:
            return
        _load_global(_find_cudart(), "the CUDA 13 runtime library")
        try:
            ctypes.CDLL(str(cuda_lib), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise ArtifactError(f"cannot load {fmt.CUDA_RUNTIME_LIB}: {e} (it needs the NVIDIA "
                                "driver's libcuda.so.1)") from None
        _cuda_loaded.append(str(cuda_lib))


def _find_cudart() -> str:
    try:
        ctypes.CDLL(CUDA_RUNTIME, mode=ctypes.RTLD_GLOBAL)
        return CUDA_RUNTIME
    except OSError:
        pass
    for base in sys.path:
        for sub in _CUDART_DIRS:
            candidate = Path(base) / sub / CUDA_RUNTIME
            if candidate.is_file():
                return str(candidate)
    raise ArtifactError(f"running a CUDA artifact needs {CUDA_RUNTIME} (the CUDA 13 runtime): "
                        "pip install nvidia-cuda-runtime, or install the CUDA toolkit")


def _load_global(path: str, what: str) -> None:
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        raise ArtifactError(f"cannot load {what} ({path}): {e}") from None


def device_module(code: bytes):
    """The artifact's GPU kernels as a TVM module (``ffi.Module.load_from_bytes.cuda``)."""
    import tvm_ffi

    loader = tvm_ffi.get_global_func("ffi.Module.load_from_bytes.cuda", allow_missing=True)
    if loader is None:
        raise ArtifactError(f"{fmt.CUDA_RUNTIME_LIB} did not register TVM's CUDA module loader")
    try:
        return loader(bytes(code))
    except Exception as e:  # noqa: BLE001  (TVM's error for a damaged module)
        raise ArtifactError(f"{fmt.DEVICE_CODE} is not a CUDA module TVM can load: "
                            f"{str(e).strip().splitlines()[-1:]}") from None


class GpuModel:
    """A loaded artifact whose kernels run on a device (a CUDA GPU: ``device_type`` "cuda")."""

    def __init__(self, manifest: dict[str, Any], library: Any, constants: dict[str, np.ndarray],
                 notes: list[str] | None = None, device_type: str = "cuda",
                 device_id: int = 0) -> None:
        import tvm_ffi

        self._manifest = manifest
        self.notes = list(notes or [])
        self._lock = threading.Lock()
        self._device = tvm_ffi.device(device_type, device_id)
        self._alloc = tvm_ffi.get_global_func("runtime.TVMTensorAllocWithScope")
        self._to_device = tvm_ffi.get_global_func("runtime.TVMTensorCopyFromBytes")
        self._to_host = tvm_ffi.get_global_func("runtime.TVMTensorCopyToBytes")
        self._sync = tvm_ffi.get_global_func("runtime.Device_StreamSync")
        self.inputs = tuple(TensorInfo(s["name"], tuple(s["shape"]), s["dtype"])
                            for s in manifest["inputs"])
        self.outputs = tuple(TensorInfo(s["name"], tuple(s["shape"]), s["dtype"])
                             for s in manifest["outputs"])
        values = manifest["values"]
        self._tensors: dict[str, Any] = {}
        try:
            for name, info in values.items():
                self._tensors[name] = self._empty(info["shape"], info["dtype"])
            for name, array in constants.items():
                self._copy_in(name, np.ascontiguousarray(array))
        except KilnError:
            raise
        except Exception as e:  # noqa: BLE001  (the first CUDA call: no device, old driver)
            raise ArtifactError(f"cannot use the {device_type} device {device_id}: "
                                f"{_last_line(e)} (CUDA artifacts need an NVIDIA driver that "
                                "serves CUDA 13, release 580 or newer)") from None
        self._calls = []
        for kernel in manifest["kernels"]:
            func = library[kernel["func"]]
            self._calls.append((func, kernel))

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def run(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        """Run on ``{input name: array}`` (numpy arrays, or DLPack tensors on this device);
        return the outputs as new numpy arrays, in order."""
        with self._lock:
            args = self._launch(inputs)
            return [self._copy_out(args.get(o.name, self._tensors[o.name]), o)
                    for o in self.outputs]

    def run_on_device(self, inputs: Mapping[str, Any]) -> list[Any]:
        """Like ``run``, but return the model's own output buffers on the device (DLPack
        tensors: ``torch.from_dlpack`` takes them), valid until the next run, once the
        kernels have finished."""
        with self._lock:
            args = self._launch(inputs)
            try:
                self._sync(self._device, 0)  # the default stream
            except Exception as e:  # noqa: BLE001  (a kernel's failure surfaces here)
                raise _gpu_failure(e) from None
            return [args.get(o.name, self._tensors[o.name]) for o in self.outputs]

    def benchmark(self, inputs: Mapping[str, Any], repeat: int = 100) -> float:
        """Median seconds of a run whose outputs stay on the device (kernels finished), over
        ``repeat`` runs after one warm-up run."""
        return median_seconds(lambda: self.run_on_device(inputs), repeat)

    def profile(self, inputs: Mapping[str, Any], repeat: int = 20) -> list[KernelProfile]:
        """Time each kernel call in order (launch and wait): median of ``repeat`` calls."""
        records = []
        with self._lock:
            args = self._bind(inputs)
            for func, kernel in self._calls:
                call = [args.get(a, self._tensors[a]) for a in kernel["args"]]
                times = []
                for _ in range(max(1, repeat) + 1):  # the first call warms up
                    start = time.perf_counter()
                    func(*call)
                    self._sync(self._device, 0)
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times[1:])
                flops = int(kernel.get("flops", 0))
                rate = flops / seconds / 1e9 if flops and seconds > 0 else None
                records.append(KernelProfile(kernel["func"], tuple(kernel.get("sources", ())),
                                             seconds, flops, rate))
        return records

    def memory_report(self) -> dict[str, int]:
        """Bytes of device memory: every value's buffer (no reuse yet), constants among them."""
        nbytes = {n: _nbytes(t) for n, t in self._tensors.items()}
        return {"device_bytes": sum(nbytes.values()),
                "constant_bytes": sum(nbytes[n] for n in self._manifest["constants"])}

    def _launch(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        args = self._bind(inputs)
        for func, kernel in self._calls:
            try:
                func(*(args.get(a, self._tensors[a]) for a in kernel["args"]))
            except Exception as e:  # noqa: BLE001
                raise _kernel_failure(kernel, e) from None
        return args

    def _bind(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        import tvm_ffi

        names = {i.name for i in self.inputs}
        if set(inputs) != names:
            raise InputError(f"the model takes inputs {sorted(names)}; got {sorted(inputs)}")
        bound = {}
        for info in self.inputs:
            value = inputs[info.name]
            if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
                self._copy_in(info.name, _checked(np.asarray(value), info))
                continue
            tensor = tvm_ffi.from_dlpack(value)
            if tuple(tensor.shape) != info.shape or str(tensor.dtype) != info.dtype:
                raise InputError(f"input {info.name!r} is {tensor.dtype}{list(tensor.shape)}, "
                                 f"expected {info.dtype}{list(info.shape)}")
            if tensor.device != self._device:
                raise InputError(f"input {info.name!r} lives on {tensor.device}, the model runs "
                                 f"on {self._device}: move it there, or pass a numpy array")
            bound[info.name] = tensor
        return bound

    def _empty(self, shape: Sequence[int], dtype: str):
        import tvm_ffi

        return self._alloc(tvm_ffi.Shape([int(d) for d in shape]), tvm_ffi.dtype(dtype),
                           self._device, None)

    def _copy_in(self, name: str, array: np.ndarray) -> None:
        if array.nbytes:
            self._to_device(self._tensors[name], array.ctypes.data_as(ctypes.c_void_p),
                            array.nbytes)

    def _copy_out(self, tensor: Any, info: TensorInfo) -> np.ndarray:
        out = np.empty(info.shape, numpy_dtype(info.dtype))
        if out.nbytes:
            try:
                self._to_host(tensor, out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
            except Exception as e:  # noqa: BLE001  (a kernel's failure surfaces here)
                raise _gpu_failure(e) from None
        return out


def _nbytes(tensor: Any) -> int:
    return int(np.prod(tensor.shape, dtype=np.int64)) * DTYPE_SIZES[str(tensor.dtype)]


def _checked(array: np.ndarray, info: TensorInfo) -> np.ndarray:
    if array.dtype != numpy_dtype(info.dtype) or tuple(array.shape) != info.shape:
        raise InputError(f"input {info.name!r} is {array.dtype}{list(array.shape)}, expected "
                         f"{info.dtype}{list(info.shape)}")
    return np.ascontiguousarray(array)


def _gpu_failure(error: Exception) -> KilnError:
    return KilnError(f"the GPU failed while running the model: {_last_line(error)} (a failed "
                     "input check traps the GPU: an index out of range or an integer division "
                     "by zero; load the model again in a new process)")


def _kernel_failure(kernel: dict[str, Any], error: Exception) -> KilnError:
    sources = "; ".join(kernel.get("sources", [])[:3])
    return KilnError(f"kernel {kernel['func']} (from {sources}) failed on the GPU: "
                     f"{_last_line(error)}")


def _last_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(error).__name__


__all__ = ["GpuModel", "load_cuda_runtime", "device_module"]
