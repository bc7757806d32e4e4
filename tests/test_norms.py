"""``[layernorm]``, ``[instancenorm]``, ``[groupnorm]``: group normalisation on darknet's batchnorm kernels.

1. The transposed call (darknet's kernels on the (1, batch*groups, cpg*h*w) view)
   against a direct loop over (image, group, channel, row, column) with the same
   float arithmetic: the same bits, forward and backward.
2. The eps-parameterised delta kernels are darknet's bit for bit at eps = .00001f;
   the fast kernels are the reference ones bit for bit.
3. An independent float64 NumPy formula of each textbook definition: the float32
   forward within 4 ULPs of the output's scale, the backward within 1e-5
   (relative); the formula's gradient against central differences (1e-9); and
   ``darkpy.gradcheck`` rows for each layer (float64 twin < 1e-6).
4. ONNX Runtime (LayerNormalization, InstanceNormalization, GroupNormalization;
   skipped without onnxruntime): within 8 ULPs of the output's scale.
5. update (darknet's SGD convention on scales and biases), parse, errors, networks.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import run_single_node, spacing_ulps
from darkpy import description, kernels
from darkpy.check import bitwise_equal, ulp_distance
from darkpy.errors import CfgError, ShapeError
from darkpy.gradcheck import central_differences, gradcheck_layer, rel_error
from darkpy.kernels import norms as fast
from darkpy.kernels.reference import blas as darknet_blas
from darkpy.kernels.reference import norms as reference
from darkpy.layer import UpdateArgs
from darkpy.layers import groupnorm, instancenorm, layernorm
from darkpy.network import SizeParams, backward_network, build_network, forward_network

f32 = np.float32
f64 = np.float64


def make_net(input, train=1, delta=None):
    return SimpleNamespace(input=input, train=train, delta=delta)


def sample(seed, shape):
    rng = np.random.default_rng(seed)
    b, c, h, w = shape
    x = rng.standard_normal(shape) * rng.uniform(.5, 2, (1, c, 1, 1)) + rng.uniform(-2, 2, (1, c, 1, 1))
    return (x.astype(np.float32), rng.standard_normal(shape).astype(np.float32),
            rng.uniform(.5, 2, c).astype(np.float32), rng.uniform(-1, 1, c).astype(np.float32))


KINDS = {"layernorm": lambda c, groups: 1, "instancenorm": lambda c, groups: c,
         "groupnorm": lambda c, groups: groups}


def make(kind, shape, groups=2, eps=1e-5):
    b, c, h, w = shape
    if kind == "layernorm":
        return layernorm.make_layernorm_layer(b, w, h, c, eps)
    if kind == "instancenorm":
        return instancenorm.make_instancenorm_layer(b, w, h, c, eps)
    return groupnorm.make_groupnorm_layer(b, w, h, c, groups, eps)


def run_layer(l, x, dy, scales, biases):
    """Forward (training) and backward of a layer; returns (net.delta, the layer)."""
    l.scales[:] = scales
    l.biases[:] = biases
    l.forward(l, make_net(x.ravel().copy()))
    l.delta[:] = dy.ravel()
    net_delta = np.zeros(x.size, np.float32)
    l.backward(l, make_net(None, 1, net_delta))
    return net_delta, l


# ----------------------------------------------------------------------------- transposition = direct loop

def direct_loop(x, dy, scales, biases, groups, eps):
    """Group normalisation written directly over (image, group, channel, row, column), with the
    float arithmetic the module docstring of darkpy.kernels.reference.norms states, in numpy
    scalars: float32 where C keeps float, float64 where it promotes."""
    b_, c_, h_, w_ = x.shape
    cpg = c_ // groups
    n = cpg * h_ * w_
    eps = f32(eps)
    out = np.zeros_like(x)
    x_norm = np.zeros_like(x)
    dx = np.zeros_like(x)
    bias_updates = np.zeros(c_, np.float32)
    scale_updates = np.zeros(c_, np.float32)
    for b in range(b_):                      # darknet's backward_bias: image, then channel
        for c in range(c_):
            s = f32(0)
            for i in range(h_):
                for j in range(w_):
                    s = f32(s + dy[b, c, i, j])
            bias_updates[c] = f32(bias_updates[c] + s)
    for b in range(b_):
        for g in range(groups):
            chans = range(g * cpg, (g + 1) * cpg)
            cells = [(c, i, j) for c in chans for i in range(h_) for j in range(w_)]
            mean = f32(0)
            for c, i, j in cells:
                mean = f32(mean + x[b, c, i, j])
            mean = f32(mean * f32(1. / n))
            var = f32(0)
            for c, i, j in cells:
                d = f64(f32(x[b, c, i, j] - mean))
                var = f32(f64(var) + d * d)
            var = f32(var * f32(1. / n))
            root = math.sqrt(f64(f32(var + eps)))
            for c, i, j in cells:
                x_norm[b, c, i, j] = f32(f64(f32(x[b, c, i, j] - mean)) / root)
                out[b, c, i, j] = f32(f32(x_norm[b, c, i, j] * scales[c]) + biases[c])
            d = {cell: f32(dy[(b,) + cell] * scales[cell[0]]) for cell in cells}
            md = f32(0)
            for cell in cells:
                md = f32(md + d[cell])
            md = f32(f64(md) * (-1. / root))
            vd = f32(0)
            for cell in cells:
                vd = f32(vd + f32(d[cell] * f32(x[(b,) + cell] - mean)))
            vd = f32(f64(vd) * (-.5 * math.pow(f64(f32(var + eps)), -1.5)))
            for cell in cells:
                dx[(b,) + cell] = f32(f64(d[cell]) * 1. / root
                                      + f64(vd) * 2. * f64(f32(x[(b,) + cell] - mean)) / f64(n)
                                      + f64(f32(md / f32(n))))
    for c in range(c_):                      # backward_scale_cpu: one sum per channel
        s = f32(0)
        for b in range(b_):
            for i in range(h_):
                for j in range(w_):
                    s = f32(s + f32(dy[b, c, i, j] * x_norm[b, c, i, j]))
        scale_updates[c] = s
    return out, x_norm, dx, bias_updates, scale_updates


@pytest.mark.parametrize("kind,shape,groups", [
    ("layernorm", (2, 3, 2, 3), 1), ("instancenorm", (2, 3, 2, 3), 3),
    ("groupnorm", (2, 4, 3, 2), 2), ("groupnorm", (1, 6, 1, 5), 3)])
def test_transposed_call_equals_direct_loop_bitwise(impl, kind, shape, groups):
    x, dy, scales, biases = sample(sum(shape) + groups, shape)
    net_delta, l = run_layer(make(kind, shape, groups), x, dy, scales, biases)
    out, x_norm, dx, bias_updates, scale_updates = direct_loop(x, dy, scales, biases, l.groups, 1e-5)
    assert l.groups == groups
    assert bitwise_equal(l.output, out.ravel())
    assert bitwise_equal(l.x_norm, x_norm.ravel())
    assert bitwise_equal(net_delta, dx.ravel())
    assert bitwise_equal(l.bias_updates, bias_updates)
    assert bitwise_equal(l.scale_updates, scale_updates)


# ----------------------------------------------------------------------------- kernels

def test_eps_delta_kernels_are_darknets_at_its_epsilon():
    """mean/variance/normalize_delta with eps = .00001f: darknet's kernels bit for bit."""
    rng = np.random.default_rng(3)
    batch, filters, spatial = 2, 3, 5
    x = rng.standard_normal(batch * filters * spatial).astype(np.float32)
    delta = rng.standard_normal(x.size).astype(np.float32)
    mean = rng.standard_normal(filters).astype(np.float32)
    variance = rng.uniform(.01, 3, filters).astype(np.float32)
    outs = []
    for calls in ("darknet", "eps"):
        md, vd, d = np.zeros(filters, np.float32), np.zeros(filters, np.float32), delta.copy()
        if calls == "darknet":
            darknet_blas.mean_delta_cpu(d, variance, batch, filters, spatial, md)
            darknet_blas.variance_delta_cpu(x, d, mean, variance, batch, filters, spatial, vd)
            darknet_blas.normalize_delta_cpu(x, mean, variance, md, vd, batch, filters, spatial, d)
        else:
            reference.mean_delta_eps_cpu(d, variance, f32(1e-5), batch, filters, spatial, md)
            reference.variance_delta_eps_cpu(x, d, mean, variance, f32(1e-5), batch, filters, spatial, vd)
            reference.normalize_delta_eps_cpu(x, mean, variance, f32(1e-5), md, vd, batch, filters, spatial, d)
        outs.append((md, vd, d))
    for a, b in zip(*outs):
        assert bitwise_equal(a, b)


