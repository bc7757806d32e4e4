"""Bounding boxes: the parts of darknet's ``box.c`` that the output layers use.

darknet's ``box`` is a struct of four floats ``{x, y, w, h}`` (centre, width,
height).  Here a box is a plain tuple ``(x, y, w, h)`` of ``numpy.float32``, so
the functions compile in Numba (``UniTuple(float32, 4)``) and can be called
from the ``@kernel`` loops of the yolo, region and detection layers.

Every function keeps C's arithmetic: ``overlap``, ``box_intersection``,
``box_union`` and ``box_iou`` stay in float (``w1/2`` is a float divided by an
int, i.e. a float division), ``box_rmse`` promotes to double because C's
``pow`` and ``sqrt`` take doubles, and returns the double rounded to float.

Callers must pass float32 values: a Python float is a float64 in Numba and
would silently move the arithmetic to double.  ``make_box`` builds a box from
anything numeric with the float conversion C's assignment to a float does.
"""

import math

import numpy as np

from darkpy.kernels import kernel

_TWO = np.float32(2)
_ZERO = np.float32(0)


def make_box(x, y, w, h):
    """A box ``(x, y, w, h)`` with each value rounded to float32, as a C ``box`` holds them."""
    return (np.float32(x), np.float32(y), np.float32(w), np.float32(h))


@kernel
def float_to_box(f, stride):
    """darknet's ``float_to_box``: the box ``f[0], f[stride], f[2*stride], f[3*stride]``.

    ``f`` is a float32 array view starting where darknet's pointer points.
    """
    return (f[0], f[1 * stride], f[2 * stride], f[3 * stride])


@kernel
def overlap(x1, w1, x2, w2):
    """darknet's ``overlap``: length of the overlap of two 1-D intervals (negative when apart).

    All float: the left edges are ``x - w/2``, the right edges ``x + w/2``.
    """
    l1 = x1 - w1 / _TWO
    l2 = x2 - w2 / _TWO
    left = l1 if l1 > l2 else l2
    r1 = x1 + w1 / _TWO
    r2 = x2 + w2 / _TWO
    right = r1 if r1 < r2 else r2
    return right - left


@kernel
def box_intersection(a, b):
    """darknet's ``box_intersection``: area shared by two boxes, 0 when they are apart.

    A NaN overlap passes the ``w < 0 || h < 0`` test, as in C, and gives a NaN area.
    """
    w = overlap(a[0], a[2], b[0], b[2])
    h = overlap(a[1], a[3], b[1], b[3])
    if w < _ZERO or h < _ZERO:
        return _ZERO
    area = w * h
    return area


@kernel
def box_union(a, b):
    """darknet's ``box_union``: ``a.w*a.h + b.w*b.h - intersection``, in float, left to right."""
    i = box_intersection(a, b)
    u = a[2] * a[3] + b[2] * b[3] - i
    return u


@kernel
def box_iou(a, b):
    """darknet's ``box_iou``: intersection over union in float.

    Two zero-area boxes give 0/0 = NaN, exactly as darknet does; darknet's
    callers compare that NaN with ``>`` and so never pick it.
    """
    return box_intersection(a, b) / box_union(a, b)


@kernel
def box_rmse(a, b):
    """darknet's ``box_rmse``: ``sqrt(pow(dx,2) + pow(dy,2) + pow(dw,2) + pow(dh,2))``.

    The differences are float; ``pow`` and ``sqrt`` are C double functions, so
    each difference is squared in double (exact: a float squared fits in a
    double), the squares are summed in double left to right, and the root is
    rounded to float by the ``float`` return type.
    """
    dx = np.float64(a[0] - b[0])
    dy = np.float64(a[1] - b[1])
    dw = np.float64(a[2] - b[2])
    dh = np.float64(a[3] - b[3])
    return np.float32(math.sqrt(dx * dx + dy * dy + dw * dw + dh * dh))
