"""[region] (YOLOv2) and [detection] (YOLOv1): the maths of their deltas and darknet's arithmetic.

No golden dump exercises these layers, so:

1. float64 central differences: every training delta is the negative gradient
   of the loss darknet intends, built here independently from the truth boxes
   (region: cross-entropy of the logistic x, y and objectness and of the class
   softmax, squared error of the raw w, h, the .01-weighted pull towards the
   anchors while seen < 12800; detection: squared errors of the outputs and,
   with softmax, cross-entropy of the classes);
2. the reported cost is ``|delta|^2`` (not that loss);
3. C's promotions checked bitwise on single entries (double ``1. - p``,
   double ``sqrt``, the int mask scale, the strided class softmax);
4. options and edge cases (no truth, background, coords > 4, forced, rmse
   fallback, random, tree, the empty CPU backward of region).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import bce, central_gradient, emulated_softmax, iou64, layer_section, sigmoid, squared_magnitude
from darkpy.box import box_iou, make_box
from darkpy.check import bitwise_equal
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.layers import detection, region
from darkpy.network import SizeParams

f32 = np.float32


def make_net(input=None, truth=None, train=1, seen=0, delta=None):
    return SimpleNamespace(input=input, truth=truth, train=train, seen=seen, delta=delta, index=0)


# ============================================================================ region

REGION = """[region]
anchors = 1.2,1.5, 2.6,2.2
classes=3
coords=4
num=2
softmax=1
thresh=.6
object_scale=5
noobject_scale=1
class_scale=1
coord_scale=1
"""
W = H = 3


def region_layer(extra="", batch=1, coords=4, classes=3, noobject_scale=1):
    l = region.parse(layer_section(REGION.replace("coords=4", f"coords={coords}")
                             .replace("classes=3", f"classes={classes}")
                             .replace("noobject_scale=1", f"noobject_scale={noobject_scale}") + extra),
                     SizeParams(batch, W * H * 2 * (coords + 1 + classes), H, W,
                                2 * (coords + 1 + classes), 0, 1, None))
    return l


REGION_TRUTHS = [(.45, .2, .3, .35, 1), (.8, .75, .6, .5, 2)]


def region_truth(truths, coords=4):
    t = np.zeros(30 * (coords + 1), np.float32)
    for k, box in enumerate(truths):
        t[k * (coords + 1):(k + 1) * (coords + 1)] = box
    return t


class RegionLoss:
    """darknet's region loss for one image in float64 (softmax classes, targets frozen at z)."""

    def __init__(self, z, truths, anchors, thresh, seen, bias_match, rescore, classes=3):
        size = 4 + 1 + classes
        at = lambda a, e, j, i: (a * size + e) * W * H + j * W + i  # noqa: E731
        self.terms, self.softmaxes = {}, {}
        for a in range(2):
            for j in range(H):
                for i in range(W):
                    pred = ((i + sigmoid(z[at(a, 0, j, i)])) / W, (j + sigmoid(z[at(a, 1, j, i)])) / H,
                            math.exp(z[at(a, 2, j, i)]) * anchors[a][0] / W,
                            math.exp(z[at(a, 3, j, i)]) * anchors[a][1] / H)
                    best = max([iou64(pred, t[:4]) for t in truths], default=0.0)
                    self.terms[at(a, 4, j, i)] = ("bce", 0.0, 1.0)  # noobject_scale 1
                    if best > thresh:
                        del self.terms[at(a, 4, j, i)]
                    if seen < 12800:  # the pull towards the anchor centred in the cell
                        self.terms[at(a, 0, j, i)] = ("bce", .5, .01)
                        self.terms[at(a, 1, j, i)] = ("bce", .5, .01)
                        self.terms[at(a, 2, j, i)] = ("sse", 0.0, .01)
                        self.terms[at(a, 3, j, i)] = ("sse", 0.0, .01)
        for x, y, tw, th, cls in truths:
            i, j = int(x * W), int(y * H)
            shapes = []
            for a in range(2):
                if bias_match:
                    pw, ph = anchors[a][0] / W, anchors[a][1] / H
                else:
                    pw = math.exp(z[at(a, 2, j, i)]) * anchors[a][0] / W
                    ph = math.exp(z[at(a, 3, j, i)]) * anchors[a][1] / H
                shapes.append(iou64((0, 0, pw, ph), (0, 0, tw, th)))
            a = int(np.argmax(shapes))
            scale = 2 - tw * th
            self.terms[at(a, 0, j, i)] = ("bce", x * W - i, scale)
            self.terms[at(a, 1, j, i)] = ("bce", y * H - j, scale)
            self.terms[at(a, 2, j, i)] = ("sse", math.log(tw * W / anchors[a][0]), scale)
            self.terms[at(a, 3, j, i)] = ("sse", math.log(th * H / anchors[a][1]), scale)
            target = 1.0
            if rescore:
                pred = ((i + sigmoid(z[at(a, 0, j, i)])) / W, (j + sigmoid(z[at(a, 1, j, i)])) / H,
                        math.exp(z[at(a, 2, j, i)]) * anchors[a][0] / W,
                        math.exp(z[at(a, 3, j, i)]) * anchors[a][1] / H)
                target = iou64(pred, (x, y, tw, th))
            self.terms[at(a, 4, j, i)] = ("bce", target, 5.0)  # object_scale 5
            self.softmaxes[at(a, 5, j, i)] = int(cls)

    def __call__(self, z):
        total = 0.0
        for index, (kind, target, weight) in self.terms.items():
            total += weight * (bce(target, z[index]) if kind == "bce"
                               else (target - z[index]) ** 2 / 2)
        for first, cls in self.softmaxes.items():
            logits = z[[first + k * W * H for k in range(3)]]
            total -= logits[cls] - logits.max() - math.log(np.exp(logits - logits.max()).sum())
        return total