@pytest.mark.parametrize("shape,groups", [((2, 4, 3, 3), 1), ((2, 4, 3, 3), 2), ((2, 4, 3, 3), 4),
                                          ((3, 6, 1, 1), 3), ((1, 2, 5, 7), 1)])
def test_fast_kernels_match_reference_bitwise(shape, groups):
    x, dy, scales, biases = sample(40 + groups, shape)
    b, c, h, w = shape
    results = []
    for k in (reference, fast):
        out, xx, xn = x.ravel().copy(), np.zeros(x.size, np.float32), np.zeros(x.size, np.float32)
        mean, var = np.zeros(b * groups, np.float32), np.zeros(b * groups, np.float32)
        k.groupnorm_forward(out, xx, xn, mean, var, scales, biases, f32(1e-4), b, c, h * w, groups)
        d = dy.ravel().copy()
        bu, su = np.full(c, .5, np.float32), np.full(c, -.25, np.float32)
        md, vd = np.zeros(b * groups, np.float32), np.zeros(b * groups, np.float32)
        k.groupnorm_backward(d, xx, xn, mean, var, scales, bu, su, md, vd, f32(1e-4), b, c, h * w, groups)
        results.append((out, xx, xn, mean, var, d, bu, su, md, vd))
    for name, a, r in zip("output x x_norm mean variance delta bias_updates scale_updates "
                          "mean_delta variance_delta".split(), *results):
        assert bitwise_equal(a, r), name


