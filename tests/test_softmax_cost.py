"""[softmax] and [cost]: darknet's golden classifier bit for bit, the maths of their deltas.

1. Golden net-cls-mini: layer 5 [softmax] groups=1 fed layer04_output, layer 6
   [cost] type=sse fed the softmax output: inference and training outputs,
   both deltas after the cost layer's backward, the delta the softmax passes
   back (layer04_delta) and the network cost, bitwise.
2. Independent float32 emulation of the grouped softmax with a temperature.
3. float64 central differences: softmax + cross-entropy (delta = -dL/dz at
   temperature 1; with temperature T darknet's delta lacks the 1/T), sse
   (delta = -d(cost/2)/dx: half the gradient of the reported cost), L1, and
   smooth (darknet's delta points *up* the loss outside |diff| < 1).
4. Options: groups, noloss, no truth, masked, scale, unknown type, tree.
"""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import GOLDEN, central_gradient, emulated_softmax, layer_section
from darkpy.check import bitwise_equal
from darkpy.description import parse_cfg_text
from darkpy.dump import read_case
from darkpy.errors import CfgError, ShapeError
from darkpy.layers import cost, softmax
from darkpy.network import SizeParams, calc_network_cost
from darkpy.tree import parse_tree_text

f32 = np.float32


def params(batch, inputs):
    return SizeParams(batch, inputs, 1, 1, inputs, 0, 1, None)


def make_net(input=None, truth=None, delta=None, train=1):
    return SimpleNamespace(input=input, truth=truth, delta=delta, train=train, index=0)


# ----------------------------------------------------------------------------- golden

def test_golden_classifier_softmax_and_cost_bitwise(impl):
    case = read_case(GOLDEN / "net-cls-mini")
    desc = parse_cfg_text((GOLDEN / "net-cls-mini" / "network.cfg").read_text())
    ls = softmax.parse(desc.layers[5], SizeParams(2, 10, 1, 1, 10, 5, 1, None))
    lc = cost.parse(desc.layers[6], SizeParams(2, 10, 1, 1, 10, 6, 1, None))
    truth = case.flat("truth")
    for prefix in ("infer_", ""):
        # darknet's forward_network zeroes each delta, runs the layer, feeds its output on
        for l in (ls, lc):
            l.delta[:] = 0
        net = make_net(case.flat(f"{prefix}layer04_output"), truth, train=int(prefix == ""))
        ls.forward(ls, net)
        net.input = ls.output
        lc.forward(lc, net)
        assert bitwise_equal(ls.output, case.flat(f"{prefix}layer05_output"))
        assert bitwise_equal(lc.output, case.flat(f"{prefix}layer06_output"))
    net = SimpleNamespace(layers=[ls, lc], cost=np.zeros(1, np.float32))
    calc_network_cost(net)
    assert bitwise_equal(net.cost, case.flat("cost"))
    # backward_network: the cost layer adds scale*delta into the softmax's delta,
    # the softmax adds its delta into the (zeroed) delta of layer 4
    lc.backward(lc, make_net(delta=ls.delta))
    prev_delta = np.zeros(20, np.float32)
    ls.backward(ls, make_net(delta=prev_delta))
    assert bitwise_equal(lc.delta, case.flat("layer06_delta"))
    assert bitwise_equal(ls.delta, case.flat("layer05_delta"))
    assert bitwise_equal(prev_delta, case.flat("layer04_delta"))


# ----------------------------------------------------------------------------- softmax


def test_grouped_softmax_with_temperature_bitwise(impl):
    l = softmax.parse(layer_section("[softmax]\ngroups=3\ntemperature=.7\n"), params(2, 12))
    x = np.random.default_rng(0).standard_normal(24).astype(np.float32) * 3
    l.forward(l, make_net(x, None))
    expected = np.concatenate([emulated_softmax(x[g * 4:g * 4 + 4], f32(.7)) for g in range(6)])
    assert bitwise_equal(l.output, expected)
    assert not l.delta.any() and l.cost[0] == 0  # no truth: no cross-entropy


