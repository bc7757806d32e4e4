"""The ``[softmax]`` layer: darknet's softmax_layer.c and ``parse_softmax`` (parser.c).

Forward: a softmax over each of ``groups`` consecutive slices of ``inputs/groups``
values per image, at ``temperature`` (``softmax_cpu`` of blas.c: float
``in/temp - max/temp``, double ``exp`` rounded to float, float sum and
quotients).  With a ``tree=`` file (darknet's 9000-class hierarchy) each group
of sibling classes is one softmax.  When the network has a truth (darknet always
allocates one) and ``noloss`` is 0: ``delta = truth - p`` and ``loss = -log(p)``
where the truth is non-zero (``softmax_x_ent_cpu``), ``cost = sum(loss)`` in
float.  ``delta = t - p`` is the negative gradient of that cross-entropy with
respect to the softmax's *input* (for a one-hot, or any summing-to-one, truth).

Backward: ``net.delta += delta``.

``spatial`` is read as darknet reads it (a float option truncated to an int)
but, as in darknet's CPU code, only the GPU forward uses it: the CPU softmax is
always the grouped one.
"""

import numpy as np

from darkpy.errors import DarkpyError, ShapeError
from darkpy.kernels import family
from darkpy.layer import Layer, zeros


def parse(section, params):
    """darknet's ``parse_softmax``: groups, temperature, tree, spatial, noloss."""
    where = dict(path=section.path, line=section.line, section=section.header,
                 layer=section.index if section.index >= 0 else None)
    groups = section.find_int("groups", 1)
    if groups < 1 or params.inputs % groups:
        raise ShapeError(f"softmax: groups={groups} must be a positive divisor of the "
                         f"{params.inputs} inputs", **where)
    l = make_softmax_layer(params.batch, params.inputs, groups)
    l.temperature = section.find_float("temperature", 1)
    tree_file = section.find_str("tree", None)
    if tree_file is not None:
        from darkpy.tree import read_tree
        l.softmax_tree = read_tree(tree_file, where)
        if l.softmax_tree.n > l.inputs:
            raise ShapeError(f"softmax: the tree {tree_file!r} has {l.softmax_tree.n} classes but "
                             f"the layer only {l.inputs} inputs", **where)
    l.w = params.w
    l.h = params.h
    l.c = params.c
    l.spatial = int(section.find_float("spatial", 0))
    l.noloss = section.find_int("noloss", 0)
    return l


def make_softmax_layer(batch, inputs, groups):
    """darknet's ``make_softmax_layer``: output, delta, loss of batch*inputs, a 1-float cost."""
    if batch < 1 or inputs < 1:
        raise ShapeError(f"softmax: batch ({batch}) and inputs ({inputs}) must be at least 1")
    if groups < 1 or inputs % groups:
        raise ShapeError(f"softmax: groups={groups} must be a positive divisor of inputs={inputs}")
    l = Layer("softmax")
    l.batch = batch
    l.groups = groups
    l.inputs = inputs
    l.outputs = inputs
    l.temperature = np.float32(0)  # darknet's zeroed struct; parse_softmax sets it (default 1)
    l.loss = zeros(inputs * batch, np.float32)
    l.output = zeros(inputs * batch, np.float32)
    l.delta = zeros(inputs * batch, np.float32)
    l.cost = zeros(1, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


def forward(l, net):
    """darknet's ``forward_softmax_layer`` (CPU): grouped or tree softmax, then cross-entropy."""
    blas = family("blas")
    if l.softmax_tree is not None:
        count = 0
        for group_size in l.softmax_tree.group_size:
            blas.softmax_cpu(net.input[count:], int(group_size), l.batch, l.inputs, 1, 0, 1,
                             l.temperature, l.output[count:])
            count += int(group_size)
    else:
        n = l.inputs // l.groups
        blas.softmax_cpu(net.input, n, l.batch, l.inputs, l.groups, n, 1, l.temperature, l.output)

    if net.truth is not None and not l.noloss:
        size = l.batch * l.inputs
        if net.truth.shape[0] < size:
            raise DarkpyError(f"softmax: net.truth holds {net.truth.shape[0]} values, the layer "
                              f"needs {size} (batch {l.batch} x {l.inputs})")
        blas.softmax_x_ent_cpu(size, l.output, net.truth, l.delta, l.loss)
        l.cost[0] = blas.sum_array(l.loss, size)


def backward(l, net):
    """darknet's ``backward_softmax_layer``: ``net.delta += delta``."""
    if net.delta is None:
        return
    family("blas").axpy_cpu(l.inputs * l.batch, np.float32(1), l.delta, 1, net.delta, 1)

