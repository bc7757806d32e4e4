"""``[dropout]``: darknet's dropout_layer.c and ``parse_dropout`` of parser.c.

In darknet the dropout layer works in place: the network builder points its
``output`` and ``delta`` at the previous layer's buffers, and forward/backward
modify ``net.input``/``net.delta`` (those same buffers).  This module never
allocates or uses its own output/delta.  Training draws one
``rand_uniform(0, 1)`` per element from C's ``rand()`` (``darkpy.crand``).
"""

import numpy as np

from darkpy import crand
from darkpy.errors import CfgError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_dropout``: ``probability`` (default .5); the shape passes through."""
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    probability = section.find_float("probability", .5)
    if not probability < 1:  # also refuses NaN
        raise CfgError(f"[dropout] probability={probability}: expected a value below 1", **where)
    if params.index == 0:
        # darknet would take the buffers of the layer before the first one (undefined behaviour)
        raise CfgError("[dropout] cannot be the first layer: it works in place on the previous "
                       "layer's output", **where)
    l = make_dropout_layer(params.batch, params.inputs, probability)
    l.out_w = params.w
    l.out_h = params.h
    l.out_c = params.c
    return l


def make_dropout_layer(batch, inputs, probability):
    """darknet's ``make_dropout_layer``: ``rand`` of inputs*batch; ``scale = 1./(1.-probability)``.

    ``probability`` is a C float promoted to double for the scale, which is
    computed in double and rounded to float when stored.
    """
    l = Layer("dropout")
    l.probability = np.float32(probability)
    l.inputs = inputs
    l.outputs = inputs
    l.batch = batch
    l.rand = zeros(inputs * batch, np.float32)
    with np.errstate(divide="ignore"):
        l.scale = np.float32(np.float64(1.) / (np.float64(1.) - np.float64(l.probability)))
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_dropout_layer``: nothing at inference; in training zero or scale ``net.input`` in place."""
    if not net.train:
        return
    family("pooling").forward_dropout(l.batch * l.inputs, l.probability, l.scale, crand.STATE,
                                      l.rand, net.input)


def backward(l, net):
    """darknet's ``backward_dropout_layer``: the same mask and scale on ``net.delta`` in place."""
    if net.delta is None:
        return
    family("pooling").backward_dropout(l.batch * l.inputs, l.probability, l.scale, l.rand,
                                       net.delta)
