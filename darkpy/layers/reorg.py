"""``[reorg]``: darknet's reorg_layer.c and ``parse_reorg`` of parser.c.

Modes, as darknet chooses them: ``flatten`` (transpose each image between
channel-major and pixel-major), ``extra`` (copy the input into a longer output),
``reverse`` and plain reorg.  The plain mode calls ``reorg_cpu`` with
``forward=0`` and the reverse mode with ``forward=1``, exactly as darknet does
(pjreddie's reorg layer is the "backward" shuffle of reorg_cpu).
"""

import numpy as np

from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_reorg``: ``stride`` (1), ``reverse``, ``flatten``, ``extra`` (0)."""
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    stride = section.find_int("stride", 1)
    reverse = section.find_int("reverse", 0)
    flatten = section.find_int("flatten", 0)
    extra = section.find_int("extra", 0)
    if not (params.h and params.w and params.c):
        raise ShapeError("the layer before [reorg] must output an image "
                         f"(it outputs {params.c}x{params.h}x{params.w})", **where)
    if stride < 1:
        raise CfgError(f"[reorg] stride={stride}: expected a positive stride", **where)
    if extra < 0:
        raise CfgError(f"[reorg] extra={extra}: expected a non-negative count", **where)
    try:
        return make_reorg_layer(params.batch, params.w, params.h, params.c, stride, reverse,
                                flatten, extra)
    except ShapeError as e:
        raise ShapeError(e.message, **where) from None


def make_reorg_layer(batch, w, h, c, stride, reverse, flatten, extra):
    """darknet's ``make_reorg_layer`` (argument order as darknet: w before h).

    Reverse: ``out = (w*s, h*s, c/s^2)``; otherwise ``(w/s, h/s, c*s^2)``; with
    ``extra`` the shape is 0x0x0 and ``outputs = inputs + extra``.  Shapes where
    darknet's index arithmetic would leave the buffers (``c`` not a multiple of
    ``s^2``, or ``w``/``h`` not multiples of ``s`` when shrinking) raise ``ShapeError``.
    """
    l = Layer("reorg")
    l.batch = batch
    l.stride = stride
    l.extra = extra
    l.h = h
    l.w = w
    l.c = c
    l.flatten = flatten
    if reverse:
        l.out_w = w * stride
        l.out_h = h * stride
        l.out_c = c // (stride * stride)
    else:
        l.out_w = w // stride
        l.out_h = h // stride
        l.out_c = c * (stride * stride)
    l.reverse = reverse
    l.outputs = l.out_h * l.out_w * l.out_c
    l.inputs = h * w * c
    if l.extra:
        l.out_w = l.out_h = l.out_c = 0
        l.outputs = l.inputs + l.extra
    elif c % (stride * stride) or l.outputs != l.inputs:
        raise ShapeError(f"reorg stride={stride}{' reverse' if reverse else ''} cannot rearrange "
                         f"a {c}x{h}x{w} input: channels must be a multiple of {stride * stride}"
                         + ("" if reverse else f" and width/height multiples of {stride}"))
    output_size = l.outputs * batch
    l.output = zeros(output_size, np.float32)
    l.delta = zeros(output_size, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_reorg_layer``."""
    blas = family("blas")
    if l.flatten:
        n = l.outputs * l.batch
        l.output[:n] = net.input[:n]  # darknet: memcpy
        blas.flatten(l.output, l.w * l.h, l.c, l.batch, 0 if l.reverse else 1)
    elif l.extra:
        for i in range(l.batch):
            blas.copy_cpu(l.inputs, net.input[i * l.inputs:], 1, l.output[i * l.outputs:], 1)
    elif l.reverse:
        blas.reorg_cpu(net.input, l.w, l.h, l.c, l.batch, l.stride, 1, l.output)
    else:
        blas.reorg_cpu(net.input, l.w, l.h, l.c, l.batch, l.stride, 0, l.output)


def backward(l, net):
    """darknet's ``backward_reorg_layer``: the inverse shuffle, written over ``net.delta`` (not added)."""
    if net.delta is None:
        return
    blas = family("blas")
    if l.flatten:
        n = l.outputs * l.batch
        net.delta[:n] = l.delta[:n]  # darknet: memcpy
        blas.flatten(net.delta, l.w * l.h, l.c, l.batch, 1 if l.reverse else 0)
    elif l.reverse:
        blas.reorg_cpu(l.delta, l.w, l.h, l.c, l.batch, l.stride, 0, net.delta)
    elif l.extra:
        for i in range(l.batch):
            blas.copy_cpu(l.inputs, l.delta[i * l.outputs:], 1, net.delta[i * l.inputs:], 1)
    else:
        blas.reorg_cpu(l.delta, l.w, l.h, l.c, l.batch, l.stride, 1, net.delta)
