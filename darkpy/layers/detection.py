"""The ``[detection]`` layer (YOLOv1): darknet's detection_layer.c and ``parse_detection`` (parser.c).

Layout per image (``side*side`` = locations): ``classes`` class scores per
location, then ``n`` confidences per location, then ``n`` boxes of ``coords``
values per location (x, y relative to the cell, w, h relative to the image,
or their square roots with ``sqrt``).  The truth per location is
``is_obj, classes one-hot, x, y, w, h``.

Forward: ``output = input``; with ``softmax`` a softmax over each location's
classes, in place.  Training deltas, per location:
every confidence ``noobject_scale * (0 - p)``; where the truth has an object,
class deltas ``class_scale * (t_k - p_k)``; the responsible box is the one
with the best IoU with the truth (or, while all IoUs are 0, the smallest
``box_rmse``; ``forced`` picks box 1 for truths of area < .1, else box 0);
it gets confidence ``object_scale * (1. - p)`` (a double literal: computed in
double, ``iou - p`` in float with ``rescore``) and box deltas
``coord_scale * (t - raw)`` (with ``sqrt``: ``sqrt(t)`` in double for w, h).

``cost = pow(mag_array(delta), 2)``.  (darknet first accumulates a
sum-of-squares cost into ``*l.cost`` and then overwrites it with this; the
overwritten sum has no effect and is not computed here.)

Backward: ``net.delta += delta``.

``random=1`` makes darknet pick the responsible box with C's global ``rand()``
while ``net.seen < 64000``; that stream is shared with the whole program and
cannot be reproduced, so darkpy raises there.
"""

import math

import numpy as np

from darkpy.box import box_iou, box_rmse, float_to_box
from darkpy.errors import DarkpyError, ShapeError
from darkpy.kernels import family, kernel
from darkpy.layer import Layer, zeros
from darkpy.layers.yolo import squared_magnitude_cost

_BOX_OUT_OF_BUFFER = 1
_TRUTH_NOT_AN_INT = 2


def parse(section, params):
    """darknet's ``parse_detection``."""
    where = dict(path=section.path, line=section.line, section=section.header,
                 layer=section.index if section.index >= 0 else None)
    coords = section.find_int("coords", 1)
    classes = section.find_int("classes", 1)
    rescore = section.find_int("rescore", 0)
    num = section.find_int("num", 1)
    side = section.find_int("side", 7)
    try:
        l = make_detection_layer(params.batch, params.inputs, num, side, classes, coords, rescore)
    except ShapeError as exc:
        raise ShapeError(exc.message, **where) from None
    l.softmax = section.find_int("softmax", 0)
    l.sqrt = section.find_int("sqrt", 0)
    l.max_boxes = section.find_int("max", 90)
    l.coord_scale = section.find_float("coord_scale", 1)
    l.forced = section.find_int("forced", 0)
    l.object_scale = section.find_float("object_scale", 1)
    l.noobject_scale = section.find_float("noobject_scale", 1)
    l.class_scale = section.find_float("class_scale", 1)
    l.jitter = section.find_float("jitter", .2)
    l.random = section.find_int("random", 0)
    l.reorg = section.find_int("reorg", 0)
    return l


