"""blas kernels: every fast kernel against its reference twin, bit for bit, and the
reference against independent numpy evaluations of darknet's C expressions."""

import math

import numpy as np
import pytest

import darkpy.kernels.blas as fast
import darkpy.kernels.reference.blas as ref
from darkpy.check import bitwise_equal
from darkpy.errors import ShapeError
from darkpy.kernels.reference.activations import ACTIVATIONS, LEAKY, LINEAR, LOGISTIC, RELU, activate

SPECIALS = np.array([np.inf, -np.inf, np.nan, -0.0, 1e-45, -3e-39, 1e-40, 3.4e38, -3.4e38],
                    dtype=np.float32)

# (batch, out_c, spatial): channel counts that fill the lanes and leave remainders,
# single pixels, a single sample (n - 1 == 0 divides by zero); planes below
# fast.SMALL_SPATIAL take the memory-order path, the others the channel vectors
# (groups of 2*VECTOR or a lone VECTOR channels, with or without a tail of pixels
# after the last 8 x 8 block) and the scalar lanes for the channels left over.
SHAPES = [(2, 8, 7), (3, 5, 4), (1, 3, 1), (1, 1, 1), (4, 9, 13), (2, 4, 1), (1, 6, 33),
          (2, 7, 20), (3, 4, 16), (1, 1, 17), (2, 70, 1), (2, 8, 16), (3, 17, 21), (1, 16, 24),
          (2, 27, 19), (9, 13, 18), (1, 43, 40)]


def test_shapes_cover_both_paths():
    assert any(s < fast.SMALL_SPATIAL for _, _, s in SHAPES)
    assert any(s >= fast.SMALL_SPATIAL and c % fast.LANES for _, c, s in SHAPES)
    assert any(c > fast.SMALL_BLOCK for _, c, _ in SHAPES)
    big = [(c, s) for _, c, s in SHAPES if s >= fast.SMALL_SPATIAL]
    vector = fast.VECTOR
    assert any(c % (2 * vector) >= vector for c, _ in big)           # a lone vector of channels
    assert any(c >= 2 * vector and c % vector % fast.LANES for c, _ in big)  # vectors, then scalar lanes
    assert any(c >= vector and s % 8 for c, s in big)                # a tail of pixels
    assert any(c >= vector and s % 8 == 0 for c, s in big)


def overridden():
    """Names the fast module redefines (instead of re-exporting the reference)."""
    return sorted(n for n in ref.__all__ if getattr(fast, n) is not getattr(ref, n))


TESTED = {"copy_cpu", "fill_cpu", "axpy_cpu", "scal_cpu", "add_bias", "scale_bias",
          "batchnorm_forward_train", "batchnorm_forward_infer", "batchnorm_forward_infer_activate",
          "batchnorm_backward"}


def test_every_override_is_tested_here():
    assert set(overridden()) == TESTED
    for name in ref.__all__:
        assert hasattr(fast, name), name


