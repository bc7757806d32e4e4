"""The ``[yolo]`` layer (YOLOv3): darknet's yolo_layer.c and ``parse_yolo`` (parser.c).

Layout.  The layer keeps the input's shape: for each image ``b`` and each of its
``n`` anchors (the ``mask`` entries) a block of ``4 + 1 + classes`` planes of
``w*h`` cells: x, y, w, h, objectness, then one plane per class.
``entry_index(l, b, location, entry)`` finds plane ``entry`` of anchor
``location // (w*h)`` at cell ``location % (w*h)``.

Forward.  ``output = input``; the logistic is applied to the x and y planes and
to objectness and the class planes (w and h stay raw: the box is
``exp(w) * anchor``).  In training, ``delta`` is filled with darknet's targets
(the layer's delta *is* the training signal; backward only adds it to the
previous layer's delta):

1. every anchor of every cell: objectness delta ``0 - p`` unless the predicted
   box overlaps some truth with IoU > ``ignore_thresh`` (then 0); above
   ``truth_thresh`` (never, at the usual 1) also box and class deltas;
2. every truth box (``x, y, w, h, class`` in ``net.truth``, 90 per image, the list
   ends at the first ``x == 0``): the best of all ``total`` anchors by IoU of
   the shapes alone; if that anchor belongs to this layer (is in ``mask``), the
   cell holding the truth's centre gets the box delta
   ``(2 - w*h) * (target - raw)`` (targets ``x*lw - i``, ``log(w*netw / anchor)``),
   objectness delta ``1 - p`` and class deltas ``[class == k] - p_k``.

``l.cost = pow(mag_array(delta), 2)``: the squared norm of the delta.  Note that
this is *not* the loss whose negative gradient the deltas are: the x, y,
objectness and class deltas are the negative gradients of cross-entropy terms
(taken with respect to the logits), the w, h deltas of ``scale/2 * (t - raw)^2``.

C promotions copied: the box's ``w``/``h`` use double ``exp`` times the anchor
over the network size (all double, rounded to float on assignment), the
targets ``tw``/``th`` a double ``log`` of a float quotient; everything else is
float.  Truth boxes whose cell falls outside this layer's buffer (where
darknet would write out of bounds) raise ``DarkpyError``; a truth just past
the grid's edge lands, as in darknet, in the next cell of the flat buffer.
"""

import logging
import math
import re

import numpy as np

from darkpy.box import box_iou, float_to_box
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels import family, kernel
from darkpy.kernels.reference.activations import LOGISTIC
from darkpy.layer import Layer, full, zeros

log = logging.getLogger(__name__)

_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")

#: darknet's fixed truth layout: 90 boxes of (x, y, w, h, class) per image (``l.truths``).
MAX_TRUTH_BOXES = 90

# Status codes of the training kernels (0: fine).
_TRUTH_OUT_OF_BUFFER = 1   # a truth's cell or class index lies outside the layer's buffer
_TRUTH_READ_PAST_END = 2   # max > 90 reads past the end of net.truth for the last image
_CLASS_NOT_IN_MAP = 3      # a class id outside the map= file


# ----------------------------------------------------------------------------- parsing

def parse(section, params):
    """darknet's ``parse_yolo``: classes, num, mask, max, jitter, thresholds, random, map, anchors."""
    classes = section.find_int("classes", 20)
    total = section.find_int("num", 1)
    mask = section.find_int_list("mask", None)
    where = dict(path=section.path, line=section.line, section=section.header,
                 layer=section.index if section.index >= 0 else None)
    if total < 1:
        raise CfgError(f"yolo: num={total}: need at least one anchor", **where)
    if classes < 0:
        raise CfgError(f"yolo: classes={classes} must not be negative", **where)
    if mask is not None:
        bad = [m for m in mask if not 0 <= m < total]
        if bad:
            raise CfgError(f"yolo: mask entries {bad} are not anchors of num={total} "
                           f"(darknet would read past its biases)", **where)
    n = total if mask is None else len(mask)
    l = make_yolo_layer(params.batch, params.w, params.h, n, total, mask, classes)
    if l.outputs != params.inputs:
        raise ShapeError(f"yolo: the previous layer gives {params.inputs} values per image, "
                         f"but {n} anchors x (4 + 1 + {classes}) x {params.h}x{params.w} "
                         f"= {l.outputs}: set filters={n * (4 + 1 + classes)} before [yolo]",
                         **where)

    l.max_boxes = section.find_int("max", MAX_TRUTH_BOXES)
    l.jitter = section.find_float("jitter", .2)
    l.ignore_thresh = section.find_float("ignore_thresh", .5)
    l.truth_thresh = section.find_float("truth_thresh", 1)
    l.random = section.find_int("random", 0)

    map_file = section.find_str("map", None)
    if map_file is not None:
        l.map = read_map(map_file, where)

    anchors = section.find_float_list("anchors", None)
    if anchors is not None:
        if len(anchors) > 2 * total:
            raise CfgError(f"yolo: {len(anchors)} anchor values for num={total} anchors "
                           f"(at most {2 * total}: darknet would write past its biases)", **where)
        l.biases[:len(anchors)] = np.asarray(anchors, np.float32)
    return l


