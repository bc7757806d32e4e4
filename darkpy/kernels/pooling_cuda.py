"""``@cuda.jit`` twins of darknet's maxpool (strict profile): the CPU's winners and sums.

Forward: one thread per output, the window scanned in the CPU's order (rows,
then columns), positions outside the image reading ``-FLT_MAX``, the first
strictly larger value winning (NaN never wins) -- the same output and index as
``darkpy.kernels.reference.pooling.forward_maxpool``.

Backward: the CPU adds ``delta[out]`` at ``net_delta[indexes[out]]`` in
increasing ``out``; with overlapping windows (stride < size) an input pixel gets
several deltas, so one thread per INPUT pixel gathers them, scanning the outputs
whose windows cover it in increasing output index (same additions, same order).
"""

import numpy as np
from numba import cuda

from darkpy.cuda import simulator
from darkpy.cuda.fp import fadd
from darkpy.kernels.reference.pooling import FLT_MAX

BLOCK = 32 if simulator() else 256


def _blocks(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


def _c_div(a, b):
    """C's int division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@cuda.jit
def _forward_maxpool_kernel(n, in_h, in_w, c, out_h, out_w, size, stride, offset, input, output, indexes):
    id = cuda.grid(1)
    if id >= n:
        return
    j = id % out_w
    rest = id // out_w
    i = rest % out_h
    rest //= out_h
    k = rest % c
    b = rest // c
    max = -FLT_MAX
    max_i = -1
    for n_ in range(size):
        for m in range(size):
            cur_h = offset + i * stride + n_
            cur_w = offset + j * stride + m
            index = cur_w + in_w * (cur_h + in_h * (k + b * c))
            valid = cur_h >= 0 and cur_h < in_h and cur_w >= 0 and cur_w < in_w
            val = input[index] if valid else -FLT_MAX
            if val > max:
                max = val
                max_i = index
    output[id] = max
    indexes[id] = max_i


@cuda.jit
def _backward_maxpool_kernel(n, in_h, in_w, c, out_h, out_w, size, stride, offset, indexes, delta, net_delta):
    index = cuda.grid(1)
    if index >= n:
        return
    x = index % in_w
    rest = index // in_w
    y = rest % in_h
    rest //= in_h
    k = rest % c
    b = rest // c
    acc = net_delta[index]
    for i in range(out_h):                       # increasing output index within (b, k)
        top = offset + i * stride
        if y < top or y >= top + size:
            continue
        for j in range(out_w):
            left = offset + j * stride
            if x < left or x >= left + size:
                continue
            out = j + out_w * (i + out_h * (k + c * b))
            if indexes[out] == index:
                acc = fadd(acc, delta[out])
    net_delta[index] = acc


def forward_maxpool_gpu(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes):
    """``forward_maxpool`` (the CPU reference's arguments) on the device."""
    n = batch * c * out_h * out_w
    if n > 0:
        _forward_maxpool_kernel[_blocks(n), BLOCK](n, in_h, in_w, c, out_h, out_w, size, stride,
                                                   _c_div(-pad, 2), input, output, indexes)


def backward_maxpool_gpu(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, indexes, delta, net_delta):
    """``backward_maxpool`` on the device: the window geometry is needed to gather per input pixel."""
    n = batch * c * in_h * in_w
    if n > 0:
        _backward_maxpool_kernel[_blocks(n), BLOCK](n, in_h, in_w, c, out_h, out_w, size, stride,
                                                    _c_div(-pad, 2), indexes, delta, net_delta)


def forward_maxpool_layer(l, net, k):
    """``darkpy.layers.maxpool.forward`` on the device."""
    forward_maxpool_gpu(l.batch, l.h, l.w, l.c, l.out_h, l.out_w, l.size, l.stride, l.pad,
                        net.input, l.output, l.indexes)


def backward_maxpool_layer(l, net, k):
    """``darkpy.layers.maxpool.backward`` on the device."""
    if net.delta is None:
        return
    backward_maxpool_gpu(l.batch, l.h, l.w, l.c, l.out_h, l.out_w, l.size, l.stride, l.pad,
                         l.indexes, l.delta, net.delta)


LAYERS = {"maxpool": (forward_maxpool_layer, backward_maxpool_layer, None)}


def audited_kernels():
    """(name, kernel, example arguments) for ``darkpy.cuda.ptx``."""
    f = np.zeros(8, np.float32)
    ix = np.zeros(8, np.int32)
    return [
        ("pooling_cuda.forward_maxpool", _forward_maxpool_kernel, (2, 2, 2, 1, 1, 1, 2, 2, 0, f, f, ix)),
        ("pooling_cuda.backward_maxpool", _backward_maxpool_kernel, (2, 2, 2, 1, 1, 1, 2, 2, 0, ix, f, f)),
    ]
