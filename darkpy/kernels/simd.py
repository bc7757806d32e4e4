"""More 8-lane float32 vector intrinsics, for the batchnorm kernels of ``darkpy.kernels.blas``.

They extend ``darkpy.kernels.gemm``'s ``float32x8`` (an LLVM ``<8 x float>``, one AVX
register) with what a per-channel reduction needs when the 8 lanes are 8 *channels*:

* ``vload_columns``: an 8 x 8 block (8 channels x 8 consecutive pixels) loaded and
  transposed in registers, returned as 8 vectors, one per pixel, lane r = channel r;
* ``vgather``: one pixel of 8 channels (the ragged tail of a plane);
* ``vsub``, ``vzero`` and ``vvariance_step``, the step of ``variance_cpu``'s chain
  (float difference, squared in double, added in double, rounded to float).

Every arithmetic operation is a plain LLVM ``fsub``/``fmul``/``fadd``/``fpext``/``fptrunc``
on vectors without fast-math flags: lane-wise IEEE operations, each rounded on its own,
never contracted into an FMA; lane r computes exactly what the scalar code computes for
channel r.  Shuffles and loads only move floats.
"""

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from darkpy.kernels.gemm import _is_f32_contig, _mask, _transpose8, float32x8

_F32 = ir.FloatType()
_F64 = ir.DoubleType()
_V8 = ir.VectorType(_F32, 8)
_D8 = ir.VectorType(_F64, 8)
_I32 = ir.IntType(32)


def _data_and_index(context, builder, arrty, arr, idxty, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return ary.data, context.cast(builder, idx, idxty, types.intp)


@intrinsic
def vzero(typingctx):
    """A vector of eight +0.0f."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_V8, [0.0] * 8)

    return float32x8(), codegen


@intrinsic
def vsub(typingctx, a, b):
    """Lane-wise float32 ``a - b``, one IEEE rounding per lane."""
    if not (a == float32x8 and b == float32x8):
        return None

    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])

    return float32x8(a, b), codegen


@intrinsic
def vvariance_step(typingctx, v, x, m):
    """Lane-wise ``(float)((double)v + (double)(x - m) * (double)(x - m))``: one step of
    ``variance_cpu``'s chain (the float difference, its exact double square, a double
    add with the running value first, rounded back to float)."""
    if not (v == float32x8 and x == float32x8 and m == float32x8):
        return None

    def codegen(context, builder, sig, args):
        d = builder.fpext(builder.fsub(args[1], args[2]), _D8)
        wide = builder.fadd(builder.fpext(args[0], _D8), builder.fmul(d, d))
        return builder.fptrunc(wide, _V8)

    return float32x8(v, x, m), codegen


@intrinsic
def vgather(typingctx, arr, start, ld):
    """The vector (arr[start], arr[start + ld], ..., arr[start + 7*ld]): pixel ``start`` of
    eight planes ``ld`` apart (all indices must be in bounds and >= 0)."""
    if not (_is_f32_contig(arr) and isinstance(start, types.Integer) and isinstance(ld, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data, s = _data_and_index(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        step = context.cast(builder, args[2], sig.args[2], types.intp)
        v = ir.Constant(_V8, ir.Undefined)
        for r in range(8):
            off = builder.add(s, builder.mul(step, ir.Constant(s.type, r)))
            x = builder.load(builder.gep(data, [off]), align=4, typ=_F32)
            v = builder.insert_element(v, x, ir.Constant(_I32, r))
        return v

    return float32x8(arr, start, ld), codegen


@intrinsic
def vload_columns(typingctx, arr, start, ld):
    """The 8 x 8 block ``arr[start + r*ld + c]`` (rows r = 8 planes ``ld`` apart, c = 8
    consecutive pixels) transposed in registers: a tuple of 8 vectors, vector c holding
    pixel c of the 8 planes (lane r = plane r).  Shuffles only: the floats are moved,
    never computed."""
    if not (_is_f32_contig(arr) and isinstance(start, types.Integer) and isinstance(ld, types.Integer)):
        return None
    retty = types.UniTuple(float32x8, 8)

    def codegen(context, builder, sig, args):
        data, s = _data_and_index(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        step = context.cast(builder, args[2], sig.args[2], types.intp)
        rows = []
        for r in range(8):
            off = builder.add(s, builder.mul(step, ir.Constant(s.type, r)))
            ptr = builder.bitcast(builder.gep(data, [off]), _V8.as_pointer())
            rows.append(builder.load(ptr, align=4, typ=_V8))
        cols = _transpose8(builder, rows)   # shuffles only
        return context.make_tuple(builder, sig.return_type, cols)

    return retty(arr, start, ld), codegen
