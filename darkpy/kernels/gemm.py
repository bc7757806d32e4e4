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

* gemm_nn / gemm_tn (every forward convolution): for each block of columns, B's
  rows 0..K-1 are packed **once** into ``NR``-column strips (k-major, zero padded;
  read along B's rows, or straight from the image for ``gemm_im2col``); then each
  ``MC``-row block packs its ``A_PART`` values for all of K (``MR`` = 6 or 4-row
  panels, k-major, 8 k at a time through 8 x 8 register transposes) and walks K
  in equal chunks of at most ``KC`` **in order**: per chunk, strip by strip (the
  strip stays in L1), panel by panel.  Between chunks each element's running value waits in C,
  which stores the float32 exactly; gemm_cpu's BETA step is done on C's first
  load.  Threads take whole column ranges (N >= M) or whole row ranges, never a
  piece of K.
* The gemm_nn/tn micro-kernel keeps a 6 x 16 tile (twelve 8-float AVX registers)
  of running values in registers across a chunk: for each k one 16-float row of
  B (two registers), one broadcast of ``A_PART`` per row, then a separate vector
  multiply and vector add per register -- the scalar rounding sequence, 8 lanes
  at a time.  It is emitted as LLVM IR with loop unrolling disabled: unrolled,
  its live values outgrow the 16 registers and spill (a test reads the loop's
  assembly).  Edge tiles go through a scratch tile, so padding never touches
  the caller's memory.
* gemm_nt / gemm_tt (the backward weight update): C is cut into ``SUM_MC`` x
  ``SUM_NC`` tasks dealt out with ``prange``; each walks K in ``KC`` chunks,
  keeping every element's float ``sum`` in a buffer between chunks, with a 4 x 16
  micro-kernel and B transposed 8 x 8 in registers while packed.

The vector operations are LLVM ``<8 x float>`` ``fmul``/``fadd`` instructions
without fast-math flags, so LLVM may not contract them into FMAs (tests inspect
the assembly for ``vfmadd``).

Which NaN comes out where two NaNs meet is part of the bits too: x86 keeps the
first operand's, and gcc's operand order is the reference's (``first_nan``).
The vector micro-kernels leave that order to LLVM, which is harmless while only
arithmetic makes NaNs (all the same default NaN, 0xFFC00000: where two of them
meet either one gives the same bits).  So the inputs (A_PART, B, and the running
C or sum) are checked: gemm_nn/tn computes a tile or panel element by element in
gcc's order only where an input holds a *foreign* NaN (other bits: a NaN that
came from outside the arithmetic); gemm_nt/tt does so for any NaN input.  A
network whose values overflowed into default NaNs keeps the vector speed.
"""

import numpy as np
from llvmlite import ir
from numba import get_num_threads, prange, types
from numba.extending import intrinsic, models, register_model

from darkpy.errors import DarkpyError
from darkpy.kernels import kernel, pkernel
from darkpy.kernels.reference.nan import first_nan
from darkpy.kernels.reference.gemm import (check_gemm_args, check_gemm_im2col_args,
                                          check_gemm_nt_im2col_args)

#: gemm_nn/tn micro-kernel: MR rows x NR columns of C in registers (6 x 2 vectors of 8: twelve
#: accumulators, two B vectors and one broadcast fill 15 of the 16 AVX registers); row panels
#: at the bottom edge may be MR4 = 4 rows high instead (M = 16, 32, 64, ... waste nothing).
MR = 6
MR4 = 4
NR = 16
#: gemm_nn/tn cache blocking: K chunk (a KC x NR strip of B, 16 KB, stays in L1) and row
#: block (an MC x KC chunk of A_PART, 132 KB, stays in L2; 128 filters make one block).
KC = 256
MC = 132
#: B is packed for all of K, a block of columns at a time: at most B_L2 floats (L2) when
#: a single row block uses the block, B_L3 (a share of L3) when several do.
B_L2 = 1 << 16
B_L3 = 1 << 21
#: gemm_nt/tt: MC x NC tasks of 4 x 16 tiles, each packing its own panels.
SUM_MR = 4
SUM_MC = 64
SUM_NC = 512
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


def _transpose8(builder, rows):
    """The 8 columns of the 8 x 8 block whose rows are the vectors ``rows`` (shuffles only)."""
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
    cols = [None] * 8
    for c in range(4):
        cols[c] = builder.shuffle_vector(u[c], u[4 + c], lo4)
        cols[c + 4] = builder.shuffle_vector(u[c], u[4 + c], hi4)
    return cols


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
        for c, col in enumerate(_transpose8(builder, rows)):
            builder.store(col, row_ptr(dst_a.data, d_, ldd_, c), align=4)
        return context.get_dummy_value()

    return types.none(src, s, lds, dst, d, ldd), codegen


@intrinsic
def vtranspose_store(typingctx, dst, d, ldd, v0, v1, v2, v3, v4, v5, v6, v7):
    """dst[d + c*ldd : d + c*ldd + 8] = column c of the 8 x 8 block with rows v0..v7, for
    c = 0..7 in order (so with ldd < 8 each store overwrites the previous one's tail, and the
    last one writes 8 - ldd floats past d + 8*ldd)."""
    vs = (v0, v1, v2, v3, v4, v5, v6, v7)
    if not (_is_f32_contig(dst) and isinstance(d, types.Integer) and isinstance(ldd, types.Integer)
            and all(v == float32x8 for v in vs)):
        return None

    def codegen(context, builder, sig, args):
        dst_a = context.make_array(sig.args[0])(context, builder, args[0])
        d_ = context.cast(builder, args[1], sig.args[1], types.intp)
        ldd_ = context.cast(builder, args[2], sig.args[2], types.intp)
        for c, col in enumerate(_transpose8(builder, list(args[3:]))):
            off = builder.add(d_, builder.mul(ldd_, ir.Constant(d_.type, c)))
            builder.store(col, builder.bitcast(builder.gep(dst_a.data, [off]), _V8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(dst, d, ldd, *vs), codegen


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


#: The bits of the NaN that x86 arithmetic makes (0*inf, inf-inf, ...): the "real indefinite".
DEFAULT_NAN_BITS = 0xFFC00000


def _foreign_mask(builder, v, lanes):
    """i1 per lane (a single i1 for a scalar, ``lanes`` = 0): NaN, with bits other than
    DEFAULT_NAN_BITS."""
    i32 = ir.IntType(32)
    ity = ir.VectorType(i32, lanes) if lanes else i32
    default = ir.Constant(ity, [DEFAULT_NAN_BITS] * lanes) if lanes else ir.Constant(i32, DEFAULT_NAN_BITS)
    other = builder.icmp_unsigned("!=", builder.bitcast(v, ity), default)
    return builder.and_(builder.fcmp_unordered("uno", v, v), other)


@intrinsic
def vhas_foreign_nan(typingctx, v):
    """Whether a lane of ``v`` is a NaN other than the default NaN.  Where every NaN is the
    default one, the order of the operands of + and * cannot change a result's bits."""
    if v != float32x8:
        return None

    def codegen(context, builder, sig, args):
        mask = builder.bitcast(_foreign_mask(builder, args[0], 8), ir.IntType(8))
        return builder.icmp_unsigned("!=", mask, ir.Constant(ir.IntType(8), 0))

    return types.boolean(v), codegen


