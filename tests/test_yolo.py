"""The [yolo] layer: darknet's golden dumps bit for bit, the maths of its deltas, edge cases.

1. Golden: both yolo layers of net-yolo-mini and net-tiny64, fed their golden
   input: inference and training outputs, training deltas and the network cost
   (the float mean of the two layers' costs) bitwise; backward adds the delta.
2. Gradient: each training delta is the negative gradient, with respect to
   the layer's *input* (the logits), of the loss darknet intends, built here
   independently in float64 from the truth boxes: binary cross-entropy of
   sigmoid(x), sigmoid(y) against the offsets in the cell (weight 2 - w*h),
   squared error ``(2 - w*h)/2 * (log(w*netw/anchor) - raw)^2`` for w and h,
   binary cross-entropy for objectness (target 1 at the responsible anchor, 0
   elsewhere, nothing where a prediction overlaps a truth above ignore_thresh)
   and for each class.
3. darknet's reported cost is NOT that loss: it is ``|delta|^2``; asserted.
4. Edge cases: no truth, truths past the grid, zero-area boxes (log 0, 0/0).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import GOLDEN, bce, central_gradient, iou64, layer_section, sigmoid, squared_magnitude
from darkpy.check import bitwise_equal
from darkpy.description import parse_cfg_text
from darkpy.dump import read_case
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.layers import yolo
from darkpy.network import SizeParams, calc_network_cost

f32 = np.float32


def make_net(input=None, truth=None, train=0, w=32, h=32, delta=None, index=0):
    return SimpleNamespace(input=input, truth=truth, train=train, w=w, h=h, delta=delta,
                           index=index, seen=0)


# ----------------------------------------------------------------------------- golden

YOLO_LAYERS = {"net-yolo-mini": (10, 17), "net-tiny64": (12, 19)}


def golden_yolo_layers(case_name):
    case = read_case(GOLDEN / case_name)
    desc = parse_cfg_text((GOLDEN / case_name / case.params["cfg"]).read_text())
    netw = case.params["w"]
    layers = []
    for k in YOLO_LAYERS[case_name]:
        shape = case.entry(f"layer{k - 1:02d}_output").shape
        params = SizeParams(shape[0], int(np.prod(shape[1:])), shape[2], shape[3], shape[1], k, 1,
                            None)
        layers.append((k, yolo.parse(desc.layers[k], params)))
    return case, netw, layers


@pytest.mark.parametrize("case_name", sorted(YOLO_LAYERS))
def test_golden_yolo_layers_bitwise(case_name, impl):
    case, netw, layers = golden_yolo_layers(case_name)
    for k, l in layers:
        # inference (train=0): the logistic planes only, no delta
        net = make_net(case.flat(f"infer_layer{k - 1:02d}_output"), case.flat("truth"), 0,
                       netw, netw, index=k)
        l.forward(l, net)
        assert bitwise_equal(l.output, case.flat(f"infer_layer{k:02d}_output")), k
        assert not l.delta.any()
        # training: same output, darknet's deltas
        net = make_net(case.flat(f"layer{k - 1:02d}_output"), case.flat("truth"), 1,
                       netw, netw, index=k)
        l.forward(l, net)
        assert bitwise_equal(l.output, case.flat(f"layer{k:02d}_output")), k
        assert bitwise_equal(l.delta, case.flat(f"layer{k:02d}_delta")), k
        # cost = pow(mag_array(delta), 2)
        assert bitwise_equal(l.cost, [squared_magnitude(l.delta)])
        assert l.cost[0] > 0
    # the network's cost: the float mean over the layers with a cost (the two yolo layers)
    net = SimpleNamespace(layers=[l for _, l in layers], cost=np.zeros(1, np.float32))
    calc_network_cost(net)
    assert bitwise_equal(net.cost, case.flat("cost"))


def test_backward_adds_delta_into_previous_delta(impl):
    case, netw, layers = golden_yolo_layers("net-yolo-mini")
    k, l = layers[0]
    l.forward(l, make_net(case.flat(f"layer{k - 1:02d}_output"), case.flat("truth"), 1, netw, netw))
    before = np.random.default_rng(1).standard_normal(l.outputs * l.batch).astype(np.float32)
    net_delta = before.copy()
    l.backward(l, make_net(delta=net_delta))
    assert bitwise_equal(net_delta, before + l.delta)
    l.backward(l, make_net(delta=None))  # the first layer of a network: nothing to add to


# ----------------------------------------------------------------------------- parsing

def test_parse_defaults():
    l = yolo.parse(layer_section("[yolo]\nclasses=3\nnum=2\n"), SizeParams(2, 4 * 4 * 2 * 8, 4, 4, 16, 0, 1, None))
    assert (l.n, l.total, l.classes, l.max_boxes, l.truths) == (2, 2, 3, 90, 450)
    assert list(l.mask) == [0, 1]
    assert l.biases.tolist() == [.5] * 4
    assert (l.jitter, l.ignore_thresh, l.truth_thresh, l.random) == (f32(.2), f32(.5), 1, 0)
    assert (l.out_c, l.out_h, l.out_w, l.outputs, l.inputs) == (16, 4, 4, 256, 256)
    assert l.output.shape == l.delta.shape == (512,)
    assert l.cost.tolist() == [0.0] and l.update is None


def test_parse_mask_anchors_and_errors():
    text = "[yolo]\nmask=1,2\nnum=3\nclasses=1\nanchors=1,2, 3,4, 5.5,6\nmax=7\nignore_thresh=.6\n"
    l = yolo.parse(layer_section(text), SizeParams(1, 3 * 3 * 2 * 6, 3, 3, 12, 0, 1, None))
    assert list(l.mask) == [1, 2] and l.n == 2 and l.total == 3 and l.max_boxes == 7
    assert l.biases.tolist() == [1, 2, 3, 4, 5.5, 6] and l.ignore_thresh == f32(.6)
    with pytest.raises(ShapeError, match="filters=12"):
        yolo.parse(layer_section(text), SizeParams(1, 3 * 3 * 13, 3, 3, 13, 0, 1, None))
    with pytest.raises(CfgError, match="mask entries"):
        yolo.parse(layer_section("[yolo]\nmask=0,3\nnum=3\nclasses=1\n"),
                   SizeParams(1, 3 * 3 * 12, 3, 3, 12, 0, 1, None))
    with pytest.raises(CfgError, match="anchor values"):
        yolo.parse(layer_section("[yolo]\nnum=1\nclasses=1\nanchors=1,2,3\n"),
                   SizeParams(1, 3 * 3 * 6, 3, 3, 6, 0, 1, None))


def test_map_file_renames_classes(tmp_path):
    mapping = tmp_path / "classes.map"
    mapping.write_text("1\n0\n")
    text = f"[yolo]\nnum=1\nclasses=2\nmap={mapping}\nanchors=8,8\n"
    l = yolo.parse(layer_section(text), SizeParams(1, 2 * 2 * 7, 2, 2, 7, 0, 1, None))
    assert l.map.tolist() == [1, 0]
    truth = np.zeros(450, np.float32)
    truth[:5] = [.3, .3, .25, .25, 0]  # class 0 in the data, 1 after the map
    l.forward(l, make_net(np.zeros(l.outputs, np.float32), truth, 1, 16, 16))
    cls0 = yolo.entry_index(0, 0, 5, 2, 2, 2, l.outputs)
    assert l.delta[cls0] == -0.5 and l.delta[cls0 + 4] == 0.5  # sigmoid(0) = .5
    with pytest.raises(CfgError, match="cannot read map"):
        yolo.parse(layer_section("[yolo]\nnum=1\nclasses=2\nmap=/nonexistent/map\n"),
                   SizeParams(1, 2 * 2 * 7, 2, 2, 7, 0, 1, None))


# ----------------------------------------------------------------------------- the maths


class IntendedLoss:
    """darknet's yolo loss in float64 for one image, built from the truth boxes alone.

    ``assign`` (done once at the evaluation point, like darknet's targets that do
    not move with the prediction) decides which entries have which target.
    """

    def __init__(self, z, truths, w, h, n, classes, anchors, netw, neth, ignore_thresh):
        self.w, self.h, self.n, self.classes = w, h, n, classes
        self.size = 4 + 1 + classes
        self.terms = {}  # flat index -> ("bce", target, weight) or ("sse", target, weight)
        cells = w * h
        at = lambda a, e, j, i: (a * self.size + e) * cells + j * w + i  # noqa: E731
        # 1. objectness 0 everywhere except where a prediction overlaps a truth above the threshold
        for a in range(n):
            for j in range(h):
                for i in range(w):
                    pred = ((i + sigmoid(z[at(a, 0, j, i)])) / w, (j + sigmoid(z[at(a, 1, j, i)])) / h,
                            math.exp(z[at(a, 2, j, i)]) * anchors[a][0] / netw,
                            math.exp(z[at(a, 3, j, i)]) * anchors[a][1] / neth)
                    best = max([iou64(pred, t[:4]) for t in truths], default=0.0)
                    if not best > ignore_thresh:
                        self.terms[at(a, 4, j, i)] = ("bce", 0.0, 1.0)
        # 2. each truth: the anchor of the most similar shape, in the truth's cell
        for x, y, tw, th, cls in truths:
            shape = [iou64((0, 0, aw / netw, ah / neth), (0, 0, tw, th)) for aw, ah in anchors]
            a = int(np.argmax(shape))
            i, j = int(x * w), int(y * h)
            scale = 2 - tw * th
            self.terms[at(a, 0, j, i)] = ("bce", x * w - i, scale)
            self.terms[at(a, 1, j, i)] = ("bce", y * h - j, scale)
            self.terms[at(a, 2, j, i)] = ("sse", math.log(tw * netw / anchors[a][0]), scale)
            self.terms[at(a, 3, j, i)] = ("sse", math.log(th * neth / anchors[a][1]), scale)
            self.terms[at(a, 4, j, i)] = ("bce", 1.0, 1.0)
            for k in range(classes):
                self.terms[at(a, 5 + k, j, i)] = ("bce", float(k == cls), 1.0)

    def __call__(self, z):
        total = 0.0
        for index, (kind, target, weight) in self.terms.items():
            if kind == "bce":
                total += weight * bce(target, z[index])
            else:
                total += weight / 2 * (target - z[index]) ** 2
        return total


def small_layer(w=3, h=3, classes=2, anchors=((6, 5), (14, 16)), ignore_thresh=.5):
    l = yolo.make_yolo_layer(1, w, h, len(anchors), len(anchors), None, classes)
    l.biases[:] = np.asarray(anchors, np.float32).ravel()
    l.ignore_thresh = f32(ignore_thresh)
    l.truth_thresh = f32(1)
    return l


TRUTHS = [(.45, .2, .3, .35, 1), (.8, .75, .6, .5, 0)]


@pytest.mark.parametrize("ignore_thresh", [.5, .05])
def test_deltas_are_the_negative_gradient_of_darknets_loss(ignore_thresh):
    anchors = ((6, 5), (14, 16))
    l = small_layer(anchors=anchors, ignore_thresh=ignore_thresh)
    rng = np.random.default_rng(7)
    z = (rng.standard_normal(l.outputs) * .5).astype(np.float32)
    truth = np.zeros(450, np.float32)
    truth[:10] = np.asarray(TRUTHS, np.float32).ravel()
    l.forward(l, make_net(z, truth, 1, 24, 24))

    truths = [tuple(float(v) for v in truth[5 * t:5 * t + 5]) for t in range(2)]
    loss = IntendedLoss(z.astype(np.float64), truths, 3, 3, 2, 2, anchors, 24, 24, ignore_thresh)
    grad = central_gradient(loss, z.astype(np.float64))
    np.testing.assert_allclose(l.delta, -grad, rtol=1e-4, atol=2e-6)
    ignored = sum(1 for a in range(2) for cell in range(9)
                  if (a * 7 + 4) * 9 + cell not in loss.terms)
    assert (ignored > 0) == (ignore_thresh < .5)  # the low threshold does ignore some anchors
    # every entry with a term has a delta; the others (ignored, or unassigned x/y/w/h/class) are 0
    unassigned = np.setdiff1d(np.arange(l.outputs), list(loss.terms))
    assert not l.delta[unassigned].any()


def test_reported_cost_is_the_squared_delta_norm_not_the_loss():
    """darknet reports ``cost = |delta|^2``, which is not the loss the deltas descend.

    For a w entry the delta is ``s*(t - raw)`` while the cost holds ``(s*(t - raw))^2``,
    whose negative derivative is ``2*s*delta``: not the delta unless s = 1/2.
    """
    l = small_layer()
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(l.outputs) * .5).astype(np.float32)
    truth = np.zeros(450, np.float32)
    truth[:10] = np.asarray(TRUTHS, np.float32).ravel()
    l.forward(l, make_net(z, truth, 1, 24, 24))
    assert bitwise_equal(l.cost, [squared_magnitude(l.delta)])

    # the w entry of the first truth's cell and anchor (7.2x8.4 pixels: anchor 0, 6x5, fits best)
    x, y, tw, th, _ = TRUTHS[0]
    w_index = yolo.entry_index(0, 0 * 9 + int(y * 3) * 3 + int(x * 3), 2, 3, 3, 2, l.outputs)
    scale = float(f32(2) - f32(tw) * f32(th))  # float64 from here on
    target = math.log(float(f32(tw)) * 24 / 6)
    assert l.delta[w_index] == pytest.approx(scale * (target - z[w_index]), rel=1e-6)
    cost_of_raw = lambda r: (scale * (target - r)) ** 2  # noqa: E731
    r, eps = float(z[w_index]), 1e-6
    cost_slope = -(cost_of_raw(r + eps) - cost_of_raw(r - eps)) / (2 * eps)
    assert cost_slope == pytest.approx(2 * scale * l.delta[w_index], rel=1e-5)
    assert abs(cost_slope - l.delta[w_index]) > .5 * abs(l.delta[w_index])


# ----------------------------------------------------------------------------- edge cases

def test_no_truth_boxes_only_objectness_pushed_down(impl):
    l = small_layer()
    z = np.random.default_rng(5).standard_normal(l.outputs).astype(np.float32)
    l.forward(l, make_net(z, np.zeros(450, np.float32), 1, 24, 24))
    expected = np.zeros(l.outputs, np.float32)
    for a in range(2):
        plane = slice((a * 7 + 4) * 9, (a * 7 + 5) * 9)
        expected[plane] = -l.output[plane]
    assert bitwise_equal(l.delta, expected)
    squares = np.cumsum(expected * expected, dtype=np.float32)[-1]  # C's float sum, in order
    mag = f32(math.sqrt(float(squares)))
    assert bitwise_equal(l.cost, np.array([float(mag) ** 2], np.float32))


def test_truth_list_ends_at_first_zero_x():
    l = small_layer()
    z = np.zeros(l.outputs, np.float32)
    truth = np.zeros(450, np.float32)
    truth[:5] = TRUTHS[0]
    truth[10:15] = TRUTHS[1]  # after an all-zero box: never read
    l.forward(l, make_net(z, truth, 1, 24, 24))
    only_first = l.delta.copy()
    truth[10:15] = 0
    l.forward(l, make_net(z, truth, 1, 24, 24))
    assert bitwise_equal(l.delta, only_first)


def test_truth_past_the_grid_lands_where_darknet_writes():
    """x = 1.1 on a 3-wide grid gives cell i = 3: darknet's flat index is the next row's first cell."""
    l = small_layer()
    z = np.zeros(l.outputs, np.float32)
    truth = np.zeros(450, np.float32)
    truth[:5] = (1.1, .2, .3, .35, 1)  # j = 0, i = 3 -> flat cell 3 = (row 1, column 0)
    l.forward(l, make_net(z, truth, 1, 24, 24))  # anchor 0 (6x5) fits the 7.2x8.4 box best
    obj = yolo.entry_index(0, 0 * 9 + 3, 4, 3, 3, 2, l.outputs)
    assert l.delta[obj] == 0.5  # 1 - sigmoid(0)
    # the x target there is computed with darknet's i = 3: 1.1*3 - 3
    x_index = yolo.entry_index(0, 0 * 9 + 3, 0, 3, 3, 2, l.outputs)
    scale = f32(2) - f32(.3) * f32(.35)
    assert bitwise_equal(l.delta[x_index], scale * ((f32(1.1) * f32(3) - f32(3)) - f32(.5)))


def test_truth_outside_the_buffer_raises():
    l = small_layer()
    truth = np.zeros(450, np.float32)
    truth[:5] = (.5, 7.5, .3, .35, 1)  # j = 22: far past the image's planes
    with pytest.raises(DarkpyError, match="outside this layer"):
        l.forward(l, make_net(np.zeros(l.outputs, np.float32), truth, 1, 24, 24))
    truth[:5] = (.5, .5, .3, .35, 9)  # class 9 of 2 in the last cell block: past the buffer
    with pytest.raises(DarkpyError, match="class"):
        l.forward(l, make_net(np.zeros(l.outputs, np.float32), truth, 1, 24, 24))
    with pytest.raises(DarkpyError, match="net.truth"):
        l.forward(l, make_net(np.zeros(l.outputs, np.float32), None, 1, 24, 24))


def test_zero_area_truth_gives_darknets_infinities_and_nans():
    # a zero-area truth: every anchor's shape IoU is 0, so anchor 0 is taken;
    # tw = log(0) = -inf, so the w/h deltas are -inf and the cost inf
    l = small_layer()
    z = np.zeros(l.outputs, np.float32)
    truth = np.zeros(450, np.float32)
    truth[:5] = (.5, .5, 0, 0, 0)
    l.forward(l, make_net(z, truth, 1, 24, 24))
    w_index = yolo.entry_index(0, 4, 2, 3, 3, 2, l.outputs)
    assert l.delta[w_index] == -np.inf and l.delta[w_index + 9] == -np.inf
    assert l.cost[0] == np.inf
    # zero anchors too: the shape IoU is 0/0 = NaN (never the best), tw = log(0/0) = NaN
    l.biases[:] = 0
    l.forward(l, make_net(z, truth, 1, 24, 24))
    assert np.isnan(l.delta[w_index]) and np.isnan(l.cost[0])
    assert np.isfinite(np.delete(l.delta, [w_index, w_index + 9])).all()