def data(rng, n, specials=False, scale=1.0):
    a = (rng.standard_normal(n) * scale).astype(np.float32)
    if specials and n > 2:
        idx = rng.choice(n, size=min(n // 3 + 1, len(SPECIALS)), replace=False)
        a[idx] = SPECIALS[:len(idx)]
    return a


def same(a, b):
    return bitwise_equal(a, b)


# ----------------------------------------------------------------------------- vector ops

@pytest.mark.parametrize("N,inc", [(0, 1), (1, 1), (37, 1), (20, 3), (17, 2)])
@pytest.mark.parametrize("specials", [False, True])
def test_vector_ops_bitwise(N, inc, specials):
    rng = np.random.default_rng(N * 7 + inc)
    size = max(1, N * inc)
    X = data(rng, size, specials)
    Y = data(rng, size, specials)
    for alpha in map(np.float32, (0.37, -2.5, 1e-39)):  # the layers' float ALPHA
        for name, args in (("copy_cpu", lambda x, y: (N, x, inc, y, inc)),
                           ("axpy_cpu", lambda x, y: (N, alpha, x, inc, y, inc)),
                           ("scal_cpu", lambda x, y: (N, alpha, y, inc)),
                           ("fill_cpu", lambda x, y: (N, alpha, y, inc))):
            xr, yr, xf, yf = X.copy(), Y.copy(), X.copy(), Y.copy()
            getattr(ref, name)(*args(xr, yr))
            getattr(fast, name)(*args(xf, yf))
            assert same(yr, yf) and same(xr, xf), name
    # mixed strides take the general path
    xr, yr, yf = X.copy(), Y.copy(), Y.copy()
    n = size // 2
    ref.axpy_cpu(n, np.float32(.5), xr, 1, yr, 2)
    fast.axpy_cpu(n, np.float32(.5), xr, 1, yf, 2)
    assert same(yr, yf)


@pytest.mark.parametrize("batch,n,size", SHAPES)
@pytest.mark.parametrize("specials", [False, True])
def test_bias_ops_bitwise(batch, n, size, specials):
    rng = np.random.default_rng(batch * 100 + n * 10 + size)
    out = data(rng, batch * n * size, specials)
    b = data(rng, n, specials)
    for name in ("add_bias", "scale_bias"):
        r, f = out.copy(), out.copy()
        getattr(ref, name)(r, b, batch, n, size)
        getattr(fast, name)(f, b, batch, n, size)
        assert same(r, f), name
        assert not same(r, out) or size * n * batch == 0


# ----------------------------------------------------------------------------- batchnorm kernels

def bn_state(rng, batch, c, spatial, specials, scale=1.0):
    n = batch * c * spatial
    s = dict(
        input=data(rng, n, specials, scale) + np.float32(rng.standard_normal()),
        output=np.full(n, 9, np.float32), x=np.zeros(n, np.float32), x_norm=np.zeros(n, np.float32),
        mean=np.full(c, 5, np.float32), variance=np.full(c, 5, np.float32),
        rolling_mean=data(rng, c, specials), rolling_variance=np.abs(data(rng, c, specials)),
        scales=data(rng, c, specials), biases=data(rng, c, specials),
        delta=data(rng, n, specials), bias_updates=data(rng, c), scale_updates=data(rng, c),
        mean_delta=np.zeros(c, np.float32), variance_delta=np.zeros(c, np.float32))
    return s


def run_bn(module, s, batch, c, spatial, train=True, in_place=False):
    s = {k: v.copy() for k, v in s.items()}
    if in_place:
        s["output"][:] = s["input"]
        s["input"] = s["output"]
    if train:
        module.batchnorm_forward_train(s["input"], s["output"], s["x"], s["x_norm"], s["mean"], s["variance"],
                                       s["rolling_mean"], s["rolling_variance"], s["scales"], s["biases"],
                                       batch, c, spatial)
        mean, variance = s["mean"], s["variance"]
    else:
        module.batchnorm_forward_infer(s["input"], s["output"], s["x"], s["rolling_mean"], s["rolling_variance"],
                                       s["scales"], s["biases"], batch, c, spatial)
        mean, variance = s["rolling_mean"], s["rolling_variance"]
    module.batchnorm_backward(s["delta"], s["x"], s["x_norm"], mean, variance, s["scales"],
                              s["bias_updates"], s["scale_updates"], s["mean_delta"], s["variance_delta"],
                              batch, c, spatial)
    return s


def run_infer_activate(module, s, batch, c, spatial, activation, in_place=False):
    """``batchnorm_forward_infer_activate`` on a copy of state ``s`` (in place: input is output)."""
    t = {k: v.copy() for k, v in s.items()}
    if in_place:
        t["output"][:] = t["input"]
        t["input"] = t["output"]
    module.batchnorm_forward_infer_activate(t["input"], t["output"], t["x"], t["rolling_mean"],
                                            t["rolling_variance"], t["scales"], t["biases"],
                                            batch, c, spatial, activation)
    return t


@pytest.mark.parametrize("batch,c,spatial", SHAPES)
@pytest.mark.parametrize("specials", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_kernels_bitwise(batch, c, spatial, specials, train):
    rng = np.random.default_rng(batch * 1000 + c * 10 + spatial + 7 * specials)
    s = bn_state(rng, batch, c, spatial, specials)
    r = run_bn(ref, s, batch, c, spatial, train)
    f = run_bn(fast, s, batch, c, spatial, train)
    bad = [k for k in r if not same(r[k], f[k])]
    assert not bad, bad


@pytest.mark.parametrize("scale", [1e-20, 1e-3, 1e18, 1e19])
@pytest.mark.parametrize("batch,c,spatial", [(2, 6, 5), (2, 17, 20)])
def test_batchnorm_kernels_bitwise_tiny_and_huge(scale, batch, c, spatial):
    """Denormal differences, overflowing squares: the same bits from both (small planes
    and the channel vectors)."""
    rng = np.random.default_rng(int(-math.log10(scale) + 40) + c)
    s = bn_state(rng, batch, c, spatial, False, scale)
    r = run_bn(ref, s, batch, c, spatial)
    f = run_bn(fast, s, batch, c, spatial)
    assert all(same(r[k], f[k]) for k in r)
    if scale == 1e19:  # the sums of squares overflow float: the variances are inf
        assert np.isinf(r["variance"]).any()


@pytest.mark.parametrize("batch,c,spatial", [(2, 7, 9), (2, 27, 19)])
def test_batchnorm_forward_in_place_bitwise(batch, c, spatial):
    """A convolutional layer passes its output as the input."""
    s = bn_state(np.random.default_rng(3), batch, c, spatial, True)
    r = run_bn(ref, s, batch, c, spatial, in_place=True)
    f = run_bn(fast, s, batch, c, spatial, in_place=True)
    assert all(same(r[k], f[k]) for k in r)
    plain = run_bn(ref, s, batch, c, spatial)
    assert same(plain["output"], r["output"])


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_forward_planes_longer_than_a_copy_run(in_place, train):
    """Planes of more than ``COPY_RUN`` pixels (copied to x, then normalised from x, run by
    run): every run boundary and the ragged last run give the reference's bits."""
    spatial = 2 * fast.COPY_RUN + 37
    s = bn_state(np.random.default_rng(21), 2, 3, spatial, True)
    r = run_bn(ref, s, 2, 3, spatial, train, in_place=in_place)
    f = run_bn(fast, s, 2, 3, spatial, train, in_place=in_place)
    assert all(same(r[k], f[k]) for k in r)
    for activation in (LEAKY, RELU, LINEAR, LOGISTIC):
        r, f = (run_infer_activate(module, s, 2, 3, spatial, activation, in_place) for module in (ref, fast))
        assert same(r["output"], f["output"]) and same(r["x"], f["x"])


def test_batchnorm_kernels_bitwise_random_shapes():
    rng = np.random.default_rng(11)
    for _ in range(16):
        batch, c, spatial = int(rng.integers(1, 10)), int(rng.integers(1, 41)), int(rng.integers(1, 60))
        s = bn_state(rng, batch, c, spatial, bool(rng.integers(0, 2)))
        train = bool(rng.integers(0, 2))
        r = run_bn(ref, s, batch, c, spatial, train)
        f = run_bn(fast, s, batch, c, spatial, train)
        assert all(same(r[k], f[k]) for k in r), (batch, c, spatial, train)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS.values()))
def test_batchnorm_forward_infer_activate_bitwise(activation):
    """The inference epilogue, every activation, both paths, in place and not, with specials."""
    rng = np.random.default_rng(500 + activation)
    for batch, c, spatial in ((1, 3, 1), (2, 70, 1), (3, 5, 4), (2, 9, 35), (1, 17, 16), (4, 6, 23)):
        for specials in (False, True):
            s = bn_state(rng, batch, c, spatial, specials, scale=float(rng.choice([1, 50])))
            results = [run_infer_activate(module, s, batch, c, spatial, activation, in_place)
                       for module in (ref, fast) for in_place in (False, True)]
            for t in results[1:]:
                assert all(same(results[0][k], t[k]) for k in ("output", "x")), (batch, c, spatial, specials)
            # and it is batchnorm_forward_infer followed by the activation, element by element
            t = {k: v.copy() for k, v in s.items()}
            ref.batchnorm_forward_infer(t["input"], t["output"], t["x"], t["rolling_mean"], t["rolling_variance"],
                                        t["scales"], t["biases"], batch, c, spatial)
            expected = np.array([activate(v, activation) for v in t["output"]], np.float32)
            assert same(results[0]["output"], expected)
            assert same(results[0]["x"], s["input"])


def test_batchnorm_forward_infer_activate_unknown_value_gives_zero():
    """darknet's activate returns 0 for a value outside the enum: both kernels agree."""
    s = bn_state(np.random.default_rng(9), 2, 9, 20, False)
    for module in (ref, fast):
        t = {k: v.copy() for k, v in s.items()}
        module.batchnorm_forward_infer_activate(t["input"], t["output"], t["x"], t["rolling_mean"],
                                                t["rolling_variance"], t["scales"], t["biases"], 2, 9, 20, 99)
        assert same(t["output"], np.zeros_like(t["output"]))


# ----------------------------------------------------------------------------- the reference itself
# numpy evaluations of darknet's expressions, written independently of the kernels.

def np_serial_sum(values, dtype=np.float32):
    acc = dtype(0)
    for v in values:
        acc = dtype(acc + v)
    return acc


def test_reference_mean_variance_follow_c_promotions():
    rng = np.random.default_rng(1)
    batch, c, spatial = 2, 3, 5
    x = rng.standard_normal(batch * c * spatial).astype(np.float32)
    mean = np.zeros(c, np.float32)
    var = np.zeros(c, np.float32)
    ref.mean_cpu(x, batch, c, spatial, mean)
    ref.variance_cpu(x, mean, batch, c, spatial, var)
    xr = x.reshape(batch, c, spatial)
    for f in range(c):
        vals = xr[:, f, :].ravel()
        m = np_serial_sum(vals) * np.float32(1. / (batch * spatial))
        assert same(mean[f:f + 1], np.float32([m]))
        v = np.float32(0)
        for val in vals:
            d = np.float64(np.float32(val - m))
            v = np.float32(np.float64(v) + d * d)
        assert same(var[f:f + 1], np.float32([v * np.float32(1. / (batch * spatial - 1))]))


def test_reference_mean_delta_variance_delta_normalize_delta():
    rng = np.random.default_rng(2)
    batch, c, spatial = 2, 2, 3
    n = batch * c * spatial
    x, delta = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
    mean = rng.standard_normal(c).astype(np.float32)
    var = rng.uniform(0.1, 2, c).astype(np.float32)
    md = np.zeros(c, np.float32)
    vd = np.zeros(c, np.float32)
    ref.mean_delta_cpu(delta, var, batch, c, spatial, md)
    ref.variance_delta_cpu(x, delta, mean, var, batch, c, spatial, vd)
    out = delta.copy()
    ref.normalize_delta_cpu(x, mean, var, md, vd, batch, c, spatial, out)
    xr, dr = x.reshape(batch, c, spatial), delta.reshape(batch, c, spatial)
    for f in range(c):
        veps = np.float64(np.float32(var[f] + np.float32(1e-5)))
        m = np_serial_sum(dr[:, f].ravel())
        assert md[f] == np.float32(np.float64(m) * (-1. / math.sqrt(veps)))
        w = np_serial_sum(dr[:, f].ravel() * (xr[:, f].ravel() - mean[f]))
        assert vd[f] == np.float32(np.float64(w) * (-.5 * veps ** -1.5))
        for b in range(batch):
            for k in range(spatial):
                d = np.float64(dr[b, f, k]) / math.sqrt(veps)
                t2 = np.float64(vd[f]) * 2. * np.float64(np.float32(xr[b, f, k] - mean[f])) / (batch * spatial)
                t3 = np.float64(np.float32(md[f] / np.float32(batch * spatial)))
                assert out.reshape(batch, c, spatial)[b, f, k] == np.float32(d + t2 + t3)


def test_reference_backward_bias_adds_each_plane_separately():
    """bias_updates[i] += (float sum of a plane), image by image: not one sum over the batch."""
    delta = np.array([1e8, 1, 1, -1e8], np.float32)             # batch 2, one channel, 2 pixels
    bu = np.zeros(1, np.float32)
    ref.backward_bias(bu, delta, 2, 1, 2)
    assert bu[0] == np.float32(np.float32(0) + np.float32(1e8 + 1)) + np.float32(1 - 1e8)
    assert bu[0] == 0.0                                           # a single serial sum would give 1


def test_reference_softmax():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(10).astype(np.float32)
    out = np.zeros(10, np.float32)
    ref.softmax_cpu(x, 5, 2, 5, 1, 0, 1, np.float32(1), out)
    for b in range(2):
        v = x[5 * b:5 * b + 5]
        largest = v.max()
        e = np.float32([math.exp(np.float64(np.float32(t / np.float32(1)) - largest)) for t in v])
        assert same(out[5 * b:5 * b + 5], e / np_serial_sum(e))
    # stride and temperature: every other element, temp 2
    out = np.zeros(10, np.float32)
    ref.softmax(x, 5, np.float32(2), 2, out)
    assert np.all(out[1::2] == 0) and abs(out[::2].sum() - 1) < 1e-6


def test_reference_losses():
    pred = np.array([0.2, 0.7, 0.5, 1e-30], np.float32)
    truth = np.array([0.0, 1.0, 3.0, 1.0], np.float32)
    delta = np.zeros(4, np.float32)
    err = np.zeros(4, np.float32)
    ref.l2_cpu(4, pred, truth, delta, err)
    assert same(delta, truth - pred) and same(err, (truth - pred) * (truth - pred))
    ref.l1_cpu(4, pred, truth, delta, err)
    assert same(err, np.abs(truth - pred)) and list(delta) == [-1, 1, 1, 1]
    ref.smooth_l1_cpu(4, pred, truth, delta, err)
    diff = truth - pred
    assert err[2] == np.float32(2) * diff[2] - 1 and delta[2] == -1     # darknet's sign outside |d| < 1
    assert err[0] == diff[0] * diff[0] and delta[0] == diff[0]
    ref.softmax_x_ent_cpu(4, pred, truth, delta, err)
    assert err[0] == 0 and err[1] == np.float32(-math.log(np.float64(pred[1])))
    ref.logistic_x_ent_cpu(4, pred, truth, delta, err)
    t, p = np.float64(truth[1]), np.float64(pred[1])
    one_t, one_p = np.float64(np.float32(1 - truth[1])), np.float64(np.float32(1 - pred[1]))
    assert err[1] == np.float32(-t * math.log(p) - one_t * math.log(one_p))


def test_reference_layout_ops_round_trip():
    rng = np.random.default_rng(5)
    w, h, c, batch, stride = 4, 2, 8, 2, 2
    x = rng.standard_normal(w * h * c * batch).astype(np.float32)
    out = np.zeros_like(x)
    ref.reorg_cpu(x, w, h, c, batch, stride, 1, out)
    back = np.zeros_like(x)
    ref.reorg_cpu(out, w, h, c, batch, stride, 0, back)
    assert same(back, x)
    y = x.copy()
    ref.flatten(y, w * h, c, batch, 1)
    assert same(y, x.reshape(batch, c, w * h).transpose(0, 2, 1).ravel())
    ref.flatten(y, w * h, c, batch, 0)
    assert same(y, x)
    up = np.zeros(x.size * 4, np.float32)
    ref.upsample_cpu(x, w, h, c, batch, 2, 1, 0.5, up)
    assert same(up.reshape(batch, c, 2 * h, 2 * w)[:, :, ::2, 1::2], 0.5 * x.reshape(batch, c, h, w))
    grad = np.zeros_like(x)
    ref.upsample_cpu(grad, w, h, c, batch, 2, 0, 1.0, np.ones_like(up))
    assert np.all(grad == 4)
    inter = np.zeros(10, np.float32)
    a, b = np.arange(6, dtype=np.float32), np.arange(6, 10, dtype=np.float32)
    ref.inter_cpu(3, a, 2, b, 2, inter)
    assert list(inter) == [0, 1, 2, 6, 7, 3, 4, 5, 8, 9]
    da, db = np.zeros(6, np.float32), np.zeros(4, np.float32)
    ref.deinter_cpu(3, da, 2, db, 2, inter)
    assert same(da, a) and same(db, b)
    ref.deinter_cpu(3, None, 2, db, 2, inter)
    assert same(db, 2 * b)


def test_reference_shortcut_and_weighted():
    rng = np.random.default_rng(6)
    add = rng.standard_normal(1 * 2 * 4 * 4).astype(np.float32)
    out = rng.standard_normal(1 * 3 * 2 * 2).astype(np.float32)
    o = out.copy()
    ref.shortcut_cpu(1, 4, 4, 2, add, 2, 2, 3, 0.5, 2.0, o)
    want = out.reshape(3, 2, 2).copy()
    want[:2] = np.float32(0.5) * want[:2] + np.float32(2.0) * add.reshape(2, 4, 4)[:, ::2, ::2]
    assert same(o, want.ravel())
    with pytest.raises(ShapeError):
        ref.shortcut_cpu(1, 4, 2, 2, add, 2, 2, 3, 1.0, 1.0, o)
    a, b, s = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
    c = np.zeros(5, np.float32)
    ref.weighted_sum_cpu(a, None, s, 5, c)
    assert same(c, s * a + (np.float32(1) - s) * np.float32(0))
    ref.weighted_sum_cpu(a, b, s, 5, c)
    assert same(c, s * a + (np.float32(1) - s) * b)
    dc = rng.standard_normal(5).astype(np.float32)
    da, ds = np.zeros(5, np.float32), np.zeros(5, np.float32)
    ref.weighted_delta_cpu(a, b, s, da, None, ds, 5, dc)
    assert same(da, dc * s) and same(ds, dc * (a - b))


def test_reference_small_ops():
    x = np.array([1, 2, 3, 4], np.float32)
    y = np.array([1, 1, 1, 1], np.float32)
    assert ref.dot_cpu(4, x, 1, y, 1) == 10 and ref.dot_cpu(2, x, 2, y, 2) == 4
    assert ref.sum_array(x, 3) == 6
    z = np.zeros(4, np.float32)
    ref.mult_add_into_cpu(4, x, x, z)
    assert list(z) == [1, 4, 9, 16]
    ref.pow_cpu(4, 0.5, x, 1, z, 1)
    assert same(z, np.sqrt(x.astype(np.float64)).astype(np.float32))
    ref.mul_cpu(4, x, 1, z, 1)
    ref.const_cpu(2, 7, z, 2)
    assert z[0] == 7 and z[2] == 7 and z[1] == np.float32(np.float32(math.sqrt(2)) * 2)
    v = np.array([3, 0, 4, 0], np.float32)                         # 2 filters x 2 pixels
    dx = np.zeros(4, np.float32)
    ref.l2normalize_cpu(v, dx, 1, 2, 2)
    assert v[0] == np.float32(3) / np.float32(5) and v[2] == np.float32(4) / np.float32(5)
    assert dx[0] == (1 - v[0]) / np.float32(5) and np.isnan(v[1]) and np.isnan(v[3])


# ----------------------------------------------------------------------------- NaN payloads

def nan_storm(rng, state, frac=0.3):
    """Replace a fraction of every tensor by quiet NaNs of random sign and payload."""
    out = {}
    for k, a in state.items():
        a = a.copy()
        hit = rng.random(a.size) < frac
        bits = ((0x7FC00000 | rng.integers(0, 1 << 22, a.size)) | (rng.integers(0, 2, a.size) << 31)).astype(np.uint32)
        a[hit] = bits[hit].view(np.float32)
        out[k] = a
    return out


@pytest.mark.parametrize("seed", range(6))
def test_batchnorm_kernels_bitwise_nan_storm(seed):
    """Two NaNs meeting keep the first operand's payload on x86: fast and reference pin the
    same (gcc's) operand order, so even NaN signs and payloads agree."""
    rng = np.random.default_rng(100 + seed)
    # small planes take the memory-order path, larger ones the channel-lane path
    batch, c, spatial = int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 10)) + 24 * (seed % 2)
    s = nan_storm(rng, bn_state(rng, batch, c, spatial, True))
    for train in (True, False):
        r = run_bn(ref, s, batch, c, spatial, train)
        f = run_bn(fast, s, batch, c, spatial, train)
        assert all(same(r[k], f[k]) for k in r), [k for k in r if not same(r[k], f[k])]


