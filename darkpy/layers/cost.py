"""The ``[cost]`` layer: darknet's cost_layer.c and ``parse_cost`` (parser.c).

Forward (only when the network has a truth): per element ``diff = truth - input``;
``sse`` (and ``seg``, ``wgan``, ``masked``, which the CPU code treats alike):
``output = diff*diff``, ``delta = diff`` (``l2_cpu``); ``L1``: ``|diff|`` and
``sign(diff)``; ``smooth``: the Huber loss with darknet's inverted sign outside
|diff| < 1 (see ``smooth_l1_cpu``).  ``masked`` first overwrites the *input*
(the previous layer's output) with ``SECRET_NUM`` wherever the truth is
``SECRET_NUM``, so those elements give diff 0.  ``cost = sum(output)`` in
float.  For sse, ``delta = diff`` is the negative gradient of ``cost/2``.

Backward: ``net.delta += scale * delta``.

``ratio``, ``noobj`` (``noobject_scale``) and ``thresh`` are read as darknet reads
them; only darknet's GPU code uses them (and ``smooth``), so the CPU forward here
ignores them, as darknet's does.
"""

import numpy as np

from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros

# darknet's COST_TYPE enum (include/darknet.h), in its order
SSE, MASKED, L1, SEG, SMOOTH, WGAN = range(6)
_NAMES = {"seg": SEG, "sse": SSE, "masked": MASKED, "smooth": SMOOTH, "L1": L1, "wgan": WGAN}

#: darknet's ``SECRET_NUM``: the truth value that masks an element out.
SECRET_NUM = np.float32(-1234)


def get_cost_type(s, where=None):
    """darknet's ``get_cost_type``: the enum of a (case-sensitive) name.

    darknet prints "Couldn't find cost type" and goes on with SSE; darkpy raises ``CfgError``
    (a silently different loss is worse than an error).
    """
    if s in _NAMES:
        return _NAMES[s]
    raise CfgError(f"type={s}: expected one of {', '.join(_NAMES)}", **(where or {}))


def get_cost_string(a):
    """darknet's ``get_cost_string``."""
    for name, value in _NAMES.items():
        if value == a:
            return name
    return "sse"


def parse(section, params):
    """darknet's ``parse_cost``: type, scale, ratio, noobj, thresh."""
    opt = section.option("type")
    where = dict(path=section.path, line=opt.line if opt else section.line, section=section.header,
                 layer=section.index if section.index >= 0 else None)
    cost_type = get_cost_type(section.find_str("type", "sse"), where)
    scale = section.find_float("scale", 1)
    l = make_cost_layer(params.batch, params.inputs, cost_type, scale)
    l.ratio = section.find_float("ratio", 0)
    l.noobject_scale = section.find_float("noobj", 1)
    l.thresh = section.find_float("thresh", 0)
    return l


def make_cost_layer(batch, inputs, cost_type, scale):
    """darknet's ``make_cost_layer``: output and delta of batch*inputs, a 1-float cost."""
    if batch < 1 or inputs < 1:
        raise ShapeError(f"cost: batch ({batch}) and inputs ({inputs}) must be at least 1")
    l = Layer("cost")
    l.scale = np.float32(scale)
    l.batch = batch
    l.inputs = inputs
    l.outputs = inputs
    l.cost_type = cost_type
    l.delta = zeros(inputs * batch, np.float32)
    l.output = zeros(inputs * batch, np.float32)
    l.cost = zeros(1, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_cost_layer`` (CPU)."""
    if net.truth is None:
        return
    size = l.batch * l.inputs
    if net.truth.shape[0] < size:
        raise DarkpyError(f"cost: net.truth holds {net.truth.shape[0]} values, the layer needs "
                          f"{size} (batch {l.batch} x {l.inputs})")
    blas = family("blas")
    if l.cost_type == MASKED:
        secret = net.truth[:size] == SECRET_NUM
        net.input[:size][secret] = SECRET_NUM
    if l.cost_type == SMOOTH:
        blas.smooth_l1_cpu(size, net.input, net.truth, l.delta, l.output)
    elif l.cost_type == L1:
        blas.l1_cpu(size, net.input, net.truth, l.delta, l.output)
    else:
        blas.l2_cpu(size, net.input, net.truth, l.delta, l.output)
    l.cost[0] = blas.sum_array(l.output, size)


def backward(l, net):
    """darknet's ``backward_cost_layer``: ``net.delta += scale * delta`` (float)."""
    if net.delta is None:
        return
    family("blas").axpy_cpu(l.batch * l.inputs, l.scale, l.delta, 1, net.delta, 1)
