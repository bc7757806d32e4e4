"""Fast kernels of the loops darknet keeps inside its layer files (maxpool, avgpool, crop, dropout).

Bit-identical twins of ``darkpy/kernels/reference/pooling.py`` (tested against
it): the same per-element arithmetic in the same order, parallelised with
``prange`` across independent (image, channel) planes only.  A plane's outputs
read and write only that plane, so no sum is split or reordered.  Dropout's
forward stays sequential: its draws come from one generator in element order.

Maxpool splits every plane into the windows that lie wholly inside the image
(no bounds checks needed) and the border windows (the reference's checked
scan).  Inside, the common 2 x 2 windows with stride 2 or 1 are computed eight
outputs at a time by ``_pool8_2x2_s2``/``_s1``: the four window positions are loaded as
``<8 x float>`` vectors and folded in the reference's scan order, each step a
lane-wise ordered ``v > max`` and two selects (the value and its int32 flat
index).  That is the scalar scan in every lane: a comparison and a choice,
no arithmetic on the values, so the bits (NaN never wins, ties keep the first,
-0 against +0 keeps the first) are the reference's.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from darkpy.crand import rand_uniform_r
from darkpy.kernels import kernel, pkernel
from darkpy.kernels.reference.pooling import FLT_MAX, c_div

#: Outputs per vector step of ``_pool8_2x2_s2``/``_s1``.
LANES = 8
#: Maxpool outputs from which the planes are shared among threads (below, waking the
#: thread pool costs more than it saves), and the most parallel tasks.
MAXPOOL_PARALLEL_MIN = 1 << 16
MAXPOOL_TASKS = 64

_F8 = ir.VectorType(ir.FloatType(), LANES)
_I8 = ir.VectorType(ir.IntType(32), LANES)


def _is_contig(arr, dtype):
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"


def _pool8_codegen(stride):
    """LLVM for eight 2 x 2 windows of the given stride (1 or 2), scanned in the reference's order:
    (0,0), (0,1), (1,0), (1,1); ``max`` starts at -FLT_MAX and the index at -1."""

    def codegen(context, builder, sig, args):
        inty, iaty, wty, outty, idxty, oty = sig.args
        input_a = context.make_array(inty)(context, builder, args[0])
        out_a = context.make_array(outty)(context, builder, args[3])
        idx_a = context.make_array(idxty)(context, builder, args[4])
        ia = context.cast(builder, args[1], iaty, types.intp)
        in_w = context.cast(builder, args[2], wty, types.intp)
        o = context.cast(builder, args[5], oty, types.intp)

        def load8(start):
            ptr = builder.bitcast(builder.gep(input_a.data, [start]), _F8.as_pointer())
            return builder.load(ptr, align=4, typ=_F8)

        def lanes(*values):
            return ir.Constant(_I8, list(values))

        rows = (ia, builder.add(ia, in_w))
        if stride == 2:
            # 16 consecutive floats per row; even lanes are the left column, odd the right
            even = lanes(0, 2, 4, 6, 8, 10, 12, 14)
            odd = lanes(1, 3, 5, 7, 9, 11, 13, 15)
            values = []
            for r in rows:
                lo = load8(r)
                hi = load8(builder.add(r, ir.Constant(r.type, 8)))
                values += [builder.shuffle_vector(lo, hi, even), builder.shuffle_vector(lo, hi, odd)]
        else:
            values = []
            for r in rows:
                values += [load8(r), load8(builder.add(r, ir.Constant(r.type, 1)))]
        # flat int32 indexes of the four positions, lane l adding stride*l
        ia32 = builder.trunc(ia, ir.IntType(32))
        w32 = builder.trunc(in_w, ir.IntType(32))
        base = builder.insert_element(ir.Constant(_I8, ir.Undefined), ia32, ir.Constant(ir.IntType(32), 0))
        base = builder.shuffle_vector(base, ir.Constant(_I8, ir.Undefined), lanes(*[0] * LANES))
        base = builder.add(base, lanes(*[stride * l for l in range(LANES)]))
        wvec = builder.insert_element(ir.Constant(_I8, ir.Undefined), w32, ir.Constant(ir.IntType(32), 0))
        wvec = builder.shuffle_vector(wvec, ir.Constant(_I8, ir.Undefined), lanes(*[0] * LANES))
        one = lanes(*[1] * LANES)
        below = builder.add(base, wvec)
        where = [base, builder.add(base, one), below, builder.add(below, one)]

        max = ir.Constant(_F8, [float(-FLT_MAX)] * LANES)
        max_i = lanes(*[-1] * LANES)
        for val, index in zip(values, where):
            gt = builder.fcmp_ordered(">", val, max)
            max = builder.select(gt, val, max)
            max_i = builder.select(gt, index, max_i)
        out_ptr = builder.bitcast(builder.gep(out_a.data, [o]), _F8.as_pointer())
        builder.store(max, out_ptr, align=4)
        idx_ptr = builder.bitcast(builder.gep(idx_a.data, [o]), _I8.as_pointer())
        builder.store(max_i, idx_ptr, align=4)
        return context.get_dummy_value()

    return codegen


def _pool8_intrinsic(stride):
    def typer(typingctx, input, ia, in_w, output, indexes, o):
        if not (_is_contig(input, types.float32) and _is_contig(output, types.float32)
                and _is_contig(indexes, types.int32)
                and all(isinstance(t, types.Integer) for t in (ia, in_w, o))):
            return None
        return types.none(input, ia, in_w, output, indexes, o), _pool8_codegen(stride)

    typer.__name__ = f"_pool8_2x2_s{stride}"
    return intrinsic(typer)


#: ``_pool8_2x2_s2(input, ia, in_w, output, indexes, o)``: outputs ``o .. o+7`` from the
#: 2 x 2 windows whose top-left inputs are ``ia + 2*l`` (reads ``input[ia : ia+16]`` and the
#: row below).  ``_pool8_2x2_s1``: the same with top-left ``ia + l`` (reads 9 floats a row).
_pool8_2x2_s2 = _pool8_intrinsic(2)
_pool8_2x2_s1 = _pool8_intrinsic(1)


@intrinsic
def _get(typingctx, arr, idx):
    """``arr[idx]`` for ``idx >= 0``, without Numba's negative-index wraparound."""
    if not (_is_contig(arr, types.float32) and isinstance(idx, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(builder.gep(ary.data, [i]), align=4, typ=ir.FloatType())

    return types.float32(arr, idx), codegen


@kernel
def _inside(offset, stride, size, n_in, n_out):
    """The outputs ``[lo, hi)`` along one axis whose whole window ``offset + i*stride + [0, size)``
    lies in ``[0, n_in)`` (an empty range is returned as ``lo == hi``)."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    last = n_in - size  # the largest window start that still fits
    hi = 0 if last < offset else (last - offset) // stride + 1
    lo = min(lo, n_out)
    hi = max(lo, min(hi, n_out))
    return lo, hi


@kernel
def _border_window(input, in_base, in_h, in_w, cur_h0, cur_w0, size):
    """The reference's scan of a window starting at (cur_h0, cur_w0) that may reach outside the
    image: (max, max_i).

    The reference reads an out-of-image position as ``-FLT_MAX``, and ``-FLT_MAX > max``
    is never true (``max`` starts at ``-FLT_MAX`` and only grows), so such positions
    never change ``max`` or ``max_i``: scanning only the in-image part of the window,
    in the same order, gives the same result.
    """
    max = -FLT_MAX
    max_i = -1
    n0 = 0 if cur_h0 >= 0 else -cur_h0
    n1 = size if cur_h0 + size <= in_h else in_h - cur_h0
    m0 = 0 if cur_w0 >= 0 else -cur_w0
    m1 = size if cur_w0 + size <= in_w else in_w - cur_w0
    for n in range(n0, n1):
        row = in_base + in_w * (cur_h0 + n) + cur_w0
        for m in range(m0, m1):
            val = _get(input, row + m)
            if val > max:
                max_i = row + m
                max = val
    return max, max_i


@kernel
def _inside_window(input, index0, in_w, size):
    """The same scan for a window wholly inside the image, top-left input ``index0``: no checks."""
    max = -FLT_MAX
    max_i = -1
    for n in range(size):
        row = index0 + in_w * n
        for m in range(size):
            val = _get(input, row + m)
            if val > max:
                max_i = row + m
                max = val
    return max, max_i


@kernel
def _maxpool_planes(plane0, plane1, in_h, in_w, out_h, out_w, size, stride, pad, input, output, indexes):
    """Planes ``plane0 <= plane < plane1`` of ``forward_maxpool`` (see there)."""
    w_offset = c_div(-pad, 2)
    h_offset = c_div(-pad, 2)
    i_lo, i_hi = _inside(h_offset, stride, size, in_h, out_h)
    j_lo, j_hi = _inside(w_offset, stride, size, in_w, out_w)
    vector = size == 2 and (stride == 1 or stride == 2)
    for plane in range(plane0, plane1):
        in_base = plane * in_h * in_w
        out_base = plane * out_h * out_w
        for i in range(out_h):
            cur_h0 = h_offset + i * stride
            o = out_base + out_w * i
            if i < i_lo or i >= i_hi:
                for j in range(out_w):
                    output[o + j], indexes[o + j] = _border_window(
                        input, in_base, in_h, in_w, cur_h0, w_offset + j * stride, size)
                continue
            for j in range(j_lo):
                output[o + j], indexes[o + j] = _border_window(
                    input, in_base, in_h, in_w, cur_h0, w_offset + j * stride, size)
            row = in_base + in_w * cur_h0 + w_offset  # + j*stride: window j's top-left input
            j = j_lo
            if vector and j_hi - j_lo >= LANES:
                # steps of eight; the last step ends at j_hi, overlapping the one before:
                # its repeated outputs are the same windows, rewritten with the same bits
                while True:
                    if j + LANES > j_hi:
                        j = j_hi - LANES
                    if stride == 2:
                        _pool8_2x2_s2(input, row + 2 * j, in_w, output, indexes, o + j)
                    else:
                        _pool8_2x2_s1(input, row + j, in_w, output, indexes, o + j)
                    j += LANES
                    if j >= j_hi:
                        break
            for j in range(j, j_hi):
                output[o + j], indexes[o + j] = _inside_window(input, row + j * stride, in_w, size)
            for j in range(j_hi, out_w):
                output[o + j], indexes[o + j] = _border_window(
                    input, in_base, in_h, in_w, cur_h0, w_offset + j * stride, size)


@pkernel
def _maxpool_parallel(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes):
    """``_maxpool_planes`` over all planes, a run of planes per parallel task."""
    planes = batch * c
    tasks = min(planes, MAXPOOL_TASKS)
    for t in prange(tasks):
        _maxpool_planes(planes * t // tasks, planes * (t + 1) // tasks, in_h, in_w, out_h, out_w,
                        size, stride, pad, input, output, indexes)


def forward_maxpool(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes):
    """darknet's ``forward_maxpool_layer``; in parallel over (image, channel) planes when large.

    Every window is the reference's scan: ``-FLT_MAX`` start, strict ``>``, the
    first maximum wins, out-of-image positions count as ``-FLT_MAX``.  Windows
    wholly inside the image skip the bounds checks; 2 x 2 windows of stride 1
    or 2 go eight at a time through ``_pool8_2x2_s1``/``_s2``.
    """
    if batch * c * out_h * out_w >= MAXPOOL_PARALLEL_MIN:
        _maxpool_parallel(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes)
    else:
        _maxpool_planes(0, batch * c, in_h, in_w, out_h, out_w, size, stride, pad, input, output, indexes)


@pkernel
def backward_maxpool(batch, c, out_h, out_w, indexes, delta, net_delta):
    """darknet's ``backward_maxpool_layer`` per plane: a plane's winners all lie in its own input plane.

    Within a plane the deltas are added in output order, as in C; an index of
    -1 is skipped (see the reference).
    """
    spatial = out_h * out_w
    for plane in prange(batch * c):
        for i in range(plane * spatial, (plane + 1) * spatial):
            index = indexes[i]
            if index >= 0:
                net_delta[index] += delta[i]


@pkernel
def forward_avgpool(batch, h, w, c, input, output):
    """darknet's ``forward_avgpool_layer``: per channel a float32 sum in input order, then ``/ (float)(h*w)``."""
    spatial = h * w
    for plane in prange(batch * c):
        sum = np.float32(0)
        base = plane * spatial
        for i in range(spatial):
            sum += input[base + i]
        output[plane] = sum / np.float32(spatial)


@pkernel
def backward_avgpool(batch, h, w, c, delta, net_delta):
    """darknet's ``backward_avgpool_layer``: ``net_delta[in] += delta[out] / (float)(h*w)``."""
    spatial = h * w
    for plane in prange(batch * c):
        base = plane * spatial
        for i in range(spatial):
            net_delta[base + i] += delta[plane] / np.float32(spatial)


@pkernel
def forward_crop(batch, h, w, c, out_h, out_w, dh, dw, flip, scale, trans, input, output):
    """The copy loop of darknet's ``forward_crop_layer``, one (image, channel) plane per task."""
    scale = np.float32(scale)
    trans = np.float32(trans)
    for plane in prange(batch * c):
        count = plane * out_h * out_w
        for i in range(out_h):
            row = i + dh
            for j in range(out_w):
                col = w - dw - j - 1 if flip else j + dw
                output[count] = input[col + w * (row + h * plane)] * scale + trans
                count += 1


@kernel
def forward_dropout(n, probability, scale, state, rand, input):
    """darknet's ``forward_dropout_layer`` (training); sequential, since every draw advances one generator."""
    probability = np.float32(probability)
    scale = np.float32(scale)
    zero = np.float32(0)
    one = np.float32(1)
    for i in range(n):
        r = rand_uniform_r(state, zero, one)
        rand[i] = r
        input[i] = zero if r < probability else input[i] * scale


@pkernel
def backward_dropout(n, probability, scale, rand, delta):
    """darknet's ``backward_dropout_layer``: every element independent, so in parallel."""
    probability = np.float32(probability)
    scale = np.float32(scale)
    for i in prange(n):
        delta[i] = np.float32(0) if rand[i] < probability else delta[i] * scale
