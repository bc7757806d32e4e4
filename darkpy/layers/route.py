"""``[route]``: darknet's route_layer.c and ``parse_route`` of parser.c.

A route layer concatenates, image by image, the outputs of earlier layers
(``layers=``, negative values counted back from this layer).  AlexeyAB's
``groups``/``group_id`` are not part of pjreddie's darknet and are not read.
"""

import numpy as np

from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_route``: resolve ``layers=``, then the image shape check.

    darknet takes out_w/out_h from the first routed layer and adds the out_c of
    every other one; when one differs in width or height it silently sets the
    route's shape to 0x0x0.  darkpy raises ``ShapeError`` naming both layers instead.
    """
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    values = section.find_int_list("layers", None)
    if values is None:
        raise CfgError("[route] needs layers= (the indices of the layers to concatenate)", **where)
    net = params.net
    input_layers = []
    for value in values:
        index = params.index + value if value < 0 else value
        if not 0 <= index < params.index:
            raise CfgError(f"layers={section.find('layers')}: {value} refers to layer {index}; "
                           f"expected an earlier layer (0..{params.index - 1})", **where)
        input_layers.append(index)
    input_sizes = [net.layers[index].outputs for index in input_layers]

    l = make_route_layer(params.batch, len(input_layers), input_layers, input_sizes)

    first = net.layers[input_layers[0]]
    l.out_w = first.out_w
    l.out_h = first.out_h
    l.out_c = first.out_c
    for index in input_layers[1:]:
        nxt = net.layers[index]
        if nxt.out_w == first.out_w and nxt.out_h == first.out_h:
            l.out_c += nxt.out_c
        else:
            raise ShapeError(f"routed layer {index} outputs {nxt.out_w}x{nxt.out_h} but layer "
                             f"{input_layers[0]} outputs {first.out_w}x{first.out_h}: every routed "
                             "layer must have the same width and height (darknet would give "
                             "this route a 0x0x0 shape)", **where)
    return l


def make_route_layer(batch, n, input_layers, input_sizes):
    """darknet's ``make_route_layer``: ``outputs`` = the sum of the routed layers' outputs."""
    l = Layer("route")
    l.batch = batch
    l.n = n
    l.input_layers = np.asarray(input_layers, np.int32)
    l.input_sizes = np.asarray(input_sizes, np.int32)
    outputs = int(l.input_sizes.sum())
    l.outputs = outputs
    l.inputs = outputs
    l.delta = zeros(outputs * batch, np.float32)
    l.output = zeros(outputs * batch, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_route_layer``: ``copy_cpu`` of each routed output, image by image."""
    blas = family("blas")
    offset = 0
    for i in range(l.n):
        index = int(l.input_layers[i])
        input = net.layers[index].output
        input_size = int(l.input_sizes[i])
        for j in range(l.batch):
            blas.copy_cpu(input_size, input[j * input_size:], 1, l.output[offset + j * l.outputs:], 1)
        offset += input_size


def backward(l, net):
    """darknet's ``backward_route_layer``: ``axpy_cpu(.., 1, ..)`` of each slice into the routed layer's delta.

    A routed layer without a delta (darknet: NULL, it would crash) is skipped.
    """
    blas = family("blas")
    one = np.float32(1)
    offset = 0
    for i in range(l.n):
        index = int(l.input_layers[i])
        delta = net.layers[index].delta
        input_size = int(l.input_sizes[i])
        if delta is not None:
            for j in range(l.batch):
                blas.axpy_cpu(input_size, one, l.delta[offset + j * l.outputs:], 1,
                              delta[j * input_size:], 1)
        offset += input_size
