"""[route] and [shortcut]: parsing, forward/backward against numpy, gradients, golden dumps."""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import GOLDEN, assert_gradient, layer_section, rng_for
from darkpy.check import bitwise_equal
from darkpy.description import load
from darkpy.dump import read_case
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels.activations import LEAKY, LINEAR
from darkpy.layer import Layer
from darkpy.layers import route, shortcut
from darkpy.network import SizeParams


def section(text, index=3):
    """The layer section of a cfg snippet, numbered as layer ``index`` (after the stand-ins)."""
    return layer_section(text, index)


def image_layer(batch, c, h, w, rng=None):
    """A stand-in earlier layer: an image output and a delta (random when ``rng`` is given)."""
    n = batch * c * h * w
    l = Layer("convolutional", batch=batch, out_c=c, out_h=h, out_w=w, outputs=c * h * w)
    l.output = (rng.standard_normal(n) if rng is not None else np.zeros(n)).astype(np.float32)
    l.delta = (rng.standard_normal(n) if rng is not None else np.zeros(n)).astype(np.float32)
    return l


def params_for(layers, index=None):
    last = layers[-1]
    return SizeParams(batch=last.batch, inputs=last.outputs, h=last.out_h, w=last.out_w, c=last.out_c,
                      index=len(layers) if index is None else index, time_steps=1,
                      net=SimpleNamespace(layers=list(layers)))


# --------------------------------------------------------------------- route

def test_parse_route_relative_and_absolute():
    rng = rng_for("route-parse")
    layers = [image_layer(2, 3, 4, 4, rng), image_layer(2, 5, 2, 2, rng), image_layer(2, 4, 4, 4, rng)]
    l = route.parse(section("[route]\nlayers = -1, 0\n"), params_for(layers))
    assert list(l.input_layers) == [2, 0] and list(l.input_sizes) == [64, 48]
    assert (l.out_w, l.out_h, l.out_c, l.outputs, l.inputs, l.n) == (4, 4, 7, 112, 112, 2)
    assert l.output.size == l.delta.size == 224 and l.update is None
    l = route.parse(section("[route]\nlayers=-2\n"), params_for(layers))
    assert list(l.input_layers) == [1] and (l.out_c, l.out_h, l.outputs) == (5, 2, 20)


@pytest.mark.parametrize("text, error", [
    ("[route]\n", CfgError), ("[route]\nlayers=-4\n", CfgError), ("[route]\nlayers=3\n", CfgError),
    ("[route]\nlayers=1,x\n", CfgError), ("[route]\nlayers=-1,1\n", ShapeError)])
def test_parse_route_refuses(text, error):
    layers = [image_layer(1, 3, 4, 4), image_layer(1, 5, 2, 2), image_layer(1, 4, 4, 4)]
    with pytest.raises(error) as e:
        route.parse(section(text), params_for(layers))
    assert e.value.layer == 3


def np_route(outputs, batch):
    return np.concatenate([o.reshape(batch, -1) for o in outputs], axis=1).ravel()


def test_route_against_numpy(impl):
    rng = rng_for("route")
    batch = 3
    layers = [image_layer(batch, 3, 4, 4, rng), image_layer(batch, 2, 4, 4, rng),
              image_layer(batch, 5, 4, 4, rng)]
    l = route.parse(section("[route]\nlayers=2,0,-2\n"), params_for(layers))
    net = SimpleNamespace(layers=layers, input=layers[-1].output, delta=layers[-1].delta, index=3)
    l.forward(l, net)
    assert bitwise_equal(l.output, np_route([layers[2].output, layers[0].output, layers[1].output], batch))

    l.delta[:] = rng.standard_normal(l.delta.size).astype(np.float32)
    l.delta[::7] = -0.0                      # 0 + -0 gives +0 in C's axpy
    before = [x.delta.copy() for x in layers]
    l.backward(l, net)
    D = l.delta.reshape(batch, -1)
    offsets = {2: (0, 80), 0: (80, 128), 1: (128, 160)}
    for k, (a, b) in offsets.items():
        expected = (before[k].reshape(batch, -1) + D[:, a:b]).ravel()
        assert bitwise_equal(layers[k].delta, expected)


def test_route_gradient():
    rng = rng_for("route-grad")
    batch = 2
    layers = [image_layer(batch, 2, 3, 3, rng), image_layer(batch, 1, 3, 3, rng)]
    for x in layers:
        x.delta[:] = 0
    l = route.parse(section("[route]\nlayers=-1,-2\n"), params_for(layers))
    g = rng.standard_normal(l.outputs * batch).astype(np.float32)
    l.delta[:] = g
    l.backward(l, SimpleNamespace(layers=layers, delta=None, index=2))
    x = np.concatenate([layers[1].output, layers[0].output])
    n1 = layers[1].output.size

    def f(v):
        return np_route([v[:n1], v[n1:]], batch)
    assert_gradient(f, x, g, np.concatenate([layers[1].delta, layers[0].delta]))


