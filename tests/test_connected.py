"""The connected and activation layers: darknet's bits, parsing, float64 gradient checks."""

import types
import warnings

import numpy as np
import pytest

import darkpy.kernels as kernels
from conftest import bits, central_gradient, from_hex
from darkpy.description import parse_cfg_text
from darkpy.errors import CfgError, DarkpyError, ShapeError
from darkpy.kernels.reference.activations import LEAKY, LINEAR, LOGISTIC, TANH
from darkpy.layer import UpdateArgs
from darkpy.layers import activation, connected
from darkpy.network import build_network


def vals(n, k, off=0.):
    """Small exact float32 test values: ((i*k + 5) mod 23 - 11)/8 + off."""
    return (((np.arange(n) * k + 5) % 23) - 11).astype(np.float32) / np.float32(8) + np.float32(off)


# The tensors below were computed by darknet itself (f6afaabc, libdarknet.a built with gcc 12.2
# -O2 -ffp-contract=off -fno-fast-math): make_*_layer, the given tensors set, forward (train=1),
# l.delta = delta_in, backward, update(learning_rate .01, momentum .9, decay .0005, batch).
# Order: output, [x, x_norm, mean, variance, rolling_mean, rolling_variance], delta, net_delta,
# weight_updates, bias_updates, [scale_updates, mean_delta, variance_delta], weights, biases,
# [scales], weight_updates_after, bias_updates_after, [scale_updates_after].
DARKNET_CONNECTED = from_hex(
    "3ea98887 3f26bf31 3ee616cb 3ddd922c 3f5b1910 3e0827c7 be2a18a2 3e1156b5 be5db48a 3d459975 bdfca961 3d3113cf "
    "bec46dd5 bec12e4c 3d17eefc 3fc6983e bf68b96c bf27ddd9 3e9793f2 3f64a4ed 3f9d165e bf867c28 bf123698 3ebdee3e "
    "bfb62ccc beaf549b 3f3d04fc bf8f640a 3ebb99f8 3fbfca96 be7a8a8e 3f63258d bf49fac1 3e1644e5 3f9a7762 bf1bb3b3 "
    "3ee753ae bf5e2c91 be6cfdfc 3d9d20d4 bf40bae8 3e01e60f 3f7e2d4e bf8037f1 bdf8701d 3f3e90ad bf9fc3c3 bebc29c8 "
    "3eff5f53 3fb09126 bf210254 3e806002 3f90c588 bf60c703 3b140c98 bf411c62 bf004bd6 be7f9b70 bf036b4c 3eaae146 "
    "bfa4129c be9d562e 3f2a2575 bf81235a 3ea96ad4 3faca7c9 be61f2a9 3f4c1d7e bf35a336 3e070306 3f8ae3de bf0bee1e "
    "3ed031b6 bf47f4e9 be554afc 3d8d6a58")
DARKNET_CONNECTED_BN = from_hex(
    "bcd68a63 be3765ce be253afe 400f6a8a bd19686e be47ab0e 3e100000 bea80000 bf4c0000 40360000 3d800000 bee80000 "
    "3f269bac bf0b27cc bf936252 3f93b808 3f0028fa bf1c4844 be4aaaab 3f300000 3e8a8aaa 405f6c00 bf3e9630 bdef5c29 "
    "3fde1b3b 3fb2b55c 3c8ed3ef bd613097 3a88295e 3e02097d bc975688 bd937aac bf419697 be27fdcd 3f160e6b 3f906842 "
    "bf9221ae becf2b6c bd05ee24 3f338b07 3fb2ecf9 bf6e6ad7 be36be24 3ed748e8 bf403137 3ebf9d91 bfb07a79 be81e9e6 "
    "3f873ad2 bf318a5c 3d87f692 3f987f69 bf819999 3eb33333 bf3f84f8 3f05293c 3ec1c659 bf433ee2 bb2a7f44 be352f80 "
    "bf40a3c2 3e0146dc 3f7ed27c bf801b8d bdf8c956 3f3f6841 bf9ff88b bebdf73b bf40dd2f beff6715 3f3f5c92 40181c68 "
    "bf2cb6bd 3eac5e18 bf9f00dd be687652 3f7374ef bf200bad 3d7ba54c 3f89500f bf6947ad 3ea147ae bf2c5e12 3eefb09f")
