"""``[batchnorm] style=caffe``: Caffe's BatchNorm layer.

1. The fast kernels against the reference kernels (which mirror Caffe's
   Forward_cpu/Backward_cpu call by call), bit for bit, in every mode.
2. Caffe's own test (``src/caffe/test/test_batch_norm_layer.cpp``) re-expressed:
   a 5x2x3x4 Gaussian input gives per-channel output mean within 1e-3 of 0 and
   variance within 1e-3 of 1; its gradient checks (step 1e-2, threshold 1e-4,
   loss sum(top^2)/2) in training and with global statistics.
3. An independent float64 formula: the float32 forward within 4 ULPs of the
   output's scale, the float32 backward within 1e-5 relative; the three blobs'
   moving averages bit for bit against the stated float recurrences; a zero
   scale factor gives zero statistics.
4. ONNX Runtime's BatchNormalization (inference) on the stored statistics
   (skipped without onnxruntime): within 8 ULPs of the output's scale.
5. parse, options and errors; a network with a style=caffe layer.
"""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import run_single_node, spacing_ulps
from darkpy import description, kernels
from darkpy.check import bitwise_equal, ulp_distance
from darkpy.errors import CfgError, ShapeError
from darkpy.gradcheck import central_differences, rel_error
from darkpy.kernels import norms as fast
from darkpy.kernels.reference import norms as reference
from darkpy.layers import batchnorm, caffe_batchnorm
from darkpy.network import SizeParams, build_network, forward_network, backward_network

f32 = np.float32


def make_net(input, train, delta=None):
    return SimpleNamespace(input=input, train=train, delta=delta)


def sample(seed, shape):
    rng = np.random.default_rng(seed)
    b, c, h, w = shape
    x = rng.standard_normal(shape) * rng.uniform(.5, 2, (1, c, 1, 1)) + rng.uniform(-2, 2, (1, c, 1, 1))
    return x.astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def layer_for(shape, **options):
    b, c, h, w = shape
    return caffe_batchnorm.make_caffe_batchnorm_layer(b, w, h, c, **options)


# ----------------------------------------------------------------------------- fast vs reference

def run_kernels(k, x, d, shape, use_global, blobs):
    b, c, h, w = shape
    out = x.ravel().copy()
    x_norm = np.zeros_like(out)
    mean, var = np.zeros(c, np.float32), np.zeros(c, np.float32)
    mean_sum, var_sum, factor = (v.copy() for v in blobs)
    k.caffe_bn_forward(out, x_norm, mean, var, mean_sum, var_sum, factor, use_global, f32(.999), f32(1e-5), b, c, h * w)
    delta = d.ravel().copy()
    if use_global:
        k.caffe_bn_backward_global(delta, var, f32(1e-5), b, c, h * w)
    else:
        k.caffe_bn_backward_batch(delta, x_norm, var, f32(1e-5), b, c, h * w)
    return out, x_norm, mean, var, mean_sum, var_sum, factor, delta


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 1, 1), (3, 2, 1, 7), (1, 1, 6, 6)])
@pytest.mark.parametrize("use_global", [0, 1])
def test_fast_kernels_match_reference_bitwise(shape, use_global):
    x, d = sample(sum(shape), shape)
    c = shape[1]
    rng = np.random.default_rng(7)
    blobs = (rng.standard_normal(c).astype(np.float32), rng.uniform(.1, 3, c).astype(np.float32),
             np.array([2.75], np.float32))
    ref = run_kernels(reference, x, d, shape, use_global, blobs)
    got = run_kernels(fast, x, d, shape, use_global, blobs)
    for name, a, b in zip("output x_norm mean variance mean_sum var_sum factor delta".split(), ref, got):
        assert bitwise_equal(a, b), name


