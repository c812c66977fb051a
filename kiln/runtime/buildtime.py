"""Build-time helpers for writing artifacts; never imported by the loader or the executor.

``find_tvm_runtime_library`` locates the ``libtvm_runtime.so`` that an artifact carries. The
apache-tvm wheel installs it as ``<site-packages>/tvm/lib/libtvm_runtime.so``. We find the
``tvm`` package directory with ``importlib.util.find_spec("tvm")``, which reads the import
system's metadata without executing ``tvm/__init__.py`` (so not even the writer pays the
0.8 s of ``import tvm``), and look in its ``lib/`` folder; an in-tree TVM build keeps it in
``build/lib`` or ``lib`` two levels up, which we try next.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from kiln.errors import ArtifactError
from kiln.runtime.format import RUNTIME_LIB


def find_tvm_runtime_library(name: str = RUNTIME_LIB) -> Path:
    """Path of the installed TVM's ``libtvm_runtime.so`` (TVM's thread pool), or of another
    of its runtime libraries (``libtvm_runtime_cuda.so``)."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError("cannot find the tvm package, whose libtvm_runtime.so an artifact "
                            "carries: install apache-tvm to build artifacts")
    tried = []
    for location in spec.submodule_search_locations:
        package = Path(location)
        for folder in (package / "lib", package.parent.parent / "build" / "lib",
                       package.parent.parent / "lib"):
            candidate = folder / name
            if candidate.is_file():
                return candidate.resolve()
            tried.append(str(candidate))
    raise ArtifactError(f"cannot find {name} in the tvm package (tried {tried})")


def build_versions() -> dict[str, str]:
    """Versions of the packages the artifact was built with, for the manifest's "build"."""
    versions = {}
    for dist in ("apache-tvm", "apache-tvm-ffi", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions
