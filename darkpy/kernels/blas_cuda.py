"""``@cuda.jit`` twins of the CPU blas kernels, ``strict`` profile: darknet's CPU bits.

The same names as ``darkpy.kernels.reference.blas`` with ``_gpu`` appended
(darknet's own naming for its device functions), the same arguments; buffers are
device arrays (``numba.cuda`` device arrays, or host numpy arrays, which Numba
copies in and back).  What differs from darknet's GPU build, on purpose:

* Elementwise kernels run one thread per element; every per-channel reduction
  (``mean``, ``variance``, ``backward_bias``, ``backward_scale``, ``mean_delta``,
  ``variance_delta``) runs in ONE thread per channel, in the CPU's loop order.
  darknet's ``fast_*`` kernels split these sums over 512 threads: that is the
  ``darknet-gpu`` profile (``darkpy.kernels.darknet_gpu_cuda``).
* Every operation is one of ``darkpy.cuda.fp``'s: explicitly rounded (never
  contracted into an FMA), C's float/double promotions written out
  (``f2d``/``d2f``), x86's NaN bits.  The operand order is the CPU reference's,
  which pins whose NaN survives when two meet.
* ``variance_delta`` calls the double ``pow``: libdevice's may differ from
  glibc's in the last bits; channels whose double result lies near a float32
  rounding boundary are flagged by the kernel and recomputed on the host with
  glibc's ``pow`` (``darkpy.cuda.fp.near_tie``).
"""

import math

import numpy as np
from numba import cuda

from darkpy.cuda import simulator
from darkpy.cuda.fp import d2f, dadd, ddiv, dmul, dpow, dsqrt, f2d, fadd, fdiv, fmul, fsub, near_tie
from darkpy.kernels.reference.blas import EPS_BACKWARD, EPS_FORWARD

#: Threads per block of the strict kernels (the geometry does not change their results;
#: the simulator runs each thread as a Python thread, so it gets small blocks).
BLOCK = 32 if simulator() else 256


