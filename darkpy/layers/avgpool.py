"""``[avgpool]``: darknet's avgpool_layer.c (global average) and ``parse_avgpool``."""

import numpy as np

from darkpy.errors import ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_avgpool``: no options; the input must be an image."""
    if not (params.h and params.w and params.c):
        raise ShapeError("the layer before [avgpool] must output an image "
                         f"(it outputs {params.c}x{params.h}x{params.w})",
                         path=section.path, line=section.line, section=section.header,
                         layer=params.index)
    return make_avgpool_layer(params.batch, params.w, params.h, params.c)


def make_avgpool_layer(batch, w, h, c):
    """darknet's ``make_avgpool_layer`` (note darknet's argument order: w before h): out 1x1xc."""
    l = Layer("avgpool")
    l.batch = batch
    l.h = h
    l.w = w
    l.c = c
    l.out_w = 1
    l.out_h = 1
    l.out_c = c
    l.outputs = l.out_c
    l.inputs = h * w * c
    output_size = l.outputs * batch
    l.output = zeros(output_size, np.float32)
    l.delta = zeros(output_size, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_avgpool_layer``: per channel the float sum divided by (float)(h*w)."""
    family("pooling").forward_avgpool(l.batch, l.h, l.w, l.c, net.input, l.output)


def backward(l, net):
    """darknet's ``backward_avgpool_layer``: ``net.delta += delta / (float)(h*w)`` over each plane."""
    if net.delta is None:
        return
    family("pooling").backward_avgpool(l.batch, l.h, l.w, l.c, l.delta, net.delta)
