"""``@cuda.jit`` gemm with darknet's CPU bits (``strict`` profile): one thread per C element.

The CPU's ``gemm_cpu`` (``darkpy.kernels.reference.gemm``) gives every element of C
its own chain of float operations; the loop nest only decides which chain runs
when.  So one thread per element ``(i, j)`` replays exactly that chain:

* ``C *= BETA`` first (always, as ``gemm_cpu``);
* ``gemm_nn``/``gemm_tn``: for k in order, ``A_PART = ALPHA*a(i,k)`` (rounded),
  then ``C += A_PART*b(k,j)``: product rounded, added straight into C;
* ``gemm_nt``/``gemm_tt``: a float ``sum`` from +0 of ``(ALPHA*a(i,k))*b(k,j)``
  over k in order, then ``C += sum`` once.

Every multiply and add is ``darkpy.cuda.fp``'s (explicitly rounded, never fused
into an FMA, x86 NaN bits).  Where two NaNs meet, the one that survives is the
one the CPU reference's compiled code keeps: the addend of ``C += ...`` (the
product, or the k-sum), and the running ``sum`` over the new product.  darknet's own GPU build calls cuBLAS instead, whose
summation order is not documented: the ``darknet-gpu`` profile reports ULP
distances for it rather than bits.
"""

import numpy as np
from numba import cuda

from darkpy.cuda import simulator
from darkpy.cuda.fp import fadd, fmul
from darkpy.kernels.reference.gemm import check_gemm_args

#: Threads per block edge (a TILE x TILE block of C elements; small in the simulator,
#: which runs every thread as a Python thread).
TILE = 4 if simulator() else 16


@cuda.jit
def _gemm_kernel(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    j, i = cuda.grid(2)
    if i >= M or j >= N:
        return
    c = fmul(C[i * ldc + j], BETA)
    if not TB:
        for k in range(K):
            a = A[k * lda + i] if TA else A[i * lda + k]
            A_PART = fmul(a, ALPHA)
            c = fadd(fmul(B[k * ldb + j], A_PART), c)
    else:
        sum = np.float32(0)
        for k in range(K):
            a = A[i + k * lda] if TA else A[i * lda + k]
            sum = fadd(sum, fmul(fmul(a, ALPHA), B[j * ldb + k]))
        c = fadd(sum, c)
    C[i * ldc + j] = c


def _host_view(buf):
    """A zero-cost host stand-in of a 1-D float32 device array, for the CPU argument checks."""
    if isinstance(buf, np.ndarray) or getattr(buf, "dtype", None) != np.float32 or len(buf.shape) != 1:
        return buf
    return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=buf.shape, strides=(0,))


def gemm_gpu(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    """darknet's CPU ``gemm`` on the device, bit for bit: ``C = ALPHA*op(A)*op(B) + BETA*C``.

    Arguments as ``darkpy.kernels.reference.gemm.gemm`` (device or host float32
    arrays; a view stands for darknet's offset pointer).
    """
    check_gemm_args(TA, TB, M, N, K, _host_view(A), lda, _host_view(B), ldb, _host_view(C), ldc)
    if M == 0 or N == 0:
        return
    grid = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
    _gemm_kernel[grid, (TILE, TILE)](int(bool(TA)), int(bool(TB)), int(M), int(N), int(K),
                                     np.float32(ALPHA), A, int(lda), B, int(ldb), np.float32(BETA),
                                     C, int(ldc))