def _blocks(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


# ----------------------------------------------------------------------------- BLAS level 1

@cuda.jit
def _copy_kernel(N, X, INCX, Y, INCY):
    i = cuda.grid(1)
    if i < N:
        Y[i * INCY] = X[i * INCX]


@cuda.jit
def _fill_kernel(N, ALPHA, X, INCX):
    i = cuda.grid(1)
    if i < N:
        X[i * INCX] = ALPHA


@cuda.jit
def _axpy_kernel(N, ALPHA, X, INCX, Y, INCY):
    i = cuda.grid(1)
    if i < N:
        Y[i * INCY] = fadd(fmul(ALPHA, X[i * INCX]), Y[i * INCY])


@cuda.jit
def _scal_kernel(N, ALPHA, X, INCX):
    i = cuda.grid(1)
    if i < N:
        X[i * INCX] = fmul(X[i * INCX], ALPHA)


def copy_gpu(N, X, INCX, Y, INCY):
    """darknet's ``copy_cpu`` on the device: Y = X."""
    if N > 0:
        _copy_kernel[_blocks(N), BLOCK](N, X, INCX, Y, INCY)


def fill_gpu(N, ALPHA, X, INCX):
    """darknet's ``fill_cpu`` on the device: X = ALPHA (rounded to float on entry)."""
    if N > 0:
        _fill_kernel[_blocks(N), BLOCK](N, np.float32(ALPHA), X, INCX)


def axpy_gpu(N, ALPHA, X, INCX, Y, INCY):
    """darknet's ``axpy_cpu`` on the device: ``Y = (ALPHA*X) + Y`` in float, two roundings."""
    if N > 0:
        _axpy_kernel[_blocks(N), BLOCK](N, np.float32(ALPHA), X, INCX, Y, INCY)


def scal_gpu(N, ALPHA, X, INCX):
    """darknet's ``scal_cpu`` on the device: ``X *= ALPHA`` in float."""
    if N > 0:
        _scal_kernel[_blocks(N), BLOCK](N, np.float32(ALPHA), X, INCX)


# ----------------------------------------------------------------------------- bias and scale

@cuda.jit
def _add_bias_kernel(output, biases, batch, n, size):
    index = cuda.grid(1)
    if index < batch * n * size:
        i = (index // size) % n
        output[index] = fadd(output[index], biases[i])


@cuda.jit
def _scale_bias_kernel(output, scales, batch, n, size):
    index = cuda.grid(1)
    if index < batch * n * size:
        i = (index // size) % n
        output[index] = fmul(output[index], scales[i])


@cuda.jit
def _backward_bias_kernel(bias_updates, delta, batch, n, size):
    i = cuda.grid(1)
    if i < n:
        update = bias_updates[i]
        for b in range(batch):
            sum = np.float32(0)                      # sum_array of one (image, channel) plane
            base = size * (i + b * n)
            for j in range(size):
                sum = fadd(sum, delta[base + j])
            update = fadd(sum, update)
        bias_updates[i] = update


@cuda.jit
def _backward_scale_kernel(x_norm, delta, batch, n, size, scale_updates):
    f = cuda.grid(1)
    if f < n:
        sum = np.float32(0)
        for b in range(batch):
            for i in range(size):
                index = i + size * (f + n * b)
                sum = fadd(sum, fmul(delta[index], x_norm[index]))
        scale_updates[f] = fadd(sum, scale_updates[f])


def add_bias_gpu(output, biases, batch, n, size):
    """darknet's ``add_bias`` on the device: ``output += biases[channel]`` (float)."""
    total = batch * n * size
    if total > 0:
        _add_bias_kernel[_blocks(total), BLOCK](output, biases, batch, n, size)


def scale_bias_gpu(output, scales, batch, n, size):
    """darknet's ``scale_bias`` on the device: ``output *= scales[channel]`` (float)."""
    total = batch * n * size
    if total > 0:
        _scale_bias_kernel[_blocks(total), BLOCK](output, scales, batch, n, size)


def backward_bias_gpu(bias_updates, delta, batch, n, size):
    """darknet's CPU ``backward_bias``: one thread per channel; each (image, channel)
    plane summed on its own from 0 (``sum_array``), then added to the update, b in order."""
    if n > 0:
        _backward_bias_kernel[_blocks(n), BLOCK](bias_updates, delta, batch, n, size)


def backward_scale_gpu(x_norm, delta, batch, n, size, scale_updates):
    """darknet's ``backward_scale_cpu``: one thread per channel, one float sum of the
    rounded products ``delta*x_norm`` over b then i, then added to the update."""
    if n > 0:
        _backward_scale_kernel[_blocks(n), BLOCK](x_norm, delta, batch, n, size, scale_updates)


# ----------------------------------------------------------------------------- statistics

@cuda.jit
def _mean_kernel(x, batch, filters, spatial, mean):
    i = cuda.grid(1)
    if i < filters:
        scale = d2f(ddiv(1., np.float64(batch * spatial)))   # 1./(batch*spatial) stored in a float
        m = np.float32(0)
        for j in range(batch):
            for k in range(spatial):
                m = fadd(m, x[j * filters * spatial + i * spatial + k])
        mean[i] = fmul(m, scale)


@cuda.jit
def _variance_kernel(x, mean, batch, filters, spatial, variance):
    i = cuda.grid(1)
    if i < filters:
        scale = d2f(ddiv(1., np.float64(batch * spatial - 1)))
        sum = np.float64(0)                    # the float accumulator, held widened to double
        for j in range(batch):
            for k in range(spatial):
                d = f2d(fsub(x[j * filters * spatial + i * spatial + k], mean[i]))
                sum = f2d(d2f(dadd(sum, dmul(d, d))))   # pow(d, 2) added in double, stored in float
        variance[i] = fmul(d2f(sum), scale)


@cuda.jit
def _normalize_kernel(x, mean, variance, batch, filters, spatial):
    index = cuda.grid(1)
    if index < batch * filters * spatial:
        f = (index // spatial) % filters
        root = dadd(dsqrt(f2d(variance[f])), f2d(EPS_FORWARD))
        x[index] = d2f(ddiv(f2d(fsub(x[index], mean[f])), root))


def mean_gpu(x, batch, filters, spatial, mean):
    """darknet's ``mean_cpu``: one thread per channel, float sum over b then k, times the
    float ``scale = 1./(batch*spatial)``."""
    if filters > 0:
        _mean_kernel[_blocks(filters), BLOCK](x, batch, filters, spatial, mean)


def variance_gpu(x, mean, batch, filters, spatial, variance):
    """darknet's ``variance_cpu``: one thread per channel; ``pow(x - mean, 2)`` in double
    (exact), each addition in double rounded to the float accumulator; times the float
    ``1./(batch*spatial - 1)`` (inf when n == 1)."""
    if filters > 0:
        _variance_kernel[_blocks(filters), BLOCK](x, mean, batch, filters, spatial, variance)


def normalize_gpu(x, mean, variance, batch, filters, spatial):
    """darknet's ``normalize_cpu``: ``(x - mean)/(sqrt(variance) + .000001f)``, the
    difference in float, the root, sum and quotient in double, rounded on store."""
    total = batch * filters * spatial
    if total > 0:
        _normalize_kernel[_blocks(total), BLOCK](x, mean, variance, batch, filters, spatial)


# ----------------------------------------------------------------------------- batchnorm backward

@cuda.jit
def _mean_delta_kernel(delta, variance, batch, filters, spatial, mean_delta):
    i = cuda.grid(1)
    if i < filters:
        sum = np.float32(0)
        for j in range(batch):
            for k in range(spatial):
                sum = fadd(sum, delta[j * filters * spatial + i * spatial + k])
        factor = ddiv(-1., dsqrt(f2d(fadd(variance[i], EPS_BACKWARD))))
        mean_delta[i] = d2f(dmul(f2d(sum), factor))


@cuda.jit
def _variance_delta_kernel(x, delta, mean, variance, batch, filters, spatial, variance_delta, sums, ties):
    i = cuda.grid(1)
    if i < filters:
        sum = np.float32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                sum = fadd(sum, fmul(fsub(x[index], mean[i]), delta[index]))
        exponent = f2d(np.float32(-1.5))
        factor = dmul(dpow(f2d(fadd(variance[i], EPS_BACKWARD)), exponent), -.5)
        product = dmul(f2d(sum), factor)
        variance_delta[i] = d2f(product)
        sums[i] = sum
        ties[i] = 1 if near_tie(product) else 0


@cuda.jit
def _normalize_delta_kernel(x, mean, variance, mean_delta, variance_delta, batch, filters, spatial, delta):
    index = cuda.grid(1)
    if index < batch * filters * spatial:
        f = (index // spatial) % filters
        n = spatial * batch
        term1 = ddiv(dmul(f2d(delta[index]), 1.), dsqrt(f2d(fadd(variance[f], EPS_BACKWARD))))
        dx = f2d(fsub(x[index], mean[f]))
        term2 = ddiv(dmul(dx, dmul(f2d(variance_delta[f]), 2.)), np.float64(n))
        term3 = f2d(fdiv(mean_delta[f], np.float32(n)))
        delta[index] = d2f(dadd(dadd(term2, term1), term3))


def mean_delta_gpu(delta, variance, batch, filters, spatial, mean_delta):
    """darknet's ``mean_delta_cpu``: one thread per channel, float sum, then times
    ``-1./sqrt(variance + .00001f)`` in double, rounded on store."""
    if filters > 0:
        _mean_delta_kernel[_blocks(filters), BLOCK](delta, variance, batch, filters, spatial, mean_delta)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def variance_delta_gpu(x, delta, mean, variance, batch, filters, spatial, variance_delta):
    """darknet's ``variance_delta_cpu``: one thread per channel, float sum of
    ``(x - mean)*delta``, times ``-.5*pow(variance + .00001f, -1.5)`` in double.

    ``pow`` is libdevice's on the device; a channel whose double product lies within
    ``TIE_ULPS`` of a float32 rounding boundary is recomputed here with glibc's ``pow``.
    """
    if filters <= 0:
        return
    sums = cuda.device_array(filters, np.float32) if not isinstance(variance_delta, np.ndarray) \
        else np.zeros(filters, np.float32)
    ties = cuda.device_array(filters, np.int32) if not isinstance(variance_delta, np.ndarray) \
        else np.zeros(filters, np.int32)
    _variance_delta_kernel[_blocks(filters), BLOCK](x, delta, mean, variance, batch, filters, spatial,
                                                    variance_delta, sums, ties)
    flagged = np.flatnonzero(_host(ties))
    if flagged.size:
        _fix_variance_delta(flagged, _host(sums), _host(variance), variance_delta)


def _fix_variance_delta(channels, sums, variance, variance_delta):
    """Recompute flagged channels of ``variance_delta`` with glibc's ``pow`` (the CPU reference's maths)."""
    from darkpy.kernels.reference.blas import first_nan
    exponent = np.float64(np.float32(-3. / 2.))
    values = _host(variance_delta).copy() if not isinstance(variance_delta, np.ndarray) else variance_delta
    for i in channels:
        base = np.float64(np.float32(variance[i] + EPS_BACKWARD))
        try:
            factor = math.pow(base, exponent) * -.5
        except (OverflowError, ValueError):
            factor = np.float64(np.power(base, exponent)) * -.5
        wide = np.float64(sums[i])
        values[i] = np.float32(first_nan(wide, wide * factor))
    if not isinstance(variance_delta, np.ndarray):
        variance_delta.copy_to_device(values)


def normalize_delta_gpu(x, mean, variance, mean_delta, variance_delta, batch, filters, spatial, delta):
    """darknet's ``normalize_delta_cpu``, C's mixed precision exactly (see the reference's
    docstring): three double terms, the last a float quotient widened; summed in double
    as gcc orders them, rounded on store."""
    total = batch * filters * spatial
    if total > 0:
        _normalize_delta_kernel[_blocks(total), BLOCK](x, mean, variance, mean_delta, variance_delta,
                                                       batch, filters, spatial, delta)


# ----------------------------------------------------------------------------- batchnorm compositions

def batchnorm_forward_train_gpu(input, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                                scales, biases, batch, out_c, spatial):
    """``darkpy.kernels.reference.blas.batchnorm_forward_train`` on the device, call for call."""
    outputs = batch * out_c * spatial
    copy_gpu(outputs, input, 1, output, 1)
    copy_gpu(outputs, output, 1, x, 1)
    mean_gpu(output, batch, out_c, spatial, mean)
    variance_gpu(output, mean, batch, out_c, spatial, variance)
    scal_gpu(out_c, .99, rolling_mean, 1)
    axpy_gpu(out_c, .01, mean, 1, rolling_mean, 1)
    scal_gpu(out_c, .99, rolling_variance, 1)
    axpy_gpu(out_c, .01, variance, 1, rolling_variance, 1)
    normalize_gpu(output, mean, variance, batch, out_c, spatial)
    copy_gpu(outputs, output, 1, x_norm, 1)
    scale_bias_gpu(output, scales, batch, out_c, spatial)
    add_bias_gpu(output, biases, batch, out_c, spatial)


def batchnorm_forward_infer_gpu(input, output, x, rolling_mean, rolling_variance, scales, biases,
                                batch, out_c, spatial):
    """``batchnorm_forward_infer`` on the device: normalise with the rolling statistics."""
    outputs = batch * out_c * spatial
    copy_gpu(outputs, input, 1, output, 1)
    copy_gpu(outputs, output, 1, x, 1)
    normalize_gpu(output, rolling_mean, rolling_variance, batch, out_c, spatial)
    scale_bias_gpu(output, scales, batch, out_c, spatial)
    add_bias_gpu(output, biases, batch, out_c, spatial)


def batchnorm_backward_gpu(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                           mean_delta, variance_delta, batch, out_c, spatial):
    """``batchnorm_backward`` on the device (the caller passes the rolling statistics
    as ``mean``/``variance`` when not training)."""
    backward_bias_gpu(bias_updates, delta, batch, out_c, spatial)
    backward_scale_gpu(x_norm, delta, batch, out_c, spatial, scale_updates)
    scale_bias_gpu(delta, scales, batch, out_c, spatial)
    mean_delta_gpu(delta, variance, batch, out_c, spatial, mean_delta)
    variance_delta_gpu(x, delta, mean, variance, batch, out_c, spatial, variance_delta)
    normalize_delta_gpu(x, mean, variance, mean_delta, variance_delta, batch, out_c, spatial, delta)
