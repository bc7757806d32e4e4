"""darknet's ``gemm.c``, fast and bit-identical to ``darkpy.kernels.reference.gemm``.

Same functions, same signatures, same results bit for bit.  What may change and
what may not:

* Every C element must receive exactly darknet's sequence of float32 roundings:

  - ``gemm_nn`` / ``gemm_tn``: ``c = c*BETA``, then for k = 0, 1, ..., K-1:
    ``c = c + A_PART(i,k)*b(k,j)`` with ``A_PART = ALPHA*a(i,k)`` rounded once;
  - ``gemm_nt`` / ``gemm_tt``: ``sum = +0``, for k in order
    ``sum = sum + A_PART(i,k)*b(k,j)`` (C's ``ALPHA*A[..]*B[..]`` is
    ``(ALPHA*A[..])*B[..]``), then ``c = c*BETA + sum`` once.

  Each multiply and each add is rounded on its own: no FMA, no reassociation.
* Anything else is free: the (i, j) elements are independent, so they are
  computed many at a time.

How (the GotoBLAS layout, without the reassociation a BLAS allows itself):

* C is cut into independent blocks of ``MC`` rows x ``NC`` columns, dealt out
  to the threads with ``prange`` (never splitting K between threads).
* Within a block, K is walked in chunks of ``KC`` **in order**; between chunks
  the running value of each element waits in memory (C itself, or the ``sum``
  buffer S for nt/tt), which stores the float32 exactly.  gemm_cpu's BETA step
  is done on C's first load, before the first product is added.
* Per chunk, the ``A_PART`` values of the block's rows are computed once and
  packed into ``MR``-row panels (k-major), and B into ``NR``-column panels
  (k-major, zero padded; for nt/tt by 8 x 8 transposes in registers), so the
  micro-kernel reads both contiguously.
* The micro-kernel keeps an ``MR x NR`` tile (4 x 16: eight 8-float AVX
  registers) of running values in registers across the chunk: for each k one
  broadcast of ``A_PART`` per row, one 16-float row of B, then a separate
  vector multiply and vector add per register -- the scalar rounding sequence,
  8 lanes at a time.  Edge tiles go through a 4 x 16 scratch tile, so padding
  never touches the caller's memory.

The vector operations are LLVM ``<8 x float>`` ``fmul``/``fadd`` instructions
written with Numba intrinsics and no fast-math flags, so LLVM may not contract
them into FMAs (tests inspect the assembly for ``vfmadd``).

Which NaN comes out where two NaNs meet is part of the bits too: x86 keeps the
first operand's, and gcc's operand order is the reference's (``first_nan``).
The vector micro-kernels leave that order to LLVM, which is harmless while only
arithmetic makes NaNs (all the same default NaN).  Every packed panel is
therefore checked for NaN inputs (A_PART, B, and the running C or sum), and a
panel that has one is computed element by element in gcc's order instead.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, models, register_model

from darkpy.errors import DarkpyError
from darkpy.kernels import kernel, pkernel
from darkpy.kernels.reference.blas import first_nan
from darkpy.kernels.reference.gemm import check_gemm_args

#: Micro-kernel tile: MR rows x NR columns of C held in registers (NR = 2 vectors of 8).
MR = 4
NR = 16
#: Cache blocking: K chunk (a 16 KB B panel stays in L1), task rows, task columns.
KC = 256
MC = 64
NC = 512
#: The blocks of C are dealt out in at most this many contiguous runs (prange iterations),
#: each allocating its packing buffers once.
WORKERS = 64
#: Below this many multiply-adds a gemm runs in the calling thread (waking the
#: thread pool costs more than the work).
PARALLEL_WORK = 1 << 20

# ---------------------------------------------------------------------------
# An 8 x float32 vector value for Numba: a type, its LLVM representation
# (<8 x float>), and the few plain IEEE operations the micro-kernels need.
# ---------------------------------------------------------------------------

_V8 = ir.VectorType(ir.FloatType(), 8)


class Float32x8(types.Type):
    """Eight float32 lanes in one LLVM ``<8 x float>`` value (an AVX register)."""

    def __init__(self):
        super().__init__(name="Float32x8")


float32x8 = Float32x8()


@register_model(Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


def _is_f32_contig(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1 \
        and arr.layout == "C"


def _lane_pointer(context, builder, arrty, arr, idxty, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    i = context.cast(builder, idx, idxty, types.intp)
    return builder.bitcast(builder.gep(ary.data, [i]), _V8.as_pointer())


@intrinsic
def vload(typingctx, arr, idx):
    """The 8 floats ``arr[idx:idx+8]`` (unaligned load; ``arr`` a contiguous 1-D float32 array)."""
    if not (_is_f32_contig(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _lane_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        return builder.load(ptr, align=4, typ=_V8)

    return float32x8(arr, idx), codegen


@intrinsic
def vstore(typingctx, arr, idx, v):
    """Store the 8 lanes of ``v`` into ``arr[idx:idx+8]``."""
    if not (_is_f32_contig(arr) and isinstance(idx, types.Integer) and v == float32x8):
        return None

    def codegen(context, builder, sig, args):
        ptr = _lane_pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        builder.store(args[2], ptr, align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, v), codegen


@intrinsic
def vbroadcast(typingctx, x):
    """A vector with ``x`` (a float32) in all 8 lanes."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_V8, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
        return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined), zeros)

    return float32x8(x), codegen


