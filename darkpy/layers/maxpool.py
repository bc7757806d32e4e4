"""``[maxpool]``: darknet's maxpool_layer.c and ``parse_maxpool`` of parser.c."""

import numpy as np

from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_maxpool``: ``stride`` (default 1), ``size`` (default stride), ``padding`` (default size-1)."""
    stride = section.find_int("stride", 1)
    size = section.find_int("size", stride)
    padding = section.find_int("padding", size - 1)
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    if not (params.h and params.w and params.c):
        raise ShapeError("the layer before [maxpool] must output an image "
                         f"(it outputs {params.c}x{params.h}x{params.w})", **where)
    if stride < 1 or size < 1:
        raise CfgError(f"size={size} stride={stride}: both must be positive", **where)
    try:
        return make_maxpool_layer(params.batch, params.h, params.w, params.c, size, stride, padding)
    except ShapeError as e:
        raise ShapeError(e.message, **where) from None


def make_maxpool_layer(batch, h, w, c, size, stride, padding):
    """darknet's ``make_maxpool_layer``: ``out = (in + padding - size)/stride + 1`` (C division).

    Allocates ``indexes`` (int32), ``output`` and ``delta`` of ``out_h*out_w*c*batch``.
    """
    l = Layer("maxpool")
    l.batch = batch
    l.h = h
    l.w = w
    l.c = c
    l.pad = padding
    l.out_w = _c_div(w + padding - size, stride) + 1
    l.out_h = _c_div(h + padding - size, stride) + 1
    l.out_c = c
    if l.out_w < 1 or l.out_h < 1:
        raise ShapeError(f"maxpool size={size} stride={stride} padding={padding} on a "
                         f"{w}x{h} input gives a {l.out_w}x{l.out_h} output")
    l.outputs = l.out_h * l.out_w * l.out_c
    l.inputs = h * w * c
    l.size = size
    l.stride = stride
    output_size = l.out_h * l.out_w * l.out_c * batch
    l.indexes = zeros(output_size, np.int32)
    l.output = zeros(output_size, np.float32)
    l.delta = zeros(output_size, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_maxpool_layer``: window maxima of ``net.input`` and their indexes."""
    family("pooling").forward_maxpool(l.batch, l.h, l.w, l.c, l.out_h, l.out_w, l.size, l.stride,
                                      l.pad, net.input, l.output, l.indexes)


def backward(l, net):
    """darknet's ``backward_maxpool_layer``: each output's delta added at its winner in ``net.delta``.

    Without a ``net.delta`` (the first layer of a network) there is nothing to
    add to; darknet would crash there.
    """
    if net.delta is None:
        return
    family("pooling").backward_maxpool(l.batch, l.c, l.out_h, l.out_w, l.indexes, l.delta, net.delta)


def _c_div(a, b):
    """C's int division (truncation toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q
