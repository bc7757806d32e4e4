"""darknet's blas kernels, fast: bit-identical to ``darkpy.kernels.reference.blas``.

Every name of the reference exists here (re-exported below); the functions
that have a faster twin are redefined after the import.  tests/test_blas.py
checks each redefined function against its reference, bit for bit, on random
shapes and on data with inf, NaN and denormals.

How the fast versions stay exact:

* Every element gets the same C operations, in the same order, with the same
  float/double roundings as the reference.  Only *which element is computed when*
  changes: elementwise loops run plane by plane over contiguous slices (so LLVM
  vectorises them: a plain slice index lets it drop Numba's negative-index
  check), and per-element constants of darknet's loops (``sqrt(variance[f])``,
  ``mean_delta[f]/(spatial*batch)``, ``variance_delta[f]*2.``) are computed once per
  channel: the same value, the same bits.
* Every sum keeps darknet's order (one serial float or double chain per channel
  or per plane, over b then k).  Sums are sped up by running several channels'
  chains side by side, never by splitting a chain: the batchnorm sums put 8
  channels in the 8 lanes of a vector (``VECTOR``): an 8 x 8 block (8 channels x
  8 consecutive pixels) is transposed in registers (``darkpy.kernels.simd``), so
  each chain step is one vector operation whose lane r is exactly channel r's
  scalar step (plain LLVM ``fadd``/``fmul``/``fpext``/``fptrunc`` on vectors: lane-wise
  IEEE operations, no fast-math flags, never contracted into an FMA).  The
  forward statistics run two such vectors side by side (the variance step,
  widen-add-narrow, has a long latency); the channels after the last full
  vector run ``LANES`` scalar chains side by side, then one at a time.
* NaN payloads: when two NaNs meet, x86 keeps the first operand's, and the
  reference pins gcc's operand order with ``first_nan``.  The fast loops run
  unguarded where at most one NaN payload can reach an operation (every NaN
  created inside a kernel is the same default NaN, so only NaNs in the *inputs*
  count): per channel, when a sum or a per-channel value comes out NaN, that
  channel is recomputed on the guarded path, in the reference's operand order.
* The batchnorm passes are fused per channel group (statistics, then one
  normalise pass writing ``x``, ``x_norm`` and ``output``; one pass for all four
  backward sums, then one pass for the new delta), and ``prange`` runs channel
  groups in parallel: channels are independent outputs.  What bounds them (one
  core, 8x64x52x52): the double divisions of the normalise passes (one per
  element forward, two backward: the divider takes ~1.25 cycles per element),
  the conversions of the variance chain, the transposes of the backward sums,
  and memory.  Tried and dropped, no faster here: running a group's sums in
  the same loop as the previous group's delta pass (the divider and the
  shuffles do not overlap), the activation inside the normalise loop of the
  inference epilogue (LEAKY's conversions slow the division-bound loop),
  non-temporal stores (the backward pass reads x and x_norm right back).
"""

import math

import numpy as np
from numba import prange

from darkpy.kernels import kernel, pkernel
from darkpy.kernels.activations import LINEAR, RELU, activate_range, relu_activate
from darkpy.kernels.gemm import vadd, vbroadcast, vmul, vstore
from darkpy.kernels.reference.blas import *  # noqa: F401,F403
from darkpy.kernels.reference.blas import EPS_BACKWARD, EPS_FORWARD
from darkpy.kernels.reference.nan import first_nan
from darkpy.kernels.simd import vgather, vload_columns, vsub, vvariance_step, vzero

#: Channels of one vector group: the 8 lanes of a float32x8 are 8 channels, each lane
#: running its channel's chain (see the module docstring).  A group is also the unit
#: of parallel work of the fused batchnorm kernels.
VECTOR = 8
#: Channels whose sums run side by side in one scalar loop, for the channels left
#: after the full vector groups: four for the forward statistics, two for the
#: backward sums (four chains each).
LANES = 4
BACKWARD_LANES = 2


# ---------------------------------------------------------------- vector ops

@kernel
def copy_cpu(N, X, INCX, Y, INCY):
    """darknet's ``copy_cpu``; unit strides run as a contiguous (vectorised) loop."""
    if INCX == 1 and INCY == 1:
        x = X[:N]
        y = Y[:N]
        for i in range(N):
            y[i] = x[i]
    else:
        for i in range(N):
            Y[i * INCY] = X[i * INCX]


@kernel
def fill_cpu(N, ALPHA, X, INCX):
    """darknet's ``fill_cpu``; unit stride contiguous."""
    alpha = np.float32(ALPHA)
    if INCX == 1:
        x = X[:N]
        for i in range(N):
            x[i] = alpha
    else:
        for i in range(N):
            X[i * INCX] = alpha


@kernel
def axpy_cpu(N, ALPHA, X, INCX, Y, INCY):
    """darknet's ``axpy_cpu``: Y += ALPHA*X in float, product rounded before the add."""
    alpha = np.float32(ALPHA)
    if INCX == 1 and INCY == 1:
        x = X[:N]
        y = Y[:N]
        for i in range(N):
            product = alpha * x[i]
            y[i] = first_nan(product, product + y[i])
    else:
        for i in range(N):
            product = alpha * X[i * INCX]
            Y[i * INCY] = first_nan(product, product + Y[i * INCY])