def read_map(path, where=None):
    """darknet's ``read_map`` (utils.c): one class id per line, read with ``atoi``."""
    try:
        with open(path, "r") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise CfgError(f"cannot read map file {path!r}: {exc.strerror}", **(where or {})) from None
    values = []
    for line in lines:
        match = _ATOI.match(line)  # atoi: the leading integer after blanks, 0 when there is none
        values.append(int(match.group(1)) if match else 0)
    return np.asarray(values, np.int32)


def make_yolo_layer(batch, w, h, n, total, mask, classes):
    """darknet's ``make_yolo_layer``: ``n`` anchors of ``total``, biases 0.5, mask 0..n-1 by default."""
    for name, value in (("batch", batch), ("w", w), ("h", h), ("n", n), ("total", total)):
        if int(value) < 1:
            raise ShapeError(f"yolo: {name} must be at least 1, got {value}")
    l = Layer("yolo")
    l.n = n
    l.total = total
    l.batch = batch
    l.h = l.out_h = h
    l.w = l.out_w = w
    l.c = l.out_c = n * (classes + 4 + 1)
    l.classes = classes
    l.cost = zeros(1, np.float32)
    l.biases = full(total * 2, .5, np.float32)
    l.mask = (np.arange(n, dtype=np.int32) if mask is None
              else np.asarray(mask, np.int32))
    l.bias_updates = zeros(n * 2, np.float32)
    l.outputs = h * w * n * (classes + 4 + 1)
    l.inputs = l.outputs
    l.truths = MAX_TRUTH_BOXES * (4 + 1)
    l.max_boxes = MAX_TRUTH_BOXES
    l.delta = zeros(batch * l.outputs, np.float32)
    l.output = zeros(batch * l.outputs, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


# ----------------------------------------------------------------------------- kernels

@kernel
def mag_array(a, n):
    """darknet's ``mag_array`` (utils.c): a float sum of ``a[i]*a[i]``, then ``sqrt`` in double, as float."""
    sum = np.float32(0)
    for i in range(n):
        sum += a[i] * a[i]
    return np.float32(math.sqrt(np.float64(sum)))


@kernel
def squared_magnitude_cost(delta, n):
    """``pow(mag_array(delta, n), 2)`` rounded to the float ``*l.cost``.

    The double square of a float is exact, so ``pow(m, 2)`` is ``m*m`` in double.
    """
    m = np.float64(mag_array(delta, n))
    return np.float32(m * m)


@kernel
def entry_index(batch, location, entry, w, h, classes, outputs):
    """darknet's ``entry_index`` of yolo_layer.c, with C's int division (truncating toward zero).

    ``location`` is negative only for a truth box left of or above the grid; C's
    ``/`` and ``%`` then truncate toward zero, unlike Python's ``//``, so both are
    spelled out.
    """
    spatial = w * h
    if location >= 0:
        n = location // spatial
    else:
        n = -((-location) // spatial)
    loc = location - n * spatial
    return batch * outputs + n * spatial * (4 + classes + 1) + entry * spatial + loc


@kernel
def get_yolo_box(x, biases, n, index, i, j, lw, lh, w, h, stride):
    """darknet's ``get_yolo_box``.

    x, y: ``(i + x) / lw`` in float.  w, h: ``exp(x) * anchor / w``: C's
    ``exp`` is double, so the product and quotient are double, rounded to
    float by the assignment to the box.
    """
    bx = (np.float32(i) + x[index + 0 * stride]) / np.float32(lw)
    by = (np.float32(j) + x[index + 1 * stride]) / np.float32(lh)
    bw = np.float32(math.exp(np.float64(x[index + 2 * stride])) * np.float64(biases[2 * n])
                    / np.float64(w))
    bh = np.float32(math.exp(np.float64(x[index + 3 * stride])) * np.float64(biases[2 * n + 1])
                    / np.float64(h))
    return (bx, by, bw, bh)


@kernel
def delta_yolo_box(truth, x, biases, n, index, i, j, lw, lh, w, h, delta, scale, stride):
    """darknet's ``delta_yolo_box``: box deltas ``scale * (target - x)``; returns the IoU of the prediction.

    ``tx = truth.x*lw - i`` in float; ``tw = log(truth.w*w / anchor)``: the
    quotient is float, ``log`` double, rounded to float.
    """
    pred = get_yolo_box(x, biases, n, index, i, j, lw, lh, w, h, stride)
    iou = box_iou(pred, truth)

    tx = truth[0] * np.float32(lw) - np.float32(i)
    ty = truth[1] * np.float32(lh) - np.float32(j)
    tw = np.float32(math.log(np.float64(truth[2] * np.float32(w) / biases[2 * n])))
    th = np.float32(math.log(np.float64(truth[3] * np.float32(h) / biases[2 * n + 1])))

    delta[index + 0 * stride] = scale * (tx - x[index + 0 * stride])
    delta[index + 1 * stride] = scale * (ty - x[index + 1 * stride])
    delta[index + 2 * stride] = scale * (tw - x[index + 2 * stride])
    delta[index + 3 * stride] = scale * (th - x[index + 3 * stride])
    return iou


@kernel
def delta_yolo_class(output, delta, index, cls, classes, stride, stats, avg_cat):
    """darknet's ``delta_yolo_class``: ``[k == class] - p_k`` for every class k.

    When the first class entry already has a delta (another truth in the same
    cell did this), only the new class's entry is set to ``1 - p``.  With
    ``avg_cat`` (darknet passes a pointer or 0) ``stats[3]`` accumulates ``p_class``.
    """
    if delta[index] != 0:
        delta[index + stride * cls] = np.float32(1) - output[index + stride * cls]
        if avg_cat:
            stats[3] += output[index + stride * cls]
        return
    for n in range(classes):
        target = np.float32(1) if n == cls else np.float32(0)
        delta[index + stride * n] = target - output[index + stride * n]
        if n == cls and avg_cat:
            stats[3] += output[index + stride * n]


@kernel
def _cell_fits(index, stride, entries, size):
    """Whether ``entries`` planes ``stride`` apart from ``index`` lie inside a buffer of ``size``."""
    return index >= 0 and index + stride * (entries - 1) < size


@kernel
def _class_of(truth, at, cmap, has_map):
    """``int class = truth[at]`` (C's float to int truncation), through ``map`` when given.

    INT_MIN marks a value C cannot convert (NaN, out of int range) or a class id outside the map.
    """
    v = truth[at]
    if not (v > -2147483648.0 and v < 2147483648.0):
        return -2147483648  # NaN or out of int range: undefined in C; treated as "outside"
    cls = int(v)
    if has_map:
        if cls < 0 or cls >= cmap.shape[0]:
            return -2147483648
        cls = cmap[cls]
    return cls


@kernel
def yolo_training_deltas(output, delta, truth, biases, mask, cmap, has_map, batch, w, h, n, total,
                         classes, outputs, truths, max_boxes, netw, neth,
                         ignore_thresh, truth_thresh, stats):
    """The training part of darknet's ``forward_yolo_layer``: fills ``delta``; returns a status.

    ``stats`` receives darknet's printed statistics: avg_iou, recall, recall75,
    avg_cat, avg_obj, avg_anyobj (float sums) and count, class_count.
    Returns 0, or a ``_TRUTH_*`` code with ``stats[8]``, ``stats[9]`` = image, truth.
    """
    size = output.shape[0]
    stride = w * h
    for b in range(batch):
        for j in range(h):
            for i in range(w):
                for a in range(n):
                    box_index = entry_index(b, a * w * h + j * w + i, 0, w, h, classes, outputs)
                    pred = get_yolo_box(output, biases, mask[a], box_index, i, j, w, h,
                                        netw, neth, stride)
                    best_iou = np.float32(0)
                    best_t = 0
                    for t in range(max_boxes):
                        at = t * (4 + 1) + b * truths
                        if at + 4 >= truth.shape[0]:
                            stats[8] = b
                            stats[9] = t
                            return _TRUTH_READ_PAST_END
                        tbox = float_to_box(truth[at:], 1)
                        if tbox[0] == 0:
                            break
                        iou = box_iou(pred, tbox)
                        if iou > best_iou:
                            best_iou = iou
                            best_t = t
                    obj_index = entry_index(b, a * w * h + j * w + i, 4, w, h, classes, outputs)
                    stats[5] += output[obj_index]
                    delta[obj_index] = np.float32(0) - output[obj_index]
                    if best_iou > ignore_thresh:
                        delta[obj_index] = np.float32(0)
                    if best_iou > truth_thresh:
                        delta[obj_index] = np.float32(1) - output[obj_index]
                        at = best_t * (4 + 1) + b * truths
                        cls = _class_of(truth, at + 4, cmap, has_map)
                        class_index = entry_index(b, a * w * h + j * w + i, 4 + 1, w, h, classes,
                                                  outputs)
                        if not (_cell_fits(class_index, stride, classes, size)
                                and _cell_fits(class_index + stride * cls, stride, 1, size)):
                            stats[8] = b
                            stats[9] = best_t
                            return _CLASS_NOT_IN_MAP if cls == -2147483648 else _TRUTH_OUT_OF_BUFFER
                        delta_yolo_class(output, delta, class_index, cls, classes, stride, stats,
                                         False)
                        tbox = float_to_box(truth[at:], 1)
                        scale = np.float32(2) - tbox[2] * tbox[3]
                        delta_yolo_box(tbox, output, biases, mask[a], box_index, i, j, w, h,
                                       netw, neth, delta, scale, stride)
        for t in range(max_boxes):
            at = t * (4 + 1) + b * truths
            if at + 4 >= truth.shape[0]:
                stats[8] = b
                stats[9] = t
                return _TRUTH_READ_PAST_END
            tbox = float_to_box(truth[at:], 1)
            if tbox[0] == 0:
                break
            best_iou = np.float32(0)
            best_n = 0
            fi = tbox[0] * np.float32(w)
            fj = tbox[1] * np.float32(h)
            if not (fi > -2147483648.0 and fi < 2147483648.0
                    and fj > -2147483648.0 and fj < 2147483648.0):
                stats[8] = b
                stats[9] = t
                return _TRUTH_OUT_OF_BUFFER
            i = int(fi)  # C's float to int conversion truncates toward zero
            j = int(fj)
            shifted = (np.float32(0), np.float32(0), tbox[2], tbox[3])
            for k in range(total):
                anchor = (np.float32(0), np.float32(0),
                          biases[2 * k] / np.float32(netw), biases[2 * k + 1] / np.float32(neth))
                iou = box_iou(anchor, shifted)
                if iou > best_iou:
                    best_iou = iou
                    best_n = k
            mask_n = -1  # darknet's int_index(l.mask, best_n, l.n)
            for k in range(n):
                if mask[k] == best_n:
                    mask_n = k
                    break
            if mask_n >= 0:
                box_index = entry_index(b, mask_n * w * h + j * w + i, 0, w, h, classes, outputs)
                obj_index = entry_index(b, mask_n * w * h + j * w + i, 4, w, h, classes, outputs)
                class_index = entry_index(b, mask_n * w * h + j * w + i, 4 + 1, w, h, classes,
                                          outputs)
                cls = _class_of(truth, at + 4, cmap, has_map)
                if not (_cell_fits(box_index, stride, 4 + 1 + classes, size)
                        and _cell_fits(class_index + stride * cls, stride, 1, size)):
                    stats[8] = b
                    stats[9] = t
                    return _CLASS_NOT_IN_MAP if cls == -2147483648 else _TRUTH_OUT_OF_BUFFER
                scale = np.float32(2) - tbox[2] * tbox[3]
                iou = delta_yolo_box(tbox, output, biases, best_n, box_index, i, j, w, h,
                                     netw, neth, delta, scale, stride)
                stats[4] += output[obj_index]
                delta[obj_index] = np.float32(1) - output[obj_index]
                delta_yolo_class(output, delta, class_index, cls, classes, stride, stats, True)
                stats[6] += 1
                stats[7] += 1
                if iou > 0.5:
                    stats[1] += 1
                if iou > 0.75:
                    stats[2] += 1
                stats[0] += iou
    return 0


# ----------------------------------------------------------------------------- the layer

def _logistic_planes(l, coords):
    """The logistic of darknet's forward: x and y, then objectness and the classes, per image and anchor.

    The fast kernels take all these runs as one (parallel) job, ``activate_spans``;
    the reference makes darknet's calls one by one.  Each element is activated once
    either way, so the bits are the same.
    """
    act = family("activations")
    spatial = l.w * l.h
    starts, counts = [], []
    for b in range(l.batch):
        for n in range(l.n):
            starts.append(entry_index(b, n * spatial, 0, l.w, l.h, l.classes, l.outputs))
            counts.append(2 * spatial)
            starts.append(entry_index(b, n * spatial, coords, l.w, l.h, l.classes, l.outputs))
            counts.append((1 + l.classes) * spatial)
    act.activate_spans(l.output, np.array(starts, np.int64), np.array(counts, np.int64), LOGISTIC)


def truth_error(l, status, b, t, truth):
    """The DarkpyError for a training kernel's status code about truth ``t`` of image ``b``."""
    if status == _TRUTH_READ_PAST_END:
        return DarkpyError(f"{l.type}: max={l.max_boxes} truth boxes per image read past the end of "
                           f"net.truth ({truth.shape[0]} values) at image {b}, box {t}")
    at = t * (l.coords + 1 if l.type == "region" else 4 + 1) + b * l.truths
    values = ", ".join(f"{float(v):g}" for v in truth[at:at + 5])
    if status == _CLASS_NOT_IN_MAP:
        return DarkpyError(f"{l.type}: truth box {t} of image {b} ({values}) has a class id "
                           f"outside the map file or not an integer")
    return DarkpyError(f"{l.type}: truth box {t} of image {b} ({values}) has its centre or class "
                       f"outside this layer's {l.w}x{l.h} grid and {l.classes} classes, where "
                       f"darknet would write outside the layer's buffer")


def forward(l, net):
    """darknet's ``forward_yolo_layer``: logistic on x, y, objectness, classes; training deltas and cost."""
    size = l.outputs * l.batch
    l.output[:size] = net.input[:size]
    _logistic_planes(l, 4)

    l.delta[:size] = 0
    if not net.train:
        return
    if net.truth is None:
        raise DarkpyError("yolo: training needs net.truth (boxes x, y, w, h, class per image)")
    l.cost[0] = 0
    stats = np.zeros(10, np.float32)
    has_map = l.map is not None
    cmap = l.map if has_map else np.zeros(1, np.int32)
    status = yolo_training_deltas(l.output, l.delta, net.truth, l.biases, l.mask, cmap, has_map,
                                  l.batch, l.w, l.h, l.n, l.total, l.classes, l.outputs, l.truths,
                                  l.max_boxes, net.w, net.h, np.float32(l.ignore_thresh),
                                  np.float32(l.truth_thresh), stats)
    if status:
        raise truth_error(l, status, int(stats[8]), int(stats[9]), net.truth)
    l.cost[0] = squared_magnitude_cost(l.delta, size)
    _log_stats(l, net, stats)


def _log_stats(l, net, stats):
    """darknet's per-batch line ("Region N Avg IOU: ..."), at INFO level."""
    if not log.isEnabledFor(logging.INFO):
        return
    avg_iou, recall, recall75, avg_cat, avg_obj, avg_anyobj, count, class_count = (
        float(v) for v in stats[:8])
    with np.errstate(divide="ignore", invalid="ignore"):
        def q(a, c):
            return float(np.float64(a) / np.float64(c))
        log.info("Region %d Avg IOU: %f, Class: %f, Obj: %f, No Obj: %f, .5R: %f, .75R: %f,  count: %d",
                 net.index, q(avg_iou, count), q(avg_cat, class_count), q(avg_obj, count),
                 q(avg_anyobj, l.w * l.h * l.n * l.batch), q(recall, count), q(recall75, count),
                 int(count))


def backward(l, net):
    """darknet's ``backward_yolo_layer``: ``net.delta += delta`` (the deltas were made in forward).

    darknet has no guard for a yolo layer without a previous layer (it would
    write through a NULL pointer); here nothing is added when ``net.delta`` is None.
    """
    if net.delta is None:
        return
    family("blas").axpy_cpu(l.batch * l.inputs, np.float32(1), l.delta, 1, net.delta, 1)
