"""darknet's ``im2col.c`` and ``col2im.c``, loop for loop: the oracle of ``darkpy.kernels.im2col``.

``data_im`` is one image of ``channels`` planes of ``height x width`` floats
(darknet passes an offset pointer into a batch; callers pass a view).  The
column matrix ``data_col`` has ``channels*ksize*ksize`` rows of
``height_col*width_col`` floats, row ``c`` holding, for every output position,
the input pixel under kernel tap ``(h_offset, w_offset)`` of channel ``c_im``
(0 where the tap falls in the zero padding).

* ``im2col_cpu`` writes every element of ``data_col[:channels_col*height_col*width_col]``.
* ``col2im_cpu`` ADDS each column element into its pixel of ``data_im`` (taps
  in the padding are dropped).  darknet reads the element into a ``double``
  and passes it back as a ``float`` argument (exact), then does a float
  ``+=``; a pixel covered by several taps receives its contributions in the
  order c, then h, then w, which fixes the rounding: kept here.
"""

import numpy as np

from darkpy.errors import DarkpyError
from darkpy.kernels import kernel
from darkpy.kernels.reference.nan import first_nan


@kernel
def out_size(size, ksize, stride, pad):
    """darknet's ``(size + 2*pad - ksize) / stride + 1``, with C's division truncating toward 0.

    So a kernel overhanging the image by less than a stride still gives one
    output (``size=2, ksize=3, stride=2, pad=0``: 1); the overhang reads as 0.
    """
    num = size + 2 * pad - ksize
    q = abs(num) // stride
    if num < 0:
        q = -q
    return q + 1


def check_image_geometry(name, buffers, channels, height, width, ksize, stride, pad):
    """Raise ``DarkpyError`` unless every ``(name, buffer)`` of ``buffers`` is a 1-D float32
    array and a ``ksize`` x ``ksize`` kernel with ``stride`` and ``pad`` fits the image.
    Returns the column matrix's (height_col, width_col)."""
    for buf_name, buf in buffers:
        if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
            raise DarkpyError(f"{name}: {buf_name} must be a 1-D float32 array, got "
                              f"{getattr(buf, 'dtype', type(buf).__name__)} "
                              f"with shape {getattr(buf, 'shape', None)}")
    if channels < 0 or height < 1 or width < 1 or ksize < 1 or stride < 1 or pad < 0:
        raise DarkpyError(f"{name}: bad sizes channels={channels} height={height} width={width} "
                          f"ksize={ksize} stride={stride} pad={pad}")
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    if height_col < 1 or width_col < 1:
        raise DarkpyError(f"{name}: a {ksize}x{ksize} kernel with pad {pad} does not fit a "
                          f"{height}x{width} image")
    return height_col, width_col


def check_im2col_args(name, data_im, channels, height, width, ksize, stride, pad, data_col):
    """Raise ``DarkpyError`` unless the sizes make sense and both buffers are large enough."""
    height_col, width_col = check_image_geometry(name, (("data_im", data_im), ("data_col", data_col)),
                                                 channels, height, width, ksize, stride, pad)
    need_im = channels * height * width
    need_col = channels * ksize * ksize * height_col * width_col
    if data_im.shape[0] < need_im:
        raise DarkpyError(f"{name}: data_im holds {data_im.shape[0]} floats, needs {need_im}")
    if data_col.shape[0] < need_col:
        raise DarkpyError(f"{name}: data_col holds {data_col.shape[0]} floats, needs {need_col}")


@kernel
def im2col_get_pixel(im, height, width, channels, row, col, channel, pad):
    """darknet's ``im2col_get_pixel``: the pixel at (row-pad, col-pad) of ``channel``, 0 outside."""
    row -= pad
    col -= pad
    if row < 0 or col < 0 or row >= height or col >= width:
        return np.float32(0)
    return im[col + width * (row + height * channel)]


@kernel
def im2col_kernel(data_im, channels, height, width, ksize, stride, pad, data_col):
    """darknet's ``im2col_cpu`` loops: rows c of the column matrix, then h, then w."""
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    channels_col = channels * ksize * ksize
    for c in range(channels_col):
        w_offset = c % ksize
        h_offset = (c // ksize) % ksize
        c_im = c // ksize // ksize
        for h in range(height_col):
            for w in range(width_col):
                im_row = h_offset + h * stride
                im_col = w_offset + w * stride
                col_index = (c * height_col + h) * width_col + w
                data_col[col_index] = im2col_get_pixel(data_im, height, width, channels,
                                                       im_row, im_col, c_im, pad)


@kernel
def col2im_add_pixel(im, height, width, channels, row, col, channel, pad, val):
    """darknet's ``col2im_add_pixel``: ``im[pixel] += val`` (float) unless the pixel is padding.
    gcc adds with ``val`` as the first source operand, so where both are NaN val's wins."""
    row -= pad
    col -= pad
    if row < 0 or col < 0 or row >= height or col >= width:
        return
    index = col + width * (row + height * channel)
    im[index] = first_nan(val, val + im[index])


@kernel
def col2im_kernel(data_col, channels, height, width, ksize, stride, pad, data_im):
    """darknet's ``col2im_cpu`` loops: the same walk as im2col, adding instead of reading."""
    height_col = out_size(height, ksize, stride, pad)
    width_col = out_size(width, ksize, stride, pad)
    channels_col = channels * ksize * ksize
    for c in range(channels_col):
        w_offset = c % ksize
        h_offset = (c // ksize) % ksize
        c_im = c // ksize // ksize
        for h in range(height_col):
            for w in range(width_col):
                im_row = h_offset + h * stride
                im_col = w_offset + w * stride
                col_index = (c * height_col + h) * width_col + w
                val = data_col[col_index]  # C: float -> double -> float argument, exact
                col2im_add_pixel(data_im, height, width, channels,
                                 im_row, im_col, c_im, pad, val)


def im2col_cpu(data_im, channels, height, width, ksize, stride, pad, data_col):
    """darknet's ``im2col_cpu``: fill ``data_col`` from ``data_im`` (arguments checked first)."""
    check_im2col_args("im2col_cpu", data_im, channels, height, width, ksize, stride, pad, data_col)
    im2col_kernel(data_im, int(channels), int(height), int(width), int(ksize), int(stride),
                  int(pad), data_col)


def col2im_cpu(data_col, channels, height, width, ksize, stride, pad, data_im):
    """darknet's ``col2im_cpu``: add ``data_col`` back into ``data_im`` (arguments checked first)."""
    check_im2col_args("col2im_cpu", data_im, channels, height, width, ksize, stride, pad, data_col)
    col2im_kernel(data_col, int(channels), int(height), int(width), int(ksize), int(stride),
                  int(pad), data_im)
