"""The ``[region]`` layer (YOLOv2): darknet's region_layer.c and ``parse_region`` (parser.c).

Layout as [yolo] but with ``coords`` box entries (4, or more with a mask) and
all ``n`` anchors of the layer: per image and anchor, planes x, y, w, h,
(mask...), objectness (entry ``coords``), classes (entry ``coords + 1``).

Forward (darknet's CPU code): ``output = input``; logistic on x, y; on
objectness unless ``background``; on the classes unless ``softmax`` — with
``softmax=1`` each cell's classes (plus the background entry) get a softmax
read from the *input* (``softmax_cpu`` with groups = cells, stride = cells).

Training deltas, per image:

1. every anchor of every cell: objectness ``noobject_scale * (0 - p)`` (target 1
   with ``background``), 0 where the prediction overlaps a truth with IoU >
   ``thresh``; while ``net.seen < 12800`` also box deltas of scale ``.01``
   towards the anchor's own shape centred in the cell;
2. every truth (30 per image, ``x, y, w, h, [mask...], class``, ending at the
   first ``x == 0``): in the truth's cell, the anchor whose predicted shape
   (the anchor's own shape with ``bias_match``) best matches the truth's gets
   box deltas ``coord_scale * (2 - w*h) * (target - raw)``, mask deltas
   (``coords > 4``, an *int* scale: darknet truncates ``mask_scale``),
   objectness ``object_scale * (1 - p)`` (``iou - p`` with ``rescore``, ``0 - p``
   with ``background``) and class deltas ``class_scale * ([k == class] - p_k)``.

``cost = pow(mag_array(delta), 2)``.  Backward does nothing: darknet's CPU
``backward_region_layer`` has its body commented out (its GPU twin applies the
logistic gradient and adds the delta to the previous layer), so a CPU-trained
region network passes no gradient back; darkpy mirrors the CPU build.

``tree=`` (the 9000-class hierarchy) is refused: darknet's CPU region code
takes the tree softmax with a temperature that ``parse_region`` never sets (0,
so every output is NaN) in a layout its training code does not use.
"""

import math

import numpy as np

from darkpy.box import box_iou, float_to_box
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels import family, kernel
from darkpy.kernels.reference.activations import LOGISTIC
from darkpy.layer import Layer, full, zeros
from darkpy.layers.yolo import (_CLASS_NOT_IN_MAP, _TRUTH_OUT_OF_BUFFER, _TRUTH_READ_PAST_END,
                                _cell_fits, _class_of, get_yolo_box, read_map,
                                squared_magnitude_cost, truth_error)

#: darknet's region truth layout: 30 boxes per image.
MAX_TRUTH_BOXES = 30


def parse(section, params):
    """darknet's ``parse_region``."""
    where = dict(path=section.path, line=section.line, section=section.header,
                 layer=section.index if section.index >= 0 else None)
    coords = section.find_int("coords", 4)
    classes = section.find_int("classes", 20)
    num = section.find_int("num", 1)
    if coords < 4 or classes < 0 or num < 1:
        raise CfgError(f"region: coords={coords} (at least 4), classes={classes} (not negative), "
                       f"num={num} (at least 1)", **where)
    l = make_region_layer(params.batch, params.w, params.h, num, classes, coords)
    if l.outputs != params.inputs:
        raise ShapeError(f"region: the previous layer gives {params.inputs} values per image, but "
                         f"{num} anchors x ({coords} + 1 + {classes}) x {params.h}x{params.w} = "
                         f"{l.outputs}: set filters={num * (coords + 1 + classes)} before [region]",
                         **where)
    l.log = section.find_int("log", 0)
    l.sqrt = section.find_int("sqrt", 0)
    l.softmax = section.find_int("softmax", 0)
    l.background = section.find_int("background", 0)
    l.max_boxes = section.find_int("max", 30)
    l.jitter = section.find_float("jitter", .2)
    l.rescore = section.find_int("rescore", 0)
    l.thresh = section.find_float("thresh", .5)
    l.classfix = section.find_int("classfix", 0)
    l.absolute = section.find_int("absolute", 0)
    l.random = section.find_int("random", 0)
    l.coord_scale = section.find_float("coord_scale", 1)
    l.object_scale = section.find_float("object_scale", 1)
    l.noobject_scale = section.find_float("noobject_scale", 1)
    l.mask_scale = section.find_float("mask_scale", 1)
    l.class_scale = section.find_float("class_scale", 1)
    l.bias_match = section.find_int("bias_match", 0)

    tree_file = section.find_str("tree", None)
    if tree_file is not None:
        raise CfgError(f"region: tree={tree_file!r} is not supported: darknet's CPU region layer "
                       f"takes the hierarchy softmax with an unset (zero) temperature, giving NaN "
                       f"outputs, in a layout its own training code does not use", **where)
    map_file = section.find_str("map", None)
    if map_file is not None:
        l.map = read_map(map_file, where)

    anchors = section.find_float_list("anchors", None)
    if anchors is not None:
        if len(anchors) > 2 * num:
            raise CfgError(f"region: {len(anchors)} anchor values for num={num} anchors "
                           f"(at most {2 * num}: darknet would write past its biases)", **where)
        l.biases[:len(anchors)] = np.asarray(anchors, np.float32)
    return l