# activation layer (tanh), batch 2, 6 inputs: output, delta, net_delta
DARKNET_ACTIVATION = from_hex(
    "bf22991f beb77a9f 00000000 3eb77a9f 3f22991f 3f4f2e5b bf613c53 bf42f7d6 bf0dfa3f be7acbf5 3dfeacc9 3eec9a9f "
    "bee516c6 3f0b73eb bf600000 3edf1fde bf18b9d9 3e047e00 be821f0a 3dd706e0 bf5d92fa 3df0a4d0 bfad4745 00000000 "
    "bee516c6 3f0b73eb bf600000 3edf1fde bf18b9d9 3e047e00 be821f0a 3dd706e0 bf5d92fa 3df0a4d0 bfad4745 00000000")


def run_connected(batch, inputs, outputs, act, bn):
    l = connected.make_connected_layer(batch, inputs, outputs, act, bn, 0)
    given = [vals(batch * inputs, 3), vals(batch * inputs, 5), vals(inputs * outputs, 7), vals(outputs, 2),
             vals(inputs * outputs, 9), vals(outputs, 4)]
    if bn:
        given += [vals(outputs, 13, 1.5), vals(outputs, 6), vals(outputs, 5), np.abs(vals(outputs, 3)) + 1]
    delta_in = vals(batch * outputs, 11)
    net = types.SimpleNamespace(input=given[0], delta=given[1].copy(), train=1, truth=None, index=0, workspace=None)
    l.weights[:], l.biases[:], l.weight_updates[:], l.bias_updates[:] = given[2:6]
    if bn:
        l.scales[:], l.scale_updates[:], l.rolling_mean[:], l.rolling_variance[:] = given[6:10]
    out = []
    l.forward(l, net)
    out.append(l.output.copy())
    if bn:
        out += [f.copy() for f in (l.x, l.x_norm, l.mean, l.variance, l.rolling_mean, l.rolling_variance)]
    l.delta[:] = delta_in
    l.backward(l, net)
    out += [l.delta.copy(), net.delta.copy(), l.weight_updates.copy(), l.bias_updates.copy()]
    if bn:
        out += [l.scale_updates.copy(), l.mean_delta.copy(), l.variance_delta.copy()]
    l.update(l, UpdateArgs(batch=batch, learning_rate=.01, momentum=.9, decay=.0005))
    out += [l.weights.copy(), l.biases.copy()] + ([l.scales.copy()] if bn else [])
    out += [l.weight_updates.copy(), l.bias_updates.copy()] + ([l.scale_updates.copy()] if bn else [])
    return np.concatenate(out)


def test_connected_matches_darknet_bitwise(impl):
    got = run_connected(2, 5, 3, LOGISTIC, 0)
    assert np.array_equal(bits(got), bits(DARKNET_CONNECTED))


def test_connected_batchnorm_matches_darknet_bitwise(impl):
    got = run_connected(3, 4, 2, LEAKY, 1)
    assert np.array_equal(bits(got), bits(DARKNET_CONNECTED_BN))


def test_activation_layer_matches_darknet_bitwise(impl):
    l = activation.make_activation_layer(2, 6, TANH)
    net = types.SimpleNamespace(input=vals(12, 3), delta=vals(12, 5), train=1, truth=None, index=0, workspace=None)
    l.forward(l, net)
    out = [l.output.copy()]
    l.delta[:] = vals(12, 11)
    l.backward(l, net)
    out += [l.delta.copy(), net.delta.copy()]
    assert np.array_equal(bits(np.concatenate(out)), bits(DARKNET_ACTIVATION))
    assert np.array_equal(bits(net.delta), bits(l.delta))  # copied, not added