@kernel
def scal_cpu(N, ALPHA, X, INCX):
    """darknet's ``scal_cpu``: X *= ALPHA in float."""
    alpha = np.float32(ALPHA)
    if INCX == 1:
        x = X[:N]
        for i in range(N):
            x[i] *= alpha
    else:
        for i in range(N):
            X[i * INCX] *= alpha


@kernel
def add_bias(output, biases, batch, n, size):
    """darknet's ``add_bias``, plane by plane."""
    for b in range(batch):
        for i in range(n):
            bias = biases[i]
            plane = output[(b * n + i) * size:(b * n + i + 1) * size]
            if bias != bias:           # two NaNs can meet: the output's wins (see reference)
                for j in range(size):
                    value = plane[j]
                    plane[j] = first_nan(value, value + bias)
            else:
                for j in range(size):
                    plane[j] += bias


@kernel
def scale_bias(output, scales, batch, n, size):
    """darknet's ``scale_bias``, plane by plane."""
    for b in range(batch):
        for i in range(n):
            scale = scales[i]
            plane = output[(b * n + i) * size:(b * n + i + 1) * size]
            if scale != scale:         # two NaNs can meet: the output's wins (see reference)
                for j in range(size):
                    value = plane[j]
                    plane[j] = first_nan(value, value * scale)
            else:
                for j in range(size):
                    plane[j] *= scale


# ---------------------------------------------------------------- batchnorm statistics

@kernel
def _mean_variance_vectors(input, batch, out_c, spatial, fa, fb, mean, variance):
    """``mean_cpu`` then ``variance_cpu`` for the 8 channels fa..fa+7 and the 8 channels
    fb..fb+7, one channel per vector lane (fb == fa computes the same 8 twice).

    Each 8 x 8 block (8 channels x 8 consecutive pixels) is transposed in registers,
    so that a chain step is one vector operation whose lane r is channel r's scalar
    step: the float mean sum over b then k, times the float ``1./n``; the variance
    term ``(double)(x - mean)`` squared in double, added to the running float widened
    to double and rounded back to float (``vvariance_step``), times the float
    ``1./(n-1)``.  The pixels after the last full block are gathered one at a time.
    The two vectors' chains run side by side: a variance step waits ~15 cycles for
    the previous one (widen, add, narrow), so one chain alone leaves the core idle.
    Unguarded like ``_mean_variance_lanes``: the caller redoes a NaN mean's channel.
    """
    spatial8 = spatial - spatial % 8
    a = vzero()
    c = vzero()
    for b in range(batch):
        pa = (b * out_c + fa) * spatial
        pb = (b * out_c + fb) * spatial
        for k in range(0, spatial8, 8):
            a0, a1, a2, a3, a4, a5, a6, a7 = vload_columns(input, pa + k, spatial)
            a = vadd(a, a0)
            a = vadd(a, a1)
            a = vadd(a, a2)
            a = vadd(a, a3)
            a = vadd(a, a4)
            a = vadd(a, a5)
            a = vadd(a, a6)
            a = vadd(a, a7)
            c0, c1, c2, c3, c4, c5, c6, c7 = vload_columns(input, pb + k, spatial)
            c = vadd(c, c0)
            c = vadd(c, c1)
            c = vadd(c, c2)
            c = vadd(c, c3)
            c = vadd(c, c4)
            c = vadd(c, c5)
            c = vadd(c, c6)
            c = vadd(c, c7)
        for k in range(spatial8, spatial):
            a = vadd(a, vgather(input, pa + k, spatial))
            c = vadd(c, vgather(input, pb + k, spatial))
    scale = vbroadcast(np.float32(1. / (batch * spatial)))
    ma = vmul(a, scale)
    mb = vmul(c, scale)

    va = vzero()
    vb = vzero()
    for b in range(batch):
        pa = (b * out_c + fa) * spatial
        pb = (b * out_c + fb) * spatial
        for k in range(0, spatial8, 8):
            a0, a1, a2, a3, a4, a5, a6, a7 = vload_columns(input, pa + k, spatial)
            c0, c1, c2, c3, c4, c5, c6, c7 = vload_columns(input, pb + k, spatial)
            va = vvariance_step(va, a0, ma)
            vb = vvariance_step(vb, c0, mb)
            va = vvariance_step(va, a1, ma)
            vb = vvariance_step(vb, c1, mb)
            va = vvariance_step(va, a2, ma)
            vb = vvariance_step(vb, c2, mb)
            va = vvariance_step(va, a3, ma)
            vb = vvariance_step(vb, c3, mb)
            va = vvariance_step(va, a4, ma)
            vb = vvariance_step(vb, c4, mb)
            va = vvariance_step(va, a5, ma)
            vb = vvariance_step(vb, c5, mb)
            va = vvariance_step(va, a6, ma)
            vb = vvariance_step(vb, c6, mb)
            va = vvariance_step(va, a7, ma)
            vb = vvariance_step(vb, c7, mb)
        for k in range(spatial8, spatial):
            va = vvariance_step(va, vgather(input, pa + k, spatial), ma)
            vb = vvariance_step(vb, vgather(input, pb + k, spatial), mb)
    scale = vbroadcast(np.float32(1. / (batch * spatial - 1)))
    va = vmul(va, scale)
    vb = vmul(vb, scale)

    lanes = np.empty(4 * VECTOR, np.float32)
    vstore(lanes, 0, ma)
    vstore(lanes, VECTOR, va)
    vstore(lanes, 2 * VECTOR, mb)
    vstore(lanes, 3 * VECTOR, vb)
    for j in range(VECTOR):
        mean[fa + j] = lanes[j]
        variance[fa + j] = lanes[VECTOR + j]
        mean[fb + j] = lanes[2 * VECTOR + j]
        variance[fb + j] = lanes[3 * VECTOR + j]