# ----------------------------------------------------------------------------- float64 textbook

def textbook_forward(x, scales, biases, groups, eps):
    """Group normalisation in float64: per (image, group) mean and biased variance."""
    b, c = x.shape[:2]
    z = x.astype(np.float64).reshape(b, groups, -1)
    mu = z.mean(axis=2, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=2, keepdims=True)
    xhat = ((z - mu) / np.sqrt(var + eps)).reshape(x.shape)
    return xhat * scales.astype(np.float64)[None, :, None, None] + biases.astype(np.float64)[None, :, None, None]


def textbook_backward(x, dy, scales, groups, eps):
    """dx = (d - mean(d) - xhat*mean(d*xhat))/sqrt(var + eps) per group, d = dy*scale;
    dscale = sum dy*xhat, dbias = sum dy per channel."""
    b, c = x.shape[:2]
    z = x.astype(np.float64).reshape(b, groups, -1)
    mu = z.mean(axis=2, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=2, keepdims=True)
    xhat = (z - mu) / np.sqrt(var + eps)
    dy = dy.astype(np.float64)
    d = (dy * scales.astype(np.float64)[None, :, None, None]).reshape(z.shape)
    dx = (d - d.mean(axis=2, keepdims=True) - xhat * (d * xhat).mean(axis=2, keepdims=True)) / np.sqrt(var + eps)
    return dx.reshape(x.shape), (dy * xhat.reshape(x.shape)).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_float32_against_float64_textbook(impl, kind, eps):
    shape = (2, 4, 3, 5)
    x, dy, scales, biases = sample(50, shape)
    net_delta, l = run_layer(make(kind, shape, 2, eps), x, dy, scales, biases)
    e = f64(f32(eps))
    assert spacing_ulps(l.output, textbook_forward(x, scales, biases, l.groups, e)) <= 4
    dx, dscale, dbias = textbook_backward(x, dy, scales, l.groups, e)
    assert rel_error(net_delta, dx) < 1e-5
    assert rel_error(l.scale_updates, dscale) < 1e-5
    assert rel_error(l.bias_updates, dbias) < 1e-5


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_textbook_gradient_by_central_differences(groups):
    shape = (2, 4, 2, 3)
    x, dy, scales, biases = sample(60 + groups, shape)
    x, scales, biases = x.astype(np.float64), scales.astype(np.float64), biases.astype(np.float64)
    r = dy.astype(np.float64).ravel()
    fd = central_differences(lambda: textbook_forward(x, scales, biases, groups, 1e-5).ravel(),
                             {"x": x, "scales": scales, "biases": biases}, r, 1e-5)
    dx, dscale, dbias = textbook_backward(x, dy, scales, groups, 1e-5)
    assert rel_error(dx, fd["x"]) < 1e-9
    assert rel_error(dscale, fd["scales"]) < 1e-9
    assert rel_error(dbias, fd["biases"]) < 1e-9


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck_rows(kind):
    """darkpy.gradcheck on each layer alone: the float64 twin of darknet's backward formula within
    1e-6 of central differences, and the float32 layer within 1e-4 of the twin."""
    shape = (2, 4, 3, 3)
    x, _, scales, biases = sample(70, shape)
    l = make(kind, shape, 2)
    l.scales[:] = scales
    l.biases[:] = biases
    rows = gradcheck_layer(l, 0, SimpleNamespace(), x.ravel(), np.random.default_rng(0))
    assert [r.check for r in rows] == ["gradient", "float32"]
    assert set(rows[0].errors) == {"input", "scales", "biases"}
    for r in rows:
        assert r.ok, r
    assert max(rows[0].errors.values()) < 1e-6