def test_connected_adds_into_net_delta():
    l = connected.make_connected_layer(2, 3, 2, LINEAR, 0, 0)
    x = vals(6, 3)
    d0 = np.zeros(6, np.float32)
    d1 = np.full(6, 1000, np.float32)
    for d in (d0, d1):
        net = types.SimpleNamespace(input=x, delta=d, train=1)
        l.forward(l, net)
        l.delta[:] = vals(4, 5)
        l.backward(l, net)
    assert np.allclose(d1 - 1000, d0, atol=1e-3) and np.any(d0 != 0)
    # without a net.delta (first layer) only the layer's own updates are computed
    net = types.SimpleNamespace(input=x, delta=None, train=1)
    l.backward(l, net)


def test_activation_layer_without_net_delta():
    l = activation.make_activation_layer(1, 4, LEAKY)
    net = types.SimpleNamespace(input=np.array([-1, 2, -3, 4], np.float32), delta=None, train=1)
    l.forward(l, net)
    l.delta[:] = 1
    l.backward(l, net)
    assert l.delta.tolist() == [np.float32(.1), 1, np.float32(.1), 1]


# ----------------------------------------------------------------------------- make / parse

def test_make_connected_buffers():
    l = connected.make_connected_layer(3, 10, 4, LEAKY, 1, 1)
    assert (l.h, l.w, l.c, l.out_h, l.out_w, l.out_c) == (1, 1, 10, 1, 1, 4)
    assert l.weights.size == 40 and l.output.size == 12 and l.x.size == 12 and l.m.size == 40
    assert l.learning_rate_scale == 1 and (l.scales == 1).all() and (l.biases == 0).all()
    assert np.abs(l.weights).max() <= np.sqrt(2 / 10)  # scale*rand_uniform(-1, 1)
    plain = connected.make_connected_layer(1, 3, 2, LINEAR, 0, 0)
    assert plain.scales is None and plain.m is None
    with pytest.raises(ShapeError):
        connected.make_connected_layer(1, 0, 2, LINEAR, 0, 0)


CFG = """[net]
batch=2
width=4
height=3
channels=2

[connected]
{options}

[activation]
{act}
"""


def build(options, act=""):
    return build_network(parse_cfg_text(CFG.format(options=options, act=act), path="c.cfg"))


def test_parse_connected_and_activation():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = build("output=7\nactivation=leaky\nbatch_normalize=1", "activation=tanh")
    l, a = net.layers
    assert (l.inputs, l.outputs, l.batch, l.activation, l.batch_normalize) == (24, 7, 2, LEAKY, 1)
    assert (a.inputs, a.outputs, a.activation, a.out_c, a.out_h, a.out_w) == (7, 7, TANH, 7, 1, 1)
    l, a = build("").layers
    assert (l.outputs, l.activation, l.batch_normalize) == (1, LOGISTIC, 0)
    assert a.activation == LINEAR


@pytest.mark.parametrize("options,act,word,line", [
    ("output=4\nactivation=mish", "", "mish", 9),
    ("output=0", "", "output", 8),
    ("output=4", "activation=nope", "nope", 11),
])
def test_parse_errors(options, act, word, line):
    with pytest.raises(CfgError, match=word) as err:
        build(options, act)
    assert f"c.cfg:{line}" in str(err.value)


def test_forward_checks_the_input_size():
    l = connected.make_connected_layer(2, 5, 3, LINEAR, 0, 0)
    with pytest.raises(DarkpyError, match="input"):
        l.forward(l, types.SimpleNamespace(input=np.zeros(9, np.float32), delta=None, train=1))


def test_update_is_darknets_float_sgd():
    l = connected.make_connected_layer(2, 3, 2, LEAKY, 1, 0)
    rng = np.random.default_rng(0)
    for f in ("weights", "weight_updates", "biases", "bias_updates", "scales", "scale_updates"):
        getattr(l, f)[:] = rng.standard_normal(getattr(l, f).size).astype(np.float32)
    w, wu, b, bu, s, su = (getattr(l, f).copy() for f in
                           ("weights", "weight_updates", "biases", "bias_updates", "scales", "scale_updates"))
    l.update(l, UpdateArgs(batch=4, learning_rate=.1, momentum=.9, decay=.0005))
    f32 = np.float32
    rate = f32(f32(.1) / f32(4))
    assert np.array_equal(bits(l.biases), bits(b + rate * bu))
    assert np.array_equal(bits(l.scales), bits(s + rate * su))
    assert np.array_equal(bits(l.scale_updates), bits(su * f32(.9)))
    wu2 = wu + f32(-f32(.0005) * f32(4)) * w
    assert np.array_equal(bits(l.weights), bits(w + rate * wu2))
    assert np.array_equal(bits(l.weight_updates), bits(wu2 * f32(.9)))