def darknet_library():
    """A locally built darknet (strict flags) to call through ctypes, or skip: ``DARKNET_LIB``,
    else the libdarknet.so of the first build named by ``DARKNET_DIR`` (as tools/ and
    ``darkpy bench`` take it), else /tmp/darknet-strict."""
    import ctypes
    import os
    from pathlib import Path
    candidates = [os.environ["DARKNET_LIB"]] if os.environ.get("DARKNET_LIB") else [
        str(Path(d) / "libdarknet.so") for d in os.environ.get("DARKNET_DIR", "").split(os.pathsep) if d
    ] + ["/tmp/darknet-strict/libdarknet.so"]
    path = next((p for p in candidates if os.path.exists(p)), None)
    if path is None:
        pytest.skip(f"no darknet library at {', '.join(candidates)} (set DARKNET_LIB or DARKNET_DIR "
                    "to a strict build)")
    return ctypes.CDLL(path)


def test_reference_matches_darknet_library_on_nan_storms():
    """Against darknet's own blas/batchnorm functions (a local strict build, if present):
    the whole batchnorm call sequence, bit for bit, NaN payloads included."""
    import ctypes
    lib = darknet_library()
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    F = ctypes.c_float
    for seed in range(30):
        rng = np.random.default_rng(seed)
        batch, c = int(rng.integers(1, 4)), int(rng.integers(1, 10))
        sp = int(rng.integers(1, 12)) + 20 * (seed % 3 == 0)
        s = bn_state(rng, batch, c, sp, True)
        if seed % 2:
            s = nan_storm(rng, s, 0.1)
        d = {k: v.copy() for k, v in s.items()}
        n = batch * c * sp
        lib.copy_cpu(n, ptr(d["input"]), 1, ptr(d["output"]), 1)
        lib.copy_cpu(n, ptr(d["output"]), 1, ptr(d["x"]), 1)
        lib.mean_cpu(ptr(d["output"]), batch, c, sp, ptr(d["mean"]))
        lib.variance_cpu(ptr(d["output"]), ptr(d["mean"]), batch, c, sp, ptr(d["variance"]))
        for stat, rolling in (("mean", "rolling_mean"), ("variance", "rolling_variance")):
            lib.scal_cpu(c, F(.99), ptr(d[rolling]), 1)
            lib.axpy_cpu(c, F(.01), ptr(d[stat]), 1, ptr(d[rolling]), 1)
        lib.normalize_cpu(ptr(d["output"]), ptr(d["mean"]), ptr(d["variance"]), batch, c, sp)
        lib.copy_cpu(n, ptr(d["output"]), 1, ptr(d["x_norm"]), 1)
        lib.scale_bias(ptr(d["output"]), ptr(d["scales"]), batch, c, sp)
        lib.add_bias(ptr(d["output"]), ptr(d["biases"]), batch, c, sp)
        lib.backward_bias(ptr(d["bias_updates"]), ptr(d["delta"]), batch, c, sp)
        lib.backward_scale_cpu(ptr(d["x_norm"]), ptr(d["delta"]), batch, c, sp, ptr(d["scale_updates"]))
        lib.scale_bias(ptr(d["delta"]), ptr(d["scales"]), batch, c, sp)
        lib.mean_delta_cpu(ptr(d["delta"]), ptr(d["variance"]), batch, c, sp, ptr(d["mean_delta"]))
        lib.variance_delta_cpu(ptr(d["x"]), ptr(d["delta"]), ptr(d["mean"]), ptr(d["variance"]),
                               batch, c, sp, ptr(d["variance_delta"]))
        lib.normalize_delta_cpu(ptr(d["x"]), ptr(d["mean"]), ptr(d["variance"]), ptr(d["mean_delta"]),
                                ptr(d["variance_delta"]), batch, c, sp, ptr(d["delta"]))
        for module in (ref, fast):
            ours = run_bn(module, s, batch, c, sp)
            bad = [k for k in d if not same(d[k], ours[k])]
            assert not bad, (module.__name__, seed, bad)