def test_reference_reduction_is_caffes_two_gemv():
    """Row sums of each (image, channel) plane times alpha, then added over images in order."""
    x = np.arange(2 * 3 * 4, dtype=np.float32) * f32(.37)
    nbc = np.zeros(6, np.float32)
    out = np.zeros(3, np.float32)
    reference.caffe_row_col_sums(x, 2, 3, 4, .25, nbc, out)
    rows = x.reshape(6, 4)
    expect_nbc = np.array([f32(.25) * f32(f32(f32(r[0] + r[1]) + r[2]) + r[3]) for r in rows], np.float32)
    assert bitwise_equal(nbc, expect_nbc)
    assert bitwise_equal(out, np.array([f32(f32(0) + expect_nbc[k]) + expect_nbc[3 + k] for k in range(3)], np.float32))


# ----------------------------------------------------------------------------- Caffe's own tests

CAFFE_SHAPE = (5, 2, 3, 4)     # test_batch_norm_layer.cpp: blob_bottom_(new Blob(5, 2, 3, 4)), Gaussian filler


def test_caffe_forward_normalises_each_channel(impl):
    """Caffe's TestForward: per channel, sum/count within 1e-3 of 0 and sum of squares/count - mean^2
    within 1e-3 of 1 (Caffe's kErrorBound 0.001)."""
    x = np.random.default_rng(1701).standard_normal(CAFFE_SHAPE).astype(np.float32)
    l = layer_for(CAFFE_SHAPE)
    l.forward(l, make_net(x.ravel().copy(), 1))
    y = l.output.reshape(CAFFE_SHAPE).astype(np.float64)
    for c in range(CAFFE_SHAPE[1]):
        v = y[:, c]
        mean = v.sum() / v.size
        var = (v * v).sum() / v.size - mean * mean
        assert abs(mean) < 1e-3
        assert abs(var - 1) < 1e-3


def caffe_gradient_check(layer, x, train):
    """Caffe's GradientChecker(1e-2, 1e-4).CheckGradientExhaustive: for every output element j
    (loss = y_j, so the top diff is one-hot) and every input element i, the float32 backward
    against (y_j(x + h e_i) - y_j(x - h e_i))/2h with h = 1e-2 and y computed by the float32 layer
    itself (as Caffe does), EXPECT_NEAR(computed, estimated, 1e-4 * max(|computed|, |estimated|, 1))."""
    step = 1e-2

    def outputs(v):
        layer.forward(layer, make_net(v.ravel().copy(), train))
        return layer.output.astype(np.float64)

    flat = x.reshape(-1)
    estimated = np.zeros((flat.size, flat.size))       # [output j, input i]
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + f32(step)
        up = outputs(x)
        flat[i] = old - f32(step)
        down = outputs(x)
        flat[i] = old
        estimated[:, i] = (up - down) / (2 * step)
    for j in range(flat.size):
        outputs(x)
        layer.delta[:] = 0
        layer.delta[j] = 1
        computed = np.zeros(flat.size, np.float32)
        layer.backward(layer, make_net(None, train, computed))
        scale = np.maximum(np.maximum(np.abs(computed), np.abs(estimated[j])), 1.)
        assert (np.abs(computed - estimated[j]) <= 1e-4 * scale).all(), j


def test_caffe_gradient_with_batch_statistics(impl):
    """Caffe's TestGradient (training phase, batch statistics).  Caffe's check uses a (5,2,3,4)
    blob; we keep its step and threshold on a (2,2,3,2) one to stay fast."""
    x = np.random.default_rng(3).standard_normal((2, 2, 3, 2)).astype(np.float32)
    l = layer_for(x.shape, moving_average_fraction=.999)
    caffe_gradient_check(l, x, train=1)


def test_caffe_gradient_with_global_statistics(impl):
    """The same check with use_global_stats (Caffe's TEST phase): the layer is affine in x."""
    x = np.random.default_rng(4).standard_normal((2, 2, 3, 2)).astype(np.float32)
    l = layer_for(x.shape, use_global_stats=1)
    l.rolling_mean[:] = [.3, -.6]
    l.rolling_variance[:] = [1.5, 2.4]
    l.scale_factor[:] = 1.5
    caffe_gradient_check(l, x, train=0)


# ----------------------------------------------------------------------------- float64 formulas

