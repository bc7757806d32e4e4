"""Shared test fixtures and helpers: where the golden dumps and darknet's cfg files are, the
kernel-implementation fixture, bit comparisons, cfg snippets and float64 gradient checks.

Test files import the helpers by name (``from conftest import bits, rng_for``).
"""

import math
import os
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from darkpy import kernels
from darkpy.description import parse_cfg_text
from darkpy.network import SizeParams

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data"
#: Golden dumps copied into the repository (strict build; the large bn-b8c64h26w26 is read from shared/).
GOLDEN = DATA / "golden" / "strict"
#: ``../shared`` beside the checkout: present on developer machines and in CI, absent on a fresh clone.
SHARED = Path(os.environ.get("DARKPY_SHARED", TESTS.parent.parent / "shared"))


def golden_cases(prefix=""):
    """Names of the golden cases in tests/data whose name starts with ``prefix``."""
    return sorted(p.name for p in GOLDEN.iterdir() if p.is_dir() and p.name.startswith(prefix))


def shared_path(*parts):
    """A path under ../shared, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared not beside this checkout)")
    return path


# ----------------------------------------------------------------------------- shared helpers

@pytest.fixture(params=["fast", "reference"])
def impl(request):
    """Run a test once with each kernel implementation (``darkpy.kernels.use``), then restore."""
    before = kernels.active()
    kernels.use(request.param)
    yield request.param
    kernels.use(before)


def bits(a):
    """The IEEE bit patterns of ``a`` as float32 (uint32 words): compare these, never values."""
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def from_hex(words):
    """float32 values from space-separated hex words (tensors printed by darknet itself)."""
    return np.array([int(w, 16) for w in words.split()], np.uint32).view(np.float32)


def rng_for(*key):
    """A generator seeded by the test's parameters (stable across runs, unlike hash())."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def layer_section(text, index=1):
    """The layer section of a cfg snippet, numbered as layer ``index`` (as ``image_params``)."""
    sec = parse_cfg_text("[net]\nbatch=1\nwidth=1\nheight=1\nchannels=1\n" + text).layers[0]
    sec.index = index
    return sec


def image_params(batch, c, h, w, index=1, layers=()):
    """``SizeParams`` for a layer fed by a ``batch`` x c x h x w image."""
    return SizeParams(batch=batch, inputs=c * h * w, h=h, w=w, c=c, index=index, time_steps=1,
                      net=SimpleNamespace(layers=list(layers)))


def central_gradient(f, z, eps=1e-6):
    """float64 central differences of the scalar ``f`` at ``z`` (any shape), one element at a time:
    ``(f(z + eps) - f(z - eps)) / (2 eps)``.  ``f`` gets a float64 copy of ``z`` with one element moved."""
    z = np.array(z, np.float64)
    g = np.zeros_like(z)
    flat, gflat = z.reshape(-1), g.reshape(-1)
    for k in range(flat.size):
        keep = flat[k]
        flat[k] = keep + eps
        up = f(z)
        flat[k] = keep - eps
        down = f(z)
        flat[k] = keep
        gflat[k] = (up - down) / (2 * eps)
    return g


def assert_gradient(f64_forward, x, g, analytic, eps=1e-3, rtol=1e-4, atol=1e-5):
    """A backward pass checked against float64 central differences of ``sum(g * forward(x))``."""
    g = np.asarray(g, np.float64)
    numeric = central_gradient(lambda v: np.dot(g, f64_forward(v)), x, eps)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


# float64 maths of the detection layers (yolo, region), independent of darknet's loops

def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bce(t, z):
    """Binary cross-entropy of sigmoid(z) against target t, written stably in float64."""
    return np.logaddexp(0.0, z) - t * z


def iou64(a, b):
    """Intersection over union of two (x, y, w, h) centre boxes in float64."""
    ix = min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2)
    iy = min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2)
    inter = ix * iy if ix > 0 and iy > 0 else 0.0
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def emulated_softmax(x, temp=np.float32(1)):
    """C's softmax in numpy float32 scalars: float quotients, double exp, float sum and division."""
    f32 = np.float32
    largest = f32(-np.finfo(np.float32).max)
    for v in x:
        if v > largest:
            largest = v
    e = [f32(math.exp(float(v / temp - largest / temp))) for v in x]
    total = f32(0)
    for v in e:
        total = f32(total + v)
    return np.array([v / total for v in e], np.float32)


def spacing_ulps(a, ref):
    """max|a - ref| in ULPs of the largest |ref| (float32 spacing): the error at the tensor's scale."""
    ref = np.asarray(ref, np.float64).ravel()
    largest = np.float32(np.abs(ref).max())
    return float(np.abs(np.asarray(a, np.float64).ravel() - ref).max() / np.spacing(largest))


def run_single_node(op, inputs, attributes, opset):
    """Run one ONNX operator on float32 inputs with ONNX Runtime's CPU provider."""
    import onnxruntime
    from onnx import TensorProto, helper
    names = [f"input{k}" for k in range(len(inputs))]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attributes)], "single",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs)))[0]


def run_in_cuda_simulator(script):
    """Run ``script`` in a fresh interpreter under NUMBA_ENABLE_CUDASIM=1 (the flag is read at
    import, so the simulator needs its own process); its stdout.  Skips without numba.cuda."""
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    probe = subprocess.run([sys.executable, "-c", "import numba.cuda"], env=env, capture_output=True)
    if probe.returncode:
        pytest.skip("numba.cuda cannot be imported")
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", script], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def squared_magnitude(delta):
    """C's ``pow(mag_array(delta, n), 2)`` in numpy: the float sum of float squares (in element
    order), its double sqrt rounded to float, squared in double and rounded to the float cost."""
    delta = np.asarray(delta, np.float32)
    total = np.cumsum(delta * delta, dtype=np.float32)[-1] if delta.size else np.float32(0)
    magnitude = np.float32(math.sqrt(float(total)))
    return np.float32(float(magnitude) * float(magnitude))
