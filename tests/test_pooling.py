"""[maxpool] and [avgpool]: kernels (fast == reference), layers against numpy, gradients, golden dumps."""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import GOLDEN, assert_gradient, image_params, layer_section, rng_for
from darkpy.check import bitwise_equal
from darkpy.description import load
from darkpy.dump import read_case
from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import pooling as fast
from darkpy.kernels.reference import pooling as ref
from darkpy.layers import avgpool, maxpool

FLT_MAX = np.float32(np.finfo(np.float32).max)


# --------------------------------------------------------------------- numpy formulations

def np_maxpool(x, batch, c, h, w, size, stride, pad):
    """Window maxima and the flat index of the first maximum (row-major window scan)."""
    out_h = int(np.trunc((h + pad - size) / stride)) + 1
    out_w = int(np.trunc((w + pad - size) / stride)) + 1
    off = -(pad // 2) if pad >= 0 else int(np.trunc(-pad / 2))
    X = x.reshape(batch, c, h, w)
    low = np.finfo(x.dtype).min if x.dtype == np.float64 else -FLT_MAX
    out = np.empty((batch, c, out_h, out_w), x.dtype)
    idx = np.empty((batch, c, out_h, out_w), np.int64)
    flat = np.arange(batch * c * h * w).reshape(batch, c, h, w)
    for i in range(out_h):
        for j in range(out_w):
            vals, where = [], []
            for n in range(size):
                for m in range(size):
                    r, q = off + i * stride + n, off + j * stride + m
                    if 0 <= r < h and 0 <= q < w:
                        vals.append(X[:, :, r, q])
                        where.append(flat[:, :, r, q])
                    else:
                        vals.append(np.full((batch, c), low, x.dtype))
                        where.append(np.full((batch, c), -1))
            vals, where = np.stack(vals), np.stack(where)
            first = np.argmax(vals, axis=0)
            out[:, :, i, j] = np.take_along_axis(vals, first[None], 0)[0]
            idx[:, :, i, j] = np.take_along_axis(where, first[None], 0)[0]
    return out.ravel(), idx.ravel()


def np_avgpool(x, batch, c, h, w):
    """Sequential float sums per channel (as C accumulates), divided by h*w in the same dtype."""
    X = x.reshape(batch * c, h * w)
    out = np.zeros(batch * c, x.dtype)
    for i in range(h * w):
        out = out + X[:, i]
    return out / x.dtype.type(h * w)


# --------------------------------------------------------------------- kernels: fast == reference

MAXPOOL_SHAPES = [  # batch, c, h, w, size, stride, pad
    (2, 3, 8, 8, 2, 2, 1), (1, 2, 5, 7, 2, 1, 1), (2, 2, 6, 5, 3, 2, 2), (1, 3, 7, 7, 3, 1, 0),
    (1, 1, 4, 4, 2, 2, 0), (2, 2, 5, 5, 3, 3, 5), (1, 2, 6, 6, 2, 1, -1), (1, 1, 1, 1, 1, 1, 0)]


def special_values(rng, n):
    """Random values with ties, infinities, NaN and signed zeros mixed in."""
    x = rng.integers(-3, 4, n).astype(np.float32)
    pick = rng.random(n)
    x[pick < .05] = np.inf
    x[(pick >= .05) & (pick < .1)] = -np.inf
    x[(pick >= .1) & (pick < .15)] = np.nan
    x[(pick >= .15) & (pick < .2)] = -0.0
    x[(pick >= .2) & (pick < .22)] = -FLT_MAX
    return x


@pytest.mark.parametrize("shape", MAXPOOL_SHAPES)
@pytest.mark.parametrize("values", ["normal", "special"])
def test_maxpool_fast_equals_reference(shape, values):
    batch, c, h, w, size, stride, pad = shape
    rng = rng_for("maxpool", shape, values)
    out_h = int(np.trunc((h + pad - size) / stride)) + 1
    out_w = int(np.trunc((w + pad - size) / stride)) + 1
    n_in, n_out = batch * c * h * w, batch * c * out_h * out_w
    x = rng.standard_normal(n_in).astype(np.float32) if values == "normal" else special_values(rng, n_in)
    results = []
    for k in (ref, fast):
        out = np.full(n_out, 7, np.float32)
        idx = np.full(n_out, 7, np.int32)
        k.forward_maxpool(batch, h, w, c, out_h, out_w, size, stride, pad, x, out, idx)
        d_in = rng_for("d", shape).standard_normal(n_in).astype(np.float32)
        delta = rng_for("dd", shape).standard_normal(n_out).astype(np.float32)
        k.backward_maxpool(batch, c, out_h, out_w, idx, delta, d_in)
        results.append((out, idx, d_in))
    assert bitwise_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    assert bitwise_equal(results[0][2], results[1][2])


def maxpool_all(batch, c, h, w, size, stride, pad, x):
    """(output, indexes) of the reference, the fast forward_maxpool (serial below its size
    threshold), and the fast serial and parallel kernels both window by window and separable,
    from buffers pre-filled with junk (every output must be written)."""
    out_h = int(np.trunc((h + pad - size) / stride)) + 1
    out_w = int(np.trunc((w + pad - size) / stride)) + 1
    n_out = batch * c * out_h * out_w
    calls = [lambda o, i: ref.forward_maxpool(batch, h, w, c, out_h, out_w, size, stride, pad, x, o, i),
             lambda o, i: fast.forward_maxpool(batch, h, w, c, out_h, out_w, size, stride, pad, x, o, i)]
    for separable in (False, True):
        calls += [lambda o, i, s=separable: fast._maxpool_parallel(
                      batch, h, w, c, out_h, out_w, size, stride, pad, x, o, i, s),
                  lambda o, i, s=separable: fast._maxpool_planes(
                      0, batch * c, h, w, out_h, out_w, size, stride, pad, x, o, i, s)]
    results = []
    for call in calls:
        out = np.full(n_out, 7, np.float32)
        idx = np.full(n_out, 7, np.int32)
        call(out, idx)
        results.append((out, idx))
    return results


def nasty_values(rng, n):
    """special_values plus denormals (of both signs), FLT_MAX and more +0 to tie with -0."""
    x = special_values(rng, n)
    pick = rng.random(n)
    x[pick < .04] = np.float32(1e-45) * rng.integers(-3, 4, n)[pick < .04]   # denormals (and 0)
    x[(pick >= .04) & (pick < .06)] = FLT_MAX
    x[(pick >= .06) & (pick < .08)] = 0.0
    return x


@pytest.mark.parametrize("seed", range(60))
def test_maxpool_fast_equals_reference_random_shapes(seed):
    """Random geometry (odd sizes, size 1..4, stride 1..3, pad -1..4, batch 1..3) and data full
    of ties, infinities, NaN, signed zeros and denormals; some planes entirely -inf, NaN or
    -FLT_MAX (index -1).  Widths up to 40 reach the eight-wide paths and their tails."""
    rng = rng_for("maxpool-random", seed)
    size = int(rng.integers(1, 5)) if seed % 3 else 2          # a third of the cases are 2x2
    stride = int(rng.integers(1, 4)) if seed % 3 else int(rng.integers(1, 3))
    pad = int(rng.integers(-1, 5)) if seed % 4 else size - 1
    batch, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    h = int(rng.integers(max(1, size - pad), 24))
    w = int(rng.integers(max(1, size - pad), 41))
    n = batch * c * h * w
    x = nasty_values(rng, n) if seed % 2 else rng.standard_normal(n).astype(np.float32)
    planes = x.reshape(batch * c, h * w)
    fill = [-np.inf, np.nan, -FLT_MAX, -0.0]
    for p in range(batch * c):
        if rng.random() < .3:
            planes[p] = fill[int(rng.integers(len(fill)))]
    (o_ref, i_ref), *fast_results = maxpool_all(batch, c, h, w, size, stride, pad, x)
    for o_fast, i_fast in fast_results:
        assert bitwise_equal(o_ref, o_fast)
        assert np.array_equal(i_ref, i_fast)


@pytest.mark.parametrize("size, stride, pad", [(2, 2, 0), (2, 2, 1), (2, 1, 1), (2, 1, 0), (2, 2, 2),
                                               (2, 1, 3), (3, 2, 1), (3, 1, 2)])
@pytest.mark.parametrize("w", [7, 8, 9, 16, 17, 18, 23, 33])
def test_maxpool_fast_equals_reference_vector_widths(size, stride, pad, w):
    """Every row width around the eight-output steps (one step, steps plus an overlapping last
    step, too narrow for a step), on small integers (many ties), NaN and -0."""
    rng = rng_for("maxpool-widths", size, stride, pad, w)
    batch, c, h = 2, 2, 5
    x = rng.integers(-2, 3, batch * c * h * w).astype(np.float32)
    x[rng.random(x.size) < .1] = np.nan
    x[rng.random(x.size) < .1] = -0.0
    (o_ref, i_ref), *fast_results = maxpool_all(batch, c, h, w, size, stride, pad, x)
    for o_fast, i_fast in fast_results:
        assert bitwise_equal(o_ref, o_fast)
        assert np.array_equal(i_ref, i_fast)


@pytest.mark.parametrize("shape", [  # batch, c, h, w, size, stride, pad of real cfgs' layers
    (1, 3, 19, 19, 5, 1, 4), (1, 3, 19, 19, 9, 1, 8), (1, 2, 19, 19, 13, 1, 12),  # yolov3-spp
    (1, 3, 27, 27, 3, 2, 0), (1, 3, 13, 13, 2, 1, 1), (2, 3, 26, 26, 2, 2, 1),      # alexnet, tiny
    (1, 2, 11, 30, 4, 2, 3), (1, 2, 9, 31, 3, 1, 6), (1, 2, 6, 25, 5, 2, 9),        # wide padding
    (1, 2, 12, 30, 2, 2, -3), (1, 2, 10, 33, 3, 1, -4)])                            # negative padding
@pytest.mark.parametrize("values", ["normal", "nasty"])
def test_maxpool_fast_equals_reference_layer_shapes(shape, values):
    batch, c, h, w, size, stride, pad = shape
    rng = rng_for("maxpool-layers", shape, values)
    n = batch * c * h * w
    x = nasty_values(rng, n) if values == "nasty" else rng.standard_normal(n).astype(np.float32)
    (o_ref, i_ref), *fast_results = maxpool_all(batch, c, h, w, size, stride, pad, x)
    for o_fast, i_fast in fast_results:
        assert bitwise_equal(o_ref, o_fast)
        assert np.array_equal(i_ref, i_fast)


def test_maxpool_all_losing_values_give_index_minus_one():
    """A 2x2/stride-2 plane (the vector path) of values that never beat -FLT_MAX: -inf, NaN and
    -FLT_MAX itself give -FLT_MAX and index -1, in every implementation."""
    w = 32
    x = np.tile(np.array([-np.inf, np.nan, -FLT_MAX, -np.inf], np.float32), 2 * w // 4)
    for (out, idx) in maxpool_all(1, 1, 2, w, 2, 2, 0, x):
        assert bitwise_equal(out, np.full(w // 2, -FLT_MAX, np.float32))
        assert (idx == -1).all()


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 4, 13, 13), (1, 2, 1, 7)])
@pytest.mark.parametrize("values", ["normal", "special"])
def test_avgpool_fast_equals_reference(shape, values):
    batch, c, h, w = shape
    rng = rng_for("avgpool", shape, values)
    x = (rng.standard_normal(batch * c * h * w) * 100).astype(np.float32) if values == "normal" \
        else special_values(rng, batch * c * h * w)
    delta = special_values(rng, batch * c) if values == "special" else \
        rng.standard_normal(batch * c).astype(np.float32)
    results = []
    for k in (ref, fast):
        out = np.full(batch * c, 9, np.float32)
        d_in = np.ones(batch * c * h * w, np.float32)
        k.forward_avgpool(batch, h, w, c, x, out)
        k.backward_avgpool(batch, h, w, c, delta, d_in)
        results.append((out, d_in))
    assert bitwise_equal(results[0][0], results[1][0])
    assert bitwise_equal(results[0][1], results[1][1])


# --------------------------------------------------------------------- maxpool layer

def test_parse_maxpool_defaults():
    p = image_params(2, 3, 13, 13)
    l = maxpool.parse(layer_section("[maxpool]\nsize=2\nstride=1\n"), p)   # yolov3-tiny's 13x13 layer
    assert (l.size, l.stride, l.pad, l.out_w, l.out_h, l.out_c) == (2, 1, 1, 13, 13, 3)
    l = maxpool.parse(layer_section("[maxpool]\nstride=2\n"), p)            # size defaults to stride
    assert (l.size, l.stride, l.pad, l.out_w) == (2, 2, 1, 7)
    l = maxpool.parse(layer_section("[maxpool]\n"), p)                      # stride 1, size 1, pad 0
    assert (l.size, l.stride, l.pad, l.out_w) == (1, 1, 0, 13)
    l = maxpool.parse(layer_section("[maxpool]\nsize=3\nstride=2\npadding=0\n"), p)
    assert (l.pad, l.out_w, l.outputs, l.inputs) == (0, 6, 3 * 36, 3 * 169)
    assert l.indexes.dtype == np.int32 and l.indexes.size == l.output.size == l.delta.size == 2 * 108
    assert l.update is None and l.type == "maxpool"


@pytest.mark.parametrize("text, error", [("[maxpool]\nstride=0\n", CfgError),
                                         ("[maxpool]\nsize=9\nstride=1\npadding=0\n", ShapeError)])
def test_parse_maxpool_refuses(text, error):
    with pytest.raises(error) as e:
        maxpool.parse(layer_section(text), image_params(1, 2, 4, 4))
    assert e.value.layer == 1


def test_parse_maxpool_needs_image():
    with pytest.raises(ShapeError):
        maxpool.parse(layer_section("[maxpool]\n"), image_params(1, 0, 0, 0))


@pytest.mark.parametrize("shape", MAXPOOL_SHAPES[:6])
def test_maxpool_layer_against_numpy(impl, shape):
    batch, c, h, w, size, stride, pad = shape
    rng = rng_for("mp-layer", shape)
    l = maxpool.make_maxpool_layer(batch, h, w, c, size, stride, pad)
    x = rng.integers(-4, 5, batch * c * h * w).astype(np.float32)  # many ties: the first wins
    net = SimpleNamespace(input=x, delta=None, train=1, index=1)
    l.forward(l, net)
    out, idx = np_maxpool(x, batch, c, h, w, size, stride, pad)
    assert bitwise_equal(l.output, out)
    assert np.array_equal(l.indexes, idx)

    l.delta[:] = rng.standard_normal(l.delta.size).astype(np.float32)
    net.delta = rng.standard_normal(x.size).astype(np.float32)
    expected = net.delta.copy()
    for i in range(l.delta.size):              # C adds in output order
        expected[idx[i]] = np.float32(expected[idx[i]] + l.delta[i])
    l.backward(l, net)
    assert bitwise_equal(net.delta, expected)


@pytest.mark.parametrize("shape", [(2, 2, 6, 6, 2, 2, 1), (1, 2, 5, 5, 2, 1, 1), (1, 1, 7, 6, 3, 2, 2)])
def test_maxpool_gradient(shape):
    batch, c, h, w, size, stride, pad = shape
    rng = rng_for("mp-grad", shape)
    # distinct values at least 0.1 apart: no ties within eps
    x = (rng.permutation(batch * c * h * w) * np.float32(.1) - 3).astype(np.float32)
    l = maxpool.make_maxpool_layer(batch, h, w, c, size, stride, pad)
    net = SimpleNamespace(input=x, delta=np.zeros_like(x), train=1, index=1)
    l.forward(l, net)
    g = rng.standard_normal(l.outputs * batch).astype(np.float32)
    l.delta[:] = g
    l.backward(l, net)
    assert_gradient(lambda v: np_maxpool(v, batch, c, h, w, size, stride, pad)[0], x, g, net.delta)


def test_maxpool_backward_without_net_delta():
    """No net.delta (a first layer): backward returns and leaves the layer's buffers alone."""
    l = maxpool.make_maxpool_layer(1, 2, 2, 1, 2, 2, 0)
    l.delta[:] = 3
    l.indexes[:] = 2
    l.backward(l, SimpleNamespace(input=np.ones(4, np.float32), delta=None))
    assert bitwise_equal(l.delta, [3]) and list(l.indexes) == [2]


# --------------------------------------------------------------------- avgpool layer

def test_parse_avgpool():
    l = avgpool.parse(layer_section("[avgpool]\n"), image_params(3, 5, 4, 6))
    assert (l.out_w, l.out_h, l.out_c, l.outputs, l.inputs, l.w, l.h) == (1, 1, 5, 5, 120, 6, 4)
    assert l.output.size == l.delta.size == 15 and l.update is None
    with pytest.raises(ShapeError):
        avgpool.parse(layer_section("[avgpool]\n"), image_params(1, 5, 0, 0))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 13, 13), (2, 1, 1, 1)])
