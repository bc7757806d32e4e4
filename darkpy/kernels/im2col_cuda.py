"""``@cuda.jit`` twins of darknet's CPU ``im2col_cpu`` / ``col2im_cpu``, bit for bit.

* ``im2col_gpu``: one thread per column-matrix element (a copy or a 0: any
  order gives the same bits).
* ``col2im_gpu``: one thread per image pixel.  darknet's own GPU col2im
  (col2im_kernels.cu) sums a pixel's contributions in a local float and adds
  that once, which rounds differently from the CPU; here each pixel's thread
  adds its contributions straight into ``data_im`` in the CPU's order (column
  rows c ascending, i.e. kernel taps (kh, kw) in row-major order; within one
  row at most one output position touches a pixel), so the bits are the CPU's.
  Only float additions: nothing for the compiler to contract into an FMA.
"""

import numpy as np
from numba import cuda

from darkpy.kernels.reference.im2col import check_im2col_args, out_size

BLOCK = 512


@cuda.jit
def im2col_gpu_kernel(data_im, channels, height, width, ksize, stride, pad, height_col, width_col, data_col):
    """Element ``index`` of the column matrix: row c, output position (h, w), darknet's layout."""
    index = cuda.grid(1)
    total = channels * ksize * ksize * height_col * width_col
    if index >= total:
        return
    w = index % width_col
    h = (index // width_col) % height_col
    c = index // width_col // height_col
    w_offset = c % ksize
    h_offset = (c // ksize) % ksize
    c_im = c // ksize // ksize
    row = h_offset + h * stride - pad
    col = w_offset + w * stride - pad
    if row < 0 or col < 0 or row >= height or col >= width:
        data_col[index] = np.float32(0)
    else:
        data_col[index] = data_im[col + width * (row + height * c_im)]


@cuda.jit
def col2im_gpu_kernel(data_col, channels, height, width, ksize, stride, pad, height_col, width_col, data_im):
    """Pixel ``index`` of the image: add every tap that reads it, in darknet's CPU order."""
    index = cuda.grid(1)
    if index >= channels * height * width:
        return
    x = index % width
    y = (index // width) % height
    c_im = index // width // height
    acc = data_im[index]
    for h_offset in range(ksize):
        hs = y + pad - h_offset           # = h*stride for the output row h that reads pixel row y
        if hs < 0 or hs % stride != 0:
            continue
        h = hs // stride
        if h >= height_col:
            continue
        for w_offset in range(ksize):
            ws = x + pad - w_offset
            if ws < 0 or ws % stride != 0:
                continue
            w = ws // stride
            if w >= width_col:
                continue
            c = (c_im * ksize + h_offset) * ksize + w_offset
            acc = np.float32(acc + data_col[(c * height_col + h) * width_col + w])
    data_im[index] = acc


def _blocks(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


def _check(name, data_im, channels, height, width, ksize, stride, pad, data_col):
    """The CPU kernels' argument checks; a 1-D float32 device array is checked through a
    zero-cost host stand-in of the same length."""
    def host(buf):
        if isinstance(buf, np.ndarray) or getattr(buf, "dtype", None) != np.float32 or len(buf.shape) != 1:
            return buf
        return np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=buf.shape, strides=(0,))
    check_im2col_args(name, host(data_im), channels, height, width, ksize, stride, pad, host(data_col))


def im2col_gpu(data_im, channels, height, width, ksize, stride, pad, data_col):
    """darknet's ``im2col`` into ``data_col`` (device or host float32 arrays)."""
    _check("im2col_gpu", data_im, channels, height, width, ksize, stride, pad, data_col)
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    n = channels * ksize * ksize * height_col * width_col
    im2col_gpu_kernel[_blocks(n), BLOCK](data_im, channels, height, width, ksize, stride, pad,
                                         height_col, width_col, data_col)


def col2im_gpu(data_col, channels, height, width, ksize, stride, pad, data_im):
    """darknet's CPU ``col2im`` (adds into ``data_im``) on the device, bit for bit."""
    _check("col2im_gpu", data_im, channels, height, width, ksize, stride, pad, data_col)
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    n = channels * height * width
    col2im_gpu_kernel[_blocks(n), BLOCK](data_col, channels, height, width, ksize, stride, pad,
                                         height_col, width_col, data_im)
