"""[dropout] and [crop]: C rand() draws in darknet's order, numpy formulations, gradients."""

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import image_params, layer_section, rng_for
from darkpy import crand, kernels
from darkpy.check import bitwise_equal
from darkpy.errors import CfgError, ShapeError
from darkpy.kernels import pooling as fast
from darkpy.kernels.reference import pooling as ref
from darkpy.layer import Layer
from darkpy.layers import crop, dropout


@pytest.fixture
def seeded():
    """Seed C's process-wide generator for a test and restore it afterwards."""
    saved = crand.STATE.copy()

    def seed(s):
        crand.srand(s)
        return crand.new_state(s)   # an independent generator in the same state
    yield seed
    crand.STATE[:] = saved


def raw_draws(state, n):
    return np.array([crand.rand_r(state) for _ in range(n)], np.int64)


def np_uniform01(raw):
    """darknet's rand_uniform(0, 1) in float32: (float)rand()/RAND_MAX * (1 - 0) + 0."""
    return np.float32(raw) / np.float32(crand.RAND_MAX) * np.float32(1) + np.float32(0)


# --------------------------------------------------------------------- dropout

def test_parse_dropout():
    l = dropout.parse(layer_section("[dropout]\n"), image_params(2, 3, 4, 5))
    assert (l.probability, l.scale, l.inputs, l.outputs, l.batch) == (.5, 2, 60, 60, 2)
    assert (l.out_c, l.out_h, l.out_w) == (3, 4, 5)
    assert l.output is None and l.delta is None and l.rand.size == 120 and l.update is None
    # .15: 1./(1.-p) in double (darknet) and 1.f/(1.f-p) in float round differently
    l = dropout.parse(layer_section("[dropout]\nprobability=.15\n"), image_params(1, 3, 4, 5))
    p = np.float32(.15)
    assert l.probability == p and l.probability.dtype == np.float32
    assert l.scale.dtype == np.float32 and l.scale == np.float32(1. / (1. - float(p)))
    assert l.scale != np.float32(1) / (np.float32(1) - p)
    with pytest.raises(CfgError):
        dropout.parse(layer_section("[dropout]\nprobability=1\n"), image_params(1, 3, 4, 5))
    with pytest.raises(CfgError) as e:
        dropout.parse(layer_section("[dropout]\n", index=0), image_params(1, 3, 4, 5, index=0))
    assert e.value.layer == 0


def test_dropout_inference_is_identity_and_draws_nothing(impl, seeded):
    seeded(7)
    l = dropout.parse(layer_section("[dropout]\nprobability=.4\n"), image_params(2, 2, 3, 3))
    x = rng_for("do-inf").standard_normal(36).astype(np.float32)
    before, state = x.copy(), crand.STATE.copy()
    l.forward(l, SimpleNamespace(input=x, train=0))
    assert bitwise_equal(x, before) and np.array_equal(crand.STATE, state)


@pytest.mark.parametrize("probability", [".5", ".15", ".9", "0"])
def test_dropout_training_against_numpy(impl, seeded, probability):
    twin = seeded(42)
    batch, c, h, w = 2, 3, 4, 5
    # dropout works in place on the previous layer's buffers (the builder shares them)
    prev = Layer("convolutional", outputs=c * h * w)
    rng = rng_for("do", probability)
    prev.output = rng.standard_normal(batch * c * h * w).astype(np.float32)
    prev.output[::11] = -0.0
    prev.delta = rng.standard_normal(prev.output.size).astype(np.float32)
    l = dropout.parse(layer_section(f"[dropout]\nprobability={probability}\n"), image_params(batch, c, h, w))
    l.output, l.delta = prev.output, prev.delta
    x0, d0 = prev.output.copy(), prev.delta.copy()
    net = SimpleNamespace(input=prev.output, delta=prev.delta, train=1)
    l.forward(l, net)

    r = np_uniform01(raw_draws(twin, x0.size))
    drop = r < l.probability
    assert bitwise_equal(l.rand, r)
    assert bitwise_equal(l.output, np.where(drop, np.float32(0), x0 * l.scale))
    assert np.array_equal(crand.STATE, twin)          # exactly one draw per element
    if probability == ".5":
        assert 0 < drop.sum() < drop.size

    l.backward(l, net)
    assert bitwise_equal(prev.delta, np.where(drop, np.float32(0), d0 * l.scale))


def test_dropout_gradient(seeded):
    seeded(3)
    n = 40
    l = dropout.make_dropout_layer(1, n, np.float32(.3))
    rng = rng_for("do-grad")
    x = rng.standard_normal(n).astype(np.float32)
    net = SimpleNamespace(input=x.copy(), delta=np.zeros(n, np.float32), train=1)
    l.forward(l, net)
    keep = l.rand >= l.probability
    g = rng.standard_normal(n).astype(np.float32)
    net.delta[:] = g
    l.backward(l, net)
    scale = float(l.scale)
    eps = 1e-3
    numeric = np.array([((np.where(keep, (x + eps * e) * scale, 0) - np.where(keep, (x - eps * e) * scale, 0))
                         @ g.astype(np.float64)) / (2 * eps) for e in np.eye(n)])
    np.testing.assert_allclose(net.delta, numeric, rtol=1e-4, atol=1e-6)