def test_softmax_cross_entropy_delta_is_negative_gradient():
    l = softmax.parse(layer_section("[softmax]\ngroups=2\n"), params(2, 8))
    rng = np.random.default_rng(1)
    z = rng.standard_normal(16).astype(np.float32)
    truth = np.zeros(16, np.float32)
    truth[[1, 6, 8, 15]] = 1  # one class per group and image
    l.forward(l, make_net(z, truth))

    def loss(zz):
        total = 0.0
        for s in range(4):
            g = zz[s * 4:s * 4 + 4]
            logp = g - g.max() - math.log(np.exp(g - g.max()).sum())
            total -= float(truth[s * 4:s * 4 + 4] @ logp)
        return total

    z64 = z.astype(np.float64)
    grad = np.array([(loss(z64 + e) - loss(z64 - e)) / 2e-6 for e in np.eye(16) * 1e-6])
    np.testing.assert_allclose(l.delta, -grad, rtol=1e-5, atol=1e-6)
    assert l.cost[0] == pytest.approx(loss(z64), rel=1e-5)
    assert bitwise_equal(l.delta, truth - l.output)


def test_temperature_delta_omits_one_over_t():
    """With temperature T the softmax is of z/T, so dL/dz = (p - t)/T; darknet's delta stays t - p."""
    l = softmax.parse(layer_section("[softmax]\ntemperature=2\n"), params(1, 4))
    z = np.array([.3, -1.2, 2., .5], np.float32)
    truth = np.array([0, 0, 1, 0], np.float32)
    l.forward(l, make_net(z, truth))

    def loss(zz):
        s = zz / 2.0
        return -(s[2] - s.max() - math.log(np.exp(s - s.max()).sum()))

    z64 = z.astype(np.float64)
    grad = np.array([(loss(z64 + e) - loss(z64 - e)) / 2e-6 for e in np.eye(4) * 1e-6])
    np.testing.assert_allclose(l.delta, -2.0 * grad, rtol=1e-5, atol=1e-6)


def test_softmax_options_and_errors(impl):
    with pytest.raises(ShapeError, match="groups=3"):
        softmax.parse(layer_section("[softmax]\ngroups=3\n"), params(1, 10))
    l = softmax.parse(layer_section("[softmax]\nnoloss=1\nspatial=1.7\n"), params(1, 3))
    assert (l.spatial, l.noloss, l.temperature, l.groups) == (1, 1, 1, 1)
    l.forward(l, make_net(np.zeros(3, np.float32), np.ones(3, np.float32)))
    assert not l.delta.any() and l.cost[0] == 0
    assert bitwise_equal(l.output, np.full(3, f32(1) / f32(3), np.float32))
    before = np.ones(3, np.float32)
    l.delta[:] = [1, 2, 3]
    l.backward(l, make_net(delta=before))
    assert before.tolist() == [2, 3, 4]


TREE = """root_a -1
root_b -1
a1 0
a2 0
a3 0
b1 1
b2 1
a1x 2
"""


def test_tree_groups_match_darknets_read_tree():
    t = parse_tree_text(TREE)
    assert (t.n, t.groups) == (8, 4)
    assert t.group_offset.tolist() == [0, 2, 5, 7] and t.group_size.tolist() == [2, 3, 2, 1]
    assert t.parent.tolist() == [-1, -1, 0, 0, 0, 1, 1, 2]
    assert t.group.tolist() == [0, 0, 1, 1, 1, 2, 2, 3]
    assert t.child.tolist() == [1, 2, 3, -1, -1, -1, -1, -1]
    assert t.leaf.tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(CfgError, match="parent 5"):
        parse_tree_text("a -1\nb 5\n")


def test_tree_softmax_is_one_softmax_per_sibling_group(tmp_path, impl):
    path = tmp_path / "mini.tree"
    path.write_text(TREE)
    l = softmax.parse(layer_section(f"[softmax]\ntree={path}\n"), params(2, 8))
    x = np.random.default_rng(2).standard_normal(16).astype(np.float32)
    l.forward(l, make_net(x, None))
    expected = np.concatenate([emulated_softmax(x[b * 8 + o:b * 8 + o + s], f32(1))
                               for b in range(2) for o, s in ((0, 2), (2, 3), (5, 2), (7, 1))])
    assert bitwise_equal(l.output, expected)
    with pytest.raises(CfgError, match="cannot read tree"):
        softmax.parse(layer_section("[softmax]\ntree=/nonexistent.tree\n"), params(1, 8))