@intrinsic
def is_foreign_nan(typingctx, x):
    """Whether the float32 ``x`` is a NaN other than the default NaN."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _foreign_mask(builder, args[0], 0)

    return types.boolean(x), codegen


# ---------------------------------------------------------------------------
# The micro-kernels: a 4 x 16 tile of running values, k in order.
# ``Ap`` holds A_PART k-major (Ap[ap + k*MR + r]); row k of the packed B panel
# is Bp[k*NR : k*NR + 16]; the tile lives in T at T[t + r*ldt + jj].
# ---------------------------------------------------------------------------

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
        a = vbroadcast_at(Ap, ap + k * SUM_MR)
        c00 = vadd(c00, vmul(a, b0))
        c01 = vadd(c01, vmul(a, b1))
        a = vbroadcast_at(Ap, ap + k * SUM_MR + 1)
        c10 = vadd(c10, vmul(a, b0))
        c11 = vadd(c11, vmul(a, b1))
        a = vbroadcast_at(Ap, ap + k * SUM_MR + 2)
        c20 = vadd(c20, vmul(a, b0))
        c21 = vadd(c21, vmul(a, b1))
        a = vbroadcast_at(Ap, ap + k * SUM_MR + 3)
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
    """Ap[p*SUM_MR*kc + k*SUM_MR + r] = ALPHA*op(A)(i0 + p*SUM_MR + r, k0 + k), zero past row i0+mc
    (``A_PART = A*ALPHA``: gcc's operand order).  Returns whether any A_PART is NaN."""
    panels = (mc + SUM_MR - 1) // SUM_MR
    for p in range(panels):
        base = p * SUM_MR * kc
        mr = min(SUM_MR, mc - p * SUM_MR)
        if mr < SUM_MR:
            Ap[base:base + SUM_MR * kc] = np.float32(0)
        if TA:  # op(A)(i, k) = A[k*lda + i]: the SUM_MR rows of one k are contiguous
            for k in range(kc):
                for r in range(mr):
                    a = get(A, (k0 + k) * lda + i0 + p * SUM_MR + r)
                    put(Ap, base + k * SUM_MR + r, first_nan(a, alpha * a))
        else:
            for r in range(mr):
                for k in range(kc):
                    a = get(A, (i0 + p * SUM_MR + r) * lda + k0 + k)
                    put(Ap, base + k * SUM_MR + r, first_nan(a, alpha * a))
    return _any_nan(Ap, panels * SUM_MR * kc)


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
def _panel_sum_exact(kc, Ap, Bp, S, s, lds, mc):
    """One panel of gemm_nt/tt's sums element by element, gcc's operand order:
    per k ``product = A_PART*B``, ``sum = sum + product``."""
    for r in range(mc):
        ap = (r // SUM_MR) * SUM_MR * kc + r % SUM_MR
        for jj in range(NR):
            sum = S[s + r * lds + jj]
            for k in range(kc):
                A_PART = Ap[ap + k * SUM_MR]
                product = first_nan(A_PART, A_PART * Bp[k * NR + jj])
                sum = first_nan(sum, sum + product)
            S[s + r * lds + jj] = sum


# ---------------------------------------------------------------------------
# Tasks: C is cut into SUM_MC x SUM_NC blocks, independent of one another; a task walks
# K in order, KC at a time.
# ---------------------------------------------------------------------------

@kernel
def _sum_tasks(t0, t1, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc,
               fused, height, width, ksize, stride, pad, width_col):
    """Blocks t0..t1-1 of gemm_nt (TA=0) / gemm_tt (TA=1): per element a float ``sum`` from
    +0 over k in order (kept in S between K chunks), then C *= BETA (when ``scale``), C += sum.
    ``fused``: op(B) = columns^T with ``columns`` the im2col matrix of the image B
    (``gemm_nt_im2col``), read from the image."""
    lds = (SUM_NC + NR - 1) // NR * NR
    S = np.empty(SUM_MC * lds, np.float32)
    Ap = np.empty(SUM_MC * KC, np.float32)
    Bp = np.empty(KC * NR, np.float32)
    rows = np.empty(NR * KC if fused else 0, np.float32)
    for task in range(t0, t1):
        i0 = (task // ntasks) * SUM_MC
        j0 = (task % ntasks) * SUM_NC
        mc = min(SUM_MC, M - i0)
        nc = min(SUM_NC, N - j0)
        panels = (mc + SUM_MR - 1) // SUM_MR
        S[:] = np.float32(0)
        for k0 in range(0, K, KC):
            kc = min(KC, K - k0)
            a_nan = _pack_A(TA, alpha, A, lda, i0, mc, k0, kc, Ap)
            for j in range(j0, j0 + nc, NR):
                nr = min(NR, j0 + nc - j)
                if fused:
                    b_nan = _pack_B_im2col_t(B, height, width, ksize, stride, pad, width_col, k0, kc, j, nr,
                                             Bp, rows)
                else:
                    b_nan = _pack_B(1, B, ldb, k0, kc, j, nr, Bp)
                if a_nan or b_nan or _block_has_nan(S, j - j0, lds, mc, NR):
                    _panel_sum_exact(kc, Ap, Bp, S, j - j0, lds, mc)
                    continue
                for p in range(panels):
                    _tile_sum(kc, Ap, p * SUM_MR * kc, Bp, S, p * SUM_MR * lds + j - j0, lds)
        for i in range(i0, i0 + mc):
            for j in range(j0, j0 + nc):
                c = C[i * ldc + j]
                if scale:
                    c = first_nan(c, c * beta)
                sum = S[(i - i0) * lds + j - j0]
                C[i * ldc + j] = first_nan(sum, c + sum)


@pkernel
def _sum_parallel(tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc,
                  fused, height, width, ksize, stride, pad, width_col):
    """The blocks of gemm_nt / gemm_tt dealt out among the threads."""
    workers = min(WORKERS, tasks)
    for w in prange(workers):
        _sum_tasks(w * tasks // workers, (w + 1) * tasks // workers, ntasks,
                   TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc, fused, height, width, ksize, stride, pad, width_col)


@kernel
def _gemm_sum(TA, M, N, K, ALPHA, A, lda, B, ldb, scale, BETA, C, ldc,
              fused, height, width, ksize, stride, pad, width_col):
    """gemm_nt (TA=0) / gemm_tt (TA=1) over all of C, like ``_gemm_accumulate``."""
    alpha = np.float32(ALPHA)
    beta = np.float32(BETA)
    ntasks = (N + SUM_NC - 1) // SUM_NC
    tasks = ((M + SUM_MC - 1) // SUM_MC) * ntasks
    if tasks == 1 or M * N * max(K, 1) < PARALLEL_WORK:
        _sum_tasks(0, tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc, fused, height, width, ksize, stride, pad, width_col)
    else:
        _sum_parallel(tasks, ntasks, TA, M, N, K, alpha, A, lda, B, ldb, scale, beta, C, ldc, fused, height, width, ksize, stride, pad, width_col)


# ---------------------------------------------------------------------------
# gemm_nn / gemm_tn, GotoBLAS's loop order.  For each block of columns of C
# (``_column_block``), B's rows 0..K-1 are packed once into NR-column strips
# (from B itself, or straight from the image for ``gemm_im2col``); then every
# MC-row block packs its A_PART panels for all of K and walks the K chunks in
# order, each strip by strip (a strip stays in L1 while the panels stream by).
# Between chunks every element's running value waits in C as a float32.
# ---------------------------------------------------------------------------

#: How a tile's running values start on a K chunk: loaded from C; loaded and multiplied by
#: BETA (gemm_cpu's step, on the first chunk); or the value ``c0 = (+0)*BETA`` that a C just
#: zeroed by fill_cpu would have after that step (``gemm_im2col(..., c_zero=True)``).
START_LOAD = 0
START_SCALE = 1
START_CONST = 2


# The micro-kernels.  A tile of running values T(r, jj) = T[t + r*ldt + jj] starts as
# ``start`` says (loaded; loaded and multiplied by BETA; or c0), then for k = 0..kc-1 in
# order T(r, jj) = (B(k, jj)*A_PART(r, k)) + T(r, jj), each multiply and add rounded on its
# own, 8 lanes at a time, with A_PART(r, k) = Ap[ap + k*rows + r] broadcast and
# B(k, jj) = Bp[bp + k*NR + jj].  They are written as LLVM IR (a plain loop of fmul/fadd
# without fast-math flags, so never contracted into FMAs) to keep the accumulators in
# registers: see ``_unroll_disabled``.  A tile that loads a foreign NaN returns False and
# writes nothing; the caller then computes it element by element.

def _unroll_disabled(builder):
    """Loop metadata ``!{self, !{"llvm.loop.unroll.disable"}}`` for a loop's back edge: LLVM's
    runtime unrolling of the micro-kernel loop doubles its live vectors past the 16 AVX
    registers and spills accumulators to the stack."""
    module = builder.module
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = module.add_metadata([disable, disable])
    loop_id.operands = (loop_id, disable)  # a loop ID names itself first
    return loop_id


def _tile_intrinsic(rows, mode):
    """The ``rows`` x 16 micro-kernel of gemm_nn/tn as one LLVM loop, its start fixed to
    ``mode`` (START_*) so that a tile does no work it does not need."""

    def tile(typingctx, kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta):
        ints = (kc, ap, bp, t, ldt)
        if not (all(isinstance(x, types.Integer) for x in ints) and _is_f32_contig(Ap)
                and _is_f32_contig(Bp) and _is_f32_contig(T) and c0 == types.float32
                and beta == types.float32):
            return None

        def codegen(context, builder, sig, args):
            def intp(i):
                return context.cast(builder, args[i], sig.args[i], types.intp)

            kc_, ap_, bp_, t_, ldt_ = (intp(i) for i in (0, 2, 4, 6, 7))
            a_data = context.make_array(sig.args[1])(context, builder, args[1]).data
            b_data = context.make_array(sig.args[3])(context, builder, args[3]).data
            t_data = context.make_array(sig.args[5])(context, builder, args[5]).data
            ity = kc_.type
            i8 = ir.IntType(8)

            def const(n):
                return ir.Constant(ity, n)

            def vec_ptr(data, off):
                return builder.bitcast(builder.gep(data, [off]), _V8.as_pointer())

            def splat(x):
                v = builder.insert_element(ir.Constant(_V8, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
                return builder.shuffle_vector(v, ir.Constant(_V8, ir.Undefined),
                                              ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8))

            # the running values: loaded (and checked for NaN), scaled, or the constant
            offs = [builder.add(t_, builder.add(builder.mul(ldt_, const(r)), const(h)))
                    for r in range(rows) for h in (0, 8)]
            if mode == START_CONST:
                init = [splat(args[8])] * (2 * rows)
            else:
                init = [builder.load(vec_ptr(t_data, o), align=4) for o in offs]
                nan = ir.Constant(i8, 0)
                for v in init:
                    nan = builder.or_(nan, builder.bitcast(_foreign_mask(builder, v, 8), i8))
                has_nan = builder.icmp_unsigned("!=", nan, ir.Constant(i8, 0))
                if mode == START_SCALE:  # gemm_cpu's C*BETA
                    vbeta = splat(args[9])
                    init = [builder.fmul(v, vbeta) for v in init]
            entry = builder.block
            header = builder.append_basic_block("tile.header")
            body = builder.append_basic_block("tile.body")
            store = builder.append_basic_block("tile.store")
            done = builder.append_basic_block("tile.done")
            if mode == START_CONST:
                builder.branch(header)
            else:
                builder.cbranch(has_nan, done, header)

            builder.position_at_end(header)
            k = builder.phi(ity)
            k.add_incoming(const(0), entry)
            accs = []
            for v in init:
                phi = builder.phi(_V8)
                phi.add_incoming(v, entry)
                accs.append(phi)
            builder.cbranch(builder.icmp_signed("<", k, kc_), body, store)

            builder.position_at_end(body)
            boff = builder.add(bp_, builder.mul(k, const(NR)))
            b0 = builder.load(vec_ptr(b_data, boff), align=4)
            b1 = builder.load(vec_ptr(b_data, builder.add(boff, const(8))), align=4)
            aoff = builder.add(ap_, builder.mul(k, const(rows)))
            new = []
            for r in range(rows):
                a = splat(builder.load(builder.gep(a_data, [builder.add(aoff, const(r))]), align=4))
                # C = (B*A_PART) + C: gcc's operand order, two roundings (plain fmul/fadd, no flags)
                new.append(builder.fadd(builder.fmul(b0, a), accs[2 * r]))
                new.append(builder.fadd(builder.fmul(b1, a), accs[2 * r + 1]))
            k.add_incoming(builder.add(k, const(1)), builder.block)
            back = builder.branch(header)
            back.set_metadata("llvm.loop", _unroll_disabled(builder))
            for phi, v in zip(accs, new):
                phi.add_incoming(v, back.parent)

            builder.position_at_end(store)
            for o, v in zip(offs, accs):
                builder.store(v, vec_ptr(t_data, o), align=4)
            builder.branch(done)

            builder.position_at_end(done)
            ok = builder.phi(ir.IntType(1))
            if mode != START_CONST:
                ok.add_incoming(ir.Constant(ir.IntType(1), 0), entry)
            ok.add_incoming(ir.Constant(ir.IntType(1), 1), store)
            return ok

        return types.boolean(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta), codegen

    tile.__name__ = f"_tile{rows}_{mode}"
    tile.__doc__ = (f"A {rows} x 16 tile of gemm_nn/tn (see the section comment). Returns False, writing "
                    "nothing, when a loaded T value is a foreign NaN and the tile does not start from c0.")
    return intrinsic(tile)


_tile6_load, _tile6_scale, _tile6_const = (_tile_intrinsic(MR, mode) for mode in (START_LOAD, START_SCALE,
                                                                                  START_CONST))
_tile4_load, _tile4_scale, _tile4_const = (_tile_intrinsic(MR4, mode) for mode in (START_LOAD, START_SCALE,
                                                                                  START_CONST))


@kernel
def _tile(h, start, kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta):
    """The h-row (6 or 4) micro-kernel for this start: True when done, False (nothing written)
    when a loaded T value is a foreign NaN."""
    if h == MR:
        if start == START_CONST:
            return _tile6_const(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta)
        if start == START_SCALE:
            return _tile6_scale(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta)
        return _tile6_load(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta)
    if start == START_CONST:
        return _tile4_const(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta)
    if start == START_SCALE:
        return _tile4_scale(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta)
    return _tile4_load(kc, Ap, ap, Bp, bp, T, t, ldt, c0, beta)


@kernel
def _row_panels(mc, pstart, pheight, prows):
    """Cut an mc-row block into panels: panel p holds rows pstart[p] .. pstart[p]+prows[p]-1,
    packed pheight[p] (6 or 4) rows wide (prows[p] < pheight[p] only for the last one).
    Sixes first; a remainder of 4 is one 4-row panel and of 2 (after a six) two of them, so
    row counts that are multiples of 4 or 6 need no padding rows.  Returns the count."""
    sixes = mc // MR
    rest = mc - sixes * MR
    if rest == 2 and sixes > 0:
        sixes -= 1
        rest = 8
    p = 0
    i = 0
    for _ in range(sixes):
        pstart[p] = i
        pheight[p] = MR
        prows[p] = MR
        p += 1
        i += MR
    while rest > 0:
        h = MR if rest == 5 else MR4
        rows = min(rest, h)
        pstart[p] = i
        pheight[p] = h
        prows[p] = rows
        p += 1
        i += rows
        rest -= rows
    return p


@kernel
def _row8(A, row, r, mr, lda, k, alpha):
    """A_PART of row ``row + r``, columns k..k+7, multiplied 8 at a time (zeros when r >= mr)."""
    if r >= mr:
        return vbroadcast(np.float32(0))
    return vmul(vload(A, (row + r) * lda + k), vbroadcast(alpha))


@kernel
def _pack_A_panel(TA, alpha, A, lda, i, mr, h, k0, kc, Ap, base):
    """One panel, k-major: Ap[base + k*h + r] = A_PART = op(A)(i + r, k0 + k)*ALPHA rounded once
    (gcc's operand order), for k < kc and r < h, rows r >= mr zero.  Returns whether any
    A_PART is a foreign NaN (``vhas_foreign_nan``).  For TA=0 it goes 8 k at a time, rows transposed in registers; the last
    store runs 8 - h floats past base + kc*h (the caller packs what lies there next).  A group
    of 8 whose products hold a NaN is redone one by one in gcc's order (``first_nan``)."""
    nan = False
    if TA:  # op(A)(i, k) = A[k*lda + i]: the rows of one k are contiguous
        if mr < h:
            Ap[base:base + h * kc] = np.float32(0)
        for k in range(kc):
            for r in range(mr):
                a = get(A, (k0 + k) * lda + i + r)
                A_PART = first_nan(a, alpha * a)
                nan |= is_foreign_nan(A_PART)
                put(Ap, base + k * h + r, A_PART)
        return nan
    kc8 = kc // 8 * 8
    zero = vbroadcast(np.float32(0))
    for k in range(0, kc8, 8):
        v0 = _row8(A, i, 0, mr, lda, k0 + k, alpha)
        v1 = _row8(A, i, 1, mr, lda, k0 + k, alpha)
        v2 = _row8(A, i, 2, mr, lda, k0 + k, alpha)
        v3 = _row8(A, i, 3, mr, lda, k0 + k, alpha)
        v4 = zero
        v5 = zero
        if h == MR:
            v4 = _row8(A, i, 4, mr, lda, k0 + k, alpha)
            v5 = _row8(A, i, 5, mr, lda, k0 + k, alpha)
        vtranspose_store(Ap, base + k * h, h, v0, v1, v2, v3, v4, v5, zero, zero)
        if (vhas_nan(v0) | vhas_nan(v1) | vhas_nan(v2) | vhas_nan(v3)
                | vhas_nan(v4) | vhas_nan(v5)):
            for kk in range(k, k + 8):
                for r in range(mr):
                    a = get(A, (i + r) * lda + k0 + kk)
                    A_PART = first_nan(a, alpha * a)
                    nan |= is_foreign_nan(A_PART)
                    put(Ap, base + kk * h + r, A_PART)
    for k in range(kc8, kc):
        for r in range(h):
            A_PART = np.float32(0)
            if r < mr:
                a = get(A, (i + r) * lda + k0 + k)
                A_PART = first_nan(a, alpha * a)
                nan |= is_foreign_nan(A_PART)
            put(Ap, base + k * h + r, A_PART)
    return nan


@kernel
def _pack_A_block(TA, alpha, A, lda, i0, K, kcb, npanels, pstart, pheight, prows, mpad, Ap, a_nan):
    """All of K for a block of rows: chunk c (k0 = c*kcb) at Ap[k0*mpad:], its panels one after
    the other (panel p at + pstart[p]*kc, see ``_pack_A_panel``), in the order that lets each
    panel's overrun land on one packed later.  a_nan[c]: whether chunk c has a foreign NaN A_PART."""
    c = 0
    for k0 in range(0, K, kcb):
        kc = min(kcb, K - k0)
        nan = False
        for p in range(npanels):
            nan |= _pack_A_panel(TA, alpha, A, lda, i0 + pstart[p], prows[p], pheight[p], k0, kc, Ap,
                                 k0 * mpad + pstart[p] * kc)
        a_nan[c] = nan
        c += 1


@kernel
def _column_block(m, n, K):
    """Columns of B packed at once (for all of K): an L2-sized block when one row block uses
    it, an L3-sized one when several do; whole strips, at most all of n."""
    limit = B_L2 if m <= MC else B_L3
    cols = max(NR, limit // max(K, 1) // NR * NR)
    return min(cols, (n + NR - 1) // NR * NR)


@kernel
def _im2col_row(im, height, width, stride, pad, width_col, c_im, h_offset, w_offset, h, w, nc, row, o):
    """row[o + q] = element (c, j + q) of darknet's column matrix for q < nc, read from the image:
    row c is tap (h_offset, w_offset) of channel c_im; column j is output position (h, w); output
    position (h, w) sees pixel (h_offset + h*stride - pad, w_offset + w*stride - pad), 0 outside
    the image."""
    off = w_offset - pad  # the pixel column of output column w is off + w*stride
    # output columns whose pixel column lies inside the image: w_in <= w < w_out
    if stride == 1:
        w_in = max(0, -off)
        w_out = max(0, width - off)
    else:
        w_in = 0 if off >= 0 else (stride - 1 - off) // stride
        last = width - 1 - off
        w_out = 0 if last < 0 else last // stride + 1
    q = 0
    while q < nc:  # one run per output row
        count = min(nc - q, width_col - w)
        pixel_row = h_offset + h * stride - pad
        if pixel_row < 0 or pixel_row >= height:
            for x in range(q, q + count):
                put(row, o + x, np.float32(0))
        else:
            src = width * (pixel_row + height * c_im) + off
            lo = min(max(w, w_in), w + count)
            hi = max(min(w + count, w_out), lo)
            for x in range(w, lo):
                put(row, o + q + x - w, np.float32(0))
            if stride == 1:
                for x in range(lo, hi):
                    put(row, o + q + x - w, get(im, src + x))
            else:
                for x in range(lo, hi):
                    put(row, o + q + x - w, get(im, src + x * stride))
            for x in range(hi, w + count):
                put(row, o + q + x - w, np.float32(0))
        q += count
        h += 1
        w = 0


@kernel
def _tap(c, ksize):
    """Row c of the column matrix: (c_im, h_offset, w_offset)."""
    return c // ksize // ksize, (c // ksize) % ksize, c % ksize


@kernel
def _next_tap(c_im, h_offset, w_offset, ksize):
    """The tap of the next row of the column matrix (w_offset fastest, then h_offset, c_im)."""
    w_offset += 1
    if w_offset == ksize:
        w_offset = 0
        h_offset += 1
        if h_offset == ksize:
            h_offset = 0
            c_im += 1
    return c_im, h_offset, w_offset


@kernel
def _pack_B_chunk(fused, B, ldb, height, width, ksize, stride, pad, width_col, k0, kc, j0, nc, Bp, base, row):
    """Rows k0..k0+kc-1 of B, columns j0..j0+nc-1, as NR-column strips: strip s, row k at
    Bp[base + s*kc*NR + k*NR], padding columns zero.  Row by row, so that B (or the image)
    is read along its rows.  ``fused``: the rows are those of darknet's column matrix, read
    from the image B (im2col only copies floats).  Returns whether any is a foreign NaN."""
    nan = False
    full = nc // NR
    strips = (nc + NR - 1) // NR
    c_im, h_offset, w_offset = _tap(k0, max(ksize, 1))  # (the image's geometry; unused unless fused)
    h = j0 // max(width_col, 1)
    w = j0 - h * width_col
    for k in range(kc):
        if fused:
            _im2col_row(B, height, width, stride, pad, width_col, c_im, h_offset, w_offset, h, w, nc, row, 0)
            c_im, h_offset, w_offset = _next_tap(c_im, h_offset, w_offset, ksize)
            src = row
            s0 = 0
        else:
            src = B
            s0 = (k0 + k) * ldb + j0
        for s in range(full):
            lo = vload(src, s0 + s * NR)
            hi = vload(src, s0 + s * NR + 8)
            nan |= vhas_foreign_nan(lo) | vhas_foreign_nan(hi)
            vstore(Bp, base + s * kc * NR + k * NR, lo)
            vstore(Bp, base + s * kc * NR + k * NR + 8, hi)
        if full < strips:
            o = base + full * kc * NR + k * NR
            for jj in range(NR):
                x = np.float32(0)
                if full * NR + jj < nc:
                    x = get(src, s0 + full * NR + jj)
                    nan |= is_foreign_nan(x)
                put(Bp, o + jj, x)
    return nan


@kernel
def _pack_B_im2col_t(im, height, width, ksize, stride, pad, width_col, k0, kc, j, nr, Bp, rows):
    """``_pack_B``'s transposed strip for gemm_nt when B is darknet's column matrix (stored
    channels*ksize*ksize rows x out_h*out_w): Bp[k*NR + jj] = columns(j + jj, k0 + k), zero
    for jj >= nr, built from the image -- the strip's nr rows of the column matrix into
    ``rows`` (nr x kc), then 8 x 8 transposes in registers.  Returns whether any is NaN."""
    if nr < NR:
        Bp[:kc * NR] = np.float32(0)
    c_im, h_offset, w_offset = _tap(j, ksize)
    h = k0 // width_col
    w = k0 - h * width_col
    for jj in range(nr):
        _im2col_row(im, height, width, stride, pad, width_col, c_im, h_offset, w_offset, h, w, kc, rows, jj * kc)
        c_im, h_offset, w_offset = _next_tap(c_im, h_offset, w_offset, ksize)
    k8 = kc // 8 * 8
    j8 = nr // 8 * 8
    for jj in range(0, j8, 8):
        for k in range(0, k8, 8):
            transpose8x8(rows, jj * kc + k, kc, Bp, k * NR + jj, NR)
    for jj in range(j8):
        for k in range(k8, kc):
            put(Bp, k * NR + jj, get(rows, jj * kc + k))
    for jj in range(j8, nr):
        for k in range(kc):
            put(Bp, k * NR + jj, get(rows, jj * kc + k))
    return _any_nan(Bp, kc * NR)


@kernel
def _panel_accumulate_exact(kc, Ap, ap, h, Bp, bp, C, c, ldc, mr, nr, start, c0, beta):
    """One panel x strip of gemm_nn/tn element by element in gcc's operand order: the start
    (``C*BETA`` or c0), then per k ``product = B*A_PART``, ``C = product + C``."""
    for r in range(mr):
        for jj in range(nr):
            if start == START_CONST:
                x = c0
            else:
                x = C[c + r * ldc + jj]
                if start == START_SCALE:
                    x = first_nan(x, x * beta)
            for k in range(kc):
                A_PART = Ap[ap + k * h + r]
                b = Bp[bp + k * NR + jj]
                product = first_nan(b, b * A_PART)
                x = first_nan(product, product + x)
            C[c + r * ldc + jj] = x


@kernel
def _accumulate_block(TA, i_lo, i_hi, j_lo, j_hi, K, alpha, A, lda, B, ldb, scale, zero, beta, C, ldc,
                      fused, height, width, ksize, stride, pad, width_col):
    """Rows i_lo..i_hi-1 x columns j_lo..j_hi-1 of gemm_nn (TA=0) / gemm_tn (TA=1), k in order
    per element.  The first chunk starts from C*BETA (``scale``), from (+0)*BETA (``zero``: C
    is taken to hold fill_cpu's zeros and is not read), or from C.  ``fused``: B is the image
    that ``im2col`` would have read (``gemm_im2col``)."""
    if i_hi <= i_lo or j_hi <= j_lo:
        return
    chunks = (K + KC - 1) // KC
    kcb = (K + max(chunks, 1) - 1) // max(chunks, 1)  # equal chunks of at most KC: no short last one
    ncb = _column_block(i_hi - i_lo, j_hi - j_lo, K)
    Bp = np.empty(max(K, 1) * ncb, np.float32)
    Ap = np.empty((MC + MR) * max(K, 1) + 8, np.float32)  # + the last panel's overrun
    b_nan = np.zeros(max(chunks, 1), np.bool_)
    row = np.empty(ncb, np.float32)
    a_nan = np.zeros(max(chunks, 1), np.bool_)
    T = np.empty(MR * NR, np.float32)
    pstart = np.empty(MC // MR4 + 2, np.int64)
    pheight = np.empty(MC // MR4 + 2, np.int64)
    prows = np.empty(MC // MR4 + 2, np.int64)
    c0 = np.float32(0) * beta  # fill_cpu's +0 after gemm_cpu's C*BETA
    for j0 in range(j_lo, j_hi, ncb):
        nc = min(ncb, j_hi - j0)
        strips = (nc + NR - 1) // NR
        ncpad = strips * NR
        if K == 0:  # no chunk to fold the first step into
            if scale or zero:
                for i in range(i_lo, i_hi):
                    for j in range(j0, j0 + nc):
                        x = C[i * ldc + j]
                        C[i * ldc + j] = c0 if zero else first_nan(x, x * beta)
            continue
        # B's rows 0..K-1 of these columns: chunk c at Bp[k0*ncpad:], strip s at + s*kc*NR
        for c in range(chunks):
            k0 = c * kcb
            b_nan[c] = _pack_B_chunk(fused, B, ldb, height, width, ksize, stride, pad, width_col,
                                     k0, min(kcb, K - k0), j0, nc, Bp, k0 * ncpad, row)
        for i0 in range(i_lo, i_hi, MC):
            mc = min(MC, i_hi - i0)
            npanels = _row_panels(mc, pstart, pheight, prows)
            mpad = pstart[npanels - 1] + pheight[npanels - 1]
            if j0 == j_lo or i_hi - i_lo > MC:  # (a single row block keeps its A_PART across columns)
                _pack_A_block(TA, alpha, A, lda, i0, K, kcb, npanels, pstart, pheight, prows, mpad, Ap, a_nan)
            for c in range(chunks):
                k0 = c * kcb
                kc = min(kcb, K - k0)
                start = START_LOAD
                if k0 == 0 and zero:
                    start = START_CONST
                elif k0 == 0 and scale:
                    start = START_SCALE
                for s in range(strips):
                    j = j0 + s * NR
                    nr = min(NR, j0 + nc - j)
                    bp = k0 * ncpad + s * kc * NR
                    for p in range(npanels):
                        h = pheight[p]
                        mr = prows[p]
                        ap = k0 * mpad + pstart[p] * kc
                        t = (i0 + pstart[p]) * ldc + j
                        if a_nan[c] or b_nan[c] or (start == START_CONST and is_foreign_nan(c0)):
                            done = False  # a foreign NaN input: element by element
                        elif mr == h and nr == NR:
                            done = _tile(h, start, kc, Ap, ap, Bp, bp, C, t, ldc, c0, beta)
                        else:  # an edge tile: run it on a zero-padded scratch copy
                            T[:] = np.float32(0)
                            if start != START_CONST:
                                for r in range(mr):
                                    for jj in range(nr):
                                        T[r * NR + jj] = C[t + r * ldc + jj]
                            done = _tile(h, start, kc, Ap, ap, Bp, bp, T, 0, NR, c0, beta)
                            if done:
                                for r in range(mr):
                                    for jj in range(nr):
                                        C[t + r * ldc + jj] = T[r * NR + jj]
                        if not done:  # (a tile that finds a NaN in C writes nothing)
                            _panel_accumulate_exact(kc, Ap, ap, h, Bp, bp, C, t, ldc, mr, nr, start, c0, beta)


@pkernel
def _accumulate_parallel(units, split_n, TA, M, N, K, alpha, A, lda, B, ldb, scale, zero, beta, C, ldc,
                         fused, height, width, ksize, stride, pad, width_col):
    """gemm_nn / gemm_tn cut into ``units`` blocks of whole strips (``split_n``) or whole
    panels, one per thread; every block walks all of K itself."""
    for u in prange(units):
        if split_n:
            strips = (N + NR - 1) // NR
            j_lo = strips * u // units * NR
            j_hi = min(N, strips * (u + 1) // units * NR)
            _accumulate_block(TA, 0, M, j_lo, j_hi, K, alpha, A, lda, B, ldb, scale, zero, beta, C, ldc,
                              fused, height, width, ksize, stride, pad, width_col)
        else:
            panels = (M + MR - 1) // MR
            i_lo = panels * u // units * MR
            i_hi = min(M, panels * (u + 1) // units * MR)
            _accumulate_block(TA, i_lo, i_hi, 0, N, K, alpha, A, lda, B, ldb, scale, zero, beta, C, ldc,
                              fused, height, width, ksize, stride, pad, width_col)


@kernel
def _gemm_accumulate(TA, M, N, K, ALPHA, A, lda, B, ldb, scale, zero, BETA, C, ldc,
                     fused, height, width, ksize, stride, pad, width_col, threads):
    """gemm_nn (TA=0) / gemm_tn (TA=1) over all of C: split between the threads along the
    longer side of C, or in the calling thread when the work is too small to be worth
    waking the others (``threads``: Numba's thread count, read by the Python caller)."""
    alpha = np.float32(ALPHA)
    beta = np.float32(BETA)
    split_n = N >= M
    units = min(threads, (N + NR - 1) // NR if split_n else (M + MR - 1) // MR)
    if units <= 1 or M * N * max(K, 1) < PARALLEL_WORK:
        _accumulate_block(TA, 0, M, 0, N, K, alpha, A, lda, B, ldb, scale, zero, beta, C, ldc,
                          fused, height, width, ksize, stride, pad, width_col)
    else:
        _accumulate_parallel(units, split_n, TA, M, N, K, alpha, A, lda, B, ldb, scale, zero, beta, C, ldc,
                             fused, height, width, ksize, stride, pad, width_col)


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


def gemm_cpu(TA, TB, M, N, K, ALPHA, A, lda, B, ldb, BETA, C, ldc):
    """darknet's ``gemm_cpu``: C = BETA*C + ALPHA*op(A)*op(B) in darknet's per-element order."""
    ta = 1 if TA else 0
    if TB:
        _gemm_sum(ta, M, N, K, np.float32(ALPHA), A, lda, B, ldb, True, np.float32(BETA), C, ldc,
                  False, 0, 0, 0, 0, 0, 1)
    else:
        _gemm_accumulate(ta, M, N, K, np.float32(ALPHA), A, lda, B, ldb, True, False, np.float32(BETA), C, ldc,
                         False, 0, 0, 0, 0, 0, 1, get_num_threads())


def gemm_nn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_nn``: C += ALPHA*A*B (no BETA step)."""
    _gemm_accumulate(0, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, False, np.float32(1), C, ldc,
                     False, 0, 0, 0, 0, 0, 1, get_num_threads())


def gemm_tn(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_tn``: C += ALPHA*A^T*B (no BETA step)."""
    _gemm_accumulate(1, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, False, np.float32(1), C, ldc,
                     False, 0, 0, 0, 0, 0, 1, get_num_threads())


def gemm_nt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_nt``: C += sum_k ALPHA*A*B^T (no BETA step)."""
    _gemm_sum(0, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, np.float32(1), C, ldc,
              False, 0, 0, 0, 0, 0, 1)


def gemm_tt(M, N, K, ALPHA, A, lda, B, ldb, C, ldc):
    """darknet's ``gemm_tt``: C += sum_k ALPHA*A^T*B^T (no BETA step)."""
    _gemm_sum(1, M, N, K, np.float32(ALPHA), A, lda, B, ldb, False, np.float32(1), C, ldc,
              False, 0, 0, 0, 0, 0, 1)


def gemm_im2col(im, channels, height, width, ksize, stride, pad, M, N, K, ALPHA, A, lda, BETA, C, ldc,
                c_zero=False):
    """darknet's ``im2col_cpu(im, ...)`` into a column matrix followed by
    ``gemm(0,0, M, N, K, ALPHA, A, lda, columns, N, BETA, C, ldc)``, without the column
    matrix: B's strips are packed straight from the image (im2col only copies floats, so
    every product sees the same operands).  ``c_zero``: C's M x N block is taken to hold the
    +0 that darknet's ``fill_cpu`` writes before the convolution; it is not read, and every
    element of the block is written.  Arguments checked as ``reference.gemm.gemm_im2col``."""
    height_col, width_col = check_gemm_im2col_args(im, channels, height, width, ksize, stride, pad,
                                                   M, N, K, A, lda, C, ldc)
    for name, buf in (("im", im), ("A", A), ("C", C)):
        if not buf.flags.c_contiguous:
            raise DarkpyError(f"gemm_im2col: {name} must be contiguous (a flat buffer or a slice of one)")
    _gemm_accumulate(0, int(M), int(N), int(K), np.float32(ALPHA), A, int(lda), im, int(N), True, bool(c_zero),
                     np.float32(BETA), C, int(ldc), True, int(height), int(width), int(ksize), int(stride),
                     int(pad), int(width_col), get_num_threads())


def gemm_nt_im2col(M, N, K, ALPHA, A, lda, im, channels, height, width, ksize, stride, pad, BETA, C, ldc):
    """darknet's ``im2col_cpu(im, ...)`` into a column matrix followed by
    ``gemm(0,1, M, N, K, ALPHA, A, lda, columns, K, BETA, C, ldc)`` (the convolution's weight
    update: N = channels*ksize*ksize, K = out_h*out_w), without the column matrix: each
    transposed strip of B is built from the image (im2col only copies floats).  Arguments
    checked as ``reference.gemm.gemm_nt_im2col``."""
    height_col, width_col = check_gemm_nt_im2col_args(M, N, K, A, lda, im, channels, height, width, ksize,
                                                      stride, pad, C, ldc)
    for name, buf in (("im", im), ("A", A), ("C", C)):
        if not buf.flags.c_contiguous:
            raise DarkpyError(f"gemm_nt_im2col: {name} must be contiguous (a flat buffer or a slice of one)")
    _gemm_sum(0, int(M), int(N), int(K), np.float32(ALPHA), A, int(lda), im, int(K), True, np.float32(BETA), C,
              int(ldc), True, int(height), int(width), int(ksize), int(stride), int(pad), int(width_col))