# ----------------------------------------------------------------------------- float64 gradient checks

def _act64(y, a):
    return 1 / (1 + np.exp(-y)) if a == LOGISTIC else (np.tanh(y) if a == TANH else y)


@pytest.mark.parametrize("batch,inputs,outputs,act,bn", [
    (3, 7, 4, LOGISTIC, 0), (2, 5, 3, TANH, 0), (1, 4, 6, LINEAR, 0), (6, 5, 3, LOGISTIC, 1), (9, 4, 2, LINEAR, 1)])
def test_backward_matches_float64_central_differences(batch, inputs, outputs, act, bn):
    """d(sum delta_in*output)/d(input, weights, biases, scales) by float64 central differences.

    With batch_normalize (statistics over the batch, n = batch) the input/weight gradients
    are compared with the function darknet's batchnorm backward differentiates (biased-variance
    derivative at darknet's unbiased variance, 1e-5 inside the sqrt; see test_convolutional).
    """
    rng = np.random.default_rng(batch * 100 + inputs)
    l = connected.make_connected_layer(batch, inputs, outputs, act, bn, 0)
    x = rng.standard_normal(batch * inputs).astype(np.float32)
    l.weights[:] = (rng.standard_normal(l.weights.size) * .5).astype(np.float32)
    l.biases[:] = (rng.standard_normal(outputs) * .3).astype(np.float32)
    if bn:
        l.scales[:] = (1 + .3 * rng.standard_normal(outputs)).astype(np.float32)
    delta_in = rng.standard_normal(batch * outputs).astype(np.float32)
    net = types.SimpleNamespace(input=x.copy(), delta=np.zeros_like(x), train=1)
    l.forward(l, net)
    l.delta[:] = delta_in
    l.backward(l, net)

    p = {"x": x.astype(np.float64), "W": l.weights.astype(np.float64), "b": l.biases.astype(np.float64)}
    if bn:
        p["s"] = l.scales.astype(np.float64)
    d = delta_in.astype(np.float64).reshape(batch, outputs)

    def pre(q):
        return q["x"].reshape(batch, inputs) @ q["W"].reshape(outputs, inputs).T

    shift = None
    if bn:
        y0 = pre(p)
        shift = y0.var(axis=0, ddof=1) - y0.var(axis=0)
    twin = {"forward": False}

    def loss(q):
        y = pre(q)
        if bn and twin["forward"]:  # darknet's forward: unbiased variance, sqrt(var) + 1e-6
            y = (y - y.mean(axis=0)) / (np.sqrt(y.var(axis=0, ddof=1)) + 1e-6) * q["s"] + q["b"]
        elif bn:
            y = (y - y.mean(axis=0)) / np.sqrt(y.var(axis=0) + shift + 1e-5) * q["s"] + q["b"]
        else:
            y = y + q["b"]
        return float(np.sum(d * _act64(y, act)))

    def numeric(name):
        return central_gradient(lambda v: loss({**p, name: v}), p[name])

    def rel(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    assert rel(net.delta, numeric("x")) < 5e-5
    assert rel(l.weight_updates, numeric("W")) < 5e-5
    assert rel(l.bias_updates, numeric("b")) < 5e-5
    if bn:
        # scales and biases are exact derivatives of darknet's forward (output = scale*x_norm + bias)
        twin["forward"] = True
        assert rel(l.scale_updates, numeric("s")) < 5e-5
        assert rel(l.bias_updates, numeric("b")) < 5e-5