def caffe_forward64(x, mean=None, var=None, eps=np.float64(f32(1e-5))):
    x = x.astype(np.float64)
    if mean is None:
        mean = x.mean(axis=(0, 2, 3), keepdims=True)
        var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def caffe_backward64(x, dy, eps=np.float64(f32(1e-5))):
    """dE/dX = (dE/dY - mean(dE/dY) - mean(dE/dY . Y) . Y) / sqrt(var + eps), channel-wise means."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    return (dy - dy.mean(axis=(0, 2, 3), keepdims=True)
            - (dy * y).mean(axis=(0, 2, 3), keepdims=True) * y) / np.sqrt(var + eps)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 2, 3, 3), (1, 3, 8, 8)])
def test_float32_against_float64_formula(impl, shape):
    x, d = sample(11 + shape[0], shape)
    l = layer_for(shape)
    l.forward(l, make_net(x.ravel().copy(), 1))
    y64 = caffe_forward64(x)
    assert spacing_ulps(l.output, y64) <= 4
    net_delta = np.zeros(x.size, np.float32)
    l.delta[:] = d.ravel()
    l.backward(l, make_net(None, 1, net_delta))
    assert rel_error(net_delta, caffe_backward64(x, d)) < 1e-5
    assert bitwise_equal(l.delta, net_delta)     # added into a zero net.delta


def test_backward_formula_by_central_differences():
    """The float64 formula of Caffe's backward is the gradient of its forward (float64, 1e-9)."""
    x, d = sample(5, (2, 3, 2, 3))
    x = x.astype(np.float64)
    fd = central_differences(lambda: caffe_forward64(x).ravel(), {"x": x}, d.astype(np.float64).ravel(), 1e-5)
    assert rel_error(caffe_backward64(x, d), fd["x"]) < 1e-9


def test_moving_averages_bitwise(impl):
    """Two training forwards: factor = maf*factor + 1, mean_sum = maf*mean_sum + mean,
    var_sum = maf*var_sum + (m/(m-1))*var, each step a float operation as stated."""
    shape = (2, 3, 2, 2)
    l = layer_for(shape, moving_average_fraction=.9)
    maf = f32(.9)
    m = 2 * 2 * 2
    correction = f32(m) / f32(m - 1)
    factor = f32(0)
    mean_sum = np.zeros(3, np.float32)
    var_sum = np.zeros(3, np.float32)
    for step in range(2):
        x, _ = sample(20 + step, shape)
        l.forward(l, make_net(x.ravel().copy(), 1))
        factor = f32(factor * maf) + f32(1)
        mean_sum = (mean_sum * maf) + l.mean
        var_sum = (var_sum * maf) + correction * l.variance
        assert bitwise_equal(l.scale_factor, np.array([factor], np.float32))
        assert bitwise_equal(l.rolling_mean, mean_sum)
        assert bitwise_equal(l.rolling_variance, var_sum)
    # the batch statistics are the biased ones of the last input
    assert rel_error(l.variance, x.astype(np.float64).var(axis=(0, 2, 3))) < 1e-6
    # inference now uses the stored statistics: mean_sum/factor, var_sum/factor
    x, _ = sample(30, shape)
    l.forward(l, make_net(x.ravel().copy(), 0))
    scale = f32(1) / factor
    assert bitwise_equal(l.mean, mean_sum * scale) and bitwise_equal(l.variance, var_sum * scale)
    y64 = caffe_forward64(x, (mean_sum * scale).astype(np.float64)[None, :, None, None],
                          (var_sum * scale).astype(np.float64)[None, :, None, None])
    assert spacing_ulps(l.output, y64) <= 2
    assert bitwise_equal(l.scale_factor, np.array([factor], np.float32))   # unchanged by inference


def test_single_value_per_channel_has_no_bias_correction(impl):
    """m = 1: Caffe's correction factor is 1 (not 1/0): var_sum stays finite."""
    l = layer_for((1, 3, 1, 1))
    l.forward(l, make_net(np.array([1., -2., 5.], np.float32), 1))
    assert bitwise_equal(l.rolling_variance, np.zeros(3, np.float32))
    assert bitwise_equal(l.rolling_mean, np.array([1., -2., 5.], np.float32))
    assert bitwise_equal(l.output, np.zeros(3, np.float32))


