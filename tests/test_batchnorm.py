"""The [batchnorm] layer: darknet's golden dumps bit for bit, and the maths of its gradient.

1. Every strict golden batchnorm case, with the reference and the fast kernels:
   each computed tensor bitwise (NaN/inf bits included).
2. A float64 central-difference check of the textbook batchnorm gradient.
3. What darknet's backward actually is, and by how much it departs from the
   textbook gradient and from the true gradient of darknet's own forward.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import GOLDEN, central_gradient, golden_cases, shared_path
from darkpy.check import bitwise_equal, ulp_distance
from darkpy.dump import read_case
from darkpy.errors import ShapeError
from darkpy.layers import batchnorm

FORWARD_TENSORS = ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance")
BACKWARD_TENSORS = ("bias_updates", "scale_updates", "mean_delta", "variance_delta", "delta")


def make_net(input, train, delta=None):
    return SimpleNamespace(input=input, delta=delta, train=train, workspace=None, truth=None, index=0)


def run_golden(case):
    """Run a golden batchnorm case the way the generator did; {tensor name: our value}."""
    p = case.params
    l = batchnorm.make_batchnorm_layer(p["batch"], p["w"], p["h"], p["c"])
    l.scales[:] = case.flat("scales")
    l.biases[:] = case.flat("biases")
    l.rolling_mean[:] = case.flat("rolling_mean_before")
    l.rolling_variance[:] = case.flat("rolling_variance_before")
    train = p["train"]
    if train:
        l.bias_updates[:] = case.flat("bias_updates_before")
        l.scale_updates[:] = case.flat("scale_updates_before")
    # net.delta starts as NaN: darknet copies into it, so no NaN may survive.
    net = make_net(case.flat("input"), train, np.full(l.outputs * l.batch, np.nan, np.float32))
    ours = {}
    l.forward(l, net)
    for name in FORWARD_TENSORS:
        ours[name] = getattr(l, name).copy()
    if train:
        l.delta[:] = case.flat("delta_in")
        l.backward(l, net)
        for name in BACKWARD_TENSORS:
            ours[name] = getattr(l, name).copy()
        ours["net_delta"] = net.delta.copy()
    return ours


def assert_case_bitwise(path):
    case = read_case(path)
    ours = run_golden(case)
    computed = case.names("forward") + case.names("backward")
    assert computed, "a golden case with nothing to compare"
    bad = []
    for name in computed:
        expected = case.flat(name)
        if not bitwise_equal(expected, ours[name]):
            d = ulp_distance(expected, ours[name])
            bad.append(f"{name}: {int((d != 0).sum())} differ, max ULP {d.max()}")
    assert not bad, f"{path.name}: " + "; ".join(bad)
    return computed


@pytest.mark.parametrize("name", golden_cases("bn-"))
def test_golden_bitwise(name, impl):
    computed = assert_case_bitwise(GOLDEN / name)
    expected = 1 if name.endswith("-infer") else len(FORWARD_TENSORS) + len(BACKWARD_TENSORS) + 1
    assert len(computed) == expected


def test_golden_large_bitwise(impl):
    assert_case_bitwise(shared_path("golden", "strict", "bn-b8c64h26w26"))


def test_golden_edge_cases_hold_nan_and_inf():
    """The 1x1x1x1 case divides by zero (n - 1 == 0): the reference bits are NaN, and we match them."""
    case = read_case(GOLDEN / "bn-b1c1h1w1")
    assert np.isnan(case.flat("variance")).all()
    assert np.isnan(case.flat("output")).all()
    assert_case_bitwise(GOLDEN / "bn-b1c1h1w1")


def test_inference_uses_rolling_statistics(impl):
    """train=0 normalises with rolling_mean/rolling_variance and leaves every statistic alone."""
    rng = np.random.default_rng(5)
    batch, c, h, w = 2, 3, 2, 4
    l = batchnorm.make_batchnorm_layer(batch, w, h, c)
    l.rolling_mean[:] = rng.standard_normal(c)
    l.rolling_variance[:] = rng.uniform(0.5, 2, c)
    l.scales[:] = rng.standard_normal(c)
    l.biases[:] = rng.standard_normal(c)
    l.mean[:] = 7
    l.variance[:] = 9
    saved = {k: getattr(l, k).copy() for k in ("rolling_mean", "rolling_variance", "mean", "variance")}
    x = rng.standard_normal(batch * c * h * w).astype(np.float32)
    l.forward(l, make_net(x, 0))
    for k, v in saved.items():
        assert bitwise_equal(getattr(l, k), v), k
    # The same values a numpy float64 evaluation of darknet's expression gives, rounded once.
    xr = x.reshape(batch, c, h * w)
    rm = l.rolling_mean[None, :, None]
    rv = l.rolling_variance[None, :, None].astype(np.float64)
    norm = ((xr - rm).astype(np.float64) / (np.sqrt(rv) + np.float64(np.float32(1e-6)))).astype(np.float32)
    want = norm * l.scales[None, :, None] + l.biases[None, :, None]
    assert bitwise_equal(l.output, want.ravel())
    assert bitwise_equal(l.x, x)
    # and differs from what batch statistics would give
    l2 = batchnorm.make_batchnorm_layer(batch, w, h, c)
    l2.rolling_mean[:] = l.rolling_mean
    l2.rolling_variance[:] = l.rolling_variance
    l2.scales[:] = l.scales
    l2.biases[:] = l.biases
    l2.forward(l2, make_net(x, 1))
    assert not bitwise_equal(l2.output, l.output)


def test_called_on_another_layer_type(impl):
    """On a convolutional layer the layer's own output is normalised in place; net.input and
    net.delta are neither read nor written (darknet's l.type == BATCHNORM branches)."""
    rng = np.random.default_rng(6)
    batch, c, h, w = 2, 4, 3, 3
    bn = batchnorm.make_batchnorm_layer(batch, w, h, c)
    conv = batchnorm.make_batchnorm_layer(batch, w, h, c)
    conv.type = "convolutional"
    for l in (bn, conv):
        l.scales[:] = np.linspace(0.5, 2, c)
        l.biases[:] = np.linspace(-1, 1, c)
    x = rng.standard_normal(batch * c * h * w).astype(np.float32)
    conv.output[:] = x
    poison = np.full_like(x, np.nan)
    conv_net = make_net(poison.copy(), 1, poison.copy())
    bn_net = make_net(x, 1, np.zeros_like(x))
    bn.forward(bn, bn_net)
    conv.forward(conv, conv_net)
    assert bitwise_equal(conv.output, bn.output)
    dy = rng.standard_normal(x.size).astype(np.float32)
    bn.delta[:] = dy
    conv.delta[:] = dy
    bn.backward(bn, bn_net)
    conv.backward(conv, conv_net)
    assert bitwise_equal(conv.delta, bn.delta)
    assert bitwise_equal(bn_net.delta, bn.delta)          # copied, not added into zeros by chance:
    assert np.isnan(conv_net.delta).all() and np.isnan(conv_net.input).all()


def test_backward_copies_into_net_delta(impl):
    """darknet copies the layer's delta into net.delta (it does not accumulate)."""
    l = batchnorm.make_batchnorm_layer(1, 2, 2, 2)
    x = np.arange(8, dtype=np.float32)
    net = make_net(x, 1, np.full(8, 100, np.float32))
    l.forward(l, net)
    l.delta[:] = np.linspace(-1, 1, 8)
    l.backward(l, net)
    assert bitwise_equal(net.delta, l.delta)


def test_make_layer_shapes_and_errors():
    l = batchnorm.make_batchnorm_layer(3, 5, 4, 2)      # batch, w, h, c
    assert (l.w, l.h, l.c, l.out_w, l.out_h, l.out_c) == (5, 4, 2, 5, 4, 2)
    assert l.inputs == l.outputs == 40
    assert l.output.size == l.delta.size == l.x.size == l.x_norm.size == 120
    assert bitwise_equal(l.scales, np.ones(2, np.float32))
    assert l.mean_delta.size == l.variance_delta.size == 2
    assert l.update is None
    with pytest.raises(ShapeError):
        batchnorm.make_batchnorm_layer(1, 0, 4, 2)


def test_parse_takes_incoming_shape():
    params = SimpleNamespace(batch=2, inputs=60, h=3, w=4, c=5, index=0, time_steps=1, net=None)
    from darkpy.description import parse_cfg_text
    section = parse_cfg_text("[net]\nwidth=4\nheight=3\nchannels=5\n[batchnorm]\n").layers[0]
    l = batchnorm.parse(section, params)
    assert (l.batch, l.w, l.h, l.c) == (2, 4, 3, 5)


def test_parse_refuses_an_unknown_style():
    from darkpy.description import parse_cfg_text
    from darkpy.errors import CfgError
    params = SimpleNamespace(batch=1, inputs=60, h=3, w=4, c=5, index=0, time_steps=1, net=None)
    section = parse_cfg_text("[net]\nwidth=4\nheight=3\nchannels=5\n[batchnorm]\nstyle=torch\n",
                             path="x.cfg").layers[0]
    with pytest.raises(CfgError, match=r"x.cfg:6.*style=torch: expected darknet or caffe"):
        batchnorm.parse(section, params)


# ----------------------------------------------------------------------------- the maths

EPS = 1e-5  # darknet's backward epsilon (.00001f), used for the textbook formula too


def textbook_forward(x, gamma, beta, eps=EPS):
    """float64 batchnorm over (batch, c, spatial): biased variance, eps inside the root."""
    mu = x.mean(axis=(0, 2), keepdims=True)
    var = ((x - mu) ** 2).mean(axis=(0, 2), keepdims=True)
    xhat = (x - mu) / np.sqrt(var + eps)
    return gamma[None, :, None] * xhat + beta[None, :, None]


def textbook_backward(x, gamma, dy, var=None, eps=EPS):
    """The textbook gradient: dgamma = sum dy*xhat, dbeta = sum dy,
    dx = (1/m) gamma (var+eps)^-1/2 (m dy - sum dy - xhat sum(dy xhat)).
    ``var`` defaults to the biased variance; passing another one evaluates the same formula there."""
    m = x.shape[0] * x.shape[2]
    mu = x.mean(axis=(0, 2), keepdims=True)
    if var is None:
        var = ((x - mu) ** 2).mean(axis=(0, 2), keepdims=True)
    xhat = (x - mu) / np.sqrt(var + eps)
    dgamma = (dy * xhat).sum(axis=(0, 2))
    dbeta = dy.sum(axis=(0, 2))
    g = gamma[None, :, None]
    dx = (g / m) / np.sqrt(var + eps) * (m * dy - dy.sum(axis=(0, 2), keepdims=True)
                                          - xhat * (dy * xhat).sum(axis=(0, 2), keepdims=True))
    return dx, dgamma, dbeta


def darknet_forward64(x, gamma, beta):
    """darknet's training forward in float64: unbiased variance, (x-mu)/(sqrt(var) + 1e-6)."""
    m = x.shape[0] * x.shape[2]
    mu = x.mean(axis=(0, 2), keepdims=True)
    var = ((x - mu) ** 2).sum(axis=(0, 2), keepdims=True) / (m - 1)
    xhat = (x - mu) / (np.sqrt(var) + 1e-6)
    return gamma[None, :, None] * xhat + beta[None, :, None]


def darknet_backward64(x, gamma, dy):
    """darknet's backward_batchnorm_layer in float64, term by term (mean_delta_cpu,
    variance_delta_cpu, normalize_delta_cpu after scale_bias), on the unbiased variance."""
    m = x.shape[0] * x.shape[2]
    mu = x.mean(axis=(0, 2), keepdims=True)
    var = ((x - mu) ** 2).sum(axis=(0, 2), keepdims=True) / (m - 1)
    d = dy * gamma[None, :, None]
    mean_delta = d.sum(axis=(0, 2), keepdims=True) * (-1 / np.sqrt(var + EPS))
    variance_delta = (d * (x - mu)).sum(axis=(0, 2), keepdims=True) * (-.5 * (var + EPS) ** -1.5)
    return d / np.sqrt(var + EPS) + variance_delta * 2 * (x - mu) / m + mean_delta / m


def central_difference(f, x, dy):
    """d/dx of sum(dy * f(x)) by float64 central differences."""
    return central_gradient(lambda v: (dy * f(v)).sum(), x)


def sample(seed, batch=2, c=3, spatial=6):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, spatial)) * rng.uniform(0.7, 1.5, (1, c, 1)) + rng.standard_normal((1, c, 1))
    gamma = rng.uniform(0.5, 2, c)
    beta = rng.standard_normal(c)
    dy = rng.standard_normal((batch, c, spatial))
    return x, gamma, beta, dy


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_textbook_gradient_by_central_differences():
    x, gamma, beta, dy = sample(1)
    dx, dgamma, dbeta = textbook_backward(x, gamma, dy)
    assert rel(dx, central_difference(lambda v: textbook_forward(v, gamma, beta), x, dy)) < 1e-7
    # dgamma, dbeta: perturb one parameter at a time
    h = 1e-6

    def loss(g, b):
        return (dy * textbook_forward(x, g, b)).sum()

    for k in range(len(gamma)):
        e = np.zeros_like(gamma)
        e[k] = h
        fd_g = (loss(gamma + e, beta) - loss(gamma - e, beta)) / (2 * h)
        fd_b = (loss(gamma, beta + e) - loss(gamma, beta - e)) / (2 * h)
        assert abs(fd_g - dgamma[k]) < 1e-7 * max(1, abs(dgamma[k]))
        assert abs(fd_b - dbeta[k]) < 1e-7 * max(1, abs(dbeta[k]))


