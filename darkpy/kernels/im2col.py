"""Fast ``im2col_cpu`` / ``col2im_cpu``, bit-identical to darknet's ``im2col.c`` / ``col2im.c``.

Same API as ``darkpy.kernels.reference.im2col``.  What changes:

* ``im2col``: a row of the column matrix (one channel and kernel tap) is
  independent of every other, so rows run in parallel; inside a row, output
  lines that fall in the vertical padding are zero-filled at once and each
  line's left/right padding is computed once instead of testing every pixel.
  It only copies floats, so any order gives the same bits.
* ``col2im``: a pixel of channel ``c_im`` receives contributions only from the
  ``ksize*ksize`` rows of that channel, and darknet adds them in row order
  (then h, then w, but within one row every (h, w) hits a different pixel).
  Channels therefore run in parallel while each channel keeps darknet's row
  order, so every pixel sees the same float additions in the same order.
"""

import numpy as np
from numba import prange

from darkpy.kernels import kernel, pkernel
from darkpy.kernels.reference.im2col import check_im2col_args, out_size
from darkpy.kernels.reference.nan import first_nan

#: Below this many column-matrix elements a single thread does the work.  Both loops are
#: memory-bound copies/adds (~1 ns an element on one core), so threads pay off only on very
#: large layers, and waking them costs far more than the work on a busy machine.
PARALLEL_MIN = 1 << 23


@kernel
def im2col_row(data_im, height, width, ksize, stride, pad, data_col, c, height_col, width_col):
    """Row ``c`` of the column matrix: tap (h_offset, w_offset) of channel c_im at every position."""
    w_offset = c % ksize
    h_offset = (c // ksize) % ksize
    c_im = c // ksize // ksize
    # output columns w whose input column lies inside the image: w_lo <= w < w_hi
    w_lo = 0
    while w_lo < width_col and w_offset + w_lo * stride - pad < 0:
        w_lo += 1
    w_hi = width_col
    while w_hi > w_lo and w_offset + (w_hi - 1) * stride - pad >= width:
        w_hi -= 1
    for h in range(height_col):
        row = h_offset + h * stride - pad
        base = (c * height_col + h) * width_col
        if row < 0 or row >= height:
            for w in range(width_col):
                data_col[base + w] = np.float32(0)
            continue
        src = width * (row + height * c_im) + w_offset - pad
        for w in range(w_lo):
            data_col[base + w] = np.float32(0)
        if stride == 1:  # a contiguous run: LLVM turns it into a vector copy
            for w in range(w_lo, w_hi):
                data_col[base + w] = data_im[src + w]
        else:
            for w in range(w_lo, w_hi):
                data_col[base + w] = data_im[src + w * stride]
        for w in range(w_hi, width_col):
            data_col[base + w] = np.float32(0)


@kernel
def im2col_serial(data_im, channels, height, width, ksize, stride, pad, data_col):
    """Every row of the column matrix, one thread."""
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    for c in range(channels * ksize * ksize):
        im2col_row(data_im, height, width, ksize, stride, pad, data_col, c, height_col, width_col)


@pkernel
def im2col_parallel(data_im, channels, height, width, ksize, stride, pad, data_col):
    """Every row of the column matrix, rows in parallel."""
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    for c in prange(channels * ksize * ksize):
        im2col_row(data_im, height, width, ksize, stride, pad, data_col, c, height_col, width_col)


@kernel
def col2im_channel(data_col, height, width, ksize, stride, pad, data_im, c_im, height_col, width_col):
    """Add the ksize*ksize rows of channel ``c_im`` into its plane, in darknet's row order."""
    for c in range(c_im * ksize * ksize, (c_im + 1) * ksize * ksize):
        w_offset = c % ksize
        h_offset = (c // ksize) % ksize
        # output columns w whose pixel column lies inside the image: w_lo <= w < w_hi
        w_lo = 0
        while w_lo < width_col and w_offset + w_lo * stride - pad < 0:
            w_lo += 1
        w_hi = width_col
        while w_hi > w_lo and w_offset + (w_hi - 1) * stride - pad >= width:
            w_hi -= 1
        for h in range(height_col):
            row = h_offset + h * stride - pad
            if row < 0 or row >= height:
                continue
            base = (c * height_col + h) * width_col
            dst = width * (row + height * c_im) + w_offset - pad
            # within one row c every w hits a different pixel: one add per element, the
            # column value first (gcc's addss operand order: its NaN wins over the image's)
            if stride == 1:
                for w in range(w_lo, w_hi):
                    val = data_col[base + w]
                    data_im[dst + w] = first_nan(val, val + data_im[dst + w])
            else:
                for w in range(w_lo, w_hi):
                    val = data_col[base + w]
                    data_im[dst + w * stride] = first_nan(val, val + data_im[dst + w * stride])


@kernel
def col2im_serial(data_col, channels, height, width, ksize, stride, pad, data_im):
    """Every channel, one thread."""
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    for c_im in range(channels):
        col2im_channel(data_col, height, width, ksize, stride, pad, data_im, c_im, height_col, width_col)


@pkernel
def col2im_parallel(data_col, channels, height, width, ksize, stride, pad, data_im):
    """Every channel, channels in parallel (each owns its plane of data_im)."""
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    for c_im in prange(channels):
        col2im_channel(data_col, height, width, ksize, stride, pad, data_im, c_im, height_col, width_col)


def _work(channels, height, width, ksize, stride, pad):
    return channels * ksize * ksize * out_size(height, ksize, stride, pad) * out_size(width, ksize, stride, pad)


def im2col_cpu(data_im, channels, height, width, ksize, stride, pad, data_col):
    """darknet's ``im2col_cpu``: fill ``data_col`` from ``data_im`` (arguments checked first)."""
    check_im2col_args("im2col_cpu", data_im, channels, height, width, ksize, stride, pad, data_col)
    args = (int(channels), int(height), int(width), int(ksize), int(stride), int(pad))
    if _work(*args) >= PARALLEL_MIN:
        im2col_parallel(data_im, *args, data_col)
    else:
        im2col_serial(data_im, *args, data_col)


def col2im_cpu(data_col, channels, height, width, ksize, stride, pad, data_im):
    """darknet's ``col2im_cpu``: add ``data_col`` back into ``data_im`` (arguments checked first)."""
    check_im2col_args("col2im_cpu", data_im, channels, height, width, ksize, stride, pad, data_col)
    args = (int(channels), int(height), int(width), int(ksize), int(stride), int(pad))
    if _work(*args) >= PARALLEL_MIN and channels > 1:
        col2im_parallel(data_col, *args, data_im)
    else:
        col2im_serial(data_col, *args, data_im)