@kernel
def _mean_variance_lanes(input, batch, out_c, spatial, f0, mean, variance):
    """``mean_cpu`` then ``variance_cpu`` for the LANES channels f0.., their chains side by side.

    Same operations as the reference per channel: the mean sums in float over b then k
    and is scaled by the float ``1./n``; each variance term is the double square of the
    float difference, added in double and rounded to float at every step.  Unguarded:
    a channel whose mean comes out NaN is redone by ``_mean_variance_one``.
    """
    scale = np.float32(1. / (batch * spatial))
    a0 = np.float32(0)
    a1 = np.float32(0)
    a2 = np.float32(0)
    a3 = np.float32(0)
    for b in range(batch):
        p = (b * out_c + f0) * spatial
        x0 = input[p:p + spatial]
        x1 = input[p + spatial:p + 2 * spatial]
        x2 = input[p + 2 * spatial:p + 3 * spatial]
        x3 = input[p + 3 * spatial:p + 4 * spatial]
        for k in range(spatial):
            a0 += x0[k]
            a1 += x1[k]
            a2 += x2[k]
            a3 += x3[k]
    m0 = a0 * scale
    m1 = a1 * scale
    m2 = a2 * scale
    m3 = a3 * scale
    mean[f0] = m0
    mean[f0 + 1] = m1
    mean[f0 + 2] = m2
    mean[f0 + 3] = m3

    scale = np.float32(1. / (batch * spatial - 1))
    v0 = np.float32(0)
    v1 = np.float32(0)
    v2 = np.float32(0)
    v3 = np.float32(0)
    for b in range(batch):
        p = (b * out_c + f0) * spatial
        x0 = input[p:p + spatial]
        x1 = input[p + spatial:p + 2 * spatial]
        x2 = input[p + 2 * spatial:p + 3 * spatial]
        x3 = input[p + 3 * spatial:p + 4 * spatial]
        for k in range(spatial):
            d0 = np.float64(x0[k] - m0)
            d1 = np.float64(x1[k] - m1)
            d2 = np.float64(x2[k] - m2)
            d3 = np.float64(x3[k] - m3)
            v0 = np.float32(np.float64(v0) + d0 * d0)
            v1 = np.float32(np.float64(v1) + d1 * d1)
            v2 = np.float32(np.float64(v2) + d2 * d2)
            v3 = np.float32(np.float64(v3) + d3 * d3)
    variance[f0] = v0 * scale
    variance[f0 + 1] = v1 * scale
    variance[f0 + 2] = v2 * scale
    variance[f0 + 3] = v3 * scale


@kernel
def _mean_variance_one(input, batch, out_c, spatial, f, mean, variance):
    """``mean_cpu`` then ``variance_cpu`` for channel f, in the reference's (gcc's) operand
    order for NaNs: the guarded path, and the channels left over after the lanes."""
    scale = np.float32(1. / (batch * spatial))
    a = np.float32(0)
    for b in range(batch):
        p = (b * out_c + f) * spatial
        x = input[p:p + spatial]
        for k in range(spatial):
            a = first_nan(a, a + x[k])
    m = a * scale
    mean[f] = m
    scale = np.float32(1. / (batch * spatial - 1))
    v = 0.
    for b in range(batch):
        p = (b * out_c + f) * spatial
        x = input[p:p + spatial]
        for k in range(spatial):
            d = np.float64(x[k] - m)
            v = np.float64(np.float32(first_nan(v, v + d * d)))
    variance[f] = np.float32(v) * scale


@kernel
def _normalize_channel(input, output, x, x_norm, m, den, scale, bias, batch, out_c, spatial, f):
    """One channel of copy-to-x, ``normalize_cpu``, copy-to-x_norm, ``scale_bias``, ``add_bias``.

    ``den`` is darknet's per-element ``sqrt(variance) + .000001f`` (double), the same
    value for the whole channel.  x_norm is the double quotient rounded to float;
    output = x_norm*scale (float) + bias (float).  ``x_norm`` may be None (inference).
    The products and sums are guarded (x_norm's NaN first) only when the scale or
    the bias is itself NaN: otherwise a single NaN payload can reach them.

    A convolutional layer normalises its output in place (``input`` is ``output``).
    LLVM vectorises a loop only after a run-time check that its arrays do not
    overlap, which an in-place loop fails; so in place, each run of ``COPY_RUN``
    pixels is first copied to x (darknet's copy_cpu) and then normalised *from x*,
    which holds the same floats.
    """
    guard = scale != scale or bias != bias
    in_place = input.ctypes.data == output.ctypes.data
    for b in range(batch):
        p = (b * out_c + f) * spatial
        for lo in range(p, p + spatial, COPY_RUN):
            hi = min(lo + COPY_RUN, p + spatial)
            xn = None if x_norm is None else x_norm[lo:hi]
            if in_place:
                copy_cpu(hi - lo, input[lo:hi], 1, x[lo:hi], 1)
                _normalize_run(x[lo:hi], None, xn, output[lo:hi], m, den, scale, bias, guard)
            else:
                _normalize_run(input[lo:hi], x[lo:hi], xn, output[lo:hi], m, den, scale, bias, guard)


