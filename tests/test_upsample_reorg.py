"""[upsample] (and its downsampling mode) and [reorg]: numpy formulations, gradients, golden dumps."""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import GOLDEN, assert_gradient, image_params, layer_section, rng_for
from darkpy.check import bitwise_equal
from darkpy.description import load
from darkpy.dump import read_case
from darkpy.errors import CfgError, ShapeError
from darkpy.layers import reorg, upsample


def randn(rng, n):
    return rng.standard_normal(n).astype(np.float32)


# --------------------------------------------------------------------- upsample

def np_upsample(x, batch, c, h, w, s, scale):
    X = x.reshape(batch, c, h, w)
    return (scale * np.repeat(np.repeat(X, s, axis=2), s, axis=3)).ravel()


def np_block_sum(acc, big, batch, c, oh, ow, s, scale):
    """``acc += scale*big`` for each pixel of its s x s block, blocks scanned row by row (as C adds)."""
    B = big[:batch * c * oh * s * ow * s].reshape(batch, c, oh * s, ow * s)
    acc = acc.reshape(batch, c, oh, ow).copy()
    for dj in range(s):
        for di in range(s):
            acc = acc + scale * B[:, :, dj::s, di::s]
    return acc.ravel()


def test_parse_upsample():
    l = upsample.parse(layer_section("[upsample]\n"), image_params(2, 3, 4, 5))
    assert (l.stride, l.reverse, l.scale, l.out_w, l.out_h, l.out_c) == (2, 0, 1, 10, 8, 3)
    assert (l.outputs, l.inputs, l.output.size, l.delta.size) == (240, 60, 480, 480)
    assert l.scale.dtype == np.float32 and l.update is None
    l = upsample.parse(layer_section("[upsample]\nstride=-2\nscale=.5\n"), image_params(2, 3, 5, 7))
    assert (l.stride, l.reverse, l.scale, l.out_w, l.out_h, l.outputs) == (2, 1, .5, 3, 2, 18)
    with pytest.raises(CfgError):
        upsample.parse(layer_section("[upsample]\nstride=0\n"), image_params(1, 3, 4, 4))
    with pytest.raises(ShapeError) as e:
        upsample.parse(layer_section("[upsample]\nstride=-8\n"), image_params(1, 3, 4, 4))
    assert e.value.layer == 1


@pytest.mark.parametrize("shape", [(2, 3, 4, 5, 2), (1, 2, 3, 3, 3), (1, 1, 1, 1, 1)])
def test_upsample_against_numpy(impl, shape):
    batch, c, h, w, s = shape
    rng = rng_for("up", shape)
    l = upsample.parse(layer_section(f"[upsample]\nstride={s}\nscale=0.7\n"), image_params(batch, c, h, w))
    scale = np.float32(.7)
    x = randn(rng, batch * c * h * w)
    net = SimpleNamespace(input=x, delta=randn(rng, x.size), train=1, index=1)
    l.output[:] = 5   # forward zero-fills first
    l.forward(l, net)
    assert bitwise_equal(l.output, np_upsample(x, batch, c, h, w, s, scale))
    l.delta[:] = randn(rng, l.delta.size)
    expected = np_block_sum(net.delta, l.delta, batch, c, h, w, s, scale)
    l.backward(l, net)
    assert bitwise_equal(net.delta, expected)


