"""Which NaN survives where two NaNs meet in a convolutional backward: darknet's operand order.

x86 SSE returns the *first* source operand's NaN (quieted) when both operands of
``mulss``/``addss`` are NaN, and gcc picks that operand; LLVM (Numba) may commute
``*`` and ``+``, so our kernels must pin gcc's choice with ``first_nan`` wherever two
NaNs can meet.  Read from the objdump of darknet's strict build (gcc 12 -O2
-ffp-contract=off) and checked by calling that libdarknet.a on NaN-tagged inputs:

* ``gradient_array``: ``delta[i] *= gradient(x[i], a)`` compiles to
  ``call gradient; mulss (delta), %xmm0``: the gradient is the first operand, so a
  NaN gradient wins over a NaN delta.  The gradient of a NaN output is that NaN
  (quieted) for LOGISTIC, TANH, LOGGY, ELU and SELU ((1-x)*x, 1-x*x, ...), so
  ``delta`` comes out holding ``x``'s NaN.
* ``col2im_add_pixel``: ``im[...] += val`` compiles to ``addss (im), %xmm0`` with
  ``val`` (the column element) in xmm0: the column element is the first operand.

Before the fix the reference ``gradient_array`` kept delta's NaN (LLVM put delta
first) and the fast ``col2im`` kept the image's NaN (its vector add put the image
first): in a conv backward with inf/NaN data the two disagreed on net.delta's NaN
sign (reference 0x7FC00000, fast 0xFFC00000) and each disagreed with darknet.  Now
both pin gcc's order: ``g = gradient(..); delta[i] = first_nan(g, g * delta[i])``
(``gradient_array_cpu``, ``gradient_range``) and ``im[p] = first_nan(val, val + im[p])``
(``col2im_add_pixel``, ``col2im_channel``).
"""

import types

import numpy as np
import pytest

import darkpy.kernels as kernels
import darkpy.kernels.activations as fast_activations
import darkpy.kernels.im2col as fast_im2col
import darkpy.kernels.reference.activations as reference_activations
import darkpy.kernels.reference.im2col as reference_im2col
from darkpy.kernels.reference.activations import (ELU, LEAKY, LINEAR, LOGGY, LOGISTIC, SELU,
                                                  TANH)
from darkpy.layers import convolutional
from conftest import bits, rng_for


def tagged_nans(rng, n, tag):
    """``n`` quiet NaNs, random signs, payloads ``tag + index`` (so the survivor is identifiable)."""
    payload = (np.arange(n, dtype=np.uint32) + np.uint32(tag)) & np.uint32(0x3FFFFF)
    sign = (rng.random(n) < 0.5).astype(np.uint32) << np.uint32(31)
    return (np.uint32(0x7FC00000) | payload | sign).view(np.float32)


# ----------------------------------------------------------------------------- gradient_array

def _gradient_modules():
    return [pytest.param(fast_activations, id="fast"),
            pytest.param(reference_activations, id="reference")]


@pytest.mark.parametrize("module", _gradient_modules())
@pytest.mark.parametrize("activation", [LOGISTIC, TANH, LOGGY, ELU, SELU])
def test_gradient_array_nan_gradient_beats_nan_delta(module, activation):
    """x NaN A, delta NaN B: darknet's gradient is A, and ``gradient * delta`` keeps A."""
    rng = rng_for("gradient", activation)
    n = 1000
    x = tagged_nans(rng, n, 1)
    delta = tagged_nans(rng, n, 1 << 20)
    module.gradient_array(x, n, activation, delta)
    assert np.array_equal(bits(delta), bits(x))


@pytest.mark.parametrize("module", [fast_activations, reference_activations], ids=["fast", "reference"])
@pytest.mark.parametrize("activation", [LINEAR, LEAKY])
def test_gradient_array_finite_gradient_keeps_nan_delta(module, activation):
    """The control: a gradient that is a number (1, .1) leaves delta's NaN unchanged."""
    rng = rng_for("gradient finite", activation)
    n = 1000
    x = tagged_nans(rng, n, 1)
    delta = tagged_nans(rng, n, 1 << 20)
    expected = bits(delta).copy()
    module.gradient_array(x, n, activation, delta)
    assert np.array_equal(bits(delta), expected)


# ----------------------------------------------------------------------------- col2im