# --------------------------------------------------------------------- shortcut

def test_parse_shortcut():
    layers = [image_layer(2, 3, 8, 8), image_layer(2, 6, 4, 4), image_layer(2, 4, 4, 4)]
    s = shortcut.parse(section("[shortcut]\nfrom=-3\n"), params_for(layers))
    assert (s.index, s.w, s.h, s.c, s.out_w, s.out_h, s.out_c) == (0, 8, 8, 3, 4, 4, 4)
    assert (s.outputs, s.inputs, s.activation, s.alpha, s.beta) == (64, 64, LINEAR, 1, 1)
    assert s.alpha.dtype == np.float32 and s.update is None
    s = shortcut.parse(section("[shortcut]\nfrom=1\nactivation=leaky\nalpha=.5\nbeta=2\n"),
                       params_for(layers))
    assert (s.index, s.activation, s.alpha, s.beta) == (1, LEAKY, np.float32(.5), 2)


@pytest.mark.parametrize("text, error", [
    ("[shortcut]\n", CfgError), ("[shortcut]\nfrom=-4\n", CfgError), ("[shortcut]\nfrom=3\n", CfgError),
    ("[shortcut]\nfrom=0\n", ShapeError)])
def test_parse_shortcut_refuses(text, error):
    layers = [image_layer(1, 3, 8, 4), image_layer(1, 6, 4, 4), image_layer(1, 4, 4, 4)]
    with pytest.raises(error) as e:
        shortcut.parse(section(text), params_for(layers))
    assert e.value.layer == 3