@pytest.mark.parametrize("shape", [(2, 3, 4, 6, 2), (1, 2, 5, 7, 2), (1, 1, 6, 6, 3)])
def test_downsample_against_numpy(impl, shape):
    # with a width or height that the stride does not divide, darknet reads the input as if it
    # were (out_h*stride) x (out_w*stride): the numpy formulation reads it the same way
    batch, c, h, w, s = shape
    rng = rng_for("down", shape)
    l = upsample.parse(layer_section(f"[upsample]\nstride={-s}\nscale=1.5\n"), image_params(batch, c, h, w))
    oh, ow = h // s, w // s
    scale = np.float32(1.5)
    x = randn(rng, batch * c * h * w)
    net = SimpleNamespace(input=x, delta=randn(rng, x.size), train=1, index=1)
    l.output[:] = 5
    l.forward(l, net)
    assert bitwise_equal(l.output, np_block_sum(np.zeros(l.output.size, np.float32), x, batch, c,
                                                oh, ow, s, scale))
    l.delta[:] = randn(rng, l.delta.size)
    expected = net.delta.copy()
    n = batch * c * oh * s * ow * s
    expected[:n] = np_upsample(l.delta, batch, c, oh, ow, s, scale)   # written, not added
    l.backward(l, net)
    assert bitwise_equal(net.delta, expected)