@kernel
def _normalize_run(src, xs, xn, out, m, den, scale, bias, guard):
    """One run of ``_normalize_channel``: xs = src (when ``xs`` is not None: otherwise src
    already is x), xn = normalised (when not None), out = xn*scale + bias.  ``None``
    arguments are pruned when Numba compiles, so every variant is one plain loop."""
    n = src.size
    if guard:
        for k in range(n):
            v = src[k]
            if xs is not None:
                xs[k] = v
            norm = np.float32(np.float64(v - m) / den)
            if xn is not None:
                xn[k] = norm
            scaled = first_nan(norm, norm * scale)
            out[k] = first_nan(scaled, scaled + bias)
    else:
        for k in range(n):
            v = src[k]
            if xs is not None:
                xs[k] = v
            norm = np.float32(np.float64(v - m) / den)
            if xn is not None:
                xn[k] = norm
            out[k] = norm * scale + bias


#: Pixels copied to ``x`` and then normalised from it, per step (stays in L1).
COPY_RUN = 1024


@kernel
def _rolling_update(rolling, stat):
    """``scal_cpu(.99)`` then ``axpy_cpu(.01)`` on one value (float; gcc adds the product first)."""
    kept = rolling * np.float32(.99)
    product = np.float32(.01) * stat
    return first_nan(product, product + kept)


#: Below this many pixels per plane (connected layers: 1) a block of channels runs
#: its chains side by side in memory order: for b, for k, for each channel of the
#: block (contiguous when spatial == 1, so the channel loop vectorises), instead of
#: walking one channel at a time down the batch.
SMALL_SPATIAL = 16
#: Channels per block on that path (the unit of parallel work).
SMALL_BLOCK = 64


@kernel
def _forward_block_small(input, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                         scales, biases, batch, out_c, spatial, f0, f1, train):
    """Channels f0..f1-1 of the forward pass, in memory order, operands in the reference's
    (gcc's) order for NaNs.  Each channel's sums keep darknet's order (b, then k)."""
    nf = f1 - f0
    den = np.empty(nf)
    if train:
        acc = np.zeros(nf, np.float32)
        for b in range(batch):
            for k in range(spatial):
                base = b * out_c * spatial + k
                for j in range(nf):
                    a = acc[j]
                    acc[j] = first_nan(a, a + input[base + (f0 + j) * spatial])
        scale = np.float32(1. / (batch * spatial))
        for j in range(nf):
            mean[f0 + j] = acc[j] * scale
        wide = np.zeros(nf)
        for b in range(batch):
            for k in range(spatial):
                base = b * out_c * spatial + k
                for j in range(nf):
                    d = np.float64(input[base + (f0 + j) * spatial] - mean[f0 + j])
                    v = wide[j]
                    wide[j] = np.float64(np.float32(first_nan(v, v + d * d)))
        scale = np.float32(1. / (batch * spatial - 1))
        for j in range(nf):
            f = f0 + j
            variance[f] = np.float32(wide[j]) * scale
            rolling_mean[f] = _rolling_update(rolling_mean[f], mean[f])
            rolling_variance[f] = _rolling_update(rolling_variance[f], variance[f])
            den[j] = math.sqrt(np.float64(variance[f])) + np.float64(EPS_FORWARD)
        stat_mean = mean
    else:
        for j in range(nf):
            den[j] = math.sqrt(np.float64(rolling_variance[f0 + j])) + np.float64(EPS_FORWARD)
        stat_mean = rolling_mean
    m = stat_mean[f0:f1]
    sc = scales[f0:f1]
    bias = biases[f0:f1]
    for b in range(batch):
        for k in range(spatial):
            base = b * out_c * spatial + k
            for j in range(nf):
                index = base + (f0 + j) * spatial
                value = input[index]
                x[index] = value
                norm = np.float32(np.float64(value - m[j]) / den[j])
                if train:
                    x_norm[index] = norm
                scaled = first_nan(norm, norm * sc[j])
                output[index] = first_nan(scaled, scaled + bias[j])


