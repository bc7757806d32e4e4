"""``[activation]``: darknet's activation_layer.c and ``parse_activation`` of parser.c.

Forward copies the input into the output and activates it in place; backward
multiplies the delta by the activation's gradient (a function of the output)
and then COPIES the delta into ``net.delta`` (overwriting, not adding).
"""

import numpy as np

from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels import family
from darkpy.kernels.reference.activations import check_activation, get_activation
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_activation``: ``activation`` (linear); the layer keeps the input's h, w, c."""
    activation_s = section.find_str("activation", "linear")
    try:
        activation = get_activation(activation_s)
    except CfgError as e:
        opt = section.option("activation")
        raise CfgError(e.message, path=section.path, line=opt.line if opt else section.line,
                       section=section.header, layer=params.index) from None
    try:
        l = make_activation_layer(params.batch, params.inputs, activation)
    except ShapeError as e:
        raise ShapeError(e.message, path=section.path, line=section.line, section=section.header,
                         layer=params.index) from None
    l.h = l.out_h = params.h
    l.w = l.out_w = params.w
    l.c = l.out_c = params.c
    return l


def make_activation_layer(batch, inputs, activation):
    """darknet's ``make_activation_layer``: output and delta of ``batch*inputs`` floats.

    (darknet allocates them with ``sizeof(float*)``, i.e. twice too large; only
    the first ``batch*inputs`` are ever used, so we allocate that.)
    """
    batch, inputs = int(batch), int(inputs)
    for name, value in (("batch", batch), ("inputs", inputs)):
        if value < 1:
            raise ShapeError(f"activation: {name}={value} must be at least 1")
    activation = check_activation(activation)
    l = Layer("activation")
    l.inputs = inputs
    l.outputs = inputs
    l.batch = batch
    l.output = zeros(batch * inputs, np.float32)
    l.delta = zeros(batch * inputs, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    l.activation = activation
    return l


def forward(l, net):
    """darknet's ``forward_activation_layer``: ``output = input``, then ``activate_array``."""
    n = l.outputs * l.batch
    if not (isinstance(net.input, np.ndarray) and net.input.dtype == np.float32
            and net.input.ndim == 1 and net.input.shape[0] >= n):
        raise DarkpyError(f"activation: net.input must be a 1-D float32 array of at least {n} floats")
    family("blas").copy_cpu(n, net.input, 1, l.output, 1)
    family("activations").activate_array(l.output, n, l.activation)


def backward(l, net):
    """darknet's ``backward_activation_layer``: ``delta *= gradient(output)``, then ``net.delta = delta``.

    darknet copies into ``net.delta`` unconditionally (and crashes when it is
    NULL, i.e. for a first layer); we skip the copy when there is no net.delta.
    """
    n = l.outputs * l.batch
    family("activations").gradient_array(l.output, n, l.activation, l.delta)
    if net.delta is not None:
        if net.delta.shape[0] < n:
            raise DarkpyError(f"activation: net.delta holds {net.delta.shape[0]} floats, needs {n}")
        family("blas").copy_cpu(n, l.delta, 1, net.delta, 1)