def test_zero_factor_means_zero_statistics(impl):
    """Stored statistics with factor 0 (a fresh layer in inference): mean 0, variance 0,
    y = x / sqrtf(eps), and the global backward dx = dy / sqrtf(eps), both bitwise."""
    shape = (2, 2, 2, 2)
    x, d = sample(8, shape)
    l = layer_for(shape, eps=1e-3)
    l.forward(l, make_net(x.ravel().copy(), 0))
    std = f32(np.sqrt(f32(1e-3)))
    assert l.global_used == 1
    assert bitwise_equal(l.output, x.ravel() / std)
    l.delta[:] = d.ravel()
    net_delta = np.zeros(x.size, np.float32)
    l.backward(l, make_net(None, 0, net_delta))
    assert bitwise_equal(net_delta, d.ravel() / std)


def test_use_global_stats_option_overrides_the_phase(impl):
    shape = (2, 2, 2, 2)
    x, _ = sample(9, shape)
    l = layer_for(shape, use_global_stats=0)          # batch statistics even in inference
    l.forward(l, make_net(x.ravel().copy(), 0))
    assert l.global_used == 0 and l.scale_factor[0] == 1
    l = layer_for(shape, use_global_stats=1)          # stored statistics even in training
    l.forward(l, make_net(x.ravel().copy(), 1))
    assert l.global_used == 1 and l.scale_factor[0] == 0


def test_backward_adds_into_net_delta(impl):
    shape = (2, 2, 2, 2)
    x, d = sample(10, shape)
    l = layer_for(shape)
    l.forward(l, make_net(x.ravel().copy(), 1))
    l.delta[:] = d.ravel()
    before = np.full(x.size, .5, np.float32)
    net_delta = before.copy()
    l.backward(l, make_net(None, 1, net_delta))
    assert bitwise_equal(net_delta, before + l.delta)
    assert l.update is None


# ----------------------------------------------------------------------------- ONNX Runtime