def test_avgpool_layer_against_numpy(impl, shape):
    batch, c, h, w = shape
    rng = rng_for("ap-layer", shape)
    l = avgpool.make_avgpool_layer(batch, w, h, c)
    x = (rng.standard_normal(batch * c * h * w) * 10).astype(np.float32)
    net = SimpleNamespace(input=x, delta=rng.standard_normal(x.size).astype(np.float32), train=0)
    l.forward(l, net)
    assert bitwise_equal(l.output, np_avgpool(x, batch, c, h, w))
    l.delta[:] = rng.standard_normal(l.delta.size).astype(np.float32)
    expected = net.delta + np.repeat(l.delta / np.float32(h * w), h * w)
    l.backward(l, net)
    assert bitwise_equal(net.delta, expected)


def test_avgpool_gradient():
    batch, c, h, w = 2, 3, 3, 4
    rng = rng_for("ap-grad")
    x = rng.standard_normal(batch * c * h * w).astype(np.float32)
    l = avgpool.make_avgpool_layer(batch, w, h, c)
    net = SimpleNamespace(input=x, delta=np.zeros_like(x), train=1)
    l.forward(l, net)
    g = rng.standard_normal(batch * c).astype(np.float32)
    l.delta[:] = g
    l.backward(l, net)
    assert_gradient(lambda v: np_avgpool(v, batch, c, h, w), x, g, net.delta)


