"""Strict CUDA blas/gemm kernels against the CPU reference, bitwise, in Numba's CUDA simulator.

The simulator must be selected before ``numba.cuda`` is first imported; when
another test module imported the real ``numba.cuda`` first (and there is no GPU),
these tests skip.
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from darkpy import cuda as dcuda  # noqa: E402

if not dcuda.available():
    pytest.skip("no CUDA device and the simulator was not selected first", allow_module_level=True)

from darkpy.check import bitwise_equal  # noqa: E402
from darkpy.kernels import blas_cuda as G  # noqa: E402
from darkpy.kernels import gemm_cuda  # noqa: E402
from darkpy.kernels.reference import blas as R  # noqa: E402
from darkpy.kernels.reference import gemm as RG  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SPECIALS = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 3e38, -3e38, 1e-45],
                    np.float32)
# A NaN with a payload (and one signalling): x86 passes the payload on, quieted.
PAYLOAD_NAN = np.array([0x7fa00001, 0xff800123], np.uint32).view(np.float32)


def data(n, seed, specials=True):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * rng.choice([1e-3, 1, 30], n)).astype(np.float32)
    if specials and n >= 4:
        pool = np.concatenate([SPECIALS, PAYLOAD_NAN])
        where = rng.choice(n, size=min(3, n // 2), replace=False)
        x[where] = rng.choice(pool, where.size)
    return x


def same(a, b):
    assert bitwise_equal(a, b), (a.view(np.uint32), b.view(np.uint32))


SHAPES = [(1, 1, 1), (2, 3, 5), (3, 2, 1), (1, 4, 7)]


@pytest.mark.parametrize("batch,c,s", SHAPES)
def test_statistics(batch, c, s):
    n = batch * c * s
    x = data(n, 1)
    m_ref, m_gpu = np.zeros(c, np.float32), np.zeros(c, np.float32)
    R.mean_cpu(x, batch, c, s, m_ref)
    G.mean_gpu(x, batch, c, s, m_gpu)
    same(m_ref, m_gpu)
    v_ref, v_gpu = np.zeros(c, np.float32), np.zeros(c, np.float32)
    R.variance_cpu(x, m_ref, batch, c, s, v_ref)
    G.variance_gpu(x, m_ref, batch, c, s, v_gpu)
    same(v_ref, v_gpu)
    variance = np.abs(data(c, 2, specials=c > 4))
    a, b = x.copy(), x.copy()
    R.normalize_cpu(a, m_ref, variance, batch, c, s)
    G.normalize_gpu(b, m_ref, variance, batch, c, s)
    same(a, b)


@pytest.mark.parametrize("batch,c,s", SHAPES)
def test_backward_sums(batch, c, s):
    n = batch * c * s
    delta, x, x_norm = data(n, 3), data(n, 4), data(n, 5)
    mean, variance = data(c, 6, specials=False), np.abs(data(c, 7, specials=False))
    for ref, gpu in ((R.backward_bias, G.backward_bias_gpu),
                     (R.backward_scale_cpu, G.backward_scale_gpu),
                     (R.mean_delta_cpu, G.mean_delta_gpu),
                     (R.variance_delta_cpu, G.variance_delta_gpu)):
        out_ref = data(c, 8, specials=False)
        out_gpu = out_ref.copy()
        if ref is R.backward_bias:
            ref(out_ref, delta, batch, c, s)
            gpu(out_gpu, delta, batch, c, s)
        elif ref is R.backward_scale_cpu:
            ref(x_norm, delta, batch, c, s, out_ref)
            gpu(x_norm, delta, batch, c, s, out_gpu)
        elif ref is R.mean_delta_cpu:
            ref(delta, variance, batch, c, s, out_ref)
            gpu(delta, variance, batch, c, s, out_gpu)
        else:
            ref(x, delta, mean, variance, batch, c, s, out_ref)
            gpu(x, delta, mean, variance, batch, c, s, out_gpu)
        same(out_ref, out_gpu)
    md, vd = data(c, 9), data(c, 10)
    a, b = delta.copy(), delta.copy()
    R.normalize_delta_cpu(x, mean, variance, md, vd, batch, c, s, a)
    G.normalize_delta_gpu(x, mean, variance, md, vd, batch, c, s, b)
    same(a, b)


def test_level1_and_bias():
    n, c, s, batch = 12, 3, 2, 2
    x, y = data(n, 11), data(n, 12)
    for alpha in (0.01, -3.5, np.inf):
        a, b = y.copy(), y.copy()
        R.axpy_cpu(n, alpha, x, 1, a, 1)
        G.axpy_gpu(n, alpha, x, 1, b, 1)
        same(a, b)
        a, b = y.copy(), y.copy()
        R.scal_cpu(n // 2, alpha, a, 2)
        G.scal_gpu(n // 2, alpha, b, 2)
        same(a, b)
    a, b = y.copy(), y.copy()
    R.copy_cpu(n // 3, x, 3, a, 2)
    G.copy_gpu(n // 3, x, 3, b, 2)
    same(a, b)
    R.fill_cpu(n // 2, 0.1, a, 2)
    G.fill_gpu(n // 2, 0.1, b, 2)
    same(a, b)
    biases = data(c, 13)
    for ref, gpu in ((R.add_bias, G.add_bias_gpu), (R.scale_bias, G.scale_bias_gpu)):
        a, b = x.copy(), x.copy()
        ref(a, biases, batch, c, s)
        gpu(b, biases, batch, c, s)
        same(a, b)


@pytest.mark.parametrize("TA,TB", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm(TA, TB):
    M, N, K = 3, 4, 6
    A, B, C = data(M * K, 20 + TA), data(K * N, 22 + TB), data(M * N, 24)
    lda, ldb = (M if TA else K), (K if TB else N)
    a, b = C.copy(), C.copy()
    RG.gemm(TA, TB, M, N, K, 1.5, A, lda, B, ldb, 0.5, a, N)
    gemm_cuda.gemm_gpu(TA, TB, M, N, K, 1.5, A, lda, B, ldb, 0.5, b, N)
    same(a, b)


def test_gemm_refuses_short_buffers():
    from darkpy.errors import DarkpyError
    with pytest.raises(DarkpyError):
        gemm_cuda.gemm_gpu(0, 0, 3, 3, 3, 1, np.zeros(8, np.float32), 3, np.zeros(9, np.float32), 3,
                           1, np.zeros(9, np.float32), 3)


def test_variance_delta_tie_fixup(monkeypatch):
    """A channel flagged as near a float32 rounding boundary is recomputed with glibc's pow."""
    batch, c, s = 1, 2, 3
    x, delta = data(batch * c * s, 30, False), data(batch * c * s, 31, False)
    mean, variance = data(c, 32, False), np.abs(data(c, 33, False))
    ref = np.zeros(c, np.float32)
    R.variance_delta_cpu(x, delta, mean, variance, batch, c, s, ref)
    out = np.full(c, 7, np.float32)
    sums = np.array([np.float32(1.25), np.float32(-2)], np.float32)
    G._fix_variance_delta(np.array([1]), sums, variance, out)
    wide = np.float64(sums[1])
    expect = np.float32(wide * (np.power(np.float64(np.float32(variance[1] + R.EPS_BACKWARD)),
                                         np.float64(np.float32(-1.5))) * -.5))
    assert out[0] == 7 and out[1] == expect


def test_variance_delta_flagged_channels_on_device_arrays(monkeypatch):
    """With the tie window widened to everything, every channel takes the host (glibc)
    path, with device-resident buffers: the result is still the CPU reference's."""
    from numba import cuda

    from darkpy.cuda import fp
    monkeypatch.setattr(fp, "TIE_ULPS", 1 << 30)
    fixed = []
    fix = G._fix_variance_delta
    monkeypatch.setattr(G, "_fix_variance_delta", lambda ch, *a: (fixed.extend(ch), fix(ch, *a)))
    batch, c, s = 2, 3, 2
    x, delta = data(batch * c * s, 40, False), data(batch * c * s, 41, False)
    mean, variance = data(c, 42, False), np.abs(data(c, 43, False))
    ref = np.zeros(c, np.float32)
    R.variance_delta_cpu(x, delta, mean, variance, batch, c, s, ref)
    out = cuda.to_device(np.full(c, 7, np.float32))
    G.variance_delta_gpu(cuda.to_device(x), cuda.to_device(delta), cuda.to_device(mean),
                         cuda.to_device(variance), batch, c, s, out)
    same(ref, out.copy_to_host())
    assert sorted(fixed) == [0, 1, 2]
