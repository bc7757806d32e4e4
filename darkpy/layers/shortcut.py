"""``[shortcut]``: darknet's shortcut_layer.c and ``parse_shortcut`` of parser.c.

The output is this layer's input plus (``alpha``/``beta`` weighted) the output
of layer ``from``, then the activation.  When the two differ in size,
``shortcut_cpu`` strides over the larger one and samples the smaller one.
``l.index`` holds the ``from`` layer's index, as in darknet.
"""

import numpy as np

from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels import family
from darkpy.kernels.activations import get_activation
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_shortcut``: ``from`` (required), ``activation`` (linear), ``alpha``/``beta`` (1)."""
    where = dict(path=section.path, line=section.line, section=section.header, layer=params.index)
    if not section.has("from"):
        raise CfgError("[shortcut] needs from= (the layer to add)", **where)
    value = section.find_int("from")
    index = params.index + value if value < 0 else value
    if not 0 <= index < params.index:
        raise CfgError(f"from={value} refers to layer {index}; expected an earlier layer "
                       f"(0..{params.index - 1})", **where)
    frm = params.net.layers[index]
    w, h, c = params.w, params.h, params.c
    w2, h2, c2 = frm.out_w, frm.out_h, frm.out_c
    # shortcut_cpu divides the widths and heights both ways and asserts they scale alike
    if not (w and h and c and w2 and h2 and c2):
        raise ShapeError(f"shortcut needs two images: its input is {c}x{h}x{w}, layer {index} "
                         f"outputs {c2}x{h2}x{w2}", **where)
    if w2 // w != h2 // h or w // w2 != h // h2:
        raise ShapeError(f"layer {index} outputs {w2}x{h2} and this layer's input is {w}x{h}: "
                         "width and height must scale by the same factor", **where)

    s = make_shortcut_layer(params.batch, index, w, h, c, w2, h2, c2)
    s.activation = get_activation(section.find_str("activation", "linear"))
    s.alpha = np.float32(section.find_float("alpha", 1))
    s.beta = np.float32(section.find_float("beta", 1))
    return s


def make_shortcut_layer(batch, index, w, h, c, w2, h2, c2):
    """darknet's ``make_shortcut_layer``: (w, h, c) is the input, (w2, h2, c2) layer ``index``'s output.

    As in darknet, ``l.w/h/c`` hold the *from* layer's shape and ``out_*`` the
    input's; ``outputs = w*h*c``.  ``alpha`` and ``beta`` stay 0 until set (the parser sets 1).
    """
    l = Layer("shortcut")
    l.batch = batch
    l.w = w2
    l.h = h2
    l.c = c2
    l.out_w = w
    l.out_h = h
    l.out_c = c
    l.outputs = w * h * c
    l.inputs = l.outputs
    l.index = index
    l.delta = zeros(l.outputs * batch, np.float32)
    l.output = zeros(l.outputs * batch, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def _check_from(l, net):
    if not 0 <= l.index < net.index:
        raise DarkpyError(f"shortcut layer {net.index}: from-layer index {l.index} is not an "
                          "earlier layer (was l.index overwritten?)", layer=net.index)


def forward(l, net):
    """darknet's ``forward_shortcut_layer``: copy the input, ``shortcut_cpu(alpha, beta)``, activate."""
    _check_from(l, net)
    blas = family("blas")
    n = l.outputs * l.batch
    blas.copy_cpu(n, net.input, 1, l.output, 1)
    blas.shortcut_cpu(l.batch, l.w, l.h, l.c, net.layers[l.index].output, l.out_w, l.out_h,
                      l.out_c, np.float32(l.alpha), np.float32(l.beta), l.output)
    family("activations").activate_array(l.output, n, l.activation)


def backward(l, net):
    """darknet's ``backward_shortcut_layer``.

    ``delta *= activation'``; ``net.delta += alpha*delta``; then the from-layer's
    delta gets ``1*its_delta + beta*delta`` through ``shortcut_cpu`` (strided/sampled).
    """
    _check_from(l, net)
    blas = family("blas")
    n = l.outputs * l.batch
    family("activations").gradient_array(l.output, n, l.activation, l.delta)
    if net.delta is not None:
        blas.axpy_cpu(n, np.float32(l.alpha), l.delta, 1, net.delta, 1)
    from_delta = net.layers[l.index].delta
    if from_delta is not None:
        blas.shortcut_cpu(l.batch, l.out_w, l.out_h, l.out_c, l.delta, l.w, l.h, l.c,
                          np.float32(1), np.float32(l.beta), from_delta)