@pytest.mark.parametrize("stride", [2, 3, -2, -3])
def test_upsample_gradient(stride):
    batch, c, h, w = 2, 2, 6, 6
    rng = rng_for("up-grad", stride)
    l = upsample.parse(layer_section(f"[upsample]\nstride={stride}\nscale=0.5\n"), image_params(batch, c, h, w))
    x = randn(rng, batch * c * h * w)
    net = SimpleNamespace(input=x, delta=np.zeros_like(x), train=1, index=1)
    l.forward(l, net)
    g = randn(rng, l.delta.size)
    l.delta[:] = g
    l.backward(l, net)
    s = abs(stride)
    if stride > 0:
        def f(v):
            return np_upsample(v, batch, c, h, w, s, .5)
    else:
        def f(v):
            return np_block_sum(np.zeros(l.outputs * batch), v, batch, c, h // s, w // s, s, .5)
    assert_gradient(f, x, g, net.delta)


# --------------------------------------------------------------------- reorg

def np_space_to_depth(x, batch, c, h, w, s):
    """reorg_cpu's forward=1 map: (c, h, w) -> (c/s^2, h*s, w*s); channel k = (dy*s + dx)*c/s^2 + c2."""
    oc = c // (s * s)
    X = x.reshape(batch, s, s, oc, h, w)
    return X.transpose(0, 3, 4, 1, 5, 2).ravel()


def np_depth_from_space(x, batch, c, h, w, s):
    """reorg_cpu's forward=0 map, the inverse: (c/s^2, h*s, w*s) read back into (c, h, w)."""
    oc = c // (s * s)
    X = x.reshape(batch, oc, h, s, w, s)
    return X.transpose(0, 3, 5, 1, 2, 4).ravel()


def np_flatten(x, batch, c, spatial, forward):
    if forward:
        return x.reshape(batch, c, spatial).transpose(0, 2, 1).ravel()
    return x.reshape(batch, spatial, c).transpose(0, 2, 1).ravel()


def test_parse_reorg():
    l = reorg.parse(layer_section("[reorg]\nstride=2\n"), image_params(2, 8, 4, 6))
    assert (l.out_w, l.out_h, l.out_c, l.outputs, l.inputs, l.reverse) == (3, 2, 32, 192, 192, 0)
    l = reorg.parse(layer_section("[reorg]\nstride=2\nreverse=1\n"), image_params(2, 8, 4, 6))
    assert (l.out_w, l.out_h, l.out_c, l.outputs) == (12, 8, 2, 192)
    l = reorg.parse(layer_section("[reorg]\nextra=5\n"), image_params(2, 8, 4, 6))
    assert (l.out_w, l.out_h, l.out_c, l.outputs, l.inputs) == (0, 0, 0, 197, 192)
    assert l.output.size == l.delta.size == 394 and l.update is None
    l = reorg.parse(layer_section("[reorg]\nflatten=1\n"), image_params(2, 8, 4, 6))
    assert (l.stride, l.flatten, l.outputs) == (1, 1, 192)


@pytest.mark.parametrize("text, shape, error", [
    ("[reorg]\nstride=0\n", (8, 4, 4), CfgError), ("[reorg]\nstride=2\n", (6, 4, 4), ShapeError),
    ("[reorg]\nstride=2\n", (8, 5, 4), ShapeError), ("[reorg]\nstride=2\nreverse=1\n", (2, 4, 4), ShapeError)])
def test_parse_reorg_refuses(text, shape, error):
    with pytest.raises(error) as e:
        reorg.parse(layer_section(text), image_params(1, *shape))
    assert e.value.layer == 1


REORG_CASES = [  # option text, (c, h, w)
    ("stride=2", (8, 4, 6)), ("stride=2\nreverse=1", (8, 3, 2)), ("stride=3", (9, 3, 6)),
    ("stride=1\nflatten=1", (3, 4, 5)), ("stride=1\nflatten=1\nreverse=1", (3, 4, 5)),
    ("stride=2\nextra=7", (4, 3, 3))]


def np_reorg_forward(l, x, batch):
    c, h, w, s = l.c, l.h, l.w, l.stride
    if l.flatten:
        return np_flatten(x, batch, c, h * w, not l.reverse)
    if l.extra:
        out = np.zeros((batch, l.outputs), np.float32)
        out[:, :l.inputs] = x.reshape(batch, l.inputs)
        return out.ravel()
    if l.reverse:
        return np_space_to_depth(x, batch, c, h, w, s)
    return np_depth_from_space(x, batch, c, h, w, s)


@pytest.mark.parametrize("text, shape", REORG_CASES)
def test_reorg_against_numpy(impl, text, shape):
    batch = 2
    c, h, w = shape
    rng = rng_for("reorg", text, shape)
    l = reorg.parse(layer_section(f"[reorg]\n{text}\n"), image_params(batch, c, h, w))
    x = randn(rng, batch * c * h * w)
    net = SimpleNamespace(input=x, delta=randn(rng, x.size), train=1, index=1)
    l.forward(l, net)
    assert bitwise_equal(l.output, np_reorg_forward(l, x, batch))
    # backward writes net.delta with the inverse shuffle
    l.delta[:] = randn(rng, l.delta.size)
    l.backward(l, net)
    if l.extra:
        expected = l.delta.reshape(batch, l.outputs)[:, :l.inputs].ravel()
    elif l.flatten:
        expected = np_flatten(l.delta, batch, c, h * w, bool(l.reverse))
    elif l.reverse:
        expected = np_depth_from_space(l.delta, batch, c, h, w, l.stride)
    else:
        expected = np_space_to_depth(l.delta, batch, c, h, w, l.stride)
    assert bitwise_equal(net.delta, expected)


@pytest.mark.parametrize("text, shape", REORG_CASES)
def test_reorg_gradient(text, shape):
    batch = 1
    c, h, w = shape
    rng = rng_for("reorg-grad", text, shape)
    l = reorg.parse(layer_section(f"[reorg]\n{text}\n"), image_params(batch, c, h, w))
    x = randn(rng, batch * c * h * w)
    net = SimpleNamespace(input=x, delta=np.zeros_like(x), train=1, index=1)
    l.forward(l, net)
    g = randn(rng, l.delta.size)
    l.delta[:] = g
    l.backward(l, net)
    assert_gradient(lambda v: np_reorg_forward(l, v, batch), x, g, net.delta)


# --------------------------------------------------------------------- golden network dumps

@pytest.mark.parametrize("prefix", ["infer_", ""])
@pytest.mark.parametrize("case, i", [("net-yolo-mini", 13), ("net-tiny64", 15)])
def test_upsample_golden_forward(impl, case, i, prefix):
    case = read_case(GOLDEN / case)
    b, c, h, w = case.entry(f"{prefix}layer{i - 1:02d}_output").shape
    l = upsample.parse(load(case.path / "network.cfg").layers[i], image_params(b, c, h, w, index=i))
    x = case.flat(f"{prefix}layer{i - 1:02d}_output")
    l.forward(l, SimpleNamespace(input=x, train=int(prefix == ""), index=i))
    assert bitwise_equal(l.output, case.flat(f"{prefix}layer{i:02d}_output"))
