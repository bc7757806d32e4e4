"""darknet's ``gemm.c`` CPU path, loop for loop: the oracle of ``darkpy.kernels.gemm``.

    C = ALPHA * op(A) * op(B) + BETA * C,   op(X) = X or X^T

A, B and C are flat float32 arrays (darknet's ``float *``); where darknet passes
an offset pointer (``l.weights + j*l.nweights/l.groups``) callers pass a view
(``l.weights[j*nweights//groups:]``).  Matrices are row-major with leading
dimensions ``lda``, ``ldb``, ``ldc`` exactly as in darknet:

* ``TA == 0``: A is M x K, element (i, k) at ``A[i*lda + k]``;
  ``TA == 1``: A is stored K x M, op(A)(i, k) at ``A[k*lda + i]``.
* ``TB == 0``: B is K x N, element (k, j) at ``B[k*ldb + j]``;
  ``TB == 1``: B is stored N x K, op(B)(k, j) at ``B[j*ldb + k]``.
* C is M x N, element (i, j) at ``C[i*ldc + j]``.

Arithmetic (C float semantics, all float32, one rounding per operation, no FMA):

* ``gemm_cpu`` first scales every C element by BETA, always (BETA == 1 and
  BETA == 0 are not special-cased: 0 * inf gives NaN, as in darknet).
* ``gemm_nn`` / ``gemm_tn``: for each row i, for k in order, ``A_PART = ALPHA*a(i,k)``
  rounded to float once, then ``C[i][j] += A_PART*B[k][j]`` for every j.  Each C
  element therefore receives its K products one by one, in k order, directly.
* ``gemm_nt`` / ``gemm_tt``: for each (i, j), ``sum`` (a float starting at +0)
  accumulates ``(ALPHA*a(i,k))*b(k,j)`` for k in order (C's left-to-right
  evaluation of ``ALPHA*A[..]*B[..]``), then ``C[i][j] += sum`` once.

ALPHA and BETA are ``float`` parameters in C: every function rounds them to
float32 on entry, so a Python float behaves like a C double argument converted
to float at the call.

NaN payloads: where two NaNs of different bits meet, x86 returns the first
source operand's (quieted), and a compiler may swap the operands of ``*`` and
``+``.  ``first_nan`` (``darkpy.kernels.reference.blas``) pins the order that
gcc 12 -O2 gave darknet's gemm.c (read from its objdump and checked against
that library on NaN-laden inputs): ``C*BETA``; ``A_PART = A*ALPHA``;
gemm_nn/tn ``product = B*A_PART``, ``C = product + C``; gemm_nt/tt
``product = A_PART*B``, ``sum = sum + product``, ``C = sum + C``.
"""

import numpy as np

from darkpy.errors import DarkpyError
from darkpy.kernels import kernel
from darkpy.kernels.reference.blas import first_nan


def check_gemm_args(TA, TB, M, N, K, A, lda, B, ldb, C, ldc):
    """Raise ``DarkpyError`` unless every element darknet's gemm touches lies inside A, B and C.

    darknet reads and writes through raw pointers without any check; we refuse
    calls that would run off the end of a buffer, and leading dimensions shorter
    than a stored row (which would make rows of C overlap).
    """
    if M < 0 or N < 0 or K < 0:
        raise DarkpyError(f"gemm: negative size M={M} N={N} K={K}")
    for name, buf in (("A", A), ("B", B), ("C", C)):
        if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
            raise DarkpyError(f"gemm: {name} must be a 1-D float32 array, got "
                              f"{getattr(buf, 'dtype', type(buf).__name__)} "
                              f"with shape {getattr(buf, 'shape', None)}")
    a_rows, a_cols = (K, M) if TA else (M, K)
    b_rows, b_cols = (N, K) if TB else (K, N)
    for name, buf, rows, cols, ld in (("A", A, a_rows, a_cols, lda),
                                      ("B", B, b_rows, b_cols, ldb),
                                      ("C", C, M, N, ldc)):
        if rows == 0 or cols == 0 or M == 0 or N == 0:
            continue
        if ld < cols:
            raise DarkpyError(f"gemm: ld{name.lower()}={ld} is shorter than a row of {name} ({cols})")
        need = (rows - 1) * ld + cols
        if buf.shape[0] < need:
            raise DarkpyError(f"gemm: {name} holds {buf.shape[0]} floats, a {rows}x{cols} matrix "
                              f"with leading dimension {ld} needs {need}")


def gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    """darknet's ``gemm``: check the arguments, then ``gemm_cpu`` (updates C in place)."""
    check_gemm_args(TA, TB, M, N, K, A, lda, B, ldb, C, ldc)
    gemm_cpu(int(TA), int(TB), int(M), int(N), int(K), np.float32(ALPHA), A, int(lda),
             B, int(ldb), np.float32(BETA), C, int(ldc))


@kernel
def gemm_nn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_nn``: C += ALPHA*A*B, i then k then j, ``A_PART`` hoisted as a float.

    NaN operands as gcc orders them: ``A_PART = A*ALPHA``, ``B*A_PART``, ``product + C``.
    """
    alpha = np.float32(ALPHA)
    for i in range(M):
        for k in range(K):
            a = A[i * lda + k]
            A_PART = first_nan(a, alpha * a)
            for j in range(N):
                b = B[k * ldb + j]
                product = first_nan(b, A_PART * b)
                C[i * ldc + j] = first_nan(product, C[i * ldc + j] + product)


@kernel
def gemm_nt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_nt``: C += ALPHA*A*B^T, a float ``sum`` over k per element, then one add.

    NaN operands as gcc orders them: ``(A*ALPHA)*B``, ``sum + product``, ``sum + C``.
    """
    alpha = np.float32(ALPHA)
    for i in range(M):
        for j in range(N):
            sum = np.float32(0)
            for k in range(K):
                a = A[i * lda + k]
                A_PART = first_nan(a, alpha * a)
                product = first_nan(A_PART, A_PART * B[j * ldb + k])
                sum = first_nan(sum, sum + product)
            C[i * ldc + j] = first_nan(sum, C[i * ldc + j] + sum)


@kernel
def gemm_tn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_tn``: C += ALPHA*A^T*B, like ``gemm_nn`` with A read down a column
    (same NaN operand order as ``gemm_nn``)."""
    alpha = np.float32(ALPHA)
    for i in range(M):
        for k in range(K):
            a = A[k * lda + i]
            A_PART = first_nan(a, alpha * a)
            for j in range(N):
                b = B[k * ldb + j]
                product = first_nan(b, A_PART * b)
                C[i * ldc + j] = first_nan(product, C[i * ldc + j] + product)


@kernel
def gemm_tt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_tt``: C += ALPHA*A^T*B^T, a float ``sum`` over k per element, then one add
    (same NaN operand order as ``gemm_nt``)."""
    alpha = np.float32(ALPHA)
    for i in range(M):
        for j in range(N):
            sum = np.float32(0)
            for k in range(K):
                a = A[i + k * lda]
                A_PART = first_nan(a, alpha * a)
                product = first_nan(A_PART, A_PART * B[k + j * ldb])
                sum = first_nan(sum, sum + product)
            C[i * ldc + j] = first_nan(sum, C[i * ldc + j] + sum)


@kernel
def gemm_cpu(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    """darknet's ``gemm_cpu``: C *= BETA (always; NaN order ``C*BETA``), then the variant
    chosen by TA, TB."""
    beta = np.float32(BETA)
    for i in range(M):
        for j in range(N):
            c = C[i * ldc + j]
            C[i * ldc + j] = first_nan(c, c * beta)
    if not TA and not TB:
        gemm_nn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc)
    elif TA and not TB:
        gemm_tn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc)
    elif not TA and TB:
        gemm_nt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc)
    else:
        gemm_tt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc)


def check_gemm_im2col_args(im, channels, height, width, ksize, stride, pad, M, N, K, A, lda, C, ldc,
                           name="gemm_im2col", check_matrices=True):
    """Raise ``DarkpyError`` unless ``gemm_im2col``'s sizes agree (K = channels*ksize*ksize
    rows and N = out_h*out_w columns of the column matrix) and every element it reads or
    writes lies inside ``im``, A and C.  Returns (out_h, out_w)."""
    from darkpy.kernels.reference.im2col import check_image_geometry
    height_col, width_col = check_image_geometry(name, (("im", im), ("A", A), ("C", C)),
                                                 channels, height, width, ksize, stride, pad)
    if K != channels * ksize * ksize or N != height_col * width_col:
        raise DarkpyError(f"{name}: the column matrix of {channels} channels and a {ksize}x{ksize} kernel "
                          f"has {channels * ksize * ksize} rows of {height_col * width_col} columns, "
                          f"not {K} x {N}")
    if im.shape[0] < channels * height * width:
        raise DarkpyError(f"{name}: im holds {im.shape[0]} floats, needs {channels * height * width}")
    if M < 0:
        raise DarkpyError(f"{name}: negative size M={M}")
    if check_matrices:
        _check_row_major(name, M, (("A", A, K, lda), ("C", C, N, ldc)))
    return height_col, width_col