def _col2im_last_writer(channels, height, width, ksize, stride, pad, data_col, data_im):
    """darknet's col2im walk where every column element is NaN: each ``val + im`` keeps val,
    so a covered pixel ends with the NaN of the last tap (c, then h, then w) that reaches it."""
    out = bits(data_im).copy()
    col = bits(data_col)
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    for c in range(channels * ksize * ksize):
        w_offset, h_offset, c_im = c % ksize, (c // ksize) % ksize, c // ksize // ksize
        for h in range(height_col):
            for w in range(width_col):
                row = h_offset + h * stride - pad
                column = w_offset + w * stride - pad
                if 0 <= row < height and 0 <= column < width:
                    out[column + width * (row + height * c_im)] = col[(c * height_col + h) * width_col + w]
    return out


def _col2im_modules():
    return [pytest.param(fast_im2col, id="fast"),
            pytest.param(reference_im2col, id="reference")]


@pytest.mark.parametrize("module", _col2im_modules())
@pytest.mark.parametrize("shape", [(3, 7, 6, 5, 1, 2), (4, 9, 11, 3, 1, 1), (6, 13, 13, 3, 2, 1),
                                   (2, 5, 5, 1, 1, 0)])
def test_col2im_nan_column_element_beats_nan_pixel(module, shape):
    channels, height, width, ksize, stride, pad = shape
    rng = rng_for("col2im", shape)
    height_col = (height + 2 * pad - ksize) // stride + 1
    width_col = (width + 2 * pad - ksize) // stride + 1
    data_col = tagged_nans(rng, channels * ksize * ksize * height_col * width_col, 1)
    data_im = tagged_nans(rng, channels * height * width, 1 << 20)
    expected = _col2im_last_writer(channels, height, width, ksize, stride, pad, data_col, data_im)
    module.col2im_cpu(data_col, channels, height, width, ksize, stride, pad, data_im)
    assert np.array_equal(bits(data_im), expected)


# ----------------------------------------------------------------------------- the layer

def _wild(rng, n):
    """Normals with +-inf, -0, denormals and the x86 default NaN 0xFFC00000 sprinkled in."""
    x = rng.standard_normal(n).astype(np.float32)
    u = rng.random(n)
    x[u < 0.02] = np.inf
    x[(u >= 0.02) & (u < 0.04)] = -np.inf
    x[(u >= 0.04) & (u < 0.08)] = -0.0
    x[(u >= 0.08) & (u < 0.10)] = np.float32(1e-40)
    x.view(np.uint32)[(u >= 0.12) & (u < 0.13)] = 0xFFC00000
    return x


@pytest.mark.parametrize("shape", [
    # batch, h, w, c, n, groups, size, stride, pad, bn, activation
    (3, 7, 6, 2, 5, 1, 5, 1, 2, 0, LOGISTIC), (2, 9, 11, 4, 6, 1, 3, 1, 1, 0, LOGISTIC),
    (2, 8, 7, 3, 4, 1, 3, 1, 1, 0, LOGISTIC)])
def test_conv_backward_with_net_delta_nan_bits_fast_equal_reference(shape):
    """The reported symptom: a LOGISTIC/TANH conv backward with inf/NaN data and net.delta
    present.  The logistic of a -inf or default-NaN pre-activation is a positive NaN
    (0x7FC00000, via exp(-x)); the incoming delta's default NaN 0xFFC00000 meets it in
    gradient_array, and the delta step's NaNs meet net.delta's in col2im.  (With the fix
    both implementations also equal darknet's strict libdarknet.a bit for bit: checked
    outside the tests on 80 layer runs.)"""
    batch, h, w, c, n, groups, size, stride, pad, bn, act = shape
    results = {}
    for impl in ("reference", "fast"):
        l = convolutional.make_convolutional_layer(batch, h, w, c, n, groups, size, stride, pad, act, bn, 0, 0, 0)
        r = rng_for("layer", shape)
        l.weights[:] = _wild(r, l.weights.size)
        l.biases[:] = r.standard_normal(l.biases.size).astype(np.float32)
        net = types.SimpleNamespace(input=_wild(r, l.inputs * batch), delta=_wild(r, l.inputs * batch),
                                    train=1, truth=None, index=0,
                                    workspace=np.zeros(max(l.workspace_size // 4, 1), np.float32))
        saved = kernels.active()
        kernels.use(impl)
        try:
            l.forward(l, net)
            l.delta[:] = _wild(r, l.delta.size)
            l.backward(l, net)
        finally:
            kernels.use(saved)
        results[impl] = (l.delta.copy(), net.delta.copy())
    mismatched = []
    for name, fast, reference in zip(("l.delta", "net.delta"), results["fast"], results["reference"]):
        assert np.isnan(reference).any(), name  # the case exercises NaN meeting NaN
        differ = np.flatnonzero(bits(fast) != bits(reference))
        if differ.size:
            i = differ[0]
            mismatched.append(f"{name}: {differ.size} elements, e.g. [{i}] fast {bits(fast)[i]:#010x} "
                              f"reference {bits(reference)[i]:#010x}")
    assert not mismatched, "; ".join(mismatched)