def test_constant_input_gives_the_biases(impl):
    """A constant group has variance 0: x_norm = 0/sqrt(eps) = 0 and y = biases exactly."""
    shape = (1, 2, 2, 2)
    x = np.full(shape, 3.25, np.float32)
    _, l = run_layer(make("instancenorm", shape), x, np.ones(shape, np.float32),
                     np.array([2, 3], np.float32), np.array([.5, -.5], np.float32))
    assert bitwise_equal(l.output, np.repeat(np.array([.5, -.5], np.float32), 4))


def test_inference_equals_training(impl):
    shape = (2, 4, 2, 2)
    x, _, scales, biases = sample(80, shape)
    outs = []
    for train in (1, 0):
        l = make("groupnorm", shape, 2)
        l.scales[:], l.biases[:] = scales, biases
        l.forward(l, make_net(x.ravel().copy(), train))
        outs.append(l.output.copy())
    assert bitwise_equal(*outs)


def test_backward_adds_into_net_delta(impl):
    shape = (2, 2, 2, 2)
    x, dy, scales, biases = sample(81, shape)
    l = make("layernorm", shape)
    l.forward(l, make_net(x.ravel().copy()))
    l.delta[:] = dy.ravel()
    before = np.full(x.size, .5, np.float32)
    net_delta = before.copy()
    l.backward(l, make_net(None, 1, net_delta))
    assert bitwise_equal(net_delta, before + l.delta)