@pytest.mark.parametrize("seen,bias_match,rescore", [(0, 1, 0), (20000, 0, 1)])
def test_region_deltas_are_the_negative_gradient(seen, bias_match, rescore):
    l = region_layer(f"bias_match={bias_match}\nrescore={rescore}\n")
    z = (np.random.default_rng(11).standard_normal(l.outputs) * .6).astype(np.float32)
    truth = region_truth(REGION_TRUTHS)
    l.forward(l, make_net(z, truth, seen=seen))
    truths = [tuple(float(v) for v in truth[5 * k:5 * k + 5]) for k in range(2)]
    loss = RegionLoss(z.astype(np.float64), truths, ((1.2, 1.5), (2.6, 2.2)), .6, seen,
                      bias_match, rescore)
    grad = central_gradient(loss, z.astype(np.float64))
    # a softmax's classes that carry no truth have no loss and no delta
    np.testing.assert_allclose(l.delta, -grad, rtol=1e-4, atol=2e-6)
    assert bitwise_equal(l.cost, [squared_magnitude(l.delta)])  # the reported cost: |delta|^2
    assert abs(l.cost[0] - loss(z.astype(np.float64))) > 1  # ... which is not the loss


def test_region_forward_softmax_and_logistic_planes(impl):
    l = region_layer(batch=2)
    z = np.random.default_rng(2).standard_normal(2 * l.outputs).astype(np.float32)
    l.forward(l, make_net(z, None, train=0))
    logistic = lambda v: np.float32(1.0 / (1.0 + np.exp(-v.astype(np.float64))))  # noqa: E731
    cells = W * H
    for b in range(2):
        for a in range(2):
            base = b * l.outputs + a * cells * 8
            for e in (0, 1, 4):
                plane = slice(base + e * cells, base + (e + 1) * cells)
                assert bitwise_equal(l.output[plane], logistic(z[plane]).astype(np.float32))
            for e in (2, 3):
                plane = slice(base + e * cells, base + (e + 1) * cells)
                assert bitwise_equal(l.output[plane], z[plane])
            for cell in range(cells):
                classes = [base + (5 + k) * cells + cell for k in range(3)]
                assert bitwise_equal(l.output[classes], emulated_softmax(z[classes]))
    assert not l.delta.any()


