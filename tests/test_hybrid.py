"""The hybrid split ("one weird trick", Krizhevsky 2014) with real MPI ranks: conv layers
data-parallel, fc6–fc8 model-parallel (convnet.models.hybrid).

Under ``mpiexec -n 2`` and ``-n 3`` (tests/hybrid/run_hybrid.py; fc6 and fc7 of 10 and 14
units and 5 classes split unevenly over 3 ranks), a few SGD steps of the hybrid model
with dropout on give the losses, weights and velocities of one process on the whole
batch of 7 (shares of 4 + 3 and 3 + 2 + 2 images), gathered into a one-column state
dict; every rank's conv weights are the same bits; the step's collectives move what
``step_bytes`` says; the eval-mode logits and ``evaluate_batches`` over
``global_batches`` equal one process's; a model resumed from that state dict (another
seed at build, the velocities scattered from rank 0) takes the next step bit for bit as
the original does. Bad inputs are refused on every rank with the same message. In
process: one rank (``SingleProcess``) is the single-process model bit for bit (cpu;
cuda:0 where there is one), the state-dict mappings invert each other, and the bytes
per step follow the formulas.

Tolerance (float64, eps = 2^-53 ≈ 1.1e-16): the hybrid sums the same terms as one
process in another order — a conv weight gradient as K partial sums over the ranks'
images, an activation gradient as K partial products over the fc slices, fc products
over row slices of the weight (BLAS may block them differently). A sum of L terms
taken in another order differs by at most ~L·eps times the sum of the terms'
magnitudes; the longest sum here is conv1's weight gradient, L = 7 images × 15×15
positions = 1,575, so ≤ 1.8e-13 relative per op. Three steps through 8 layers with
momentum (dropout masks identical, so nothing flips) keep that well under 1e-10: we
assert rtol = 1e-9 (atol = 1e-12 for entries near zero; the weights are O(0.1)) and
measure at most 1.5e-15 of each array's largest magnitude (2 and 3 ranks, 4 steps).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convnet import nn, optim, train_step
from convnet.app.evaluate import evaluate_batches
from convnet.distributed import SingleProcess
from convnet.models import alexnet
from convnet.models.hybrid import (batch_slice, hybrid_alexnet, hybrid_step,
                                   hybrid_to_one_column, one_column_to_hybrid, shares,
                                   step_bytes)

from conftest import require_device

HERE = Path(__file__).parent
SCRIPT = HERE / "hybrid" / "run_hybrid.py"
STEPS = 3
RTOL, ATOL = 1e-9, 1e-12

_spec = importlib.util.spec_from_file_location("run_hybrid", SCRIPT)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

needs_mpi = pytest.mark.skipif(shutil.which("mpiexec") is None
                               or importlib.util.find_spec("mpi4py") is None,
                               reason="mpiexec or mpi4py is missing (pip install -e '.[test]')")


def _mpiexec(ranks: int, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(["mpiexec", "-n", str(ranks), sys.executable, str(SCRIPT), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _reference(steps: int):
    """One process on the whole batches: losses, weights, velocities, eval logits, then
    the extra step (dropout reseeded as the script does) and the weights after it."""
    model = alexnet(**run.SETTINGS)
    opt = optim.SGD(model, **run.SGD)
    losses = [train_step(model, opt, *run.batch(s)).loss for s in range(steps)]
    weights, velocity = model.state_dict(), opt.state_dict()["velocity"]
    model.eval()
    logits = model(run.batch(0)[0]).numpy()
    result = evaluate_batches(model, run.shares(0, 1))
    evaluation = [result.loss, result.top1_error, result.top5_error, result.images]
    model.train()
    run.reseed(model, 1)
    extra = train_step(model, opt, *run.batch(steps)).loss
    return dict(losses=losses, weights=weights, velocity=velocity, logits=logits, extra=extra,
                after=model.state_dict(), evaluation=evaluation)


@pytest.fixture(scope="module")
def reference():
    return _reference(STEPS)


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
def test_hybrid_training_equals_one_process(ranks, reference, tmp_path):
    out = tmp_path / "hybrid.npz"
    done = _mpiexec(ranks, "train", str(out), str(STEPS))
    assert done.returncode == 0, done.stdout + done.stderr
    got = np.load(out)
    assert got["apart"] == 0  # every rank holds the same conv weights, bit for bit
    moved = dict(zip(got["moved_names"], got["moved_bytes"]))
    formulas = step_bytes(run.SETTINGS["num_classes"], run.WIDTHS, run.SETTINGS["input_size"],
                          run.BATCH, ranks, itemsize=8)
    assert moved == formulas
    np.testing.assert_allclose(got["losses"], reference["losses"], rtol=RTOL, atol=0)
    for name, ref in reference["weights"].items():
        np.testing.assert_allclose(got[f"w.{name}"], ref, rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(got[f"v.{name}"], reference["velocity"][name], rtol=RTOL,
                                   atol=ATOL, err_msg=f"velocity {name}")
    np.testing.assert_allclose(got["logits"], reference["logits"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["evaluation"], reference["evaluation"], rtol=RTOL, atol=0)
    # the extra step: the original and the resumed model agree bit for bit, and with
    # one process to the tolerance
    assert got["extra"][0] == got["extra"][1]
    np.testing.assert_allclose(got["extra"][0], reference["extra"], rtol=RTOL, atol=0)
    for name, ref in reference["after"].items():
        np.testing.assert_array_equal(got[f"a1.{name}"], got[f"a0.{name}"], err_msg=name)
        np.testing.assert_allclose(got[f"a0.{name}"], ref, rtol=RTOL, atol=ATOL, err_msg=name)


@needs_mpi
def test_bad_inputs_are_refused_on_every_rank():
    done = _mpiexec(3, "refuse")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    expected = {
        "classes": "ValueError: hybrid: fc8 has 2 classes, fewer than the 3 ranks",
        "settings": "ConfigMismatch: ranks 1, 2 started with a configuration that differs from "
                    "rank 0's (seed: rank 0 0, rank 1 1; rank 2 2)",
        "batch": "ValueError: hybrid: a batch of 2 images leaves rank 2 of 3 without any",
        "images": "ValueError: hybrid: no rank passed any image",
        "labels": "ValueError: cross_entropy: labels must have shape (7,) for logits of shape "
                  "(7, 5), got (3,)",
        "scatter": "ValueError: hybrid: rank 0's state dict does not match the network: "
                   "missing: conv1.bias, ",
    }
    for rank in range(3):
        for case, message in expected.items():
            prefix = f"rank {rank}: {case}: "
            found = [line for line in lines if line.startswith(prefix)]
            assert found and found[0][len(prefix):].startswith(message), (case, rank, lines)


# --------------------------------------------------------------------------- in one process

@pytest.mark.parametrize("name", ["cpu", "cuda:0"])
def test_one_rank_is_the_one_column_model_bit_for_bit(name):
    """On cpu in float64; on a GPU (the device arrays through the hybrid's gathers and
    buckets) in float32: the same kernels, the fc6/fc7 dropout as its own kernel instead
    of the fused epilogue (the same bits, per ops.linear)."""
    device = require_device(name)
    settings = dict(run.SETTINGS, **({} if device.kind == "cpu" else {"dtype": np.float32}))
    one = alexnet(devices=[device], **settings)
    hyb = hybrid_alexnet(SingleProcess(), device=device, **settings)
    o1, o2 = optim.SGD(one, **run.SGD), optim.SGD(hyb, **run.SGD)
    for step in range(2):
        images, labels = run.batch(step)
        images = images.astype(settings["dtype"])
        a, b = train_step(one, o1, images, labels), hybrid_step(hyb, o2, images, labels)
        assert a.loss == b.loss
    for name, value in one.state_dict().items():
        np.testing.assert_array_equal(hyb.gather_state_dict()[name], value, err_msg=name)
    # the dropout layers sit where the one-column network has them (reseeding by index)
    assert [n for n, m in hyb.named_modules() if isinstance(m, nn.Dropout)] == ["drop6", "drop7"]
    assert [n for n, _ in hyb.named_modules()] == [n for n, _ in one.named_modules()]


def test_state_dict_mappings():
    state = alexnet(**run.SETTINGS).state_dict()
    assert shares(14, 3) == [5, 5, 4] and shares(5, 2) == [3, 2] and shares(10, 3) == [4, 3, 3]
    parts = [one_column_to_hybrid(state, r, 3) for r in range(3)]
    assert [p["fc7.weight"].shape for p in parts] == [(5, 10), (5, 10), (4, 10)]
    assert [p["fc8.bias"].shape for p in parts] == [(2,), (2,), (1,)]
    np.testing.assert_array_equal(parts[1]["fc6.weight"], state["fc6.weight"][4:7])
    np.testing.assert_array_equal(parts[2]["conv3.weight"], state["conv3.weight"])
    back = hybrid_to_one_column(parts)
    assert list(back) == list(state)
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])
    with pytest.raises(ValueError, match="not a one-column AlexNet state dict: missing: fc8.bias"):
        one_column_to_hybrid({k: v for k, v in state.items() if k != "fc8.bias"}, 0, 2)
    with pytest.raises(ValueError, match="fc8.weight of shape \\(5, 14\\) has fewer rows than "
                                         "the 6 ranks"):
        one_column_to_hybrid(state, 0, 6)


def test_bad_arguments_in_one_process():
    with pytest.raises(ValueError, match="build it with columns=1, got 2"):
        hybrid_alexnet(SingleProcess(), columns=2, **run.SETTINGS)
    with pytest.raises(TypeError, match="comm must be a convnet.distributed Communicator"):
        hybrid_alexnet(object(), **run.SETTINGS)
    assert [batch_slice(10, r, 4) for r in range(4)] == [slice(0, 3), slice(3, 6),
                                                         slice(6, 8), slice(8, 10)]
    hyb = hybrid_alexnet(SingleProcess(), **run.SETTINGS)
    with pytest.raises(ValueError, match="expected this rank's images \\(n, 3, S, S\\)"):
        hyb(np.zeros((3, 67, 67)))


def test_step_bytes_formulas():
    # the paper's network over 4 ranks at batch 128, float32
    got = step_bytes(1000, (96, 256, 384, 384, 256, 4096, 4096), 227, 128, 4)
    assert got["pool5 allgather"] == 128 * 256 * 6 * 6 * 4
    assert got["fc6 allgather"] == got["fc7 allgather"] == 4 * 1024 * 128 * 4
    assert got["fc8 allgather"] == 4 * 250 * 128 * 4
    assert got["pool5 allreduce"] == 128 * 9216 * 4
    assert got["fc6 allreduce"] == got["fc7 allreduce"] == 128 * 4096 * 4
    # conv1..conv5: 34,944 + 307,456 + 885,120 + 663,936 + 442,624 parameters
    assert got["conv allreduce"] == 2_334_080 * 4
    with pytest.raises(ValueError, match="fc8 has 3 classes, fewer than the 4 ranks"):
        step_bytes(3, run.WIDTHS, 67, 8, 4)