def test_update_is_darknets_sgd_on_scales_and_biases(impl):
    """rate = (lr*learning_rate_scale)/batch in float; x += rate*updates; updates *= momentum; no decay."""
    shape = (2, 3, 2, 2)
    x, dy, scales, biases = sample(82, shape)
    _, l = run_layer(make("groupnorm", shape, 3), x, dy, scales, biases)
    l.learning_rate_scale = f32(.5)
    su, bu = l.scale_updates.copy(), l.bias_updates.copy()
    a = UpdateArgs(batch=2, learning_rate=f32(.1), momentum=f32(.9), decay=f32(.5))
    l.update(l, a)
    rate = f32(f32(f32(.1) * f32(.5)) / f32(2))
    assert bitwise_equal(l.biases, biases + rate * bu)
    assert bitwise_equal(l.scales, scales + rate * su)
    assert bitwise_equal(l.bias_updates, bu * f32(.9))
    assert bitwise_equal(l.scale_updates, su * f32(.9))


# ----------------------------------------------------------------------------- ONNX Runtime


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_onnx_runtime(impl, kind, seed):
    """Same inputs through ONNX Runtime: LayerNormalization (opset 17, axis 1, scale/bias tiled
    over h, w), InstanceNormalization (opset 17), GroupNormalization (opset 21, per-channel
    scale/bias).  Bound: 8 ULPs of the output's scale (both are float32 computations of the same
    definition, each within ~3 such ULPs of float64 here); the element-wise max ULP distance is
    printed (large only at outputs near zero, where the cancellation x - mean dominates)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    shape = (2, 6, 5, 4)
    b, c, h, w = shape
    x, _, scales, biases = sample(90 + seed, shape)
    l = make(kind, shape, 3)
    l.scales[:], l.biases[:] = scales, biases
    l.forward(l, make_net(x.ravel().copy(), 0))
    ours = l.output.reshape(shape)
    if kind == "layernorm":
        tile = lambda v: np.ascontiguousarray(np.broadcast_to(v[:, None, None], (c, h, w)))
        ort = run_single_node("LayerNormalization", [x, tile(scales), tile(biases)],
                              {"axis": 1, "epsilon": 1e-5}, 17)
    elif kind == "instancenorm":
        ort = run_single_node("InstanceNormalization", [x, scales, biases], {"epsilon": 1e-5}, 17)
    else:
        ort = run_single_node("GroupNormalization", [x, scales, biases], {"epsilon": 1e-5, "num_groups": 3}, 21)
    distance = spacing_ulps(ours, ort)
    print(f"{kind} vs ONNX Runtime: {distance:.2f} ULPs at scale, element-wise max "
          f"{ulp_distance(ours, ort).max()} ULPs")
    assert distance <= 8
    assert spacing_ulps(ours, textbook_forward(x, scales, biases, l.groups, f64(f32(1e-5)))) <= 4


# ----------------------------------------------------------------------------- parse, networks

def params(batch=2, h=2, w=3, c=4):
    return SizeParams(batch=batch, inputs=h * w * c, h=h, w=w, c=c, index=0, time_steps=1, net=None)


def section(text):
    return description.parse_cfg_text("[net]\nwidth=3\nheight=2\nchannels=4\n" + text).layers[0]


def test_parse():
    l = layernorm.parse(section("[layernorm]\n"), params())
    assert (l.type, l.groups, l.eps, l.c, l.h, l.w, l.batch) == ("layernorm", 1, f32(1e-5), 4, 2, 3, 2)
    l = instancenorm.parse(section("[instancenorm]\neps=.001\n"), params())
    assert (l.type, l.groups, l.eps) == ("instancenorm", 4, f32(.001))
    s = section("[groupnorm]\ngroups=2\neps=1e-6\n")
    l = groupnorm.parse(s, params())
    assert (l.type, l.groups, l.eps, l.mean.size) == ("groupnorm", 2, f32(1e-6), 4)
    assert not s.unused() and l.update is groupnorm.update


def test_parse_errors():
    with pytest.raises(CfgError, match="groups"):
        groupnorm.parse(section("[groupnorm]\n"), params())
    with pytest.raises(ShapeError, match="divide"):
        groupnorm.parse(section("[groupnorm]\ngroups=3\n"), params())
    with pytest.raises(ShapeError, match="eps"):
        layernorm.parse(section("[layernorm]\neps=-1\n"), params())
    with pytest.raises(ShapeError):
        groupnorm.make_groupnorm_layer(2, 3, 2, 4, 0)


def test_network_of_norms(impl):
    text = ("[net]\nbatch=2\nwidth=3\nheight=2\nchannels=4\n"
            "[layernorm]\n[instancenorm]\neps=.001\n[groupnorm]\ngroups=2\n")
    net = build_network(description.parse_cfg_text(text))
    assert [l.type for l in net.layers] == ["layernorm", "instancenorm", "groupnorm"]
    x, dy, scales, biases = sample(95, (2, 4, 2, 3))
    for l in net.layers:
        l.scales[:], l.biases[:] = scales, biases
    net.input = x.ravel().copy()
    net.train = 1
    forward_network(net)
    expected = x
    for l in net.layers:
        expected = textbook_forward(expected.astype(np.float32), scales, biases, l.groups, f64(l.eps))
        assert spacing_ulps(l.output, expected) <= 4
    net.layers[-1].delta[:] = dy.ravel()
    backward_network(net)
    assert all(np.isfinite(l.delta).all() for l in net.layers)


# ----------------------------------------------------------------------------- weights


def test_weights_round_trip(tmp_path):
    from darkpy import weights
    from darkpy.layers import caffe_batchnorm
    text = ("[net]\nbatch=1\nwidth=3\nheight=2\nchannels=4\n[layernorm]\n[batchnorm]\nstyle=caffe\n"
            "[instancenorm]\n[groupnorm]\ngroups=2\n")
    nets = [build_network(description.parse_cfg_text(text)) for _ in range(2)]
    rng = np.random.default_rng(5)
    for l in nets[0].layers:
        for _, array, _ in (caffe_batchnorm if l.type == "batchnorm" else groupnorm).weight_tensors(l):
            array[:] = rng.standard_normal(array.size)
    path = tmp_path / "norms.weights"
    weights.save_weights(nets[0], path)
    floats = 3 * (4 + 4) + (4 + 4 + 1)
    assert path.stat().st_size == weights.read_header(path).size + 4 * floats
    weights.load_weights(nets[1], path)
    for a, b in zip(*(n.layers for n in nets)):
        module = caffe_batchnorm if a.type == "batchnorm" else groupnorm
        for (name, x, _), (_, y, _) in zip(module.weight_tensors(a), module.weight_tensors(b)):
            assert bitwise_equal(x, y), (a.type, name)


# ----------------------------------------------------------------------------- random shapes


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), groups=st.integers(1, 3), cpg=st.integers(1, 3),
       spatial=st.integers(1, 7), eps=st.sampled_from([0.0, 1e-5, 1e-3, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_fast_equals_reference_on_random_shapes(batch, groups, cpg, spatial, eps, seed):
    """Including eps = 0 with a single value per group (0/0: NaN bits must agree too)."""
    c = groups * cpg
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(batch * c * spatial) * 3).astype(np.float32)
    dy = rng.standard_normal(x.size).astype(np.float32)
    scales = rng.uniform(-2, 2, c).astype(np.float32)
    biases = rng.uniform(-1, 1, c).astype(np.float32)
    results = []
    for k in (reference, fast):
        out, xx, xn = x.copy(), np.zeros_like(x), np.zeros_like(x)
        mean, var, md, vd = (np.zeros(batch * groups, np.float32) for _ in range(4))
        bu, su = np.zeros(c, np.float32), np.zeros(c, np.float32)
        d = dy.copy()
        with np.errstate(all="ignore"):
            k.groupnorm_forward(out, xx, xn, mean, var, scales, biases, f32(eps), batch, c, spatial, groups)
            k.groupnorm_backward(d, xx, xn, mean, var, scales, bu, su, md, vd, f32(eps), batch, c, spatial, groups)
        results.append((out, xn, mean, var, d, bu, su, md, vd))
    for a, r in zip(*results):
        assert bitwise_equal(a, r)
