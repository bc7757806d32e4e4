"""``darkpy gradcheck``: float64 central differences against every layer's backward pass.

The checker must pass on correct layers (cfg/norms-mix.cfg: darknet's conv+batchnorm,
Caffe's BatchNorm, layer/instance/group norm, grouped and 1x1 convolutions), fail on
a wrong backward formula (row ``gradient``) or a wrong float32 layer (row
``float32``), state darknet's batchnorm departures with their predicted size, and
leave the network it is given untouched.
"""

import copy
from pathlib import Path

import numpy as np
import pytest

from darkpy import description, gradcheck
from darkpy.gradcheck import (GradRow, central_differences, format_rows, gradcheck_network,
                              main_gradcheck, rel_error)
from darkpy.network import build_network, randomize_parameters

CFG = Path(__file__).resolve().parent.parent / "cfg" / "norms-mix.cfg"


def network(text, seed=0):
    net = build_network(description.parse_cfg_text("[net]\nbatch=2\nwidth=4\nheight=4\nchannels=2\n" + text))
    randomize_parameters(net, seed)
    return net


def by_check(rows, index):
    return {r.check: r for r in rows if r.index == index}


# ----------------------------------------------------------------------------- the mixed network

def test_norms_mix_passes_and_prints_the_table(capsys):
    assert main_gradcheck([str(CFG)]) == 0
    out = capsys.readouterr().out
    for word in ("convolutional", "batchnorm(caffe)", "layernorm", "instancenorm", "groupnorm",
                 "departure: textbook", "departure: true", "every bounded row within its bound"):
        assert word in out
    assert "FAIL" not in out


def test_norms_mix_rows():
    from darkpy.network import load_network
    net = load_network(CFG)
    randomize_parameters(net, 1)
    rows = gradcheck_network(net, seed=1)
    assert {r.type for r in rows} == {"convolutional", "batchnorm(caffe)", "layernorm", "instancenorm", "groupnorm"}
    for r in rows:
        if r.check == "gradient":
            assert r.bound == 1e-6 and max(r.errors.values()) < 1e-6, r
        if r.check == "float32":
            assert max(r.errors.values()) < gradcheck.FLOAT32_BOUND, r
    assert all(r.ok for r in rows)
    # every parameter of every parametric layer is differenced
    assert set(by_check(rows, 0)["gradient"].errors) == {"input", "weights", "biases", "scales"}
    assert set(by_check(rows, 1)["gradient"].errors) == {"input"}
    assert set(by_check(rows, 2)["gradient"].errors) == {"input", "scales", "biases"}