def np_shortcut(x, add, batch, w1, h1, c1, w2, h2, c2, s1, s2):
    """out = s1*x + s2*add on the common grid: ``add`` (w1,h1,c1) strided, ``x`` (w2,h2,c2) sampled."""
    stride = max(w1 // w2, 1)
    sample = max(w2 // w1, 1)
    minw, minh, minc = min(w1, w2), min(h1, h2), min(c1, c2)
    out = x.reshape(batch, c2, h2, w2).copy()
    A = add.reshape(batch, c1, h1, w1)[:, :minc, :minh * stride:stride, :minw * stride:stride]
    O = out[:, :minc, :minh * sample:sample, :minw * sample:sample]
    out[:, :minc, :minh * sample:sample, :minw * sample:sample] = s1 * O + s2 * A
    return out.ravel()


def leaky(x):
    """darknet's leaky: x > 0 ? x : .1*x in double, rounded to float."""
    return np.where(x > 0, x, (np.float64(.1) * x.astype(np.float64)).astype(x.dtype))


SHORTCUT_SHAPES = [  # (input c, h, w), (from c, h, w)
    ((4, 4, 4), (4, 4, 4)), ((4, 4, 4), (3, 8, 8)), ((3, 8, 8), (5, 4, 4)), ((2, 6, 6), (2, 2, 2))]


@pytest.mark.parametrize("shapes", SHORTCUT_SHAPES)
@pytest.mark.parametrize("act", ["linear", "leaky"])
def test_shortcut_against_numpy(impl, shapes, act):
    (c, h, w), (c2, h2, w2) = shapes
    batch = 2
    rng = rng_for("shortcut", shapes, act)
    frm = image_layer(batch, c2, h2, w2, rng)
    prev = image_layer(batch, c, h, w, rng)
    layers = [frm, prev]
    s = shortcut.parse(section(f"[shortcut]\nfrom=0\nactivation={act}\nalpha=0.75\nbeta=-1.5\n"),
                       params_for(layers))
    net = SimpleNamespace(layers=layers, input=prev.output, delta=prev.delta.copy(), index=2, train=1)
    s.forward(s, net)
    a, b = np.float32(.75), np.float32(-1.5)
    pre = np_shortcut(prev.output, frm.output, batch, w2, h2, c2, w, h, c, a, b)
    expected = pre if act == "linear" else leaky(pre)
    assert bitwise_equal(s.output, expected)

    g = rng.standard_normal(s.delta.size).astype(np.float32)
    s.delta[:] = g
    net_delta0, from_delta0 = net.delta.copy(), frm.delta.copy()
    s.backward(s, net)
    grad = g if act == "linear" else np.where(s.output > 0, g, g * np.float32(.1))
    assert bitwise_equal(s.delta, grad)
    assert bitwise_equal(net.delta, net_delta0 + a * grad)
    assert bitwise_equal(frm.delta, np_shortcut(from_delta0, grad, batch, w, h, c, w2, h2, c2,
                                                np.float32(1), b))


@pytest.mark.parametrize("shapes", SHORTCUT_SHAPES)
def test_shortcut_gradient(shapes):
    (c, h, w), (c2, h2, w2) = shapes
    batch = 1
    rng = rng_for("shortcut-grad", shapes)
    frm, prev = image_layer(batch, c2, h2, w2, rng), image_layer(batch, c, h, w, rng)
    frm.delta[:] = 0
    layers = [frm, prev]
    # darknet's backward adds alpha*delta to every input element, but its forward scales only
    # the elements on the common grid by alpha (the others are copied): the backward is the
    # gradient only when alpha == 1 or the shapes agree, so alpha=.5 is checked on equal shapes
    alpha = .5 if (c, h, w) == (c2, h2, w2) else 1.
    s = shortcut.parse(section(f"[shortcut]\nfrom=-2\nactivation=leaky\nalpha={alpha}\nbeta=2\n"),
                       params_for(layers))
    net = SimpleNamespace(layers=layers, input=prev.output, delta=np.zeros_like(prev.output), index=2)
    s.forward(s, net)
    g = rng.standard_normal(s.delta.size).astype(np.float32)
    s.delta[:] = g
    s.backward(s, net)
    n = prev.output.size

    def f(v):
        pre = np_shortcut(v[:n], v[n:], batch, w2, h2, c2, w, h, c, alpha, 2.)
        return np.where(pre > 0, pre, .1 * pre)
    # a tiny step: leaky is piecewise linear, so only a kink within eps of a value could disturb it
    assert_gradient(f, np.concatenate([prev.output, frm.output]), g, np.concatenate([net.delta, frm.delta]),
               eps=1e-6)


def test_shortcut_refuses_overwritten_index():
    layers = [image_layer(1, 2, 2, 2), image_layer(1, 2, 2, 2)]
    s = shortcut.parse(section("[shortcut]\nfrom=-2\n"), params_for(layers))
    s.index = 2   # what a builder that overwrote l.index with the layer's own index would leave
    with pytest.raises(DarkpyError):
        s.forward(s, SimpleNamespace(layers=layers + [s], input=layers[1].output, index=2))


# --------------------------------------------------------------------- golden network dumps

def golden(case, prefix=""):
    """The cfg sections and stand-in layers (golden outputs and deltas) of a golden network case."""
    case = read_case(GOLDEN / case)
    layers = []
    for i in range(case.params["layers"]):
        name = f"{prefix}layer{i:02d}_output"
        b, c, h, w = case.entry(name).shape
        l = Layer("stand-in", batch=b, out_c=c, out_h=h, out_w=w, outputs=c * h * w)
        l.output = case.flat(name)
        l.delta = np.zeros_like(l.output)
        layers.append(l)
    return load(case.path / "network.cfg").layers, layers, case.flat


ROUTES = [("net-yolo-mini", 11), ("net-yolo-mini", 14), ("net-tiny64", 13), ("net-tiny64", 16)]


@pytest.mark.parametrize("prefix", ["infer_", ""])
@pytest.mark.parametrize("case, i", ROUTES)
def test_route_golden_forward(impl, case, i, prefix):
    sections, layers, get = golden(case, prefix)
    l = route.parse(sections[i], params_for(layers[:i]))
    assert (l.out_c, l.out_h, l.out_w) == (layers[i].out_c, layers[i].out_h, layers[i].out_w)
    l.forward(l, SimpleNamespace(layers=layers[:i], input=layers[i - 1].output, index=i))
    assert bitwise_equal(l.output, get(f"{prefix}layer{i:02d}_output"))


@pytest.mark.parametrize("case, i", [("net-yolo-mini", 14), ("net-tiny64", 16)])
def test_route_golden_backward(impl, case, i):
    # the route's first input is an upsample layer: its delta receives only the route's slice
    sections, layers, get = golden(case)
    l = route.parse(sections[i], params_for(layers[:i]))
    l.delta[:] = get(f"layer{i:02d}_delta")
    l.backward(l, SimpleNamespace(layers=layers[:i], delta=layers[i - 1].delta, index=i))
    assert bitwise_equal(layers[i - 1].delta, get(f"layer{i - 1:02d}_delta"))


@pytest.mark.parametrize("prefix", ["infer_", ""])
@pytest.mark.parametrize("case, i", [("net-yolo-mini", 8), ("net-tiny64", 10)])
def test_shortcut_golden_forward(impl, case, i, prefix):
    sections, layers, get = golden(case, prefix)
    s = shortcut.parse(sections[i], params_for(layers[:i]))
    s.forward(s, SimpleNamespace(layers=layers[:i], input=layers[i - 1].output, index=i))
    assert bitwise_equal(s.output, get(f"{prefix}layer{i:02d}_output"))