def test_region_no_truth_background_and_empty_backward(impl):
    l = region_layer("background=1\n", noobject_scale=.5)
    z = np.random.default_rng(4).standard_normal(l.outputs).astype(np.float32)
    l.forward(l, make_net(z, region_truth([]), seen=20000))
    expected = np.zeros(l.outputs, np.float32)
    for a in range(2):
        # background: objectness is not squashed but is the first of the classes + 1 entries
        # of each cell's softmax (read from the input); its no-object target is 1
        for cell in range(9):
            entries = [(a * 8 + 4 + k) * 9 + cell for k in range(4)]
            assert bitwise_equal(l.output[entries], emulated_softmax(z[entries]))
        plane = slice((a * 8 + 4) * 9, (a * 8 + 5) * 9)
        expected[plane] = f32(.5) * (f32(1) - l.output[plane])
    assert bitwise_equal(l.delta, expected)
    # darknet's CPU backward_region_layer does nothing
    prev = np.ones(l.outputs, np.float32)
    l.backward(l, make_net(delta=prev))
    assert (prev == 1).all()


def test_region_mask_coords_use_an_int_scale():
    l = region_layer("mask_scale=2.7\nbias_match=1\n", coords=6)
    z = np.zeros(l.outputs, np.float32)
    truth = region_truth([(.45, .2, .3, .35, .25, .75, 1)], coords=6)
    l.forward(l, make_net(z, truth, seen=20000))
    # truth cell (i, j) = (1, 0); anchor 0 (1.2x1.5 cells) is the closer shape to .9x1.05
    mask_index = region.entry_index(0, 0 * 9 + 0 * 3 + 1, 4, 3, 3, 6, 3, l.outputs)
    # darknet reads the mask targets from truth + 5 (the 6th value onwards) and scales by (int)2.7
    assert l.delta[mask_index] == f32(2) * (f32(.75) - f32(0))
    assert l.delta[mask_index + 9] == f32(2) * (f32(1) - f32(0))


def test_region_parse_errors(tmp_path):
    with pytest.raises(ShapeError, match="filters=16"):
        region.parse(layer_section(REGION), SizeParams(1, 9 * 17, 3, 3, 17, 0, 1, None))
    with pytest.raises(CfgError, match="tree="):
        region.parse(layer_section(REGION + "tree=data/9k.tree\n"), SizeParams(1, 9 * 16, 3, 3, 16, 0, 1, None))
    with pytest.raises(CfgError, match="anchor values"):
        region.parse(layer_section(REGION.replace("2.6,2.2", "2.6,2.2,5")),
                     SizeParams(1, 9 * 16, 3, 3, 16, 0, 1, None))
    l = region_layer()
    assert (l.truths, l.max_boxes, l.thresh, l.object_scale, l.mask_scale) == (150, 30, f32(.6), 5, 1)
    assert l.biases.tolist() == [f32(1.2), f32(1.5), f32(2.6), f32(2.2)]
    truth = region_truth([(.5, 9.5, .3, .3, 0)])  # j = 28: outside the buffer
    with pytest.raises(DarkpyError, match="outside"):
        l.forward(l, make_net(np.zeros(l.outputs, np.float32), truth))


# ============================================================================ detection

DETECTION = """[detection]
classes=3
coords=4
rescore={rescore}
side=2
num=2
softmax={softmax}
sqrt={sqrt}
object_scale=1.5
noobject_scale=.5
class_scale=1.25
coord_scale=5
"""
SIDE, NUM, CLASSES = 2, 2, 3
LOC = SIDE * SIDE


def detection_layer(rescore=0, softmax=0, sqrt=0, extra="", batch=1):
    text = DETECTION.format(rescore=rescore, softmax=softmax, sqrt=sqrt) + extra
    inputs = LOC * (5 * NUM + CLASSES)
    return detection.parse(layer_section(text), SizeParams(batch, inputs, 1, 1, inputs, 0, 1, None))


def detection_truth(objects):
    """{location: (class, x, y, w, h)} in darknet's layout: is_obj, one-hot classes, box."""
    t = np.zeros(LOC * (1 + 4 + CLASSES), np.float32)
    for loc, (cls, x, y, w, h) in objects.items():
        base = loc * (1 + 4 + CLASSES)
        t[base] = 1
        t[base + 1 + cls] = 1
        t[base + 1 + CLASSES:base + 5 + CLASSES] = (x, y, w, h)
    return t


OBJECTS = {1: (2, .4, .6, .5, .45), 2: (0, .7, .2, .3, .6)}


