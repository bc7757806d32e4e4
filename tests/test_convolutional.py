"""The convolutional layer: darknet's golden dumps bit for bit, parsing, and float64 gradient checks."""

import json
import types
import warnings

import numpy as np
import pytest

import darkpy.kernels as kernels
from darkpy.description import parse_cfg_text
from darkpy.errors import CfgError, DarkpyError, DarkpyWarning, ShapeError
from darkpy.kernels.reference.activations import LEAKY, LINEAR, LOGISTIC, get_activation
from darkpy.layer import UpdateArgs
from darkpy.layers import convolutional
from darkpy.network import SizeParams, build_network
from conftest import GOLDEN, bits, central_gradient, golden_cases


# ----------------------------------------------------------------------------- golden dumps

def run_golden_case(case_dir):
    """Run one ``kind: convolutional`` case exactly as ../shared/golden/README.md describes.

    Returns ({name: computed float32 array}, {name: expected float32 array}).
    """
    manifest = json.loads((case_dir / "case.json").read_text())
    assert manifest["kind"] == "convolutional"
    p = manifest["params"]
    tensors = {t["name"]: np.fromfile(case_dir / t["file"], "<f4") for t in manifest["tensors"]}
    stages = {t["name"]: t["stage"] for t in manifest["tensors"]}
    bn = p["batch_normalize"]
    l = convolutional.make_convolutional_layer(p["batch"], p["h"], p["w"], p["c"], p["filters"],
                                               p["groups"], p["size"], p["stride"], p["padding"],
                                               get_activation(p["activation"]), bn, 0, 0, 0)
    assert (l.out_h, l.out_w) == (p["out_h"], p["out_w"])
    l.learning_rate_scale = np.float32(1)
    fields = ["weights", "biases", "weight_updates", "bias_updates"]
    if bn:
        fields += ["scales", "scale_updates", "rolling_mean", "rolling_variance"]
    for f in fields:
        getattr(l, f)[:] = tensors[f + "_before"]
    net = types.SimpleNamespace(input=tensors["input"].copy(), delta=tensors["net_delta_before"].copy(),
                                train=1, truth=None, index=0,
                                workspace=np.zeros(l.workspace_size // 4, np.float32))
    got = {}
    l.forward(l, net)
    for f in ("output", "x", "x_norm", "mean", "variance", "rolling_mean", "rolling_variance"):
        if getattr(l, f) is not None:
            got[f] = getattr(l, f).copy()
    l.delta[:] = tensors["delta_in"]
    l.backward(l, net)
    for f in ("delta", "weight_updates", "bias_updates", "scale_updates", "mean_delta", "variance_delta"):
        if getattr(l, f) is not None:
            got[f] = getattr(l, f).copy()
    got["net_delta"] = net.delta.copy()
    u = p["update"]
    l.update(l, UpdateArgs(batch=u["batch"], learning_rate=u["learning_rate"], momentum=u["momentum"],
                           decay=u["decay"]))
    for f in ("weights", "biases", "scales"):
        if getattr(l, f) is not None:
            got[f] = getattr(l, f).copy()
    for f in ("weight_updates", "bias_updates", "scale_updates"):
        if getattr(l, f) is not None:
            got[f + "_after"] = getattr(l, f).copy()
    expected = {name: t for name, t in tensors.items() if stages[name] != "given"}
    return got, expected


CONV_CASES = golden_cases("conv-")


def test_golden_conv_cases_present():
    assert len(CONV_CASES) == 9


@pytest.mark.parametrize("case", CONV_CASES)
def test_golden_case_bitwise(case, impl):
    got, expected = run_golden_case(GOLDEN / case)
    assert set(expected) <= set(got), set(expected) - set(got)
    differing = [name for name in expected if not np.array_equal(bits(got[name]), bits(expected[name]))]
    assert not differing, f"{case} ({impl}): {differing} differ"


def test_golden_check_case_integration():
    """darkpy.check re-runs a case through this layer with the same result."""
    from darkpy.check import check_case
    for case in CONV_CASES:
        result = check_case(GOLDEN / case)
        assert result.ok, (case, result.summary())


def test_1x1_overwrites_net_delta_and_3x3_adds():
    """The golden dumps give a non-zero net_delta_before: 1x1 layers overwrite it, larger kernels add."""
    for case in CONV_CASES:
        manifest = json.loads((GOLDEN / case / "case.json").read_text())
        before = np.fromfile(GOLDEN / case / "net_delta_before.f32", "<f4")
        after = np.fromfile(GOLDEN / case / "net_delta.f32", "<f4")
        assert np.any(before != 0)
        # the same backward from a zero net.delta: 1x1 gives darknet's bits, larger kernels do not
        fresh = _net_delta_from_zero(GOLDEN / case, manifest)
        if manifest["params"]["size"] == 1:
            assert np.array_equal(bits(fresh), bits(after))
        else:
            assert not np.array_equal(bits(fresh), bits(after))
            assert np.allclose(fresh + before, after, rtol=1e-5, atol=1e-5)


def _net_delta_from_zero(case_dir, manifest):
    p = manifest["params"]
    tensors = {t["name"]: np.fromfile(case_dir / t["file"], "<f4") for t in manifest["tensors"]}
    bn = p["batch_normalize"]
    l = convolutional.make_convolutional_layer(p["batch"], p["h"], p["w"], p["c"], p["filters"],
                                               p["groups"], p["size"], p["stride"], p["padding"],
                                               get_activation(p["activation"]), bn, 0, 0, 0)
    for f in ["weights", "biases"] + (["scales", "rolling_mean", "rolling_variance"] if bn else []):
        getattr(l, f)[:] = tensors[f + "_before"]
    net = types.SimpleNamespace(input=tensors["input"].copy(), delta=np.zeros_like(tensors["net_delta_before"]),
                                train=1, truth=None, index=0, workspace=np.zeros(l.workspace_size // 4, np.float32))
    l.forward(l, net)
    l.delta[:] = tensors["delta_in"]
    l.backward(l, net)
    return net.delta


# ----------------------------------------------------------------------------- make / parse

def test_make_shapes_and_buffers():
    l = convolutional.make_convolutional_layer(2, 9, 7, 4, 6, 2, 3, 2, 1, LEAKY, 1, 0, 0, 1)
    assert (l.out_h, l.out_w, l.out_c) == (5, 4, 6)
    assert l.nweights == 4 // 2 * 6 * 3 * 3 == l.weights.size == l.weight_updates.size
    assert l.outputs == 5 * 4 * 6 and l.inputs == 9 * 7 * 4
    assert l.output.size == l.delta.size == l.x.size == l.x_norm.size == 2 * l.outputs
    assert l.workspace_size == 5 * 4 * 3 * 3 * 4 // 2 * 4
    assert (l.scales == 1).all() and l.rolling_variance.size == 6 and l.m.size == l.nweights
    plain = convolutional.make_convolutional_layer(1, 5, 5, 3, 2, 1, 1, 1, 0, LINEAR, 0, 0, 0, 0)
    assert plain.scales is None and plain.x is None and plain.m is None
    # darknet's init: scale*rand_normal with scale = sqrt(2/(size*size*c/groups))
    big = convolutional.make_convolutional_layer(1, 5, 5, 16, 64, 1, 3, 1, 1, LINEAR, 0, 0, 0, 0)
    assert abs(big.weights.std() - np.sqrt(2 / (9 * 16))) < 0.02


def test_overhanging_kernel_gives_darknets_output_size():
    l = convolutional.make_convolutional_layer(1, 2, 2, 1, 1, 1, 3, 2, 0, LINEAR, 0, 0, 0, 0)
    assert (l.out_h, l.out_w) == (1, 1)  # (2-3)/2 + 1 == 1 in C


@pytest.mark.parametrize("args,word", [
    ((1, 5, 5, 3, 4, 2, 3, 1, 1), "groups"),        # c % groups
    ((1, 5, 5, 4, 3, 2, 3, 1, 1), "groups"),        # filters % groups
    ((1, 5, 5, 3, 4, 1, 0, 1, 0), "size"),
    ((1, 5, 5, 3, 4, 1, 3, 0, 1), "stride"),
    ((1, 2, 2, 3, 4, 1, 5, 1, 0), "output"),        # out_h < 1
    ((1, 5, 5, 3, 4, 1, 1, 1, 1), "padding"),       # 1x1 with padding would read outside the input
    ((0, 5, 5, 3, 4, 1, 3, 1, 1), "batch"),
])
def test_make_refuses_impossible_shapes(args, word):
    with pytest.raises(ShapeError, match=word):
        convolutional.make_convolutional_layer(*args, LEAKY, 0, 0, 0, 0)


def test_1x1_stride_2_warns():
    with pytest.warns(DarkpyWarning, match="stride"):
        convolutional.make_convolutional_layer(1, 6, 6, 2, 3, 1, 1, 2, 0, LEAKY, 0, 0, 0, 0)


CFG = """[net]
batch=2
width={w}
height={h}
channels={c}

[convolutional]
{options}
"""


def build(options, h=8, w=8, c=3):
    return build_network(parse_cfg_text(CFG.format(options=options, h=h, w=w, c=c), path="t.cfg"))


def test_parse_options():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = build("filters=6\nsize=3\nstride=2\npad=1\ngroups=3\nactivation=leaky\n"
                    "batch_normalize=1\nflipped=1\ndot=.5", c=6)
    l = net.layers[0]
    assert (l.n, l.size, l.stride, l.pad, l.groups, l.activation) == (6, 3, 2, 1, 3, LEAKY)
    assert (l.batch, l.h, l.w, l.c, l.out_h, l.out_w) == (2, 8, 8, 6, 4, 4)
    assert l.batch_normalize == 1 and l.flipped == 1 and l.dot == np.float32(.5)
    # defaults: filters 1, size 1, stride 1, no padding, logistic
    l = build("").layers[0]
    assert (l.n, l.size, l.stride, l.pad, l.groups, l.activation) == (1, 1, 1, 0, 1, LOGISTIC)
    # pad=1 means size/2 and overrides padding=
    l = build("size=5\npad=1\npadding=7").layers[0]
    assert l.pad == 2
    l = build("size=5\npadding=1").layers[0]
    assert l.pad == 1 and l.out_h == 6


@pytest.mark.parametrize("options,error,word,line", [
    ("filters=4\nsize=3\nactivation=swish", CfgError, "swish", 10),
    ("filters=4\nsize=3\nbinary=1", CfgError, "binary", 10),
    ("filters=4\nsize=3\nxnor=1", CfgError, "xnor", 10),
    ("filters=4\nsize=0", CfgError, "size", 9),
    ("filters=4\nsize=3\nstride=0", CfgError, "stride", 10),
    ("filters=0\nsize=3", CfgError, "filters", 8),
    ("filters=4\nsize=3\ngroups=2", ShapeError, "groups", 10),   # 3 channels
    ("filters=5\nsize=3\ngroups=3", ShapeError, "groups", 10),   # 5 filters
    ("filters=4\nsize=11", ShapeError, "size", 9),               # no output pixel on an 8x8 input
])
def test_parse_errors_name_the_option(options, error, word, line):
    with pytest.raises(error, match=word) as err:
        build(options)
    assert f"t.cfg:{line}" in str(err.value)


def test_parse_needs_an_image():
    from darkpy.description import Section
    params = SizeParams(batch=1, inputs=10, h=0, w=0, c=0, index=3, time_steps=1, net=None)
    with pytest.raises(ShapeError, match="image"):
        convolutional.parse(Section("convolutional", path="x.cfg", line=4), params)


def test_buffers_are_checked():
    l = convolutional.make_convolutional_layer(1, 5, 5, 2, 3, 1, 3, 1, 1, LEAKY, 0, 0, 0, 0)
    net = types.SimpleNamespace(input=np.zeros(50, np.float32), delta=None, train=1,
                                workspace=np.zeros(l.workspace_size // 4 - 1, np.float32))
    with pytest.raises(DarkpyError, match="workspace"):
        l.forward(l, net)
    net.workspace = np.zeros(l.workspace_size // 4, np.float32)
    net.input = np.zeros(49, np.float32)
    with pytest.raises(DarkpyError, match="input"):
        l.forward(l, net)


# ----------------------------------------------------------------------------- update

def test_update_is_darknets_float_sgd():
    l = convolutional.make_convolutional_layer(1, 4, 4, 2, 3, 1, 3, 1, 1, LEAKY, 1, 0, 0, 0)
    l.learning_rate_scale = np.float32(.5)
    rng = np.random.default_rng(0)
    for f in ("weights", "weight_updates", "biases", "bias_updates", "scales", "scale_updates"):
        getattr(l, f)[:] = rng.standard_normal(getattr(l, f).size).astype(np.float32)
    w, wu, b, bu, s, su = (getattr(l, f).copy() for f in
                           ("weights", "weight_updates", "biases", "bias_updates", "scales", "scale_updates"))
    a = UpdateArgs(batch=3, learning_rate=.1, momentum=.9, decay=.0005)
    l.update(l, a)
    f32 = np.float32
    lr = f32(f32(.1) * f32(.5))
    rate = f32(lr / f32(3))
    assert np.array_equal(bits(l.biases), bits(b + rate * bu))
    assert np.array_equal(bits(l.bias_updates), bits(bu * f32(.9)))
    assert np.array_equal(bits(l.scales), bits(s + rate * su))
    assert np.array_equal(bits(l.scale_updates), bits(su * f32(.9)))
    wu2 = wu + f32(-f32(.0005) * f32(3)) * w
    assert np.array_equal(bits(l.weights), bits(w + rate * wu2))
    assert np.array_equal(bits(l.weight_updates), bits(wu2 * f32(.9)))


# ----------------------------------------------------------------------------- float64 gradient checks

def conv64(x, W, biases, batch, c, h, w, n, groups, size, stride, pad, out_h, out_w):
    """Direct convolution in float64 (cross-correlation, zero padding), NCHW."""
    x = x.reshape(batch, c, h, w)
    W = W.reshape(n, c // groups, size, size)
    xp = np.zeros((batch, c, h + 2 * pad + size, w + 2 * pad + size))
    xp[:, :, pad:pad + h, pad:pad + w] = x
    out = np.zeros((batch, n, out_h, out_w))
    m, cg = n // groups, c // groups
    for g in range(groups):
        for kh in range(size):
            for kw in range(size):
                patch = xp[:, g * cg:(g + 1) * cg, kh:kh + stride * out_h:stride, kw:kw + stride * out_w:stride]
                out[:, g * m:(g + 1) * m] += np.einsum("fc,bchw->bfhw", W[g * m:(g + 1) * m, :, kh, kw], patch)
    if biases is not None:
        out += biases[None, :, None, None]
    return out


def variances64(y):
    """Per channel: (mean, biased variance, unbiased variance) of an NCHW float64 tensor."""
    n = y.shape[1]
    flat = y.transpose(1, 0, 2, 3).reshape(n, -1)
    mean = flat.mean(axis=1)
    ss = ((flat - mean[:, None]) ** 2).sum(axis=1)
    return mean, ss / flat.shape[1], ss / (flat.shape[1] - 1)


def batchnorm64(y, scales, biases, shift=None):
    """Training-mode batch normalisation in float64.

    ``shift=None``: darknet's forward, unbiased variance, ``(y-mean)/(sqrt(var)+1e-6)``.
    Otherwise the function darknet's backward differentiates: ``(y-mean)/sqrt(var_b + shift + 1e-5)``
    with the biased variance var_b and a constant ``shift`` (= var_u - var_b at the point where the
    gradient is taken, so the value used there is darknet's unbiased variance while its
    derivative is the biased variance's, 2(y-mean)/n, as in darknet's variance_delta/normalize_delta).
    """
    mean, var_b, var_u = variances64(y)
    if shift is None:
        denom = np.sqrt(var_u) + 1e-6
    else:
        denom = np.sqrt(var_b + shift + 1e-5)
    xn = (y - mean[None, :, None, None]) / denom[None, :, None, None]
    return scales[None, :, None, None] * xn + biases[None, :, None, None]


def act64(y, a):
    if a == LOGISTIC:
        return 1 / (1 + np.exp(-y))
    if a == LEAKY:
        return np.where(y > 0, y, .1 * y)
    assert a == LINEAR
    return y


GRAD_CASES = [  # batch, c, h, w, n, groups, size, stride, pad, activation, batch_normalize
    (2, 3, 6, 5, 4, 1, 3, 1, 1, LOGISTIC, 0),
    (2, 4, 7, 6, 4, 2, 3, 2, 1, LEAKY, 0),
    (2, 4, 5, 5, 6, 2, 1, 1, 0, LOGISTIC, 0),
    (1, 3, 5, 6, 2, 1, 1, 1, 0, LINEAR, 0),
    (2, 3, 6, 6, 4, 1, 3, 1, 1, LOGISTIC, 1),
    (2, 4, 7, 5, 4, 2, 3, 2, 1, LINEAR, 1),
    (3, 4, 4, 4, 2, 2, 1, 1, 0, LOGISTIC, 1),
]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_backward_matches_float64_central_differences(case):
    """d(sum delta_in*output)/d(input, weights, biases, scales) by central differences on a float64
    twin of the forward, against darkpy's float32 backward (agreement to float32 rounding).

    With batch normalisation, darknet's backward is not the exact derivative of its forward:
    the forward divides by the UNBIASED variance (n-1) and adds 1e-6 to sqrt(var), the backward
    differentiates a biased variance (2(x-mean)/n) with 1e-5 inside the sqrt.  So the input and
    weight gradients are checked against the function darknet's backward does differentiate
    (``batchnorm64`` with ``shift``), and we also assert that they differ from the derivative
    of darknet's own forward by a visible O(1/n) amount (n = batch*out_h*out_w).  Scales and
    biases are exact for the forward (output = scale*x_norm + bias).
    """
    batch, c, h, w, n, groups, size, stride, pad, act, bn = case
    rng = np.random.default_rng(sum(case))
    l = convolutional.make_convolutional_layer(batch, h, w, c, n, groups, size, stride, pad, act, bn, 0, 0, 0)
    l.learning_rate_scale = np.float32(1)
    x = rng.standard_normal(batch * c * h * w).astype(np.float32)
    l.weights[:] = (rng.standard_normal(l.nweights) * .5).astype(np.float32)
    l.biases[:] = rng.standard_normal(n).astype(np.float32) * .3
    if bn:
        l.scales[:] = (1 + .3 * rng.standard_normal(n)).astype(np.float32)
    delta_in = rng.standard_normal(batch * l.outputs).astype(np.float32)
    net = types.SimpleNamespace(input=x.copy(), delta=np.zeros_like(x), train=1, truth=None, index=0,
                                workspace=np.zeros(l.workspace_size // 4, np.float32))
    l.forward(l, net)
    l.delta[:] = delta_in
    l.backward(l, net)

    dims = (batch, c, h, w, n, groups, size, stride, pad, l.out_h, l.out_w)
    params = {"x": x.astype(np.float64), "W": l.weights.astype(np.float64),
              "b": l.biases.astype(np.float64)}
    if bn:
        params["s"] = l.scales.astype(np.float64)

    shift = None
    if bn:
        _, var_b, var_u = variances64(conv64(params["x"], params["W"], None, *dims))
        shift = var_u - var_b
    forward_twin = True

    def loss(p):
        y = conv64(p["x"], p["W"], None if bn else p["b"], *dims)
        if bn:
            y = batchnorm64(y, p["s"], p["b"], None if forward_twin else shift)
        return float(np.sum(delta_in.astype(np.float64) * act64(y, act).ravel()))

    def numeric(name):
        return central_gradient(lambda v: loss({**params, name: v}), params[name])

    def rel(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    tol = 5e-5
    assert rel(l.bias_updates, numeric("b")) < tol
    if bn:
        assert rel(l.scale_updates, numeric("s")) < tol
        # darknet's gradient differs from the derivative of its own forward by O(1/n) ...
        n_norm = batch * l.out_h * l.out_w
        off = rel(net.delta, numeric("x"))
        assert 1e-3 < off < 5 / n_norm, off
        # ... and is the derivative of the function its backward differentiates
        forward_twin = False
    assert rel(net.delta, numeric("x")) < tol
    assert rel(l.weight_updates, numeric("W")) < tol


# ----------------------------------------------------------------------------- fused forward

def _wild_data(rng, n, nan=True):
    """Normal values with -0 and denormals, and (``nan``) +-inf and the x86 default NaN, sprinkled in."""
    x = rng.standard_normal(n).astype(np.float32)
    u = rng.random(n)
    if nan:
        x[u < 0.02] = np.inf
        x[(u >= 0.02) & (u < 0.04)] = -np.inf
    x[(u >= 0.04) & (u < 0.08)] = -0.0
    x[(u >= 0.08) & (u < 0.12)] = (rng.standard_normal(((u >= 0.08) & (u < 0.12)).sum()) * 1e-40).astype(np.float32)
    if nan:
        x[(u >= 0.12) & (u < 0.13)] = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    return x


@pytest.mark.parametrize("shape", [
    # batch, h, w, c, n, groups, size, stride, pad, bn, activation
    (2, 9, 11, 4, 6, 1, 3, 1, 1, 0, LEAKY), (1, 13, 13, 6, 8, 2, 3, 2, 1, 1, LINEAR),
    (3, 7, 6, 2, 5, 1, 5, 1, 2, 0, LOGISTIC), (1, 20, 18, 3, 16, 1, 3, 1, 1, 1, LEAKY),
    (2, 8, 8, 4, 4, 4, 3, 1, 0, 0, LINEAR), (1, 6, 6, 3, 4, 1, 1, 1, 0, 0, LEAKY)])
@pytest.mark.parametrize("data", ["plain", "wild"])
def test_fast_forward_skips_fill_and_matches_darknets_sequence(shape, data):
    """The fast forward (gemm_im2col with c_zero, no fill_cpu pass for size > 1) leaves the
    same l.output bits as the reference's literal fill_cpu + im2col_cpu + gemm, even when
    l.output starts as garbage (NaN, inf, -0 from a previous call) and the input holds
    inf/NaN/-0/denormals: every output element is written by the fused gemm."""
    batch, h, w, c, n, groups, size, stride, pad, bn, act = shape
    rng = np.random.default_rng([len(data), *shape])
    make = _wild_data if data == "wild" else (lambda r, k: r.standard_normal(k).astype(np.float32))
    outputs = {}
    for impl in ("reference", "fast"):
        l = convolutional.make_convolutional_layer(batch, h, w, c, n, groups, size, stride, pad, act, bn, 0, 0, 0)
        r = np.random.default_rng(1)
        l.weights[:] = make(r, l.weights.size)
        l.biases[:] = r.standard_normal(l.biases.size).astype(np.float32)
        if bn:
            l.scales[:] = r.standard_normal(l.scales.size).astype(np.float32)
            l.rolling_mean[:] = r.standard_normal(l.rolling_mean.size).astype(np.float32)
            l.rolling_variance[:] = r.random(l.rolling_variance.size).astype(np.float32) + 0.5
        l.output[:] = np.array([np.nan, np.inf, -0.0, 3.0], np.float32)[np.arange(l.output.size) % 4]
        net = types.SimpleNamespace(input=make(np.random.default_rng(2), l.inputs * batch), delta=None, train=0,
                                    truth=None, index=0, workspace=np.zeros(max(l.workspace_size // 4, 1), np.float32))
        saved = kernels.active()
        kernels.use(impl)
        try:
            l.forward(l, net)
        finally:
            kernels.use(saved)
        outputs[impl] = l.output.copy()
    assert np.array_equal(bits(outputs["fast"]), bits(outputs["reference"]))
    if data == "plain":
        assert np.isfinite(outputs["fast"]).all()


@pytest.mark.parametrize("shape", [
    (2, 9, 11, 4, 6, 1, 3, 1, 1, 0, LEAKY), (1, 13, 13, 6, 8, 2, 3, 2, 1, 1, LINEAR),
    (3, 7, 6, 2, 5, 1, 5, 1, 2, 0, LOGISTIC)])
@pytest.mark.parametrize("with_net_delta", [False, True])
def test_fast_backward_matches_darknets_sequence(shape, with_net_delta):
    """The fast backward (gemm_nt_im2col for the first layer's weight update; im2col_cpu into
    the workspace wherever the delta step will read it) leaves the same weight_updates and
    net.delta bits as the reference, from a workspace holding garbage, with -0/denormal/inf/NaN
    data (which NaN survives where two meet: tests/test_nan_sign_backward.py)."""
    batch, h, w, c, n, groups, size, stride, pad, bn, act = shape
    results = {}
    for impl in ("reference", "fast"):
        l = convolutional.make_convolutional_layer(batch, h, w, c, n, groups, size, stride, pad, act, bn, 0, 0, 0)
        r = np.random.default_rng(3)
        _wild = _wild_data
        l.weights[:] = _wild(r, l.weights.size)
        l.biases[:] = r.standard_normal(l.biases.size).astype(np.float32)
        if bn:
            l.scales[:] = r.standard_normal(l.scales.size).astype(np.float32)
        l.weight_updates[:] = _wild(r, l.weight_updates.size)
        net = types.SimpleNamespace(input=_wild(r, l.inputs * batch), train=1, truth=None, index=0,
                                    delta=_wild(r, l.inputs * batch) if with_net_delta else None,
                                    workspace=np.full(max(l.workspace_size // 4, 1), -np.inf, np.float32))
        saved = kernels.active()
        kernels.use(impl)
        try:
            l.forward(l, net)
            l.delta[:] = _wild(r, l.delta.size)
            l.backward(l, net)
        finally:
            kernels.use(saved)
        results[impl] = (l.weight_updates.copy(), None if net.delta is None else net.delta.copy())
    assert np.array_equal(bits(results["fast"][0]), bits(results["reference"][0]))
    if with_net_delta:
        assert np.array_equal(bits(results["fast"][1]), bits(results["reference"][1]))