def test_dropout_backward_without_delta():
    """The first layer of a network has no net.delta: backward returns and touches nothing."""
    l = dropout.make_dropout_layer(1, 4, np.float32(.5))
    l.rand[:] = [.1, .9, .4, .6]
    before = l.rand.copy()
    l.backward(l, SimpleNamespace(delta=None))
    assert bitwise_equal(l.rand, before)


def test_dropout_kernels_fast_equals_reference():
    n = 1000
    rng = rng_for("do-kern")
    x = rng.standard_normal(n).astype(np.float32)
    d = rng.standard_normal(n).astype(np.float32)
    out = []
    for k in (ref, fast):
        state = crand.new_state(11)
        xi, di, ri = x.copy(), d.copy(), np.zeros(n, np.float32)
        k.forward_dropout(n, np.float32(.35), np.float32(1.5384616), state, ri, xi)
        k.backward_dropout(n, np.float32(.35), np.float32(1.5384616), ri, di)
        out.append((xi, di, ri, state))
    for a, b in zip(*out):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


# --------------------------------------------------------------------- crop

def test_parse_crop():
    l = crop.parse(layer_section("[crop]\ncrop_height=3\ncrop_width=4\nflip=1\nangle=7\nnoadjust=1\nshift=.2\n"),
                   image_params(2, 3, 7, 6))
    assert (l.out_h, l.out_w, l.out_c, l.outputs, l.inputs, l.flip, l.noadjust) == (3, 4, 3, 36, 126, 1, 1)
    assert l.scale == np.float32(3) / np.float32(7) and l.scale.dtype == np.float32
    assert (l.angle, l.saturation, l.exposure, l.shift) == (7, 1, 1, np.float32(.2))
    assert l.delta is None and l.output.size == 72 and l.update is None
    l = crop.parse(layer_section("[crop]\n"), image_params(1, 3, 7, 6))
    assert (l.out_h, l.out_w, l.flip, l.noadjust) == (1, 1, 0, 0)
    with pytest.raises(CfgError):
        crop.parse(layer_section("[crop]\ncrop_height=8\n"), image_params(1, 3, 7, 6))
    with pytest.raises(ShapeError):
        crop.parse(layer_section("[crop]\n"), image_params(1, 0, 0, 0))


def np_crop(x, batch, c, h, w, oh, ow, dh, dw, flip, scale, trans):
    X = x.reshape(batch, c, h, w)[:, :, dh:dh + oh, :]
    cols = (w - dw - 1 - np.arange(ow)) if flip else (dw + np.arange(ow))
    return (X[:, :, :, cols] * np.float32(scale) + np.float32(trans)).ravel()


@pytest.mark.parametrize("train", [0, 1])
@pytest.mark.parametrize("flip", [0, 1])
@pytest.mark.parametrize("noadjust", [0, 1])
def test_crop_forward_against_numpy(impl, seeded, train, flip, noadjust):
    batch, c, h, w, oh, ow = 2, 3, 9, 8, 5, 4
    twin = seeded(1234 + 2 * flip + train)
    l = crop.parse(layer_section(f"[crop]\ncrop_height={oh}\ncrop_width={ow}\nflip={flip}\nnoadjust={noadjust}\n"),
                   image_params(batch, c, h, w))
    x = rng_for("crop", train, flip).standard_normal(batch * c * h * w).astype(np.float32)
    x[::5] = -0.0
    l.forward(l, SimpleNamespace(input=x, train=train))
    # darknet's draws, in its order, whether or not it trains: a flip coin only when flip=1
    do_flip = flip and crand.rand_r(twin) % 2
    dh = crand.rand_r(twin) % (h - oh + 1)
    dw = crand.rand_r(twin) % (w - ow + 1)
    if not train:
        do_flip, dh, dw = 0, (h - oh) // 2, (w - ow) // 2
    scale, trans = (1, 0) if noadjust else (2, -1)
    assert np.array_equal(crand.STATE, twin)
    assert bitwise_equal(l.output, np_crop(x, batch, c, h, w, oh, ow, dh, dw, do_flip, scale, trans))


def test_crop_kernels_fast_equals_reference():
    batch, c, h, w, oh, ow = 2, 3, 7, 9, 4, 6
    x = rng_for("crop-k").standard_normal(batch * c * h * w).astype(np.float32)
    for dh, dw, flip in [(0, 0, False), (3, 3, True), (1, 2, False), (2, 0, True)]:
        a = np.zeros(batch * c * oh * ow, np.float32)
        b = np.ones_like(a)
        ref.forward_crop(batch, h, w, c, oh, ow, dh, dw, flip, np.float32(2), np.float32(-1), x, a)
        fast.forward_crop(batch, h, w, c, oh, ow, dh, dw, flip, np.float32(2), np.float32(-1), x, b)
        assert bitwise_equal(a, b)


def test_crop_backward_does_nothing():
    l = crop.parse(layer_section("[crop]\ncrop_height=2\ncrop_width=2\n"), image_params(1, 1, 3, 3))
    delta = np.arange(9, dtype=np.float32)
    l.backward(l, SimpleNamespace(delta=delta))
    assert bitwise_equal(delta, np.arange(9, dtype=np.float32))
