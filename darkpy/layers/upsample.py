"""``[upsample]``: darknet's upsample_layer.c and ``parse_upsample`` of parser.c.

``stride`` > 0 repeats every pixel stride x stride times (times ``scale``);
a negative stride downsamples (``l.reverse``): each output pixel is the sum of
its stride x stride block times ``scale``, through ``upsample_cpu``'s backward mode.
"""

import numpy as np

from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_upsample``: ``stride`` (default 2), ``scale`` (default 1)."""
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    stride = section.find_int("stride", 2)
    if stride == 0:
        raise CfgError("[upsample] stride=0: expected a non-zero stride (negative downsamples)", **where)
    if not (params.h and params.w and params.c):
        raise ShapeError("the layer before [upsample] must output an image "
                         f"(it outputs {params.c}x{params.h}x{params.w})", **where)
    try:
        l = make_upsample_layer(params.batch, params.w, params.h, params.c, stride)
    except ShapeError as e:
        raise ShapeError(e.message, **where) from None
    l.scale = np.float32(section.find_float("scale", 1))
    return l


def make_upsample_layer(batch, w, h, c, stride):
    """darknet's ``make_upsample_layer``: ``out = in*stride``, or ``in/stride`` with ``reverse`` for stride < 0.

    ``l.stride`` keeps the stride's magnitude; ``l.scale`` starts at 0 as in
    darknet (the parser sets it).
    """
    l = Layer("upsample")
    l.batch = batch
    l.w = w
    l.h = h
    l.c = c
    l.out_w = w * stride
    l.out_h = h * stride
    l.out_c = c
    if stride < 0:
        stride = -stride
        l.reverse = 1
        l.out_w = w // stride
        l.out_h = h // stride
    if l.out_w < 1 or l.out_h < 1:
        raise ShapeError(f"downsampling a {w}x{h} input by {stride} leaves no pixel")
    l.stride = stride
    l.outputs = l.out_w * l.out_h * l.out_c
    l.inputs = l.w * l.h * l.c
    l.delta = zeros(l.outputs * batch, np.float32)
    l.output = zeros(l.outputs * batch, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_upsample_layer``: zero the output, then ``upsample_cpu`` one way or the other."""
    blas = family("blas")
    blas.fill_cpu(l.outputs * l.batch, np.float32(0), l.output, 1)
    scale = np.float32(l.scale)
    if l.reverse:
        blas.upsample_cpu(l.output, l.out_w, l.out_h, l.c, l.batch, l.stride, 0, scale, net.input)
    else:
        blas.upsample_cpu(net.input, l.w, l.h, l.c, l.batch, l.stride, 1, scale, l.output)


def backward(l, net):
    """darknet's ``backward_upsample_layer``.

    Upsampling: ``net.delta += scale * (sum of the block's deltas)``; downsampling:
    ``net.delta = scale * delta`` of the block's output pixel.
    """
    if net.delta is None:
        return
    blas = family("blas")
    scale = np.float32(l.scale)
    if l.reverse:
        blas.upsample_cpu(l.delta, l.out_w, l.out_h, l.c, l.batch, l.stride, 1, scale, net.delta)
    else:
        blas.upsample_cpu(net.delta, l.w, l.h, l.c, l.batch, l.stride, 0, scale, l.delta)
