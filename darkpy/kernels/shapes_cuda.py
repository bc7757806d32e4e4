"""``@cuda.jit`` twins of darknet's layout layers (strict profile): shortcut, upsample, route, reorg.

The kernels give darknet's CPU bits: one thread per output element of
``shortcut_cpu`` (``out = s1*out + s2*add``, both products rounded, never
fused) and of ``upsample_cpu`` forward; upsample's backward (each input pixel
gathers its ``stride*stride`` deltas) runs one thread per input pixel, adding in
the CPU's (row, column) order.  Route is copies (``copy_gpu``) forward and
``axpy_gpu`` with ALPHA 1 backward, exactly the CPU's calls; reorg and flatten are
permutations (one thread per element, copies only).

``LAYERS`` maps the layer types to their device forward/backward functions for
``darkpy.cuda.network``; the functions mirror ``darkpy/layers/<type>.py``.
"""

import numpy as np
from numba import cuda

from darkpy.cuda import simulator
from darkpy.cuda.fp import fadd, fmul
from darkpy.errors import ShapeError

BLOCK = 32 if simulator() else 256


def _blocks(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


# ----------------------------------------------------------------------------- shortcut

@cuda.jit
def _shortcut_kernel(size, minw, minh, minc, stride, sample, batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out):
    id = cuda.grid(1)
    if id >= size:
        return
    i = id % minw
    id //= minw
    j = id % minh
    id //= minh
    k = id % minc
    b = id // minc
    out_index = i * sample + w2 * (j * sample + h2 * (k + c2 * b))
    add_index = i * stride + w1 * (j * stride + h1 * (k + c1 * b))
    out[out_index] = fadd(fmul(s1, out[out_index]), fmul(s2, add[add_index]))


def shortcut_gpu(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out):
    """darknet's ``shortcut_cpu`` on the device: ``out = s1*out + s2*add`` over the common extent."""
    stride = w1 // w2
    sample = w2 // w1
    if stride != h1 // h2 or sample != h2 // h1:
        raise ShapeError("shortcut_gpu: the two inputs scale differently in width and height")
    stride = max(stride, 1)
    sample = max(sample, 1)
    minw, minh, minc = min(w1, w2), min(h1, h2), min(c1, c2)
    size = batch * minw * minh * minc
    if size > 0:
        _shortcut_kernel[_blocks(size), BLOCK](size, minw, minh, minc, stride, sample, batch, w1, h1, c1, add,
                                               w2, h2, c2, np.float32(s1), np.float32(s2), out)


# ----------------------------------------------------------------------------- upsample

@cuda.jit
def _upsample_forward_kernel(size, input, w, h, c, stride, scale, out):
    out_index = cuda.grid(1)
    if out_index >= size:
        return
    i = out_index % (w * stride)
    rest = out_index // (w * stride)
    j = rest % (h * stride)
    rest //= h * stride
    k = rest % c
    b = rest // c
    in_index = b * w * h * c + k * w * h + (j // stride) * w + i // stride
    out[out_index] = fmul(scale, input[in_index])


@cuda.jit
def _upsample_backward_kernel(size, input, w, h, c, stride, scale, out):
    in_index = cuda.grid(1)
    if in_index >= size:
        return
    x = in_index % w
    rest = in_index // w
    y = rest % h
    rest //= h
    k = rest % c
    b = rest // c
    acc = input[in_index]
    for dj in range(stride):
        for di in range(stride):
            j = y * stride + dj
            i = x * stride + di
            out_index = b * w * h * c * stride * stride + k * w * h * stride * stride + j * w * stride + i
            acc = fadd(acc, fmul(scale, out[out_index]))
    input[in_index] = acc


def upsample_gpu(input, w, h, c, batch, stride, forward, scale, out):
    """darknet's ``upsample_cpu`` on the device (its ``in`` is ``input``): forward
    ``out = scale*in``; backward ``in += scale*out``, each pixel's products added in
    the CPU's row-then-column order."""
    scale = np.float32(scale)
    if forward:
        size = batch * c * h * stride * w * stride
        if size > 0:
            _upsample_forward_kernel[_blocks(size), BLOCK](size, input, w, h, c, stride, scale, out)
    else:
        size = batch * c * h * w
        if size > 0:
            _upsample_backward_kernel[_blocks(size), BLOCK](size, input, w, h, c, stride, scale, out)


# ----------------------------------------------------------------------------- reorg, flatten (copies)

@cuda.jit
def _reorg_kernel(size, x, w, h, c, stride, forward, out):
    in_index = cuda.grid(1)
    if in_index >= size:
        return
    i = in_index % w
    rest = in_index // w
    j = rest % h
    rest //= h
    k = rest % c
    b = rest // c
    out_c = c // (stride * stride)
    c2 = k % out_c
    offset = k // out_c
    w2 = i * stride + offset % stride
    h2 = j * stride + offset // stride
    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
    if forward:
        out[out_index] = x[in_index]
    else:
        out[in_index] = x[out_index]


@cuda.jit
def _flatten_kernel(n, x, size, layers, forward, swap):
    id = cuda.grid(1)
    if id >= n:
        return
    i = id % size
    rest = id // size
    c = rest % layers
    b = rest // layers
    i1 = b * layers * size + c * size + i
    i2 = b * layers * size + i * layers + c
    if forward:
        swap[i2] = x[i1]
    else:
        swap[i1] = x[i2]


def reorg_gpu(x, w, h, c, batch, stride, forward, out):
    """darknet's ``reorg_cpu`` on the device: the same permutation, one thread per input index."""
    size = batch * c * h * w
    if size > 0:
        _reorg_kernel[_blocks(size), BLOCK](size, x, w, h, c, stride, int(bool(forward)), out)


def flatten_gpu(x, size, layers, batch, forward):
    """darknet's ``flatten`` on the device: the transpose into a scratch buffer, copied back."""
    n = size * layers * batch
    if n > 0:
        swap = cuda.device_array(n, np.float32)
        _flatten_kernel[_blocks(n), BLOCK](n, x, size, layers, int(bool(forward)), swap)
        x[:n].copy_to_device(swap)


# ----------------------------------------------------------------------------- device layers

def forward_route(l, net, k):
    """``darkpy.layers.route.forward`` on the device."""
    offset = 0
    for i in range(l.n):
        input = net.layers[int(l.input_layers[i])].output
        input_size = int(l.input_sizes[i])
        for j in range(l.batch):
            k.blas.copy_gpu(input_size, input[j * input_size:], 1, l.output[offset + j * l.outputs:], 1)
        offset += input_size


def backward_route(l, net, k):
    """``darkpy.layers.route.backward`` on the device."""
    offset = 0
    for i in range(l.n):
        delta = net.layers[int(l.input_layers[i])].delta
        input_size = int(l.input_sizes[i])
        if delta is not None:
            for j in range(l.batch):
                k.blas.axpy_gpu(input_size, 1, l.delta[offset + j * l.outputs:], 1, delta[j * input_size:], 1)
        offset += input_size


def forward_shortcut(l, net, k):
    """``darkpy.layers.shortcut.forward`` on the device."""
    n = l.outputs * l.batch
    k.blas.copy_gpu(n, net.input, 1, l.output, 1)
    shortcut_gpu(l.batch, l.w, l.h, l.c, net.layers[l.index].output, l.out_w, l.out_h, l.out_c,
                 np.float32(l.alpha), np.float32(l.beta), l.output)
    k.activations.activate_array_gpu(l.output, n, l.activation)


def backward_shortcut(l, net, k):
    """``darkpy.layers.shortcut.backward`` on the device."""
    n = l.outputs * l.batch
    k.activations.gradient_array_gpu(l.output, n, l.activation, l.delta)
    if net.delta is not None:
        k.blas.axpy_gpu(n, np.float32(l.alpha), l.delta, 1, net.delta, 1)
    from_delta = net.layers[l.index].delta
    if from_delta is not None:
        shortcut_gpu(l.batch, l.out_w, l.out_h, l.out_c, l.delta, l.w, l.h, l.c,
                     np.float32(1), np.float32(l.beta), from_delta)


def forward_upsample(l, net, k):
    """``darkpy.layers.upsample.forward`` on the device."""
    k.blas.fill_gpu(l.outputs * l.batch, 0, l.output, 1)
    if l.reverse:
        upsample_gpu(l.output, l.out_w, l.out_h, l.c, l.batch, l.stride, 0, l.scale, net.input)
    else:
        upsample_gpu(net.input, l.w, l.h, l.c, l.batch, l.stride, 1, l.scale, l.output)


def backward_upsample(l, net, k):
    """``darkpy.layers.upsample.backward`` on the device."""
    if net.delta is None:
        return
    if l.reverse:
        upsample_gpu(l.delta, l.out_w, l.out_h, l.c, l.batch, l.stride, 1, l.scale, net.delta)
    else:
        upsample_gpu(net.delta, l.w, l.h, l.c, l.batch, l.stride, 0, l.scale, l.delta)


def forward_reorg(l, net, k):
    """``darkpy.layers.reorg.forward`` on the device."""
    if l.flatten:
        n = l.outputs * l.batch
        k.blas.copy_gpu(n, net.input, 1, l.output, 1)
        flatten_gpu(l.output, l.w * l.h, l.c, l.batch, 0 if l.reverse else 1)
    elif l.extra:
        for i in range(l.batch):
            k.blas.copy_gpu(l.inputs, net.input[i * l.inputs:], 1, l.output[i * l.outputs:], 1)
    else:
        reorg_gpu(net.input, l.w, l.h, l.c, l.batch, l.stride, 1 if l.reverse else 0, l.output)


def backward_reorg(l, net, k):
    """``darkpy.layers.reorg.backward`` on the device (writes over ``net.delta``)."""
    if net.delta is None:
        return
    if l.flatten:
        n = l.outputs * l.batch
        k.blas.copy_gpu(n, l.delta, 1, net.delta, 1)
        flatten_gpu(net.delta, l.w * l.h, l.c, l.batch, 1 if l.reverse else 0)
    elif l.reverse:
        reorg_gpu(l.delta, l.w, l.h, l.c, l.batch, l.stride, 0, net.delta)
    elif l.extra:
        for i in range(l.batch):
            k.blas.copy_gpu(l.inputs, l.delta[i * l.outputs:], 1, net.delta[i * l.inputs:], 1)
    else:
        reorg_gpu(l.delta, l.w, l.h, l.c, l.batch, l.stride, 1, net.delta)


LAYERS = {
    "reorg": (forward_reorg, backward_reorg, None),
    "route": (forward_route, backward_route, None),
    "shortcut": (forward_shortcut, backward_shortcut, None),
    "upsample": (forward_upsample, backward_upsample, None),
}


def audited_kernels():
    """(name, kernel, example arguments) for ``darkpy.cuda.ptx``."""
    f = np.zeros(8, np.float32)
    one = np.float32(1)
    return [
        ("shapes_cuda.shortcut", _shortcut_kernel, (2, 1, 1, 1, 1, 1, 1, 1, 1, 1, f, 1, 1, 1, one, one, f)),
        ("shapes_cuda.upsample_forward", _upsample_forward_kernel, (2, f, 1, 1, 1, 2, one, f)),
        ("shapes_cuda.upsample_backward", _upsample_backward_kernel, (2, f, 1, 1, 1, 2, one, f)),
    ]
