"""Fast kernels of the loops darknet keeps inside its layer files (maxpool, avgpool, crop, dropout).

Bit-identical twins of ``darkpy/kernels/reference/pooling.py`` (tested against
it): the same per-element arithmetic in the same order, parallelised with
``prange`` across independent (image, channel) planes only.  A plane's outputs
read and write only that plane, so no sum is split or reordered.  Dropout's
forward stays sequential: its draws come from one generator in element order.
"""

import numpy as np
from numba import prange

from darkpy.crand import rand_uniform_r
from darkpy.kernels import kernel, pkernel
from darkpy.kernels.reference.pooling import FLT_MAX, c_div


@pkernel
def forward_maxpool(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes):
    """darknet's ``forward_maxpool_layer``, one (image, channel) plane per parallel task.

    The window scan is the reference's: ``-FLT_MAX`` start, strict ``>``, the
    first maximum wins, out-of-image positions count as ``-FLT_MAX``.
    """
    w_offset = c_div(-pad, 2)
    h_offset = c_div(-pad, 2)
    for plane in prange(batch * c):
        in_base = plane * in_h * in_w
        out_base = plane * out_h * out_w
        for i in range(out_h):
            for j in range(out_w):
                max = -FLT_MAX
                max_i = -1
                for n in range(size):
                    cur_h = h_offset + i * stride + n
                    row_ok = cur_h >= 0 and cur_h < in_h
                    for m in range(size):
                        cur_w = w_offset + j * stride + m
                        index = in_base + cur_w + in_w * cur_h
                        if row_ok and cur_w >= 0 and cur_w < in_w:
                            val = input[index]
                        else:
                            val = -FLT_MAX
                        if val > max:
                            max_i = index
                            max = val
                output[out_base + j + out_w * i] = max
                indexes[out_base + j + out_w * i] = max_i


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
