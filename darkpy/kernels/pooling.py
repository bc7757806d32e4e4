"""Fast kernels of the loops darknet keeps inside its layer files (maxpool, avgpool, crop, dropout).

Bit-identical twins of ``darkpy/kernels/reference/pooling.py`` (tested against
it): the same per-element arithmetic in the same order, parallelised with
``prange`` across independent (image, channel) planes only.  A plane's outputs
read and write only that plane, so no sum is split or reordered.  Dropout's
forward stays sequential: its draws come from one generator in element order.

Maxpool rests on one fact about the reference's scan: an out-of-image
position reads as ``-FLT_MAX``, which never beats the running maximum (it
starts at ``-FLT_MAX``), so scanning only the in-image part of a window, in
the same order, gives the same result without a test per position
(``_window``).  With stride 1 or 2, the windows wholly inside the image
horizontally are computed eight outputs at a time: the window positions are
loaded as ``<8 x float>`` vectors and folded in the reference's scan order,
each step a lane-wise ordered ``v > max`` and two selects (the value and its
int32 flat index): ``_windows8``.
That is the scalar scan in every lane: a comparison and a choice, no
arithmetic on the values, so the bits (NaN never wins, ties keep the first,
-0 against +0 keeps the first) are the reference's.  Windows of 3 x 3 and
more go through a row pass and a column pass (``_maxpool_separable``, which
explains why that is the same scan).
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, models, register_model

from darkpy.crand import rand_uniform_r
from darkpy.kernels import kernel, pkernel
from darkpy.kernels.gemm import float32x8
from darkpy.kernels.reference.pooling import FLT_MAX, c_div

#: Outputs per vector step (``_windows8``).
LANES = 8
#: Maxpool outputs from which the planes are shared among threads (below, waking the
#: thread pool costs more than it saves), and the most parallel tasks.
MAXPOOL_PARALLEL_MIN = 1 << 16
MAXPOOL_TASKS = 64
#: Windows of this size and more go through ``_maxpool_separable`` (rows, then columns).
SEPARABLE_MIN = 3

_F8 = ir.VectorType(ir.FloatType(), LANES)
_I8 = ir.VectorType(ir.IntType(32), LANES)


def _is_contig(arr, dtype):
    return isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"


class _Int32x8(types.Type):
    """Eight int32 lanes in one LLVM ``<8 x i32>`` value: the flat indexes of eight running maxima."""

    def __init__(self):
        super().__init__(name="Int32x8")


int32x8 = _Int32x8()


@register_model(_Int32x8)
class _Int32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _I8)


_RUNNING = types.Tuple((float32x8, int32x8))


@intrinsic
def _vstart(typingctx):
    """Eight fresh scans: (``-FLT_MAX`` in every lane, index -1 in every lane)."""

    def codegen(context, builder, sig, args):
        max = ir.Constant(_F8, [float(-FLT_MAX)] * LANES)
        max_i = ir.Constant(_I8, [-1] * LANES)
        return context.make_tuple(builder, sig.return_type, [max, max_i])

    return _RUNNING(), codegen


def _vscan_intrinsic(stride):
    """``_vscan_s<stride>(running, input, ia)``: one step of eight window scans whose current
    positions are ``ia + stride*l`` (lane l): ``val > max`` (ordered) picks ``val`` and its index.
    Reads exactly those positions' span, ``input[ia : ia + stride*7 + 1]``."""

    def typer(typingctx, running, input, ia):
        if not (running == _RUNNING and _is_contig(input, types.float32) and isinstance(ia, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            runty, inty, iaty = sig.args
            max, max_i = (builder.extract_value(args[0], k) for k in (0, 1))
            data = context.make_array(inty)(context, builder, args[1]).data
            start = context.cast(builder, args[2], iaty, types.intp)

            def load8(at):
                ptr = builder.bitcast(builder.gep(data, [at]), _F8.as_pointer())
                return builder.load(ptr, align=4, typ=_F8)

            if stride == 1:
                val = load8(start)
            else:  # positions start, start+2, ..., start+14: lanes 0,2,4,6 of one load, 1,3,5,7 of the next
                lo = load8(start)
                hi = load8(builder.add(start, ir.Constant(start.type, 7)))
                val = builder.shuffle_vector(lo, hi, ir.Constant(_I8, [0, 2, 4, 6, 9, 11, 13, 15]))
            index = builder.insert_element(ir.Constant(_I8, ir.Undefined), builder.trunc(start, ir.IntType(32)),
                                           ir.Constant(ir.IntType(32), 0))
            index = builder.shuffle_vector(index, ir.Constant(_I8, ir.Undefined), ir.Constant(_I8, [0] * LANES))
            index = builder.add(index, ir.Constant(_I8, [stride * l for l in range(LANES)]))
            gt = builder.fcmp_ordered(">", val, max)
            return context.make_tuple(builder, sig.return_type,
                                      [builder.select(gt, val, max), builder.select(gt, index, max_i)])

        return _RUNNING(running, input, ia), codegen

    typer.__name__ = f"_vscan_s{stride}"
    return intrinsic(typer)


_vscan_s1 = _vscan_intrinsic(1)
_vscan_s2 = _vscan_intrinsic(2)


@intrinsic
def _vscan_pairs(typingctx, running, values, where, at):
    """One step of eight scans over precomputed candidates: ``values[at : at+8]`` with their
    flat input indexes ``where[at : at+8]``; ``val > max`` (ordered) picks both."""
    if not (running == _RUNNING and _is_contig(values, types.float32) and _is_contig(where, types.int32)
            and isinstance(at, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        runty, valty, whety, atty = sig.args
        max, max_i = (builder.extract_value(args[0], k) for k in (0, 1))
        start = context.cast(builder, args[3], atty, types.intp)
        vals = context.make_array(valty)(context, builder, args[1]).data
        whes = context.make_array(whety)(context, builder, args[2]).data
        val = builder.load(builder.bitcast(builder.gep(vals, [start]), _F8.as_pointer()), align=4, typ=_F8)
        index = builder.load(builder.bitcast(builder.gep(whes, [start]), _I8.as_pointer()), align=4, typ=_I8)
        gt = builder.fcmp_ordered(">", val, max)
        return context.make_tuple(builder, sig.return_type,
                                  [builder.select(gt, val, max), builder.select(gt, index, max_i)])

    return _RUNNING(running, values, where, at), codegen


@intrinsic
def _vfinish(typingctx, running, output, indexes, o):
    """Store eight finished scans: ``output[o : o+8]`` and ``indexes[o : o+8]``."""
    if not (running == _RUNNING and _is_contig(output, types.float32) and _is_contig(indexes, types.int32)
            and isinstance(o, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        runty, outty, idxty, oty = sig.args
        at = context.cast(builder, args[3], oty, types.intp)
        out = context.make_array(outty)(context, builder, args[1]).data
        idx = context.make_array(idxty)(context, builder, args[2]).data
        builder.store(builder.extract_value(args[0], 0),
                      builder.bitcast(builder.gep(out, [at]), _F8.as_pointer()), align=4)
        builder.store(builder.extract_value(args[0], 1),
                      builder.bitcast(builder.gep(idx, [at]), _I8.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(running, output, indexes, o), codegen


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
def _window(input, in_base, in_h, in_w, cur_h0, cur_w0, size):
    """The reference's scan of the window whose top-left is (cur_h0, cur_w0): (max, max_i).

    The reference reads an out-of-image position as ``-FLT_MAX``, and ``-FLT_MAX > max``
    is never true (``max`` starts at ``-FLT_MAX`` and only grows), so such positions
    never change ``max`` or ``max_i``: scanning only the in-image part of the window,
    in the same order, gives the same result without a test per position.
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
def _windows8(input, corner, n0, n1, in_w, size, stride, output, indexes, o):
    """Eight side-by-side windows (stride 1 or 2) inside the image horizontally, scanned as
    ``_window`` scans them: rows ``n0 <= n < n1`` (the in-image ones), each left to right.

    ``corner`` is the flat index of window 0's top-left (row n = 0, possibly outside the
    image: only rows from n0 are read); outputs go to ``o .. o+7``.
    """
    running = _vstart()
    for n in range(n0, n1):
        at = corner + in_w * n
        for m in range(size):
            if stride == 1:
                running = _vscan_s1(running, input, at + m)
            else:
                running = _vscan_s2(running, input, at + m)
    _vfinish(running, output, indexes, o)


@kernel
def _maxpool_separable(input, in_base, in_h, in_w, out_h, out_w, size, stride, h_offset, w_offset,
                       j_lo, j_hi, output, indexes, out_base, H, Hi):
    """One plane as a row pass, then a column pass over the rows' winners.

    The reference's scan returns the first position, in row-major window order,
    holding the window's largest value (by float ``>``; NaN and values not above
    ``-FLT_MAX`` never win).  That is: among the window's rows, the first whose own
    winner is largest, and in that row its winner.  So ``H``/``Hi`` first receive,
    for every input row r and output column j, the winner of the row segment of
    window column j (value and flat input index; ``-FLT_MAX``/-1 when none);
    then each output scans its window's in-image rows of ``H`` in order with the
    same strict ``>``.  A k x k window costs 2k comparisons instead of k*k.
    ``H``, ``Hi`` hold ``in_h * out_w`` entries.
    """
    vector = (stride == 1 or stride == 2) and j_hi - j_lo >= LANES
    for r in range(in_h):
        row = in_base + in_w * r
        h = out_w * r
        for j in range(j_lo):
            H[h + j], Hi[h + j] = _window(input, row, 1, in_w, 0, w_offset + j * stride, size)
        j = j_lo
        if vector:
            while True:  # steps of eight, the last one overlapping (same values rewritten)
                if j + LANES > j_hi:
                    j = j_hi - LANES
                _windows8(input, row + w_offset + j * stride, 0, 1, in_w, size, stride, H, Hi, h + j)
                j += LANES
                if j >= j_hi:
                    break
        for j in range(j, out_w):
            H[h + j], Hi[h + j] = _window(input, row, 1, in_w, 0, w_offset + j * stride, size)
    for i in range(out_h):
        cur_h0 = h_offset + i * stride
        n0 = 0 if cur_h0 >= 0 else -cur_h0
        n1 = size if cur_h0 + size <= in_h else in_h - cur_h0
        o = out_base + out_w * i
        j = 0
        if out_w >= LANES:
            while True:
                if j + LANES > out_w:
                    j = out_w - LANES
                running = _vstart()
                for n in range(n0, n1):
                    running = _vscan_pairs(running, H, Hi, out_w * (cur_h0 + n) + j)
                _vfinish(running, output, indexes, o + j)
                j += LANES
                if j >= out_w:
                    break
        for j in range(j, out_w):
            max = -FLT_MAX
            max_i = -1
            for n in range(n0, n1):
                val = _get(H, out_w * (cur_h0 + n) + j)
                if val > max:
                    max_i = Hi[out_w * (cur_h0 + n) + j]
                    max = val
            output[o + j] = max
            indexes[o + j] = max_i


@kernel
def _maxpool_planes(plane0, plane1, in_h, in_w, out_h, out_w, size, stride, pad, input, output, indexes,
                    separable):
    """Planes ``plane0 <= plane < plane1`` of ``forward_maxpool`` (see there), window by window
    or, when ``separable``, by ``_maxpool_separable``."""
    w_offset = c_div(-pad, 2)
    h_offset = c_div(-pad, 2)
    j_lo, j_hi = _inside(w_offset, stride, size, in_w, out_w)
    vector = (stride == 1 or stride == 2) and j_hi - j_lo >= LANES
    if separable:
        H = np.empty(in_h * out_w, np.float32)
        Hi = np.empty(in_h * out_w, np.int32)
        for plane in range(plane0, plane1):
            _maxpool_separable(input, plane * in_h * in_w, in_h, in_w, out_h, out_w, size, stride,
                               h_offset, w_offset, j_lo, j_hi, output, indexes, plane * out_h * out_w, H, Hi)
        return
    for plane in range(plane0, plane1):
        in_base = plane * in_h * in_w
        out_base = plane * out_h * out_w
        for i in range(out_h):
            cur_h0 = h_offset + i * stride
            n0 = 0 if cur_h0 >= 0 else -cur_h0              # the window's rows inside the image
            n1 = size if cur_h0 + size <= in_h else in_h - cur_h0
            o = out_base + out_w * i
            for j in range(j_lo):
                output[o + j], indexes[o + j] = _window(input, in_base, in_h, in_w, cur_h0,
                                                        w_offset + j * stride, size)
            corner = in_base + in_w * cur_h0 + w_offset  # + j*stride: window j's top-left
            j = j_lo
            if vector:
                # steps of eight; the last step ends at j_hi, overlapping the one before:
                # its repeated outputs are the same windows, rewritten with the same bits
                while True:
                    if j + LANES > j_hi:
                        j = j_hi - LANES
                    if size == 2 and n0 == 0 and n1 == 2:
                        # constant arguments: LLVM unrolls the whole 2 x 2 scan (2-4x faster)
                        if stride == 2:
                            _windows8(input, corner + 2 * j, 0, 2, in_w, 2, 2, output, indexes, o + j)
                        else:
                            _windows8(input, corner + j, 0, 2, in_w, 2, 1, output, indexes, o + j)
                    else:
                        _windows8(input, corner + j * stride, n0, n1, in_w, size, stride,
                                  output, indexes, o + j)
                    j += LANES
                    if j >= j_hi:
                        break
            for j in range(j, out_w):
                output[o + j], indexes[o + j] = _window(input, in_base, in_h, in_w, cur_h0,
                                                        w_offset + j * stride, size)


@pkernel
def _maxpool_parallel(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes,
                      separable):
    """``_maxpool_planes`` over all planes, a run of planes per parallel task."""
    planes = batch * c
    tasks = min(planes, MAXPOOL_TASKS)
    for t in prange(tasks):
        _maxpool_planes(planes * t // tasks, planes * (t + 1) // tasks, in_h, in_w, out_h, out_w,
                        size, stride, pad, input, output, indexes, separable)


def forward_maxpool(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes):
    """darknet's ``forward_maxpool_layer``; in parallel over (image, channel) planes when large.

    Every window is the reference's scan: ``-FLT_MAX`` start, strict ``>``, the
    first maximum wins, out-of-image positions count as ``-FLT_MAX`` (so they are
    skipped: ``_window``).  With stride 1 or 2, the windows inside the image
    horizontally go eight at a time through ``_windows8``.
    """
    separable = size >= SEPARABLE_MIN
    if batch * c * out_h * out_w >= MAXPOOL_PARALLEL_MIN:
        _maxpool_parallel(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes,
                          separable)
    else:
        _maxpool_planes(0, batch * c, in_h, in_w, out_h, out_w, size, stride, pad, input, output, indexes,
                        separable)


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