def test_reference_blas_matches_darknet_library():
    """Every other blas.c function against darknet's own (a local strict build, if present),
    on finite data and on NaN storms: the same bits, NaN payloads included."""
    import ctypes
    lib = darknet_library()
    lib.dot_cpu.restype = ctypes.c_float
    ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # noqa: E731
    n = 37
    cases = [  # (name, argument maker, indexes of the arguments compared after the call)
        ("weighted_sum_cpu", lambda N, r: [N(n), N(n), N(n), n, N(n)], [4]),
        ("weighted_sum_cpu", lambda N, r: [N(n), None, N(n), n, N(n)], [4]),
        ("weighted_delta_cpu", lambda N, r: [N(n), N(n), N(n), N(n), N(n), N(n), n, N(n)], [3, 4, 5]),
        ("shortcut_cpu", lambda N, r: [2, 4, 4, 3, N(96), 2, 2, 5, 0.5, 1.5, N(40)], [10]),
        ("shortcut_cpu", lambda N, r: [2, 2, 2, 3, N(24), 4, 4, 2, 0.7, 1.0, N(64)], [10]),
        ("l2normalize_cpu", lambda N, r: [N(30), N(30), 2, 3, 5], [0, 1]),
        ("mul_cpu", lambda N, r: [n, N(n), 1, N(n), 1], [3]),
        ("pow_cpu", lambda N, r: [n, 1.7, np.abs(N(n)), 1, N(n), 1], [4]),
        ("mult_add_into_cpu", lambda N, r: [n, N(n), N(n), N(n)], [3]),
        ("smooth_l1_cpu", lambda N, r: [n, N(n), N(n), N(n), N(n)], [3, 4]),
        ("l1_cpu", lambda N, r: [n, N(n), N(n), N(n), N(n)], [3, 4]),
        ("l2_cpu", lambda N, r: [n, N(n), N(n), N(n), N(n)], [3, 4]),
        ("softmax_x_ent_cpu", lambda N, r: [n, np.abs(N(n)), (r.random(n) < .5).astype(np.float32), N(n), N(n)],
         [3, 4]),
        ("logistic_x_ent_cpu", lambda N, r: [n, r.random(n).astype(np.float32), r.random(n).astype(np.float32),
                                             N(n), N(n)], [3, 4]),
        ("softmax_cpu", lambda N, r: [N(60), 5, 2, 30, 3, 10, 2, np.float32(.9), N(60)], [8]),
        ("upsample_cpu", lambda N, r: [N(96), 4, 4, 3, 2, 2, 1, np.float32(.5), N(384)], [8]),
        ("upsample_cpu", lambda N, r: [N(96), 4, 4, 3, 2, 2, 0, np.float32(.5), N(384)], [0]),
        ("reorg_cpu", lambda N, r: [N(256), 4, 4, 8, 2, 2, 1, N(256)], [7]),
        ("flatten", lambda N, r: [N(30), 5, 3, 2, 1], [0]),
        ("axpy_cpu", lambda N, r: [n, np.float32(.3), N(n), 1, N(n), 1], [4]),
        ("scal_cpu", lambda N, r: [n, np.float32(.3), N(n), 1], [2]),
        ("inter_cpu", lambda N, r: [3, N(6), 2, N(4), 2, N(10)], [5]),
        ("deinter_cpu", lambda N, r: [3, N(6), 2, N(4), 2, N(10)], [1, 3]),
        ("dot_cpu", lambda N, r: [n, N(n), 1, N(n), 1], []),
    ]
    for name, make, compared in cases:
        for seed in range(8):
            for frac in (0.0, 0.3):
                rng = np.random.default_rng(seed)

                def N(size):
                    a = (rng.standard_normal(size) * 2).astype(np.float32)
                    return nan_storm(rng, {"x": a}, frac)["x"] if frac else a

                args = make(N, rng)
                results = []
                for module in (None, ref, fast):
                    a = [v.copy() if isinstance(v, np.ndarray) else v for v in args]
                    if module is None:
                        c_args = [ptr(v) if isinstance(v, np.ndarray) else
                                  ctypes.c_float(v) if isinstance(v, (float, np.floating)) else v for v in a]
                        value = getattr(lib, name)(*c_args)
                    else:
                        value = getattr(module, name)(*a)
                    results.append([a[i] for i in compared] +
                                   ([np.float32([value])] if name == "dot_cpu" else []))
                for ours in results[1:]:
                    assert all(same(d, o) for d, o in zip(results[0], ours)), (name, seed, frac)