@intrinsic
def vbroadcast_at(typingctx, arr, idx):
    """A vector with ``arr[idx]`` in all 8 lanes (no negative-index wraparound: ``idx >= 0``)."""
    if not (_is_f32_contig(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        x = builder.load(builder.gep(ary.data, [i]), align=4, typ=ir.FloatType())
        v = builder.insert_element(ir.Constant(_V8, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
        return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined), zeros)

    return float32x8(arr, idx), codegen


@intrinsic
def get(typingctx, arr, idx):
    """``arr[idx]`` for ``idx >= 0``, without Numba's negative-index wraparound."""
    if not (_is_f32_contig(arr) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(builder.gep(ary.data, [i]), align=4, typ=ir.FloatType())

    return types.float32(arr, idx), codegen


@intrinsic
def put(typingctx, arr, idx, x):
    """``arr[idx] = x`` (a float32) for ``idx >= 0``, without negative-index wraparound."""
    if not (_is_f32_contig(arr) and isinstance(idx, types.Integer) and x == types.float32):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        builder.store(args[2], builder.gep(ary.data, [i]), align=4)
        return context.get_dummy_value()

    return types.none(arr, idx, x), codegen


def _mask(*lanes):
    return ir.Constant(ir.VectorType(ir.IntType(32), 8), list(lanes))


@intrinsic
def transpose8x8(typingctx, src, s, lds, dst, d, ldd):
    """dst[d + c*ldd + r] = src[s + r*lds + c] for r, c < 8: an 8 x 8 block transposed
    in registers (shuffles only: the floats are moved, never computed)."""
    if not (_is_f32_contig(src) and _is_f32_contig(dst)
            and all(isinstance(x, types.Integer) for x in (s, lds, d, ldd))):
        return None

    def codegen(context, builder, sig, args):
        srcty, sty, ldsty, dstty, dty, lddty = sig.args
        src_a = context.make_array(srcty)(context, builder, args[0])
        dst_a = context.make_array(dstty)(context, builder, args[3])
        s_, lds_ = (context.cast(builder, v, t, types.intp) for v, t in ((args[1], sty), (args[2], ldsty)))
        d_, ldd_ = (context.cast(builder, v, t, types.intp) for v, t in ((args[4], dty), (args[5], lddty)))
        intp = s_.type

        def row_ptr(data, start, ld, r):
            off = builder.add(start, builder.mul(ld, ir.Constant(intp, r)))
            return builder.bitcast(builder.gep(data, [off]), _V8.as_pointer())

        rows = [builder.load(row_ptr(src_a.data, s_, lds_, r), align=4, typ=_V8) for r in range(8)]
        lo, hi = _mask(0, 8, 1, 9, 4, 12, 5, 13), _mask(2, 10, 3, 11, 6, 14, 7, 15)
        t = []
        for r in range(0, 8, 2):
            t += [builder.shuffle_vector(rows[r], rows[r + 1], lo),
                  builder.shuffle_vector(rows[r], rows[r + 1], hi)]
        lo2, hi2 = _mask(0, 1, 8, 9, 4, 5, 12, 13), _mask(2, 3, 10, 11, 6, 7, 14, 15)
        u = []
        for q in (0, 4):  # t[q], t[q+2] hold columns {0,1,4,5}; t[q+1], t[q+3] columns {2,3,6,7}
            u += [builder.shuffle_vector(t[q], t[q + 2], lo2),
                  builder.shuffle_vector(t[q], t[q + 2], hi2),
                  builder.shuffle_vector(t[q + 1], t[q + 3], lo2),
                  builder.shuffle_vector(t[q + 1], t[q + 3], hi2)]
        # u[c] (c < 4) holds rows 0-3 of columns c and c+4; u[4+c] rows 4-7 of the same columns
        lo4, hi4 = _mask(0, 1, 2, 3, 8, 9, 10, 11), _mask(4, 5, 6, 7, 12, 13, 14, 15)
        for c in range(4):
            builder.store(builder.shuffle_vector(u[c], u[4 + c], lo4), row_ptr(dst_a.data, d_, ldd_, c), align=4)
            builder.store(builder.shuffle_vector(u[c], u[4 + c], hi4), row_ptr(dst_a.data, d_, ldd_, c + 4),
                          align=4)
        return context.get_dummy_value()

    return types.none(src, s, lds, dst, d, ldd), codegen


@intrinsic
def vadd(typingctx, a, b):
    """Lane-wise float32 ``a + b``, one IEEE rounding per lane (no fast-math flags: never
    fused with a multiply)."""
    if not (a == float32x8 and b == float32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return float32x8(a, b), codegen


@intrinsic
def vmul(typingctx, a, b):
    """Lane-wise float32 ``a * b``, one IEEE rounding per lane (no fast-math flags: never
    fused with an add)."""
    if not (a == float32x8 and b == float32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(args[0], args[1])

    return float32x8(a, b), codegen


@intrinsic
def vhas_nan(typingctx, v):
    """Whether any lane of ``v`` is NaN."""
    if v != float32x8:
        return None

    def codegen(context, builder, sig, args):
        unordered = builder.fcmp_unordered("uno", args[0], args[0])
        mask = builder.bitcast(unordered, ir.IntType(8))
        return builder.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(8), 0))

    return types.boolean(v), codegen


# ---------------------------------------------------------------------------
# The micro-kernels: a 4 x 16 tile of running values, k in order.
# ``Ap`` holds A_PART k-major (Ap[ap + k*MR + r]); row k of the packed B panel
# is Bp[k*NR : k*NR + 16]; the tile lives in T at T[t + r*ldt + jj].
# ---------------------------------------------------------------------------

@kernel
def _tile_accumulate(kc, Ap, ap, Bp, T, t, ldt, scale, BETA):
    """gemm_nn/tn on one tile: T(r, jj) *= BETA when ``scale`` (gemm_cpu's first step), then
    for k = 0..kc-1 in order T(r, jj) = (B(k, jj)*A_PART(r, k)) + T(r, jj), each operation
    rounded on its own, operands in gcc's order (which decides the NaN that survives)."""
    c00 = vload(T, t)
    c01 = vload(T, t + 8)
    c10 = vload(T, t + ldt)
    c11 = vload(T, t + ldt + 8)
    c20 = vload(T, t + 2 * ldt)
    c21 = vload(T, t + 2 * ldt + 8)
    c30 = vload(T, t + 3 * ldt)
    c31 = vload(T, t + 3 * ldt + 8)
    if scale:
        beta = vbroadcast(BETA)
        c00 = vmul(c00, beta)
        c01 = vmul(c01, beta)
        c10 = vmul(c10, beta)
        c11 = vmul(c11, beta)
        c20 = vmul(c20, beta)
        c21 = vmul(c21, beta)
        c30 = vmul(c30, beta)
        c31 = vmul(c31, beta)
    for k in range(kc):
        b0 = vload(Bp, k * NR)
        b1 = vload(Bp, k * NR + 8)
        a = vbroadcast_at(Ap, ap + k * MR)
        c00 = vadd(vmul(b0, a), c00)
        c01 = vadd(vmul(b1, a), c01)
        a = vbroadcast_at(Ap, ap + k * MR + 1)
        c10 = vadd(vmul(b0, a), c10)
        c11 = vadd(vmul(b1, a), c11)
        a = vbroadcast_at(Ap, ap + k * MR + 2)
        c20 = vadd(vmul(b0, a), c20)
        c21 = vadd(vmul(b1, a), c21)
        a = vbroadcast_at(Ap, ap + k * MR + 3)
        c30 = vadd(vmul(b0, a), c30)
        c31 = vadd(vmul(b1, a), c31)
    vstore(T, t, c00)
    vstore(T, t + 8, c01)
    vstore(T, t + ldt, c10)
    vstore(T, t + ldt + 8, c11)
    vstore(T, t + 2 * ldt, c20)
    vstore(T, t + 2 * ldt + 8, c21)
    vstore(T, t + 3 * ldt, c30)
    vstore(T, t + 3 * ldt + 8, c31)


@kernel
def _tile_sum(kc, Ap, ap, Bp, S, s, lds):
    """gemm_nt/tt on one tile: for k = 0..kc-1 in order S(r, jj) = S(r, jj) + (A_PART(r, k)*B(k, jj)),
    each operation rounded on its own, operands in gcc's order (the running ``sum`` first)."""
    c00 = vload(S, s)
    c01 = vload(S, s + 8)
    c10 = vload(S, s + lds)
    c11 = vload(S, s + lds + 8)
    c20 = vload(S, s + 2 * lds)
    c21 = vload(S, s + 2 * lds + 8)
    c30 = vload(S, s + 3 * lds)
    c31 = vload(S, s + 3 * lds + 8)
    for k in range(kc):
        b0 = vload(Bp, k * NR)
        b1 = vload(Bp, k * NR + 8)
        a = vbroadcast_at(Ap, ap + k * MR)
        c00 = vadd(c00, vmul(a, b0))
        c01 = vadd(c01, vmul(a, b1))
        a = vbroadcast_at(Ap, ap + k * MR + 1)
        c10 = vadd(c10, vmul(a, b0))
        c11 = vadd(c11, vmul(a, b1))
        a = vbroadcast_at(Ap, ap + k * MR + 2)
        c20 = vadd(c20, vmul(a, b0))
        c21 = vadd(c21, vmul(a, b1))
        a = vbroadcast_at(Ap, ap + k * MR + 3)
        c30 = vadd(c30, vmul(a, b0))
        c31 = vadd(c31, vmul(a, b1))
    vstore(S, s, c00)
    vstore(S, s + 8, c01)
    vstore(S, s + lds, c10)
    vstore(S, s + lds + 8, c11)
    vstore(S, s + 2 * lds, c20)
    vstore(S, s + 2 * lds + 8, c21)
    vstore(S, s + 3 * lds, c30)
    vstore(S, s + 3 * lds + 8, c31)


# ---------------------------------------------------------------------------
# Packing.  A_PART = ALPHA*a(i, k) is rounded here, once per (i, k), as darknet
# rounds it once per (i, k); rows past the task's end are zero.
# ---------------------------------------------------------------------------

@kernel
def _pack_A(TA, alpha, A, lda, i0, mc, k0, kc, Ap):
    """Ap[p*MR*kc + k*MR + r] = ALPHA*op(A)(i0 + p*MR + r, k0 + k), zero past row i0+mc
    (``A_PART = A*ALPHA``: gcc's operand order).  Returns whether any A_PART is NaN."""
    panels = (mc + MR - 1) // MR
    for p in range(panels):
        base = p * MR * kc
        mr = min(MR, mc - p * MR)
        if mr < MR:
            Ap[base:base + MR * kc] = np.float32(0)
        if TA:  # op(A)(i, k) = A[k*lda + i]: the MR rows of one k are contiguous
            for k in range(kc):
                for r in range(mr):
                    a = get(A, (k0 + k) * lda + i0 + p * MR + r)
                    put(Ap, base + k * MR + r, first_nan(a, alpha * a))
        else:
            for r in range(mr):
                for k in range(kc):
                    a = get(A, (i0 + p * MR + r) * lda + k0 + k)
                    put(Ap, base + k * MR + r, first_nan(a, alpha * a))
    return _any_nan(Ap, panels * MR * kc)


@kernel
def _pack_B(TB, B, ldb, k0, kc, j, nr, Bp):
    """Bp[k*NR + jj] = op(B)(k0 + k, j + jj) for jj < nr, zero for the padding columns.
    Returns whether any of them is NaN."""
    if nr < NR:
        Bp[:kc * NR] = np.float32(0)
    if TB:  # op(B)(k, j) = B[j*ldb + k]: transpose 8 x 8 blocks, then the ragged edges
        k8 = kc // 8 * 8
        j8 = nr // 8 * 8
        for jj in range(0, j8, 8):
            for k in range(0, k8, 8):
                transpose8x8(B, (j + jj) * ldb + k0 + k, ldb, Bp, k * NR + jj, NR)
        for jj in range(j8):
            for k in range(k8, kc):
                put(Bp, k * NR + jj, get(B, (j + jj) * ldb + k0 + k))
        for jj in range(j8, nr):
            for k in range(kc):
                put(Bp, k * NR + jj, get(B, (j + jj) * ldb + k0 + k))
    elif nr == NR:
        for k in range(kc):
            vstore(Bp, k * NR, vload(B, (k0 + k) * ldb + j))
            vstore(Bp, k * NR + 8, vload(B, (k0 + k) * ldb + j + 8))
    else:
        for k in range(kc):
            for jj in range(nr):
                put(Bp, k * NR + jj, get(B, (k0 + k) * ldb + j + jj))
    return _any_nan(Bp, kc * NR)


# ---------------------------------------------------------------------------
# NaN inputs.  The vector micro-kernels leave the order of the operands of each
# + and * to LLVM; that order decides nothing but *which* NaN comes out when two
# NaNs meet (x86 returns the first operand's).  NaNs made by arithmetic are all
# the x86 default NaN, so this matters only when an input is NaN; panels with a
# NaN among their inputs are computed element by element in gcc's operand order
# instead (``first_nan``), the same chain of roundings as the reference.
# ---------------------------------------------------------------------------

@kernel
def _any_nan(X, n):
    """Whether any of X[0:n] is NaN."""
    found = False
    n8 = n // 8 * 8
    for i in range(0, n8, 8):
        found |= vhas_nan(vload(X, i))
    for i in range(n8, n):
        x = get(X, i)
        found |= x != x
    return found


@kernel
def _block_has_nan(C, c, ldc, rows, cols):
    """Whether any of the rows x cols elements C[c + r*ldc + jj] is NaN."""
    found = False
    for r in range(rows):
        if cols == NR:
            found |= vhas_nan(vload(C, c + r * ldc)) | vhas_nan(vload(C, c + r * ldc + 8))
        else:
            for jj in range(cols):
                x = get(C, c + r * ldc + jj)
                found |= x != x
    return found


@kernel
def _panel_accumulate_exact(kc, Ap, Bp, C, c, ldc, mc, nr, scale, beta):
    """One panel of gemm_nn/tn element by element, gcc's operand order: ``C*BETA`` (when
    ``scale``), then per k ``product = B*A_PART``, ``C = product + C``."""
    for r in range(mc):
        ap = (r // MR) * MR * kc + r % MR
        for jj in range(nr):
            x = C[c + r * ldc + jj]
            if scale:
                x = first_nan(x, x * beta)
            for k in range(kc):
                A_PART = Ap[ap + k * MR]
                b = Bp[k * NR + jj]
                product = first_nan(b, b * A_PART)
                x = first_nan(product, product + x)
            C[c + r * ldc + jj] = x


@kernel
def _panel_sum_exact(kc, Ap, Bp, S, s, lds, mc):
    """One panel of gemm_nt/tt's sums element by element, gcc's operand order:
    per k ``product = A_PART*B``, ``sum = sum + product``."""
    for r in range(mc):
        ap = (r // MR) * MR * kc + r % MR
        for jj in range(NR):
            sum = S[s + r * lds + jj]
            for k in range(kc):
                A_PART = Ap[ap + k * MR]
                product = first_nan(A_PART, A_PART * Bp[k * NR + jj])
                sum = first_nan(sum, sum + product)
            S[s + r * lds + jj] = sum


# ---------------------------------------------------------------------------
# Tasks: C is cut into MC x NC blocks, independent of one another; a task walks
# K in order, KC at a time.
# ---------------------------------------------------------------------------

@kernel
def _accumulate_tasks(t0, t1, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc):
    """Blocks t0..t1-1 of gemm_nn (TA=0) / gemm_tn (TA=1): C *= BETA (when ``scale``,
    gemm_cpu's step), then C += A_PART*B, k in order, accumulating in C itself."""
    Ap = np.empty(MC * KC, np.float32)
    Bp = np.empty(KC * NR, np.float32)
    T = np.empty(MR * NR, np.float32)
    for task in range(t0, t1):
        i0 = (task // ntasks) * MC
        j0 = (task % ntasks) * NC
        mc = min(MC, M - i0)
        nc = min(NC, N - j0)
        if scale and K == 0:  # no K chunk below to fold the BETA step into
            for i in range(i0, i0 + mc):
                for j in range(j0, j0 + nc):
                    c = C[i * ldc + j]
                    C[i * ldc + j] = first_nan(c, c * beta)
        panels = (mc + MR - 1) // MR
        for k0 in range(0, K, KC):
            kc = min(KC, K - k0)
            first = scale and k0 == 0
            a_nan = _pack_A(TA, alpha, A, lda, i0, mc, k0, kc, Ap)
            for j in range(j0, j0 + nc, NR):
                nr = min(NR, j0 + nc - j)
                b_nan = _pack_B(0, B, ldb, k0, kc, j, nr, Bp)
                if a_nan or b_nan or _block_has_nan(C, i0 * ldc + j, ldc, mc, nr):
                    _panel_accumulate_exact(kc, Ap, Bp, C, i0 * ldc + j, ldc, mc, nr, first, beta)
                    continue
                for p in range(panels):
                    i = i0 + p * MR
                    mr = min(MR, i0 + mc - i)
                    if mr == MR and nr == NR:
                        _tile_accumulate(kc, Ap, p * MR * kc, Bp, C, i * ldc + j, ldc, first, beta)
                    else:  # an edge tile: run it on a scratch copy
                        for r in range(mr):
                            for jj in range(nr):
                                T[r * NR + jj] = C[(i + r) * ldc + j + jj]
                        _tile_accumulate(kc, Ap, p * MR * kc, Bp, T, 0, NR, first, beta)
                        for r in range(mr):
                            for jj in range(nr):
                                C[(i + r) * ldc + j + jj] = T[r * NR + jj]


@kernel
def _sum_tasks(t0, t1, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc):
    """Blocks t0..t1-1 of gemm_nt (TA=0) / gemm_tt (TA=1): per element a float ``sum`` from
    +0 over k in order (kept in S between K chunks), then C *= BETA (when ``scale``), C += sum."""
    lds = (NC + NR - 1) // NR * NR
    S = np.empty(MC * lds, np.float32)
    Ap = np.empty(MC * KC, np.float32)
    Bp = np.empty(KC * NR, np.float32)
    for task in range(t0, t1):
        i0 = (task // ntasks) * MC
        j0 = (task % ntasks) * NC
        mc = min(MC, M - i0)
        nc = min(NC, N - j0)
        panels = (mc + MR - 1) // MR
        S[:] = np.float32(0)
        for k0 in range(0, K, KC):
            kc = min(KC, K - k0)
            a_nan = _pack_A(TA, alpha, A, lda, i0, mc, k0, kc, Ap)
            for j in range(j0, j0 + nc, NR):
                nr = min(NR, j0 + nc - j)
                b_nan = _pack_B(1, B, ldb, k0, kc, j, nr, Bp)
                if a_nan or b_nan or _block_has_nan(S, j - j0, lds, mc, NR):
                    _panel_sum_exact(kc, Ap, Bp, S, j - j0, lds, mc)
                    continue
                for p in range(panels):
                    _tile_sum(kc, Ap, p * MR * kc, Bp, S, p * MR * lds + j - j0, lds)
        for i in range(i0, i0 + mc):
            for j in range(j0, j0 + nc):
                c = C[i * ldc + j]
                if scale:
                    c = first_nan(c, c * beta)
                sum = S[(i - i0) * lds + j - j0]
                C[i * ldc + j] = first_nan(sum, c + sum)


@pkernel
def _accumulate_parallel(tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc):
    """The blocks of gemm_nn / gemm_tn dealt out among the threads."""
    workers = min(WORKERS, tasks)
    for w in prange(workers):
        _accumulate_tasks(w * tasks // workers, (w + 1) * tasks // workers, ntasks,
                          TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc)


@pkernel
def _sum_parallel(tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc):
    """The blocks of gemm_nt / gemm_tt dealt out among the threads."""
    workers = min(WORKERS, tasks)
    for w in prange(workers):
        _sum_tasks(w * tasks // workers, (w + 1) * tasks // workers, ntasks,
                   TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc)


@kernel
def _gemm_accumulate(TA, M, N, K, ALPHA, A, lda, B, ldb, scale, BETA, C, ldc):
    """gemm_nn (TA=0) / gemm_tn (TA=1) over all of C: in the calling thread when the work is
    too small to be worth waking the others."""
    alpha = np.float32(ALPHA)
    beta = np.float32(BETA)
    ntasks = (N + NC - 1) // NC
    tasks = ((M + MC - 1) // MC) * ntasks
    if tasks == 1 or M * N * max(K, 1) < PARALLEL_WORK:
        _accumulate_tasks(0, tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc)
    else:
        _accumulate_parallel(tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc)


@kernel
def _gemm_sum(TA, M, N, K, ALPHA, A, lda, B, ldb, scale, BETA, C, ldc):
    """gemm_nt (TA=0) / gemm_tt (TA=1) over all of C, like ``_gemm_accumulate``."""
    alpha = np.float32(ALPHA)
    beta = np.float32(BETA)
    ntasks = (N + NC - 1) // NC
    tasks = ((M + MC - 1) // MC) * ntasks
    if tasks == 1 or M * N * max(K, 1) < PARALLEL_WORK:
        _sum_tasks(0, tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc)
    else:
        _sum_parallel(tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc)


# ---------------------------------------------------------------------------
# darknet's entry points.
# ---------------------------------------------------------------------------

def gemm(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    """darknet's ``gemm``: check the arguments, then ``gemm_cpu`` (updates C in place)."""
    check_gemm_args(TA, TB, M, N, K, A, lda, B, ldb, C, ldc)
    for name, buf in (("A", A), ("B", B), ("C", C)):
        if not buf.flags.c_contiguous:
            raise DarkpyError(f"gemm: {name} must be contiguous (a flat buffer or a slice of one)")
    gemm_cpu(int(TA), int(TB), int(M), int(N), int(K), np.float32(ALPHA), A, int(lda),
             B, int(ldb), np.float32(BETA), C, int(ldc))


@kernel
def gemm_cpu(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    """darknet's ``gemm_cpu``: C = BETA*C + ALPHA*op(A)*op(B) in darknet's per-element order."""
    ta = 1 if TA else 0
    if TB:
        _gemm_sum(ta, M, N, K, np.float32(ALPHA), A, lda, B, ldb, True, np.float32(BETA), C, ldc)
    else:
        _gemm_accumulate(ta, M, N, K, np.float32(ALPHA), A, lda, B, ldb, True, np.float32(BETA), C, ldc)


@kernel
def gemm_nn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_nn``: C += ALPHA*A*B (no BETA step)."""
    _gemm_accumulate(0, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, np.float32(1), C, ldc)


@kernel
def gemm_tn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_tn``: C += ALPHA*A^T*B (no BETA step)."""
    _gemm_accumulate(1, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, np.float32(1), C, ldc)


@kernel
def gemm_nt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_nt``: C += sum_k ALPHA*A*B^T (no BETA step)."""
    _gemm_sum(0, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, np.float32(1), C, ldc)


@kernel
def gemm_tt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_tt``: C += sum_k ALPHA*A^T*B^T (no BETA step)."""
    _gemm_sum(1, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, np.float32(1), C, ldc)