def test_layer_selection_and_errors(capsys):
    assert main_gradcheck([str(CFG), "--layers", "1,2", "--seed", "3", "--eps", "1e-5"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()]
    assert {int(line[:5]) for line in lines} == {1, 2}
    assert main_gradcheck([str(CFG), "--layers", "99"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main_gradcheck([str(CFG) + ".missing"]) == 2


def test_network_is_left_untouched():
    net = network("[convolutional]\nbatch_normalize=1\nfilters=2\nsize=3\npad=1\nactivation=leaky\n"
                  "[batchnorm]\nstyle=caffe\n[groupnorm]\ngroups=2\n")
    before = [{k: copy.deepcopy(getattr(l, k)) for k in ("output", "delta", "weights", "biases", "scales",
                                                         "rolling_mean", "rolling_variance", "scale_updates")}
              for l in net.layers]
    gradcheck_network(net)
    for l, saved in zip(net.layers, before):
        for k, v in saved.items():
            assert (v is None and getattr(l, k) is None) or np.array_equal(v, getattr(l, k)), k


# ----------------------------------------------------------------------------- darknet's batchnorm

def test_darknet_batchnorm_departures_are_stated():
    """[batchnorm]: the backward formula is the gradient of the textbook forward (< 1e-6); darknet's
    actual backward departs from that gradient by ~1 - sqrt((m-1)/m) (the unbiased variance) and
    from the true gradient of its own forward by a comparable amount; neither fails the check."""
    net = network("[batchnorm]\n")
    rows = by_check(gradcheck_network(net, seed=2), 0)
    assert rows["gradient"].ok and max(rows["gradient"].errors.values()) < 1e-6
    assert rows["float32"].ok
    m = 2 * 4 * 4
    predicted = 1 - np.sqrt((m - 1) / m)
    textbook = rows["departure: textbook"]
    assert textbook.bound is None and textbook.ok
    assert .7 * predicted < textbook.errors["input"] < 1.5 * predicted
    assert textbook.errors["biases"] == 0            # the bias gradient does not depart
    true = rows["departure: true"]
    assert 1e-4 < true.errors["input"] < 5 * predicted
    assert true.errors["scales"] < 1e-6 and true.errors["biases"] < 1e-6   # exact for the parameters
    assert f"m={m}" in textbook.note


@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "linear"])
def test_connected_and_convolutional_layers(activation):
    net = network(f"[convolutional]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation={activation}\n"
                  f"[connected]\noutput=5\nactivation={activation}\n"
                  f"[connected]\noutput=3\nbatch_normalize=1\nactivation={activation}\n")
    rows = gradcheck_network(net, seed=4)
    assert all(r.ok for r in rows), format_rows(rows)
    assert {r.check for r in rows if r.index == 2} >= {"departure: textbook", "departure: true"}
    assert set(by_check(rows, 1)["gradient"].errors) == {"input", "weights", "biases"}


def test_caffe_global_statistics_and_skipped_layers():
    net = network("[batchnorm]\nstyle=caffe\nuse_global_stats=1\n[maxpool]\nsize=2\nstride=2\n")
    l = net.layers[0]
    l.rolling_mean[:] = [.5, -1]
    l.rolling_variance[:] = [2, 3]
    l.scale_factor[:] = 2
    rows = gradcheck_network(net)
    assert by_check(rows, 0)["gradient"].ok and by_check(rows, 0)["float32"].ok
    assert by_check(rows, 1)["skipped"].ok
    assert "skipped" in format_rows(rows)


# ----------------------------------------------------------------------------- it can fail

def test_a_wrong_backward_formula_fails(monkeypatch, capsys):
    right = gradcheck.GroupnormTwin.backward.__func__

    def wrong(cls, l, x, p, r, mode):
        grads = right(cls, l, x, p, r, mode)
        grads["input"] = grads["input"] * (1 + 1e-4)
        return grads
    monkeypatch.setattr(gradcheck.GroupnormTwin, "backward", classmethod(wrong))
    assert main_gradcheck([str(CFG), "--layers", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "outside their bound" in out


def test_a_wrong_float32_layer_fails():
    net = network("[groupnorm]\ngroups=1\n")
    l = net.layers[0]
    right = l.backward

    def wrong(l, net):
        right(l, net)
        net.delta *= np.float32(1.01)
    l.backward = wrong
    rows = by_check(gradcheck_network(net), 0)
    assert rows["gradient"].ok
    assert not rows["float32"].ok and rows["float32"].errors["input"] > gradcheck.FLOAT32_BOUND


# ----------------------------------------------------------------------------- pieces

def test_rel_error_and_central_differences():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0
    assert rel_error([1, 2], [1, 2.002]) == pytest.approx(.002 / 2.002, rel=1e-9)   # max-norm scaled
    assert rel_error([1, 2], [1, 2.002]) == rel_error([1, 2.002], [1, 2])
    a = np.array([1., 2., 3.])
    saved = a.copy()
    g = central_differences(lambda: a ** 3, {"a": a}, np.ones(3), 1e-5)["a"]
    assert np.allclose(g, 3 * saved ** 2, rtol=1e-9) and np.array_equal(a, saved)


def test_format_rows():
    text = format_rows([GradRow(3, "layernorm", "gradient", {"input": 1.5e-11}, 1e-6, True),
                        GradRow(4, "maxpool", "skipped", note="no float64 twin")])
    assert "1.50e-11" in text and "1e-06" in text and "no float64 twin" in text