def _asm(fn, *args):
    """x86 assembly of a fresh (uncached) compilation of ``fn``, its callees inlined."""
    from numba import njit
    fresh = njit(error_model="numpy")(fn.py_func)
    fresh(*args)
    return fresh.inspect_asm(fresh.signatures[0])


def test_no_fused_multiply_add_in_the_vector_kernels():
    """The CPU has FMA: LLVM must not have contracted a multiply and an add of the chains."""
    batch, c, spatial = 2, 16, 20
    n = batch * c * spatial
    a, m, v = np.ones(n, np.float32), np.zeros(c, np.float32), np.zeros(c, np.float32)
    asm = _asm(fast._mean_variance_vectors, a, batch, c, spatial, 0, 8, m, v)
    assert "vcvtps2pd" in asm and "vcvtpd2ps" in asm and "vmulpd" in asm  # the vector variance chain
    assert "fmadd" not in asm and "fmsub" not in asm and "fnmadd" not in asm
    sums, planes = np.zeros(3 * fast.VECTOR, np.float32), np.zeros(batch * fast.VECTOR, np.float32)
    asm = _asm(fast._backward_sums_vector, a, a, a, m, v, batch, c, spatial, 0, sums, planes)
    assert "vmulps" in asm and "vaddps" in asm and "vsubps" in asm
    assert "fmadd" not in asm and "fmsub" not in asm and "fnmadd" not in asm