def test_darknet_backward_is_the_textbook_formula_at_the_unbiased_variance():
    """Derivation: after scale_bias, darknet computes
        dx = d/s - (x-mu) sum(d (x-mu)) / (m s^3) - sum(d)/(m s),   s = sqrt(var_u + 1e-5),
    which is exactly the textbook formula with the biased variance replaced by the unbiased
    var_u = S/(m-1) that its forward normalised with.  Checked to rounding in float64, and
    the float32 kernels agree with this float64 evaluation to float32 accuracy."""
    x, gamma, beta, dy = sample(2)
    m = x.shape[0] * x.shape[2]
    mu = x.mean(axis=(0, 2), keepdims=True)
    var_u = ((x - mu) ** 2).sum(axis=(0, 2), keepdims=True) / (m - 1)
    dk = darknet_backward64(x, gamma, dy)
    tb_at_u, _, _ = textbook_backward(x, gamma, dy, var=var_u)
    assert rel(dk, tb_at_u) < 1e-13

    # the float32 layer computes that same function
    batch, c, spatial = x.shape
    l = batchnorm.make_batchnorm_layer(batch, spatial, 1, c)
    l.scales[:] = gamma
    l.biases[:] = beta
    l.forward(l, make_net(x.astype(np.float32).ravel(), 1, np.zeros(x.size, np.float32)))
    l.delta[:] = dy.astype(np.float32).ravel()
    l.backward(l, make_net(None, 1, np.zeros(x.size, np.float32)))
    assert rel(l.delta.reshape(x.shape), dk) < 1e-5