def detection_loss(out, objects, sqrt, softmax, z=None):
    """darknet's YOLOv1 loss in float64 on the layer's outputs (classes' logits ``z`` with softmax)."""
    boxes0 = LOC * (CLASSES + NUM)

    def responsible(loc, truth_box):
        best, best_iou, best_rmse = -1, 0.0, 20.0
        for j in range(NUM):
            b = out[boxes0 + (loc * NUM + j) * 4:][:4].copy()
            b[0] /= SIDE
            b[1] /= SIDE
            if sqrt:
                b[2], b[3] = b[2] ** 2, b[3] ** 2
            iou = iou64(b, truth_box)
            rmse = math.sqrt(sum((b[k] - truth_box[k]) ** 2 for k in range(4)))
            if best_iou > 0 or iou > 0:
                if iou > best_iou:
                    best, best_iou = j, iou
            elif rmse < best_rmse:
                best, best_rmse = j, rmse
        return best

    choice = {loc: responsible(loc, (x / SIDE, y / SIDE, w, h))
              for loc, (_, x, y, w, h) in objects.items()}

    def loss(v):
        total = 0.0
        for loc in range(LOC):
            for j in range(NUM):
                p = v[LOC * CLASSES + loc * NUM + j]
                if loc in choice and j == choice[loc]:
                    total += 1.5 / 2 * (1 - p) ** 2
                else:
                    total += .5 / 2 * p ** 2
            if loc not in objects:
                continue
            cls, x, y, w, h = objects[loc]
            logits = v[loc * CLASSES:(loc + 1) * CLASSES]
            if softmax:
                total -= 1.25 * (logits[cls] - logits.max()
                                 - math.log(np.exp(logits - logits.max()).sum()))
            else:
                total += 1.25 / 2 * sum((float(k == cls) - logits[k]) ** 2 for k in range(CLASSES))
            b = boxes0 + (loc * NUM + choice[loc]) * 4
            targets = (x, y, math.sqrt(w), math.sqrt(h)) if sqrt else (x, y, w, h)
            total += 5 / 2 * sum((targets[k] - v[b + k]) ** 2 for k in range(4))
        return total

    return loss, choice


@pytest.mark.parametrize("softmax,sqrt", [(0, 0), (1, 1)])
def test_detection_deltas_are_the_negative_gradient(softmax, sqrt):
    l = detection_layer(softmax=softmax, sqrt=sqrt)
    rng = np.random.default_rng(5)
    z = rng.uniform(.1, .9, l.outputs).astype(np.float32)
    truth = detection_truth(OBJECTS)
    objects = {loc: tuple(float(v) for v in (cls, *(f32(c) for c in box)))
               for loc, (cls, *box) in OBJECTS.items()}
    objects = {loc: (int(v[0]), *v[1:]) for loc, v in objects.items()}
    l.forward(l, make_net(z.copy(), truth))
    # the loss is a function of the outputs, except the classes' logits under softmax
    loss, choice = detection_loss(l.output.astype(np.float64), objects, sqrt, softmax)
    point = l.output.astype(np.float64)
    if softmax:
        point[:LOC * CLASSES] = z[:LOC * CLASSES]
    grad = central_gradient(loss, point)
    np.testing.assert_allclose(l.delta, -grad, rtol=1e-5, atol=1e-6)
    assert set(choice.values()) <= {0, 1}
    assert bitwise_equal(l.cost, [squared_magnitude(l.delta)])


def test_detection_double_promotions_bitwise(impl):
    l = detection_layer(sqrt=1)
    z = np.random.default_rng(6).uniform(.1, .9, l.outputs).astype(np.float32)
    truth = detection_truth({3: (1, .3, .8, .2, .7)})
    l.forward(l, make_net(z, truth))
    boxes0 = LOC * (CLASSES + NUM)
    j = next(k for k in range(NUM) if l.delta[boxes0 + (3 * NUM + k) * 4] != 0)
    p_index = LOC * CLASSES + 3 * NUM + j
    b = boxes0 + (3 * NUM + j) * 4
    # object_scale * (1. - p): double
    assert bitwise_equal(l.delta[p_index], f32(float(f32(1.5)) * (1.0 - float(z[p_index]))))
    # coord_scale * (sqrt(t) - p): double; x and y stay float
    assert bitwise_equal(l.delta[b + 2], f32(5.0 * (math.sqrt(float(f32(.2))) - float(z[b + 2]))))
    assert bitwise_equal(l.delta[b], f32(5) * (f32(.3) - z[b]))
    # the other confidences: noobject_scale * (0 - p), float
    others = [LOC * CLASSES + k for k in range(LOC * NUM) if LOC * CLASSES + k != p_index]
    assert bitwise_equal(l.delta[others], f32(.5) * (f32(0) - z[others]))