def _check_row_major(name, M, matrices):
    """Raise ``DarkpyError`` unless each ``(what, buf, cols, ld)`` of ``matrices`` is a 1-D float32
    array holding an M x cols row-major matrix with leading dimension ``ld``."""
    for what, buf, cols, ld in matrices:
        if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
            raise DarkpyError(f"{name}: {what} must be a 1-D float32 array, got "
                              f"{getattr(buf, 'dtype', type(buf).__name__)} "
                              f"with shape {getattr(buf, 'shape', None)}")
        if M == 0 or cols == 0:
            continue
        if ld < cols:
            raise DarkpyError(f"{name}: ld{what.lower()}={ld} is shorter than a row of {what} ({cols})")
        need = (M - 1) * ld + cols
        if buf.shape[0] < need:
            raise DarkpyError(f"{name}: {what} holds {buf.shape[0]} floats, a {M}x{cols} matrix "
                              f"with leading dimension {ld} needs {need}")


def gemm_im2col(im, channels, height, width, ksize, stride, pad, M, N, K, ALPHA, A, lda, BETA, C, ldc,
                c_zero=False):
    """What darknet's convolution does with one image: ``im2col_cpu`` of ``im`` into a column
    matrix (here a temporary; darknet's ``net.workspace``), then
    ``gemm(0,0, M, N, K, ALPHA, A, lda, columns, N, BETA, C, ldc)``.  ``c_zero``: first set C's
    M x N block to +0, as darknet's ``fill_cpu(l.outputs*l.batch, 0, l.output, 1)`` does.
    The oracle of ``darkpy.kernels.gemm.gemm_im2col``."""
    from darkpy.kernels.reference.im2col import im2col_cpu
    check_gemm_im2col_args(im, channels, height, width, ksize, stride, pad, M, N, K, A, lda, C, ldc)
    if c_zero:
        for i in range(M):
            C[i * ldc:i * ldc + N] = np.float32(0)
    columns = np.empty(K * N, np.float32)
    im2col_cpu(im, channels, height, width, ksize, stride, pad, columns)
    gemm(0, 0, M, N, K, ALPHA, A, lda, columns, N, BETA, C, ldc)


def check_gemm_nt_im2col_args(M, N, K, A, lda, im, channels, height, width, ksize, stride, pad, C, ldc):
    """Raise ``DarkpyError`` unless ``gemm_nt_im2col``'s sizes agree (N = channels*ksize*ksize
    rows and K = out_h*out_w columns of the column matrix) and every element it reads or
    writes lies inside A (M x K), ``im`` and C (M x N).  Returns (out_h, out_w)."""
    # the same checks as gemm_im2col's with the roles of N and K swapped: A is M x K, C is M x N
    height_col, width_col = check_gemm_im2col_args(im, channels, height, width, ksize, stride, pad,
                                                   M, K, N, np.zeros(0, np.float32), 1,
                                                   np.zeros(0, np.float32), 1, name="gemm_nt_im2col",
                                                   check_matrices=False)
    _check_row_major("gemm_nt_im2col", M, (("A", A, K, lda), ("C", C, N, ldc)))
    return height_col, width_col


def gemm_nt_im2col(M, N, K, ALPHA, A, lda, im, channels, height, width, ksize, stride, pad, BETA, C, ldc):
    """What darknet's convolution backward does for the weight update of one image:
    ``im2col_cpu`` of ``im`` into a column matrix (darknet's ``net.workspace``), then
    ``gemm(0,1, M, N, K, ALPHA, A, lda, columns, K, BETA, C, ldc)`` with N = channels*ksize*ksize
    and K = out_h*out_w.  The oracle of ``darkpy.kernels.gemm.gemm_nt_im2col``."""
    from darkpy.kernels.reference.im2col import im2col_cpu
    check_gemm_nt_im2col_args(M, N, K, A, lda, im, channels, height, width, ksize, stride, pad, C, ldc)
    columns = np.empty(N * K, np.float32)
    im2col_cpu(im, channels, height, width, ksize, stride, pad, columns)
    gemm(0, 1, M, N, K, ALPHA, A, lda, columns, K, BETA, C, ldc)