@pkernel
def batchnorm_forward_train(input, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                            scales, biases, batch, out_c, spatial):
    """Fused twin of the reference ``batchnorm_forward_train`` (forward_batchnorm_layer, train).

    Per group of 2*VECTOR channels (in parallel): mean and variance with one channel per
    vector lane, two vectors side by side (the channels after the last full vector:
    LANES scalar chains side by side, then one at a time; a channel whose mean is NaN
    is redone on the guarded path), the rolling updates (float .99 and .01), then one
    pass per channel writing x, x_norm and output.
    ``input`` may be ``output`` itself (a convolutional layer).
    """
    if spatial < SMALL_SPATIAL:
        for block in prange((out_c + SMALL_BLOCK - 1) // SMALL_BLOCK):
            _forward_block_small(input, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                                 scales, biases, batch, out_c, spatial, block * SMALL_BLOCK,
                                 min(out_c, (block + 1) * SMALL_BLOCK), True)
        return
    groups = (out_c + 2 * VECTOR - 1) // (2 * VECTOR)
    for g in prange(groups):
        f0 = g * 2 * VECTOR
        f1 = min(f0 + 2 * VECTOR, out_c)
        f = f0
        if f1 - f0 >= VECTOR:
            # two vectors of channels; a lone vector of 8 runs as both
            second = f0 + VECTOR if f1 - f0 == 2 * VECTOR else f0
            _mean_variance_vectors(input, batch, out_c, spatial, f0, second, mean, variance)
            f = second + VECTOR
        while f + LANES <= f1:
            _mean_variance_lanes(input, batch, out_c, spatial, f, mean, variance)
            f += LANES
        while f < f1:
            _mean_variance_one(input, batch, out_c, spatial, f, mean, variance)
            f += 1
        for f in range(f0, f1):
            if mean[f] != mean[f]:  # a NaN met the unguarded chains: gcc's operand order
                _mean_variance_one(input, batch, out_c, spatial, f, mean, variance)
            rolling_mean[f] = _rolling_update(rolling_mean[f], mean[f])
            rolling_variance[f] = _rolling_update(rolling_variance[f], variance[f])
            den = math.sqrt(np.float64(variance[f])) + np.float64(EPS_FORWARD)
            _normalize_channel(input, output, x, x_norm, mean[f], den, scales[f], biases[f],
                               batch, out_c, spatial, f)


@pkernel
def batchnorm_forward_infer(input, output, x, rolling_mean, rolling_variance, scales, biases,
                            batch, out_c, spatial):
    """Fused twin of the reference ``batchnorm_forward_infer``: one pass per channel."""
    if spatial < SMALL_SPATIAL:
        for block in prange((out_c + SMALL_BLOCK - 1) // SMALL_BLOCK):
            _forward_block_small(input, output, x, x, rolling_mean, rolling_variance, rolling_mean,
                                 rolling_variance, scales, biases, batch, out_c, spatial, block * SMALL_BLOCK,
                                 min(out_c, (block + 1) * SMALL_BLOCK), False)
        return
    for f in prange(out_c):
        den = math.sqrt(np.float64(rolling_variance[f])) + np.float64(EPS_FORWARD)
        _normalize_channel(input, output, x, None, rolling_mean[f], den, scales[f], biases[f],
                           batch, out_c, spatial, f)


@pkernel
def batchnorm_forward_infer_activate(input, output, x, rolling_mean, rolling_variance, scales, biases,
                                     batch, out_c, spatial, activation):
    """Fused twin of the reference ``batchnorm_forward_infer_activate`` (a convolutional
    layer's inference epilogue): per channel (in parallel), the ``batchnorm_forward_infer``
    pass writing x and output, then ``activate_range`` (darkpy.kernels.activations) over
    the channel's planes while they are still in cache.  Elementwise: each element gets
    the reference's operations, whichever channel runs first."""
    if spatial < SMALL_SPATIAL:
        for block in prange((out_c + SMALL_BLOCK - 1) // SMALL_BLOCK):
            f0 = block * SMALL_BLOCK
            f1 = min(out_c, f0 + SMALL_BLOCK)
            _forward_block_small(input, output, x, x, rolling_mean, rolling_variance, rolling_mean,
                                 rolling_variance, scales, biases, batch, out_c, spatial, f0, f1, False)
            for b in range(batch):
                activate_range(output, (b * out_c + f0) * spatial, (b * out_c + f1) * spatial, activation)
        return
    for f in prange(out_c):
        den = math.sqrt(np.float64(rolling_variance[f])) + np.float64(EPS_FORWARD)
        scale = scales[f]
        bias = biases[f]
        if scale != scale or bias != bias:
            _normalize_channel(input, output, x, None, rolling_mean[f], den, scale, bias,
                               batch, out_c, spatial, f)
            for b in range(batch):
                p = (b * out_c + f) * spatial
                activate_range(output, p, p + spatial, activation)
        else:
            _normalize_activate_channel(input, output, x, rolling_mean[f], den, scale, bias,
                                        batch, out_c, spatial, f, activation)


@kernel
def _normalize_activate_channel(input, output, x, m, den, scale, bias, batch, out_c, spatial, f, activation):
    """One channel of ``_normalize_channel`` (inference; scale and bias not NaN, so one NaN
    payload at most reaches each operation) with the activation applied plane by plane
    while the plane is in cache: RELU inside the loop (the division-bound loop hides its
    float multiply), any other activation by ``activate_range`` over the plane just
    written (inside the loop, LEAKY's double conversions slow the division-bound loop
    down more than a second pass over the cached plane costs)."""
    in_place = input.ctypes.data == output.ctypes.data
    for b in range(batch):
        p = (b * out_c + f) * spatial
        for lo in range(p, p + spatial, COPY_RUN):   # in place: copy, then normalise from x (_normalize_channel)
            hi = min(lo + COPY_RUN, p + spatial)
            if in_place:
                copy_cpu(hi - lo, input[lo:hi], 1, x[lo:hi], 1)
                _normalize_activate_run(x[lo:hi], None, output[lo:hi], m, den, scale, bias, activation)
            else:
                _normalize_activate_run(input[lo:hi], x[lo:hi], output[lo:hi], m, den, scale, bias, activation)
        if activation != RELU and activation != LINEAR:
            activate_range(output, p, p + spatial, activation)


@kernel
def _normalize_activate_run(src, xs, out, m, den, scale, bias, activation):
    """One run of ``_normalize_activate_channel``: xs = src (unless ``xs`` is None: src is x),
    out = normalised*scale + bias, with RELU applied in the loop."""
    n = src.size
    if activation == RELU:
        for k in range(n):
            v = src[k]
            if xs is not None:
                xs[k] = v
            out[k] = relu_activate(np.float32(np.float64(v - m) / den) * scale + bias)
    else:
        for k in range(n):
            v = src[k]
            if xs is not None:
                xs[k] = v
            out[k] = np.float32(np.float64(v - m) / den) * scale + bias


# ---------------------------------------------------------------- batchnorm backward

@kernel
def _backward_sums_vector(delta, x, x_norm, mean, scales, batch, out_c, spatial, f0, sums, plane_sums):
    """The four backward sums of the VECTOR (8) channels f0..f0+7, one channel per lane.

    8 x 8 blocks of delta, x_norm and x are transposed in registers; lane r of each
    vector operation is channel f0+r's scalar step (as ``_backward_sums_lanes``): the
    plane's float sum of delta, the float sum of delta*x_norm, d = delta*scale and its
    float sum, and the float sum of (x - mean)*d.  Sum t of lane j goes to
    ``sums[t*VECTOR + j]`` (t = 0: scale, 1: mean, 2: variance), image b's plane sum to
    ``plane_sums[b*VECTOR + j]``.  Unguarded: a channel with a NaN sum is redone by
    ``_backward_sums_one``.
    """
    s = vgather(scales, f0, 1)
    m = vgather(mean, f0, 1)
    q = vzero()
    e = vzero()
    w = vzero()
    spatial8 = spatial - spatial % 8
    for b in range(batch):
        p = (b * out_c + f0) * spatial
        bias = vzero()
        for k in range(0, spatial8, 8):
            d0, d1, d2, d3, d4, d5, d6, d7 = vload_columns(delta, p + k, spatial)
            n0, n1, n2, n3, n4, n5, n6, n7 = vload_columns(x_norm, p + k, spatial)
            x0, x1, x2, x3, x4, x5, x6, x7 = vload_columns(x, p + k, spatial)
            bias, q, e, w = _backward_step(bias, q, e, w, d0, n0, x0, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d1, n1, x1, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d2, n2, x2, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d3, n3, x3, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d4, n4, x4, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d5, n5, x5, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d6, n6, x6, s, m)
            bias, q, e, w = _backward_step(bias, q, e, w, d7, n7, x7, s, m)
        for k in range(spatial8, spatial):
            bias, q, e, w = _backward_step(bias, q, e, w, vgather(delta, p + k, spatial),
                                           vgather(x_norm, p + k, spatial), vgather(x, p + k, spatial), s, m)
        vstore(plane_sums, b * VECTOR, bias)
    vstore(sums, 0, q)
    vstore(sums, VECTOR, e)
    vstore(sums, 2 * VECTOR, w)


@kernel(inline="always")
def _backward_step(bias, q, e, w, d, n, xv, s, m):
    """One pixel of the four backward chains, 8 channels wide (``_backward_sums_vector``)."""
    bias = vadd(bias, d)
    q = vadd(q, vmul(d, n))
    d = vmul(d, s)
    e = vadd(e, d)
    w = vadd(w, vmul(vsub(xv, m), d))
    return bias, q, e, w


@kernel
def _backward_sums_lanes(delta, x, x_norm, mean, scales, batch, out_c, spatial, f0, sums, plane_sums):
    """The four backward sums of BACKWARD_LANES (two) channels f0, f0+1, chains side by side.

    Per channel, exactly as the reference: each plane's float sum of delta
    (backward_bias; into ``plane_sums[b*VECTOR + j]``, added to bias_updates by
    the caller); a float sum of delta*x_norm (backward_scale_cpu); after scale_bias,
    d = delta*scale (float) summed in float (mean_delta_cpu) and (x - mean)*d summed
    in float (variance_delta_cpu).  Writes the (scale, mean, variance) sums of lane j
    into sums[j], sums[VECTOR + j], sums[2*VECTOR + j].  Unguarded: a channel with a
    NaN sum is redone by ``_backward_sums_one``.
    """
    s0 = scales[f0]
    s1 = scales[f0 + 1]
    m0 = mean[f0]
    m1 = mean[f0 + 1]
    q0 = np.float32(0)
    q1 = np.float32(0)
    e0 = np.float32(0)
    e1 = np.float32(0)
    w0 = np.float32(0)
    w1 = np.float32(0)
    for b in range(batch):
        p = (b * out_c + f0) * spatial
        d0 = delta[p:p + spatial]
        d1 = delta[p + spatial:p + 2 * spatial]
        n0 = x_norm[p:p + spatial]
        n1 = x_norm[p + spatial:p + 2 * spatial]
        x0 = x[p:p + spatial]
        x1 = x[p + spatial:p + 2 * spatial]
        b0 = np.float32(0)
        b1 = np.float32(0)
        for k in range(spatial):
            v0 = d0[k]
            v1 = d1[k]
            b0 += v0
            b1 += v1
            q0 += v0 * n0[k]
            q1 += v1 * n1[k]
            v0 = v0 * s0
            v1 = v1 * s1
            e0 += v0
            e1 += v1
            w0 += (x0[k] - m0) * v0
            w1 += (x1[k] - m1) * v1
        plane_sums[b * VECTOR] = b0
        plane_sums[b * VECTOR + 1] = b1
    sums[0] = q0
    sums[VECTOR] = e0
    sums[2 * VECTOR] = w0
    sums[1] = q1
    sums[VECTOR + 1] = e1
    sums[2 * VECTOR + 1] = w1


@kernel
def _backward_sums_one(delta, x, x_norm, mean, scales, batch, out_c, spatial, f, sums, plane_sums):
    """The four sums of channel f alone (lane 0 of ``sums`` and ``plane_sums``, same layout as
    ``_backward_sums_vector``), in the reference's (gcc's) operand order for NaNs: the
    guarded path."""
    s = scales[f]
    m = mean[f]
    q = np.float32(0)
    e = np.float32(0)
    w = np.float32(0)
    for b in range(batch):
        p = (b * out_c + f) * spatial
        d = delta[p:p + spatial]
        n = x_norm[p:p + spatial]
        xs = x[p:p + spatial]
        bsum = np.float32(0)
        for k in range(spatial):
            v = d[k]
            bsum = first_nan(bsum, bsum + v)
            product = first_nan(v, v * n[k])
            q = first_nan(q, q + product)
            v = first_nan(v, v * s)
            e = first_nan(e, e + v)
            dx = xs[k] - m
            product = first_nan(dx, dx * v)
            w = first_nan(w, w + product)
        plane_sums[b * VECTOR] = bsum
    sums[0] = q
    sums[VECTOR] = e
    sums[2 * VECTOR] = w


@kernel
def _normalize_delta_channel(delta, x, m, scale, sd, vd2, md_n, batch, out_c, spatial, f, guard):
    """One channel of scale_bias + ``normalize_delta_cpu``.

    Per element, as darknet: d = delta*scale (float), then
    ``(float)((double)d*1./sd + (vd2*(double)(x - m))/n + md_n)`` with ``sd`` the double
    ``sqrt(variance + .00001f)``, ``vd2 = (double)variance_delta * 2.`` and
    ``md_n = (double)(mean_delta/(float)n)``: per-channel values, computed once.
    With ``guard`` the operands are pinned in the reference's (gcc's) order for NaNs.
    """
    n64 = np.float64(spatial * batch)
    for b in range(batch):
        p = (b * out_c + f) * spatial
        ds = delta[p:p + spatial]
        xs = x[p:p + spatial]
        if guard:
            for k in range(spatial):
                v = ds[k]
                d = first_nan(v, v * scale)
                term1 = np.float64(d) * 1. / sd
                dx = np.float64(xs[k] - m)
                term2 = first_nan(dx, dx * vd2) / n64
                total = first_nan(term2, term2 + term1)
                ds[k] = np.float32(first_nan(total, total + md_n))
        else:
            for k in range(spatial):
                d = ds[k] * scale
                ds[k] = np.float32(np.float64(xs[k] - m) * vd2 / n64 + np.float64(d) * 1. / sd + md_n)


@kernel
def _backward_block_small(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                          mean_delta, variance_delta, batch, out_c, spatial, f0, f1):
    """Channels f0..f1-1 of the backward pass, in memory order, operands in the reference's
    (gcc's) order for NaNs.  Each channel's sums keep darknet's order (b, then k)."""
    nf = f1 - f0
    m = mean[f0:f1]
    s = scales[f0:f1]
    plane = np.empty(nf, np.float32)
    q = np.zeros(nf, np.float32)
    e = np.zeros(nf, np.float32)
    w = np.zeros(nf, np.float32)
    for b in range(batch):
        plane[:] = 0
        for k in range(spatial):
            base = b * out_c * spatial + k
            for j in range(nf):
                index = base + (f0 + j) * spatial
                value = delta[index]
                a = plane[j]
                plane[j] = first_nan(a, a + value)
                product = first_nan(value, value * x_norm[index])
                a = q[j]
                q[j] = first_nan(a, a + product)
                value = first_nan(value, value * s[j])
                a = e[j]
                e[j] = first_nan(a, a + value)
                dx = x[index] - m[j]
                product = first_nan(dx, dx * value)
                a = w[j]
                w[j] = first_nan(a, a + product)
        for j in range(nf):
            a = plane[j]
            bias_updates[f0 + j] = first_nan(a, a + bias_updates[f0 + j])
    exponent = np.float64(np.float32(-3. / 2.))
    sd = np.empty(nf)
    vd2 = np.empty(nf)
    md_n = np.empty(nf)
    for j in range(nf):
        f = f0 + j
        a = q[j]
        scale_updates[f] = first_nan(a, a + scale_updates[f])
        v = np.float64(variance[f] + EPS_BACKWARD)
        sd[j] = math.sqrt(v)
        wide = np.float64(e[j])
        mean_delta[f] = np.float32(first_nan(wide, wide * (-1. / sd[j])))
        wide = np.float64(w[j])
        variance_delta[f] = np.float32(first_nan(wide, wide * (math.pow(v, exponent) * -.5)))
        md_n[j] = np.float64(mean_delta[f] / np.float32(spatial * batch))
        vd2[j] = np.float64(variance_delta[f]) * 2.
    n64 = np.float64(spatial * batch)
    for b in range(batch):
        for k in range(spatial):
            base = b * out_c * spatial + k
            for j in range(nf):
                index = base + (f0 + j) * spatial
                value = delta[index]
                d = first_nan(value, value * s[j])
                term1 = np.float64(d) * 1. / sd[j]
                dx = np.float64(x[index] - m[j])
                term2 = first_nan(dx, dx * vd2[j]) / n64
                total = first_nan(term2, term2 + term1)
                delta[index] = np.float32(first_nan(total, total + md_n[j]))


@pkernel
def batchnorm_backward(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                       mean_delta, variance_delta, batch, out_c, spatial):
    """Fused twin of the reference ``batchnorm_backward`` (backward_batchnorm_layer's calls).

    Per group of VECTOR channels (in parallel): one pass for the four sums (one channel
    per vector lane; a last, partial group in pairs of scalar chains, then alone), the
    per-channel finishing steps of backward_bias, backward_scale_cpu, mean_delta_cpu
    and variance_delta_cpu (double factors, as the reference), then one pass writing
    delta.  A channel with a NaN sum or a NaN per-channel value is redone on the
    guarded path.
    """
    if spatial < SMALL_SPATIAL:
        for block in prange((out_c + SMALL_BLOCK - 1) // SMALL_BLOCK):
            _backward_block_small(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                                  mean_delta, variance_delta, batch, out_c, spatial, block * SMALL_BLOCK,
                                  min(out_c, (block + 1) * SMALL_BLOCK))
        return
    groups = (out_c + VECTOR - 1) // VECTOR
    n32 = np.float32(spatial * batch)
    exponent = np.float64(np.float32(-3. / 2.))
    all_sums = np.empty(groups * 3 * VECTOR, np.float32)
    all_plane_sums = np.empty(groups * batch * VECTOR, np.float32)
    for g in prange(groups):
        f0 = g * VECTOR
        f1 = min(f0 + VECTOR, out_c)
        sums = all_sums[g * 3 * VECTOR:(g + 1) * 3 * VECTOR]
        plane_sums = all_plane_sums[g * batch * VECTOR:(g + 1) * batch * VECTOR]
        # channels f0..unguarded-1 run on unguarded chains, the rest on the guarded path
        if f1 - f0 == VECTOR:
            _backward_sums_vector(delta, x, x_norm, mean, scales, batch, out_c, spatial, f0, sums, plane_sums)
            unguarded = f1
        else:
            unguarded = f0 + (f1 - f0) // BACKWARD_LANES * BACKWARD_LANES
            for f in range(f0, unguarded, BACKWARD_LANES):
                _backward_sums_lanes(delta, x, x_norm, mean, scales, batch, out_c, spatial, f,
                                     sums[f - f0:], plane_sums[f - f0:])
            for f in range(unguarded, f1):
                _backward_sums_one(delta, x, x_norm, mean, scales, batch, out_c, spatial, f,
                                   sums[f - f0:], plane_sums[f - f0:])
        for f in range(f0, f1):
            j = f - f0
            nan = (scales[f] != scales[f] or mean[f] != mean[f] or variance[f] != variance[f]
                   or bias_updates[f] != bias_updates[f] or scale_updates[f] != scale_updates[f])
            for t in range(3):
                nan = nan or sums[t * VECTOR + j] != sums[t * VECTOR + j]
            for b in range(batch):
                nan = nan or plane_sums[b * VECTOR + j] != plane_sums[b * VECTOR + j]
            if nan and f < unguarded:
                _backward_sums_one(delta, x, x_norm, mean, scales, batch, out_c, spatial, f,
                                   sums[j:], plane_sums[j:])
            for b in range(batch):
                plane = plane_sums[b * VECTOR + j]
                bias_updates[f] = first_nan(plane, plane + bias_updates[f])
            q = sums[j]
            scale_updates[f] = first_nan(q, q + scale_updates[f])
            v = np.float64(variance[f] + EPS_BACKWARD)
            wide = np.float64(sums[VECTOR + j])
            mean_delta[f] = np.float32(first_nan(wide, wide * (-1. / math.sqrt(v))))
            wide = np.float64(sums[2 * VECTOR + j])
            variance_delta[f] = np.float32(first_nan(wide, wide * (math.pow(v, exponent) * -.5)))
            md_n = np.float64(mean_delta[f] / n32)
            guard = nan or md_n != md_n or variance_delta[f] != variance_delta[f]
            _normalize_delta_channel(delta, x, mean[f], scales[f], math.sqrt(v),
                                     np.float64(variance_delta[f]) * 2., md_n,
                                     batch, out_c, spatial, f, guard)