def test_onnx_runtime_batchnormalization_inference():
    """ONNX BatchNormalization (opset 15, inference) with scale 1, bias 0 and Caffe's stored
    statistics mean_sum/factor, var_sum/factor: within 8 ULPs of the output's scale
    (element-wise max ULP distance printed; it is large only where y is near 0)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    shape = (2, 4, 5, 3)
    x, _ = sample(12, shape)
    l = layer_for(shape, use_global_stats=1)
    rng = np.random.default_rng(12)
    l.rolling_mean[:] = rng.uniform(-4, 4, 4)
    l.rolling_variance[:] = rng.uniform(.5, 6, 4)
    l.scale_factor[:] = 2.5
    l.forward(l, make_net(x.ravel().copy(), 0))
    ours = l.output.reshape(shape)
    ort = run_single_node("BatchNormalization", [x, np.ones(4, np.float32), np.zeros(4, np.float32),
                                                 l.mean.copy(), l.variance.copy()], {"epsilon": 1e-5}, 15)
    distance = spacing_ulps(ours, ort.astype(np.float64))
    print(f"caffe batchnorm vs ONNX Runtime: {distance:.2f} ULPs at scale, "
          f"element-wise max {ulp_distance(ours, ort).max()} ULPs")
    assert distance <= 8


# ----------------------------------------------------------------------------- parse, network

def section(text):
    return description.parse_cfg_text("[net]\nwidth=3\nheight=2\nchannels=4\n" + text).layers[0]


def params(batch=2, h=2, w=3, c=4):
    return SizeParams(batch=batch, inputs=h * w * c, h=h, w=w, c=c, index=0, time_steps=1, net=None)


def test_parse_options_and_defaults():
    l = caffe_batchnorm.parse(section("[batchnorm]\nstyle=caffe\n"), params())
    assert (l.type, l.style, l.batch, l.c, l.h, l.w) == ("batchnorm", "caffe", 2, 4, 2, 3)
    assert l.use_global_stats == -1 and l.moving_average_fraction == f32(.999) and l.eps == f32(1e-5)
    s = section("[batchnorm]\nstyle=caffe\nuse_global_stats=1\nmoving_average_fraction=.9\neps=.001\n")
    l = caffe_batchnorm.parse(s, params())
    assert l.use_global_stats == 1 and l.moving_average_fraction == f32(.9) and l.eps == f32(.001)
    assert not s.unused()
    assert l.scales is None and l.update is None and l.scale_factor.shape == (1,)


def test_parse_errors():
    with pytest.raises(CfgError, match="use_global_stats"):
        caffe_batchnorm.parse(section("[batchnorm]\nstyle=caffe\nuse_global_stats=2\n"), params())
    with pytest.raises(CfgError, match="eps"):
        caffe_batchnorm.parse(section("[batchnorm]\nstyle=caffe\neps=-1\n"), params())
    with pytest.raises(CfgError, match="style"):
        caffe_batchnorm.parse(section("[batchnorm]\nstyle=darknet\n"), params())
    with pytest.raises(ShapeError):
        caffe_batchnorm.make_caffe_batchnorm_layer(0, 3, 2, 4)


def test_network_with_a_caffe_batchnorm(impl):
    text = ("[net]\nbatch=2\nwidth=4\nheight=3\nchannels=2\n"
            "[convolutional]\nfilters=3\nsize=3\npad=1\nactivation=linear\n"
            "[batchnorm]\nstyle=caffe\n[batchnorm]\n")
    net = build_network(description.parse_cfg_text(text))
    caffe, darknet = net.layers[1], net.layers[2]
    assert getattr(caffe, "style", None) == "caffe" and getattr(darknet, "style", "darknet") == "darknet"
    net.layers[0].weights[:] = np.random.default_rng(0).uniform(-.5, .5, net.layers[0].weights.size)
    net.input = np.random.default_rng(1).standard_normal(net.inputs * net.batch).astype(np.float32)
    net.train = 1
    forward_network(net)
    assert spacing_ulps(caffe.output, caffe_forward64(net.layers[0].output.reshape(2, 3, 3, 4))) <= 4
    net.layers[2].delta[:] = 1
    backward_network(net)
    assert np.isfinite(net.layers[0].delta).all() and np.abs(net.layers[0].delta).max() > 0



@settings(max_examples=30, deadline=None)
@given(num=st.integers(1, 3), channels=st.integers(1, 4), spatial=st.integers(1, 6),
       use_global=st.integers(0, 1), eps=st.sampled_from([0.0, 1e-5, 1e-2]), seed=st.integers(0, 2**32 - 1))
def test_fast_equals_reference_on_random_shapes(num, channels, spatial, use_global, eps, seed):
    """Random shapes, including a single value per channel with eps = 0 (0/0 NaN bits agree too)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(num * channels * spatial) * 2).astype(np.float32)
    d = rng.standard_normal(x.size).astype(np.float32)
    blobs = (rng.standard_normal(channels).astype(np.float32),
             rng.uniform(0, 2, channels).astype(np.float32),
             np.array([rng.choice([0, .5, 3])], np.float32))
    results = []
    for k in (reference, fast):
        out, x_norm = x.copy(), np.zeros_like(x)
        mean, var = np.zeros(channels, np.float32), np.zeros(channels, np.float32)
        mean_sum, var_sum, factor = (b.copy() for b in blobs)
        delta = d.copy()
        with np.errstate(all="ignore"):
            k.caffe_bn_forward(out, x_norm, mean, var, mean_sum, var_sum, factor, use_global, f32(.99), f32(eps),
                               num, channels, spatial)
            if use_global:
                k.caffe_bn_backward_global(delta, var, f32(eps), num, channels, spatial)
            else:
                k.caffe_bn_backward_batch(delta, x_norm, var, f32(eps), num, channels, spatial)
        results.append((out, x_norm, mean, var, mean_sum, var_sum, factor, delta))
    for a, r in zip(*results):
        assert bitwise_equal(a, r)
