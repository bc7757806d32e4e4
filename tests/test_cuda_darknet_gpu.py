"""darknet-gpu profile: the CUDA kernels equal their CPU emulation of darknet's .cu order, bitwise.

Under Numba's CUDA simulator.  The block-strided reductions are checked with
small blocks (``threads=4``: partial sums, tails past the plane, several images)
and once with darknet's 512; the emulation is then compared with the strict CPU
reference, from which it must differ where the summation order differs (ULPs
reported).
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from fractions import Fraction  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from darkpy import cuda as dcuda  # noqa: E402

if not dcuda.available():
    pytest.skip("no CUDA device and the simulator was not selected first", allow_module_level=True)

from darkpy.check import bitwise_equal, ulp_distance  # noqa: E402
from darkpy.kernels import darknet_gpu_cuda as C  # noqa: E402
from darkpy.kernels.reference import blas as R  # noqa: E402
from darkpy.kernels.reference import darknet_gpu as D  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def data(n, seed, nan=True):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 3 + 0.5).astype(np.float32)
    if nan and n > 3:
        x[rng.integers(n)] = np.nan
        x[rng.integers(n)] = -0.0
    return x


def same(a, b):
    assert bitwise_equal(a, b), (a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("batch,c,s,threads", [(2, 3, 7, 4), (1, 2, 3, 4), (3, 1, 9, 2)])
def test_reductions_equal_emulation(batch, c, s, threads):
    n = batch * c * s
    x, delta = data(n, 1, nan=(batch == 2)), data(n, 2, nan=False)
    mean, variance = data(c, 3, nan=False), np.abs(data(c, 4, nan=False))
    for emu, gpu, args in (
            (D.fast_mean_dg, C.fast_mean_gpu, (x, batch, c, s)),
            (D.fast_variance_dg, C.fast_variance_gpu, (x, mean, batch, c, s)),
            (D.fast_mean_delta_dg, C.fast_mean_delta_gpu, (delta, variance, batch, c, s)),
            (D.fast_variance_delta_dg, C.fast_variance_delta_gpu, (x, delta, mean, variance, batch, c, s))):
        a, b = np.zeros(c, np.float32), np.zeros(c, np.float32)
        emu(*args, a, threads)
        gpu(*args, b, threads)
        same(a, b)
    for emu, gpu in ((D.backward_bias_dg, C.backward_bias_gpu),
                     (D.backward_scale_dg, C.backward_scale_gpu)):
        a = data(c, 5, nan=False)
        b = a.copy()
        if emu is D.backward_bias_dg:
            emu(a, delta, batch, c, s, threads)
            gpu(b, delta, batch, c, s, threads)
        else:
            emu(x, delta, batch, c, s, a, threads)
            gpu(x, delta, batch, c, s, b, threads)
        same(a, b)


def test_backward_bias_conn_and_block_512():
    """size == 1 takes backward_bias_conn_kernel; fast_mean with darknet's 512 threads."""
    batch, n = 3, 4
    delta = data(batch * n, 6)
    a = data(n, 7, nan=False)
    b = a.copy()
    D.backward_bias_dg(a, delta, batch, n, 1)
    C.backward_bias_gpu(b, delta, batch, n, 1)
    same(a, b)
    x = data(2 * 1 * 5, 8)
    a, b = np.zeros(1, np.float32), np.zeros(1, np.float32)
    D.fast_mean_dg(x, 2, 1, 5, a)
    C.fast_mean_gpu(x, 2, 1, 5, b)
    same(a, b)


def test_elementwise_equal_emulation():
    batch, c, s = 2, 3, 4
    n = batch * c * s
    x, delta = data(n, 9), data(n, 10)
    mean, variance = data(c, 11, nan=False), np.abs(data(c, 12))
    md, vd = data(c, 13), data(c, 14)
    a, b = x.copy(), x.copy()
    D.normalize_dg(a, mean, variance, batch, c, s)
    C.normalize_gpu(b, mean, variance, batch, c, s)
    same(a, b)
    a, b = delta.copy(), delta.copy()
    D.normalize_delta_dg(x, mean, variance, md, vd, batch, c, s, a)
    C.normalize_delta_gpu(x, mean, variance, md, vd, batch, c, s, b)
    same(a, b)
    for emu, gpu in ((D.scale_bias_dg, C.scale_bias_gpu), (D.add_bias_dg, C.add_bias_gpu)):
        a, b = x.copy(), x.copy()
        emu(a, md, batch, c, s)
        gpu(b, md, batch, c, s)
        same(a, b)
    a, b = delta.copy(), delta.copy()
    D.axpy_dg(n, .01, x, 1, a, 1)
    C.axpy_gpu(n, .01, x, 1, b, 1)
    same(a, b)
    D.scal_dg(n, .99, a, 1)
    C.scal_gpu(n, .99, b, 1)
    same(a, b)