def make_region_layer(batch, w, h, n, classes, coords):
    """darknet's ``make_region_layer``: biases 0.5, truths ``30 * (coords + 1)``."""
    for name, value in (("batch", batch), ("w", w), ("h", h), ("n", n)):
        if int(value) < 1:
            raise ShapeError(f"region: {name} must be at least 1, got {value}")
    l = Layer("region")
    l.n = n
    l.batch = batch
    l.h = l.out_h = h
    l.w = l.out_w = w
    l.c = l.out_c = n * (classes + coords + 1)
    l.classes = classes
    l.coords = coords
    l.cost = zeros(1, np.float32)
    l.biases = full(n * 2, .5, np.float32)
    l.bias_updates = zeros(n * 2, np.float32)
    l.outputs = h * w * n * (classes + coords + 1)
    l.inputs = l.outputs
    l.truths = MAX_TRUTH_BOXES * (coords + 1)
    l.delta = zeros(batch * l.outputs, np.float32)
    l.output = zeros(batch * l.outputs, np.float32)
    l.forward = forward
    l.backward = backward
    l.update = None
    return l


# ----------------------------------------------------------------------------- kernels

@kernel
def entry_index(batch, location, entry, w, h, coords, classes, outputs):
    """darknet's ``entry_index`` of region_layer.c, with C's truncating int division."""
    spatial = w * h
    if location >= 0:
        n = location // spatial
    else:
        n = -((-location) // spatial)
    loc = location - n * spatial
    return batch * outputs + n * spatial * (coords + classes + 1) + entry * spatial + loc


@kernel
def get_region_box(x, biases, n, index, i, j, w, h, stride):
    """darknet's ``get_region_box``: ``get_yolo_box`` with the grid size as the network size."""
    return get_yolo_box(x, biases, n, index, i, j, w, h, w, h, stride)


@kernel
def delta_region_box(truth, x, biases, n, index, i, j, w, h, delta, scale, stride):
    """darknet's ``delta_region_box``: as ``delta_yolo_box`` with the grid as the network size.

    ``tx = truth.x*w - i`` (float), ``tw = log(truth.w*w / anchor)`` (float
    quotient, double log); returns the IoU of the prediction with the truth.
    """
    pred = get_region_box(x, biases, n, index, i, j, w, h, stride)
    iou = box_iou(pred, truth)
    tx = truth[0] * np.float32(w) - np.float32(i)
    ty = truth[1] * np.float32(h) - np.float32(j)
    tw = np.float32(math.log(np.float64(truth[2] * np.float32(w) / biases[2 * n])))
    th = np.float32(math.log(np.float64(truth[3] * np.float32(h) / biases[2 * n + 1])))
    delta[index + 0 * stride] = scale * (tx - x[index + 0 * stride])
    delta[index + 1 * stride] = scale * (ty - x[index + 1 * stride])
    delta[index + 2 * stride] = scale * (tw - x[index + 2 * stride])
    delta[index + 3 * stride] = scale * (th - x[index + 3 * stride])
    return iou


@kernel
def delta_region_mask(truth, x, n, index, delta, stride, scale):
    """darknet's ``delta_region_mask``: ``scale * (truth[i] - x)`` with an *int* scale converted to float."""
    for i in range(n):
        delta[index + i * stride] = np.float32(scale) * (truth[i] - x[index + i * stride])


@kernel
def delta_region_class(output, delta, index, cls, classes, scale, stride, stats, tag):
    """darknet's ``delta_region_class`` without a tree: ``scale * ([k == class] - p_k)``.

    With ``tag`` (darknet passes ``!l.softmax``) and a delta already at the first
    class entry, only the new class's entry is set.  ``stats[2]`` is avg_cat.
    """
    if delta[index] != 0 and tag:
        delta[index + stride * cls] = scale * (np.float32(1) - output[index + stride * cls])
        return
    for n in range(classes):
        target = np.float32(1) if n == cls else np.float32(0)
        delta[index + stride * n] = scale * (target - output[index + stride * n])
        if n == cls:
            stats[2] += output[index + stride * n]


@kernel
def region_training_deltas(output, delta, truth, biases, cmap, has_map, batch, w, h, n, classes,
                           coords, outputs, truths, seen, thresh, coord_scale, object_scale,
                           noobject_scale, class_scale, mask_scale, bias_match, rescore,
                           background, softmax, stats):
    """The training part of darknet's ``forward_region_layer`` (no tree); returns a status.

    ``stats``: avg_iou, recall, avg_cat, avg_obj, avg_anyobj, count, class_count,
    then image and truth of a failure.
    """
    size = output.shape[0]
    stride = w * h
    prior_scale = np.float32(.01)
    for b in range(batch):
        for j in range(h):
            for i in range(w):
                for a in range(n):
                    box_index = entry_index(b, a * w * h + j * w + i, 0, w, h, coords, classes,
                                            outputs)
                    pred = get_region_box(output, biases, a, box_index, i, j, w, h, stride)
                    best_iou = np.float32(0)
                    for t in range(MAX_TRUTH_BOXES):
                        at = t * (coords + 1) + b * truths
                        if at + coords >= truth.shape[0]:
                            stats[7] = b
                            stats[8] = t
                            return _TRUTH_READ_PAST_END
                        tbox = float_to_box(truth[at:], 1)
                        if tbox[0] == 0:
                            break
                        iou = box_iou(pred, tbox)
                        if iou > best_iou:
                            best_iou = iou
                    obj_index = entry_index(b, a * w * h + j * w + i, coords, w, h, coords,
                                            classes, outputs)
                    stats[4] += output[obj_index]
                    delta[obj_index] = noobject_scale * (np.float32(0) - output[obj_index])
                    if background:
                        delta[obj_index] = noobject_scale * (np.float32(1) - output[obj_index])
                    if best_iou > thresh:
                        delta[obj_index] = np.float32(0)
                    if seen < 12800:
                        # the anchor's own shape centred in the cell: (i + .5)/w is double
                        prior = (np.float32((i + 0.5) / w), np.float32((j + 0.5) / h),
                                 biases[2 * a] / np.float32(w), biases[2 * a + 1] / np.float32(h))
                        delta_region_box(prior, output, biases, a, box_index, i, j, w, h, delta,
                                         prior_scale, stride)
        for t in range(MAX_TRUTH_BOXES):
            at = t * (coords + 1) + b * truths
            if at + coords >= truth.shape[0]:
                stats[7] = b
                stats[8] = t
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
                stats[7] = b
                stats[8] = t
                return _TRUTH_OUT_OF_BUFFER
            i = int(fi)  # truncation toward zero, as C's float to int
            j = int(fj)
            shifted = (np.float32(0), np.float32(0), tbox[2], tbox[3])
            for a in range(n):
                box_index = entry_index(b, a * w * h + j * w + i, 0, w, h, coords, classes,
                                        outputs)
                if not _cell_fits(box_index, stride, 4, size):
                    stats[7] = b
                    stats[8] = t
                    return _TRUTH_OUT_OF_BUFFER
                pred = get_region_box(output, biases, a, box_index, i, j, w, h, stride)
                pw = pred[2]
                ph = pred[3]
                if bias_match:
                    pw = biases[2 * a] / np.float32(w)
                    ph = biases[2 * a + 1] / np.float32(h)
                iou = box_iou((np.float32(0), np.float32(0), pw, ph), shifted)
                if iou > best_iou:
                    best_iou = iou
                    best_n = a
            location = best_n * w * h + j * w + i
            box_index = entry_index(b, location, 0, w, h, coords, classes, outputs)
            cls = _class_of(truth, at + coords, cmap, has_map)
            class_index = entry_index(b, location, coords + 1, w, h, coords, classes, outputs)
            if not (_cell_fits(box_index, stride, coords + 1 + classes, size)
                    and _cell_fits(class_index + stride * cls, stride, 1, size)):
                stats[7] = b
                stats[8] = t
                return _CLASS_NOT_IN_MAP if cls == -2147483648 else _TRUTH_OUT_OF_BUFFER
            scale = coord_scale * (np.float32(2) - tbox[2] * tbox[3])
            iou = delta_region_box(tbox, output, biases, best_n, box_index, i, j, w, h, delta,
                                   scale, stride)
            if coords > 4:
                mask_index = entry_index(b, location, 4, w, h, coords, classes, outputs)
                delta_region_mask(truth[at + 5:], output, coords - 4, mask_index, delta, stride,
                                  mask_scale)
            if iou > 0.5:
                stats[1] += 1
            stats[0] += iou
            obj_index = entry_index(b, location, coords, w, h, coords, classes, outputs)
            stats[3] += output[obj_index]
            delta[obj_index] = object_scale * (np.float32(1) - output[obj_index])
            if rescore:
                delta[obj_index] = object_scale * (iou - output[obj_index])
            if background:
                delta[obj_index] = object_scale * (np.float32(0) - output[obj_index])
            delta_region_class(output, delta, class_index, cls, classes, class_scale, stride,
                               stats, not softmax)
            stats[5] += 1
            stats[6] += 1
    return 0


# ----------------------------------------------------------------------------- the layer

def forward(l, net):
    """darknet's ``forward_region_layer`` (CPU)."""
    size = l.outputs * l.batch
    l.output[:size] = net.input[:size]
    act = family("activations")
    spatial = l.w * l.h
    for b in range(l.batch):
        for n in range(l.n):
            index = entry_index(b, n * spatial, 0, l.w, l.h, l.coords, l.classes, l.outputs)
            act.activate_array(l.output[index:], 2 * spatial, LOGISTIC)
            index = entry_index(b, n * spatial, l.coords, l.w, l.h, l.coords, l.classes, l.outputs)
            if not l.background:
                act.activate_array(l.output[index:], spatial, LOGISTIC)
            index = entry_index(b, n * spatial, l.coords + 1, l.w, l.h, l.coords, l.classes,
                                l.outputs)
            if not l.softmax:
                act.activate_array(l.output[index:], l.classes * spatial, LOGISTIC)
    if l.softmax:
        index = entry_index(0, 0, l.coords + (0 if l.background else 1), l.w, l.h, l.coords,
                            l.classes, l.outputs)
        family("blas").softmax_cpu(net.input[index:], l.classes + l.background, l.batch * l.n,
                                   l.inputs // l.n, spatial, 1, spatial, np.float32(1), l.output[index:])

    l.delta[:size] = 0
    if not net.train:
        return
    if net.truth is None:
        raise DarkpyError("region: training needs net.truth (boxes x, y, w, h, class per image)")
    l.cost[0] = 0
    stats = np.zeros(9, np.float32)
    has_map = l.map is not None
    cmap = l.map if has_map else np.zeros(1, np.int32)
    status = region_training_deltas(
        l.output, l.delta, net.truth, l.biases, cmap, has_map, l.batch, l.w, l.h, l.n, l.classes,
        l.coords, l.outputs, l.truths, int(net.seen), np.float32(l.thresh),
        np.float32(l.coord_scale), np.float32(l.object_scale), np.float32(l.noobject_scale),
        np.float32(l.class_scale), int(l.mask_scale), bool(l.bias_match), bool(l.rescore),
        bool(l.background), bool(l.softmax), stats)
    if status:
        raise truth_error(l, status, int(stats[7]), int(stats[8]), net.truth)
    l.cost[0] = squared_magnitude_cost(l.delta, size)


def backward(l, net):
    """darknet's CPU ``backward_region_layer``: an empty body (see the module docstring)."""
    return None