def make_detection_layer(batch, inputs, n, side, classes, coords, rescore):
    """darknet's ``make_detection_layer``: inputs must be ``side*side*((1 + coords)*n + classes)``."""
    if batch < 1 or n < 1 or side < 1 or classes < 0 or coords < 0:
        raise ShapeError(f"detection: batch={batch}, num={n}, side={side} must be at least 1, "
                         f"classes={classes} and coords={coords} not negative")
    if side * side * ((1 + coords) * n + classes) != inputs:
        raise ShapeError(f"detection: the previous layer gives {inputs} values per image, but "
                         f"side={side}, num={n}, coords={coords}, classes={classes} need "
                         f"{side}*{side}*((1 + {coords})*{n} + {classes}) = "
                         f"{side * side * ((1 + coords) * n + classes)}")
    l = Layer("detection")
    l.n = n
    l.batch = batch
    l.inputs = inputs
    l.classes = classes
    l.coords = coords
    l.rescore = rescore
    l.side = side
    l.w = side
    l.h = side
    l.cost = zeros(1, np.float32)
    l.outputs = l.inputs
    l.truths = l.side * l.side * (1 + l.coords + l.classes)
    l.output = zeros(batch * l.outputs, np.float32)
    l.delta = zeros(batch * l.outputs, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


# ----------------------------------------------------------------------------- kernels

@kernel
def _scaled_box(output, at, side, sqrt):
    """The predicted box as darknet compares it: x, y over ``side`` (float), w, h squared with ``sqrt``."""
    out = float_to_box(output[at:], 1)
    x = out[0] / np.float32(side)
    y = out[1] / np.float32(side)
    w = out[2]
    h = out[3]
    if sqrt:
        w = w * w
        h = h * h
    return (x, y, w, h)


@kernel
def detection_training_deltas(output, delta, truth, batch, inputs, side, n, classes, coords, sqrt,
                              forced, rescore, coord_scale, object_scale, noobject_scale,
                              class_scale, stats):
    """The training part of darknet's ``forward_detection_layer``; returns a status.

    ``stats``: avg_iou, avg_cat, avg_allcat, avg_obj, avg_anyobj, count, then the
    image and location of a failure.
    """
    size = output.shape[0]
    locations = side * side
    for k in range(inputs * batch):
        delta[k] = 0
    for b in range(batch):
        index = b * inputs
        for i in range(locations):
            truth_index = (b * locations + i) * (1 + coords + classes)
            v = truth[truth_index]
            if not (v > -2147483648.0 and v < 2147483648.0):
                stats[6] = b
                stats[7] = i
                return _TRUTH_NOT_AN_INT
            is_obj = int(v)
            for j in range(n):
                p_index = index + locations * classes + i * n + j
                delta[p_index] = noobject_scale * (np.float32(0) - output[p_index])
                stats[4] += output[p_index]

            best_index = -1
            best_iou = np.float32(0)
            best_rmse = np.float32(20)
            if not is_obj:
                continue

            class_index = index + i * classes
            for j in range(classes):
                delta[class_index + j] = class_scale * (truth[truth_index + 1 + j]
                                                        - output[class_index + j])
                if truth[truth_index + 1 + j] != 0:
                    stats[1] += output[class_index + j]
                stats[2] += output[class_index + j]

            raw = float_to_box(truth[truth_index + 1 + classes:], 1)
            tbox = (raw[0] / np.float32(side), raw[1] / np.float32(side), raw[2], raw[3])

            for j in range(n):
                box_index = index + locations * (classes + n) + (i * n + j) * coords
                if not (box_index >= 0 and box_index + 3 < size):
                    stats[6] = b
                    stats[7] = i
                    return _BOX_OUT_OF_BUFFER
                out = _scaled_box(output, box_index, side, sqrt)
                iou = box_iou(out, tbox)
                rmse = box_rmse(out, tbox)
                if best_iou > 0 or iou > 0:
                    if iou > best_iou:
                        best_iou = iou
                        best_index = j
                else:
                    if rmse < best_rmse:
                        best_rmse = rmse
                        best_index = j

            if forced:
                if tbox[2] * tbox[3] < 0.1:  # float product against the double .1
                    best_index = 1
                else:
                    best_index = 0

            box_index = index + locations * (classes + n) + (i * n + best_index) * coords
            tbox_index = truth_index + 1 + classes
            p_index = index + locations * classes + i * n + best_index
            if not (box_index >= 0 and box_index + 3 < size and p_index >= 0 and p_index < size):
                stats[6] = b
                stats[7] = i
                return _BOX_OUT_OF_BUFFER
            out = _scaled_box(output, box_index, side, sqrt)
            iou = box_iou(out, tbox)

            stats[3] += output[p_index]
            # object_scale * (1. - p): the double literal makes it a double expression
            delta[p_index] = np.float32(np.float64(object_scale)
                                        * (1.0 - np.float64(output[p_index])))
            if rescore:
                delta[p_index] = object_scale * (iou - output[p_index])

            for k in range(4):
                delta[box_index + k] = coord_scale * (truth[tbox_index + k] - output[box_index + k])
            if sqrt:
                for k in range(2, 4):
                    delta[box_index + k] = np.float32(
                        np.float64(coord_scale)
                        * (math.sqrt(np.float64(truth[tbox_index + k]))
                           - np.float64(output[box_index + k])))
            stats[0] += iou
            stats[5] += 1
    return 0


# ----------------------------------------------------------------------------- the layer

def forward(l, net):
    """darknet's ``forward_detection_layer``."""
    size = l.outputs * l.batch
    l.output[:size] = net.input[:size]
    locations = l.side * l.side
    if l.softmax:
        blas = family("blas")
        for b in range(l.batch):
            index = b * l.inputs
            for i in range(locations):
                view = l.output[index + i * l.classes:]
                blas.softmax(view, l.classes, np.float32(1), 1, view)
    if not net.train:
        return
    if net.truth is None or net.truth.shape[0] < l.batch * l.truths:
        have = "none" if net.truth is None else f"{net.truth.shape[0]} values"
        raise DarkpyError(f"detection: training needs net.truth of batch*truths = "
                          f"{l.batch}*{l.truths} values (has {have})")
    if l.coords < 4:
        raise DarkpyError(f"detection: coords={l.coords}: training reads 4 box values per box, "
                          f"darknet would read overlapping boxes and past its buffer (set coords=4)")
    if l.random and net.seen < 64000:
        raise DarkpyError("detection: random=1 picks the responsible box with C's rand() while "
                          "net.seen < 64000; darkpy cannot reproduce darknet's shared rand() stream")
    l.cost[0] = 0
    stats = np.zeros(8, np.float32)
    status = detection_training_deltas(
        l.output, l.delta, net.truth, l.batch, l.inputs, l.side, l.n, l.classes, l.coords,
        bool(l.sqrt), bool(l.forced), bool(l.rescore), np.float32(l.coord_scale),
        np.float32(l.object_scale), np.float32(l.noobject_scale), np.float32(l.class_scale), stats)
    if status == _TRUTH_NOT_AN_INT:
        raise DarkpyError(f"detection: the truth's object flag of image {int(stats[6])}, location "
                          f"{int(stats[7])} is not a number C could convert to int")
    if status:
        raise DarkpyError(f"detection: image {int(stats[6])}, location {int(stats[7])}: the "
                          f"responsible box lies outside the layer's buffer (num={l.n}"
                          f"{', forced picks box 1' if l.forced else ''}), where darknet would "
                          f"read and write out of bounds")
    l.cost[0] = squared_magnitude_cost(l.delta, size)


def backward(l, net):
    """darknet's ``backward_detection_layer``: ``net.delta += delta``."""
    if net.delta is None:
        return
    family("blas").axpy_cpu(l.batch * l.inputs, np.float32(1), l.delta, 1, net.delta, 1)
