"""Fixtures for runtime tests (see runtime_helpers for what the artifacts hold)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import build_library, model_manifest, model_weights


@pytest.fixture(scope="session")
def kernels_so(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lib") / "kernels.so"
    build_library(path)
    return path


@pytest.fixture
def make_artifact(kernels_so, tmp_path):
    """``make_artifact(tag="small", name="m.kiln", edit=None) -> path``; ``edit(manifest)``
    may change the manifest before writing."""
    from kiln.runtime import write_artifact

    def make(tag: str = "small", name: str = "m.kiln", edit=None) -> Path:
        manifest = model_manifest(tag)
        if edit is not None:
            edit(manifest)
        return write_artifact(tmp_path / name, manifest, kernels_so, model_weights(tag))

    return make


@pytest.fixture(scope="session")
def small_artifact(kernels_so, tmp_path_factory) -> Path:
    """One shared, never-modified small artifact (copy it before changing it)."""
    from kiln.runtime import write_artifact

    path = tmp_path_factory.mktemp("shared") / "small.kiln"
    return write_artifact(path, model_manifest("small"), kernels_so, model_weights("small"))