def test_detection_softmax_in_place_and_backward(impl):
    l = detection_layer(softmax=1, batch=2)
    z = np.random.default_rng(7).standard_normal(2 * l.outputs).astype(np.float32)
    l.forward(l, make_net(z, None, train=0))
    for b in range(2):
        for loc in range(LOC):
            cls = slice(b * l.inputs + loc * CLASSES, b * l.inputs + (loc + 1) * CLASSES)
            assert bitwise_equal(l.output[cls], emulated_softmax(z[cls]))
    rest = np.r_[LOC * CLASSES:l.inputs, l.inputs + LOC * CLASSES:2 * l.inputs]
    assert bitwise_equal(l.output[rest], z[rest])
    prev = np.ones(2 * l.outputs, np.float32)
    l.delta[:] = np.arange(2 * l.outputs, dtype=np.float32)
    l.backward(l, make_net(delta=prev))
    assert bitwise_equal(prev, np.ones(2 * l.outputs, np.float32) + l.delta)


def test_detection_rmse_fallback_forced_and_rescore():
    boxes0 = LOC * (CLASSES + NUM)
    z = np.full(detection_layer().outputs, .5, np.float32)
    # two predicted boxes far from the truth (IoU 0): the smaller box_rmse wins
    z[boxes0 + 0 * 4:boxes0 + 1 * 4] = (0, 0, .01, .01)
    z[boxes0 + 1 * 4:boxes0 + 2 * 4] = (1.5, 1.5, .05, .05)
    truth = detection_truth({0: (0, 1.2, 1.2, .1, .1)})  # centre (.6, .6) in the image
    l = detection_layer()
    l.forward(l, make_net(z.copy(), truth))
    assert l.delta[LOC * CLASSES + 1] == f32(f32(1.5) * (1.0 - .5))  # box 1: closer by rmse
    # forced: a truth of area < .1 goes to box 1, whatever the IoUs
    z[boxes0:boxes0 + 4] = (1.2, 1.2, .1, .1)  # box 0 now matches the truth exactly
    l = detection_layer(extra="forced=1\n")
    l.forward(l, make_net(z.copy(), truth))
    assert l.delta[LOC * CLASSES + 1] == f32(.75) and l.delta[LOC * CLASSES] == -.25
    # rescore: the confidence target is the float IoU (box 0 matches the truth: about 1)
    l = detection_layer(rescore=1)
    l.forward(l, make_net(z.copy(), truth))
    same = make_box(f32(1.2) / f32(2), f32(1.2) / f32(2), .1, .1)
    assert abs(box_iou(same, same) - 1) < 1e-6
    assert l.delta[LOC * CLASSES] == f32(1.5) * (f32(box_iou(same, same)) - f32(.5))


def test_detection_errors():
    with pytest.raises(ShapeError, match="side=2"):
        detection.parse(layer_section(DETECTION.format(rescore=0, softmax=0, sqrt=0)),
                        SizeParams(1, 51, 1, 1, 51, 0, 1, None))
    l = detection_layer(extra="random=1\n")
    truth = detection_truth(OBJECTS)
    with pytest.raises(DarkpyError, match="rand"):
        l.forward(l, make_net(np.zeros(l.outputs, np.float32), truth, seen=0))
    l.forward(l, make_net(np.full(l.outputs, .5, np.float32), truth, seen=64000))  # past: no rand()
    assert l.cost[0] > 0
    with pytest.raises(DarkpyError, match="truth"):
        l.forward(l, make_net(np.zeros(l.outputs, np.float32), truth[:5]))
    l = detection_layer()
    assert (l.truths, l.max_boxes, l.forced, l.coord_scale) == (LOC * 8, 90, 0, 5)