def test_layer_functions_equal_emulation(monkeypatch):
    """forward/backward_batchnorm_gpu (the darknet-gpu layer path) equal the emulated call sequence."""
    from types import SimpleNamespace
    batch, c, h, w = 2, 2, 2, 3
    spatial, n = h * w, batch * c * h * w
    monkeypatch.setattr(C, "THREADS", 4)
    host = {name: data(size, 20 + i, nan=False) for i, (name, size) in enumerate(
        (("input", n), ("scales", c), ("biases", c), ("rolling_mean", c), ("rolling_variance", c),
         ("bias_updates", c), ("scale_updates", c), ("delta", n)))}
    host["rolling_variance"] = np.abs(host["rolling_variance"])
    zeros = {name: np.zeros(size, np.float32) for name, size in (
        ("output", n), ("x", n), ("x_norm", n), ("mean", c), ("variance", c), ("mean_delta", c),
        ("variance_delta", c))}
    emu = {k: v.copy() for k, v in {**host, **zeros}.items()}
    D.batchnorm_forward_train_dg(emu["input"], emu["output"], emu["x"], emu["x_norm"], emu["mean"],
                                 emu["variance"], emu["rolling_mean"], emu["rolling_variance"],
                                 emu["scales"], emu["biases"], batch, c, spatial, 4)
    D.batchnorm_backward_dg(emu["delta"], emu["x"], emu["x_norm"], emu["mean"], emu["variance"], emu["scales"],
                            emu["bias_updates"], emu["scale_updates"], emu["mean_delta"], emu["variance_delta"],
                            batch, c, spatial, 4)
    l = SimpleNamespace(outputs=c * spatial, batch=batch, out_c=c, out_h=h, out_w=w,
                        **{k: v.copy() for k, v in {**host, **zeros}.items() if k != "input"})
    C.forward_batchnorm_gpu(host["input"].copy(), l, 1)
    C.backward_batchnorm_gpu(l, l.mean, l.variance)
    for name in ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance",
                 "bias_updates", "scale_updates", "mean_delta", "variance_delta", "delta"):
        same(emu[name], getattr(l, name))


def test_emulation_differs_from_strict_where_the_order_differs():
    """A 2x3x700 plane: 512-strided partials against the CPU's serial sums."""
    batch, c, s = 2, 3, 700
    x = (np.random.default_rng(30).standard_normal(batch * c * s) * 3 + 1).astype(np.float32)
    strict, dg = np.zeros(c, np.float32), np.zeros(c, np.float32)
    R.mean_cpu(x, batch, c, s, strict)
    D.fast_mean_dg(x, batch, c, s, dg)
    ulps = ulp_distance(strict, dg)
    print("fast_mean vs mean_cpu, ULPs per channel:", ulps)
    assert ulps.max() > 0 and ulps.max() < 64
    vs, vd = np.zeros(c, np.float32), np.zeros(c, np.float32)
    R.variance_cpu(x, strict, batch, c, s, vs)
    D.fast_variance_dg(x, strict, batch, c, s, vd)
    ulps = ulp_distance(vs, vd)
    print("fast_variance vs variance_cpu, ULPs per channel:", ulps)
    assert ulps.max() > 0 and ulps.max() < 64


def _exact_fma_ok(a, b, c, r):
    """True when float32 ``r`` is a correct rounding (to nearest) of the exact ``a*b + c``."""
    a, b, c = (np.float32(v) for v in (a, b, c))
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if not np.isfinite(r):
        return abs(exact) > Fraction(float(np.finfo(np.float32).max))
    err = abs(Fraction(float(r)) - exact)
    lo, hi = np.nextafter(r, np.float32(-np.inf)), np.nextafter(r, np.float32(np.inf))
    near = min(abs(Fraction(float(v)) - exact) for v in (lo, hi) if np.isfinite(v))
    if err < near:
        return True
    return err == near and (int(np.float32(r).view(np.uint32)) & 1) == 0   # tie: even


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(finite32, finite32, finite32)
def test_fma32_is_correctly_rounded(a, b, c):
    assert _exact_fma_ok(a, b, c, D.fma32(np.float32(a), np.float32(b), np.float32(c)))


def test_fma32_double_rounding_cases():
    """a*b + c whose double rounding lands exactly on a float32 midpoint: round-to-odd decides.

    (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 is a float32 midpoint; adding +-2^-80 moves the
    exact value just off it, but the double sum rounds back onto it (tie to even:
    down), so only the round-to-odd step gets the upward case right.
    """
    a = np.float32(1 + 2.0 ** -12)
    base = np.float32(1 + 2.0 ** -11)
    up = np.nextafter(base, np.float32(2))
    tiny = np.float32(2.0 ** -80)
    assert D.fma32(a, a, tiny) == up
    assert D.fma32(a, a, -tiny) == base
    assert D.fma32(a, a, np.float32(0)) == base           # the exact tie: to even
    assert np.float32(np.float64(a) * np.float64(a) + np.float64(tiny)) == base   # naive is wrong
    assert np.isnan(D.fma32(np.float32(np.inf), np.float32(0), np.float32(1)))
    assert np.float32(D.fma32(np.float32(np.nan), a, a)).view(np.uint32) == 0x7FFFFFFF


@pytest.mark.parametrize("a", [D.LINEAR, D.LEAKY, D.RELU, D.LOGISTIC])
def test_activations_equal_emulation(a):
    x, delta = data(24, 40), data(24, 41)
    x[3] = -np.inf
    if a in D.EXACT_ACTIVATIONS:
        p, q = x.copy(), x.copy()
        D.activate_array_dg(p, p.size, a)
        C.activate_array_gpu(q, q.size, a)
        same(p, q)
    p, q = delta.copy(), delta.copy()
    D.gradient_array_dg(x, x.size, a, p)
    C.gradient_array_gpu(x, x.size, a, q)
    same(p, q)


def test_leaky_differs_from_the_cpu():
    """darknet's GPU leaky rounds the float product ``.1f*x``; its CPU leaky rounds the double ``.1*x``."""
    from darkpy.kernels.reference import activations as A
    x = -np.abs(np.random.default_rng(42).standard_normal(2000)).astype(np.float32)
    gpu, cpu = x.copy(), x.copy()
    D.activate_array_dg(gpu, gpu.size, D.LEAKY)
    A.activate_array(cpu, cpu.size, A.LEAKY)
    ulps = ulp_distance(cpu, gpu)
    print(f"leaky: {np.count_nonzero(ulps)} of {x.size} negative inputs differ, max {ulps.max()} ULP")
    assert 0 < np.count_nonzero(ulps) and ulps.max() == 1