# ----------------------------------------------------------------------------- cost

def run_cost(kind, x, t, scale=None):
    text = f"[cost]\ntype={kind}\n" + (f"scale={scale}\n" if scale is not None else "")
    l = cost.parse(layer_section(text), params(1, x.size))
    l.forward(l, make_net(x, t))
    return l


def test_sse_cost_and_delta(impl):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(7).astype(np.float32)
    t = rng.standard_normal(7).astype(np.float32)
    l = run_cost("sse", x, t)
    diff = t - x
    assert bitwise_equal(l.delta, diff) and bitwise_equal(l.output, diff * diff)
    assert bitwise_equal(l.cost, np.array([np.cumsum(diff * diff, dtype=np.float32)[-1]]))
    grad = central_gradient(lambda v: float(((t - v) ** 2).sum()), x)
    np.testing.assert_allclose(l.delta, -grad / 2, rtol=1e-6, atol=1e-7)  # half the cost's slope
    assert l.cost_type == cost.SSE and cost.get_cost_string(l.cost_type) == "sse"


def test_l1_and_smooth_deltas_against_their_losses(impl):
    x = np.array([.2, -1.5, 3., .9, -.1], np.float32)
    t = np.array([.5, .5, .5, .5, -.4], np.float32)
    l1 = run_cost("L1", x, t)
    grad = central_gradient(lambda v: float(np.abs(t - v).sum()), x)
    np.testing.assert_allclose(l1.delta, -grad, rtol=1e-6)
    assert bitwise_equal(l1.output, np.abs(t - x))

    sm = run_cost("smooth", x, t)
    diff = (t - x).astype(np.float64)
    inside = np.abs(diff) < 1

    def huber(v):
        d = np.abs(t - v)
        return float(np.where(d < 1, (t - v) ** 2, 2 * d - 1).sum())

    grad = central_gradient(huber, x)
    # inside |diff| < 1 the delta is diff: half the negative slope of diff^2
    np.testing.assert_allclose(sm.delta[inside], -grad[inside] / 2, rtol=1e-6)
    # outside, darknet's delta is -sign(diff): the *positive* half slope of 2|diff| - 1
    np.testing.assert_allclose(sm.delta[~inside], grad[~inside] / 2, rtol=1e-6)
    assert inside.any() and (~inside).any()
    assert sm.cost[0] == pytest.approx(huber(x.astype(np.float64)), rel=1e-6)


def test_masked_cost_overwrites_input_and_scale_in_backward(impl):
    x = np.array([1, 2, 3, 4], np.float32)
    t = np.array([0, -1234, 1, -1234], np.float32)
    l = run_cost("masked", x, t, scale=.5)
    assert x.tolist() == [1, -1234, 3, -1234]  # the previous layer's output is masked in place
    assert l.delta.tolist() == [-1, 0, -2, 0] and l.cost[0] == 5
    prev = np.ones(4, np.float32)
    l.backward(l, make_net(delta=prev))
    assert bitwise_equal(prev, np.ones(4, np.float32) + f32(.5) * l.delta)
    # no truth: nothing happens
    l2 = cost.make_cost_layer(1, 4, cost.SSE, 1)
    l2.forward(l2, make_net(x, None))
    assert not l2.output.any() and l2.cost[0] == 0


def test_cost_types_and_unknown_names():
    for name, value in (("seg", cost.SEG), ("wgan", cost.WGAN), ("L1", cost.L1)):
        assert cost.parse(layer_section(f"[cost]\ntype={name}\n"), params(1, 2)).cost_type == value
    with pytest.raises(CfgError, match="type=l1: expected one of"):  # darknet: case-sensitive, falls back to sse
        cost.parse(layer_section("[cost]\ntype=l1\n"), params(1, 2))
    s = layer_section("[cost]\nratio=.25\nnoobj=3\nthresh=.1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        l = cost.parse(s, params(2, 3))
    assert (l.ratio, l.noobject_scale, l.thresh, l.scale) == (f32(.25), 3, f32(.1), 1)
    assert l.output.shape == (6,) and l.update is None and l.cost.shape == (1,)
