"""The training examples (examples/training/*.py) reach their targets: the functions their
``main()`` runs, at the examples' own settings unless noted, and a script run end to end."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.examples_util import module_at

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "training"


@functools.cache
def example(name: str) -> types.ModuleType:
    return module_at(EXAMPLES / f"{name}.py", f"_kiln_training_example_{name}")


def test_linear_regression_finds_slope_2_intercept_0(capsys):
    slope, intercept, loss = example("linear_regression").train()
    assert slope == pytest.approx(2.0, abs=1e-4)
    assert intercept == pytest.approx(0.0, abs=1e-4)
    assert loss < 1e-8
    example("linear_regression").main()
    assert "fitted y = 2.0000 x +0.0000" in capsys.readouterr().out


def test_logistic_regression_separates_the_toy_set():
    accuracy, history = example("logistic_regression").train()
    assert accuracy == 1.0
    assert history[-1] < history[0] / 5


def test_worked_mlp_gradients_and_sgd_step(capsys):
    mlp = example("worked_mlp")
    g = mlp.gradients()
    np.testing.assert_allclose(g["loss"], -np.log(0.58419), atol=1e-5)
    np.testing.assert_allclose(g["dL/dz2"], [-0.41581, 0.41581], atol=1e-5)
    np.testing.assert_allclose(g["dL/dz1"], [-0.041581] * 4, atol=1e-6)
    before, after, params = mlp.sgd_step(lr=0.1)
    assert after < before
    # SGD: each parameter moves by -lr * its gradient; the biases' gradients are dL/dz
    np.testing.assert_allclose(params["2.bias"], np.array(mlp.B2) - 0.1 * g["dL/dz2"], atol=1e-6)
    np.testing.assert_allclose(params["0.bias"], np.array(mlp.B1) - 0.1 * g["dL/dz1"], atol=1e-6)
    mlp.main()
    out = capsys.readouterr().out
    assert "dL/dz2 = [-0.41581, 0.41581]" in out
    assert "dL/dz1 = [-0.041581, -0.041581, -0.041581, -0.041581]" in out


def test_perceptron_learns_and_or_but_not_xor():
    p = example("perceptron")
    for targets in p.TARGETS.values():
        w, b, epochs = p.train(targets)
        np.testing.assert_array_equal(p.predict(w, b), targets)
        assert epochs <= 10
    with pytest.raises(RuntimeError, match="did not converge"):
        p.train(np.array([0, 1, 1, 0], np.float32), max_epochs=20)


def test_digits_mlp_reaches_95_percent():
    pytest.importorskip("sklearn")
    accuracy, history = example("digits_mlp").train()  # 15 epochs: about 2 s
    assert accuracy >= 0.95, accuracy
    assert history[-1] < history[0]


def test_digits_lenet_reaches_90_percent():
    """6 of the example's 10 epochs (95.6%; 10 epochs reach 96.4%) of 44 steps: 4-10 ms a step
    in the interpreter, so 1-3 s. On a busy machine, OpenBLAS's threads make these small
    matrix products up to 8 times slower, hence one thread here (threadpoolctl comes with
    scikit-learn)."""
    pytest.importorskip("sklearn")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        accuracy, history = example("digits_lenet").train(epochs=6)
    assert accuracy >= 0.90, accuracy
    assert history[-1] < history[0] / 4


def test_an_example_runs_as_a_script():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "perceptron.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("accuracy 100%") == 2
