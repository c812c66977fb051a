"""The examples as modules, for the tests: as written (kiln), and as PyTorch twins built from
the same source (``from torch import nn``, with torch functions standing in for ``kiln.ops``)."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def module_at(path: str | os.PathLike, name: str) -> types.ModuleType:
    """The Python file at ``path`` as a module called ``name`` (an example, a campaign script),
    registered in ``sys.modules`` (dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def example(name: str) -> types.ModuleType:
    """examples/NAME.py as a module."""
    return module_at(os.path.join(EXAMPLES, f"{name}.py"), f"_kiln_example_{name}")


def torch_port(name: str, ops: types.SimpleNamespace | None = None) -> types.ModuleType:
    """examples/NAME.py with ``from kiln import nn[, ops]`` replaced by torch's ``nn`` and
    ``ops`` (a namespace of torch functions for the ``kiln.ops`` it uses)."""
    path = os.path.join(EXAMPLES, f"{name}.py")
    with open(path) as f:
        source = f.read()
    if "from kiln import nn, ops\n" in source:
        assert ops is not None, f"{name}.py uses kiln.ops: pass their torch stand-ins"
        source = source.replace("from kiln import nn, ops\n", "from torch import nn\n")
    assert "from kiln import nn" in source or "from torch import nn" in source
    module = types.ModuleType(f"_torch_example_{name}")
    module.ops = ops
    exec(compile(source.replace("from kiln import nn\n", "from torch import nn\n"), path, "exec"),
         module.__dict__)
    return module


def randomize_norms(model, seed: int = 0) -> None:
    """Batch-norm parameters and statistics of a torch model that are not the identity."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