def test_how_darknet_departs_from_the_true_and_the_textbook_gradient():
    """Stated with numbers, for m = batch*spatial = 12 samples per channel, variance ~1:

    * against the textbook gradient (biased variance): both are the same formula, at var_u
      and at var_b = var_u (m-1)/m.  The part orthogonal to span{1, x-mu} (per channel)
      scales by sqrt((var_b+eps)/(var_u+eps)) ~ sqrt((m-1)/m) = 0.9574 (-4.3%, i.e. -1/(2m)).
    * against the true gradient of darknet's own forward (unbiased variance, + 1e-6 outside the
      root), found by central differences: the orthogonal part agrees to O(eps/var) (< 1e-4 here),
      while along x-mu, where the true gradient is only O(eps/var), darknet's backward gives
      (x-mu) * sum(d (x-mu)) / (m(m-1) s^3) more, i.e. a relative error of 1/m of the
      projection term: with dy = x-mu exactly, darknet returns (x-mu)/(m sigma) (1 + O(m eps/var)).
    """
    x, gamma, beta, dy = sample(3)
    batch, c, spatial = x.shape
    m = batch * spatial
    assert m == 12
    mu = x.mean(axis=(0, 2), keepdims=True)
    xc = x - mu
    S = (xc ** 2).sum(axis=(0, 2), keepdims=True)
    var_u, var_b = S / (m - 1), S / m

    def split(v):
        """Per channel: the components along 1, along x-mu, and the rest."""
        ones = v.mean(axis=(0, 2), keepdims=True)
        along = (v * xc).sum(axis=(0, 2), keepdims=True) / S
        return ones, along, v - ones - along * xc

    dk = darknet_backward64(x, gamma, dy)
    tb, _, _ = textbook_backward(x, gamma, dy)
    fd = central_difference(lambda v: darknet_forward64(v, gamma, beta), x, dy)

    # 1. against the textbook gradient
    ratio = np.sqrt((var_b + EPS) / (var_u + EPS))
    assert abs(ratio.ravel() - np.sqrt((m - 1) / m)).max() < 1e-5
    assert np.allclose(np.sqrt((m - 1) / m), 0.9574271, atol=1e-7)
    _, _, rest_dk = split(dk)
    _, _, rest_tb = split(tb)
    assert rel(rest_dk, rest_tb * ratio) < 1e-12          # darknet 4.3% smaller there
    # both give gradients that sum to zero per channel (no component along 1)
    assert np.abs(split(dk)[0]).max() < 1e-14 and np.abs(split(tb)[0]).max() < 1e-14

    # 2. against the true gradient of darknet's forward
    ones_fd, along_fd, rest_fd = split(fd)
    ones_dk, along_dk, rest_dk = split(dk)
    assert rel(rest_dk, rest_fd) < 1e-4                  # O(eps/var) and FD error
    assert rel(rest_dk, rest_fd) > 1e-7                  # ... but not zero: the epsilons differ
    assert np.abs(ones_fd).max() < 1e-7                  # the true gradient sums to zero too
    # The true gradient subtracts x-mu * sum(g (x-mu)) / ((m-1) sigma^3); darknet subtracts only
    # (m-1)/m of it, leaving sum(g (x-mu)) / (m (m-1) sigma^3) along x-mu.
    sigma = np.sqrt(var_u)
    g_xc = (dy * gamma[None, :, None] * xc).sum(axis=(0, 2), keepdims=True)
    predicted = g_xc / (m * (m - 1) * sigma ** 3)
    assert rel(along_dk - along_fd, predicted) < 1e-3
    assert np.abs(along_fd).max() < 1e-4 * np.abs(along_dk).max()   # the true one is only O(eps)

    # 3. the direction where it shows most: dy = x - mu (scaling the input changes nothing in
    #    the true forward, up to eps): true gradient ~ 0, darknet's ~ (x-mu)/(m sigma)
    one = np.ones(c)
    dk_scale = darknet_backward64(x, one, xc)
    fd_scale = central_difference(lambda v: darknet_forward64(v, one, beta), x, xc)
    coef_dk = split(dk_scale)[1] * m * sigma            # 1 + O(m eps / var)
    assert np.abs(coef_dk - 1).max() < 2 * m * EPS / var_u.min()
    assert np.abs(fd_scale).max() < 1e-4 * np.abs(dk_scale).max()