# --------------------------------------------------------------------- golden network dumps

def golden_layer(case, i, module, prefix=""):
    """Parse layer ``i`` of a golden case's cfg with its predecessor's golden output shape;
    also return the case's flat tensor loader."""
    case = read_case(GOLDEN / case)
    sec = load(case.path / "network.cfg").layers[i]
    b, c, h, w = case.entry(f"{prefix}layer{i - 1:02d}_output").shape
    l = module.parse(sec, image_params(b, c, h, w, index=i))
    return l, case.flat


MAXPOOLS = [("net-yolo-mini", 1), ("net-yolo-mini", 3), ("net-yolo-mini", 5), ("net-tiny64", 1),
            ("net-tiny64", 3), ("net-tiny64", 5), ("net-tiny64", 7), ("net-cls-mini", 1)]


@pytest.mark.parametrize("prefix", ["infer_", ""])
@pytest.mark.parametrize("case, i", MAXPOOLS)
def test_maxpool_golden_forward(impl, case, i, prefix):
    l, get = golden_layer(case, i, maxpool, prefix)
    net = SimpleNamespace(input=get(f"{prefix}layer{i - 1:02d}_output"), train=int(prefix == ""),
                          index=i, delta=None)
    l.forward(l, net)
    assert bitwise_equal(l.output, get(f"{prefix}layer{i:02d}_output"))


@pytest.mark.parametrize("prefix", ["infer_", ""])
def test_avgpool_golden_forward(impl, prefix):
    l, get = golden_layer("net-cls-mini", 4, avgpool, prefix)
    net = SimpleNamespace(input=get(f"{prefix}layer03_output"), train=int(prefix == ""), index=4)
    l.forward(l, net)
    assert bitwise_equal(l.output, get(f"{prefix}layer04_output"))


def test_avgpool_golden_backward(impl):
    # layer 3 of net-cls-mini is a linear convolution without batchnorm: its delta is exactly
    # what the avgpool adds (darknet zeroes it in forward; the linear gradient multiplies by 1)
    l, get = golden_layer("net-cls-mini", 4, avgpool)
    l.delta[:] = get("layer04_delta")
    net = SimpleNamespace(input=get("layer03_output"), delta=np.zeros(l.inputs * l.batch, np.float32),
                          train=1, index=4)
    l.backward(l, net)
    assert bitwise_equal(net.delta, get("layer03_delta"))
