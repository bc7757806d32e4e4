"""Normalisation kernels beyond darknet, loop for loop: the oracle of ``darkpy.kernels.norms``.

Two groups of kernels live here.

**Caffe's BatchNorm** (BVLC/caffe ``src/caffe/layers/batch_norm_layer.cpp``,
``BatchNormLayer::Forward_cpu`` / ``Backward_cpu``).  Caffe builds every reduction
from BLAS calls: a row-sum ``gemv`` over the spatial axis scaled by ``alpha``,
then a column-sum ``gemv`` over the batch axis; broadcasts are ``gemm`` calls with
K = 1.  We fix the arithmetic those calls leave to the BLAS as the reference BLAS
does it: a row sum is a float ``temp`` accumulated in index order and then
``alpha*temp``; the column sum adds the rows to a float 0 in batch order; a K = 1
``gemm`` is one float product added to C.  Everything is float (Caffe's
``Dtype``); ``sqrt`` is the correctly rounded float root (``vsSqrt``/``sqrtf``);
``caffe_cpu_axpby`` is ``scal`` then ``axpy`` (its non-MKL definition).

**Layer, instance and group normalisation** by transposition onto darknet's
batchnorm kernels.  darknet's ``mean_cpu``/``variance_cpu``/``normalize_cpu``
normalise each channel over (batch, spatial) of a (batch, channels, spatial)
tensor.  A group of ``cpg = c/groups`` channels of one image is contiguous in
NCHW memory, so the same memory *is* a (1, batch*groups, cpg*h*w) tensor and
darknet's kernels called with ``batch = 1, filters = batch*groups,
spatial = cpg*h*w`` normalise exactly the groups; no copy is needed.  The
variance is the biased one (1/n) and the epsilon sits inside the root, as
ONNX, PyTorch and Caffe define these layers; the backward kernels are
darknet's ``mean_delta_cpu``/``variance_delta_cpu``/``normalize_delta_cpu`` with
the epsilon made a parameter (bit-identical to darknet's at eps = .00001f),
which on the biased variance are exactly the textbook gradient.
"""

import math

import numpy as np

from darkpy.kernels import kernel
from darkpy.kernels.reference.blas import (add_bias, backward_bias, backward_scale_cpu,
                                           copy_cpu, mean_cpu, scale_bias)

__all__ = [
    "caffe_row_col_sums", "caffe_bn_statistics", "caffe_bn_moving_average", "caffe_bn_global_statistics",
    "caffe_bn_normalize", "caffe_bn_backward_batch", "caffe_bn_backward_global",
    "caffe_bn_forward", "variance_biased_cpu", "normalize_eps_cpu", "mean_delta_eps_cpu",
    "variance_delta_eps_cpu", "normalize_delta_eps_cpu", "groupnorm_forward", "groupnorm_backward",
]

F32_ZERO = np.float32(0)
F32_ONE = np.float32(1)


# ---------------------------------------------------------------- Caffe's BatchNorm

@kernel
def caffe_row_col_sums(x, num, channels, spatial_dim, alpha, num_by_chans, out):
    """Caffe's reduction pair ``gemv(NoTrans, channels*num, spatial_dim, alpha, x, ones, 0, num_by_chans)``
    then ``gemv(Trans, num, channels, 1, num_by_chans, ones, 0, out)``.

    ``num_by_chans[n*channels + c] = alpha * (float sum of the plane, in order)``;
    ``out[c] = 0 + num_by_chans[0*channels + c] + num_by_chans[1*channels + c] + ...``
    (float, batch order).  ``alpha`` is a float (Caffe's ``Dtype`` argument).
    """
    alpha = np.float32(alpha)
    for row in range(num * channels):
        temp = F32_ZERO
        for s in range(spatial_dim):
            temp += x[row * spatial_dim + s]
        num_by_chans[row] = alpha * temp
    for c in range(channels):
        out[c] = F32_ZERO
    for n in range(num):
        for c in range(channels):
            out[c] += num_by_chans[n * channels + c]


@kernel
def caffe_bn_statistics(x, num, channels, spatial_dim, mean, variance, temp, num_by_chans):
    """The batch-statistics part of Caffe's ``BatchNormLayer::Forward_cpu``.

    ``mean`` = E(x) with ``alpha = (Dtype)(1./(num*spatial_dim))`` (double quotient
    rounded to float); ``temp = (x - mean)^2`` (``caffe_sqr``: a float product);
    ``variance`` = E(temp), the biased variance, by the same two gemv's.
    """
    alpha = np.float32(1. / (num * spatial_dim))
    caffe_row_col_sums(x, num, channels, spatial_dim, alpha, num_by_chans, mean)
    for n in range(num):
        for c in range(channels):
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                centred = x[index] - mean[c]
                temp[index] = centred * centred
    caffe_row_col_sums(temp, num, channels, spatial_dim, alpha, num_by_chans, variance)


@kernel
def caffe_bn_moving_average(mean, variance, channels, m, moving_average_fraction,
                            mean_sum, variance_sum, scale_factor):
    """Caffe's "compute and save moving average" (Forward_cpu, batch statistics).

    ``factor = factor*maf; factor += 1``; ``mean_sum = maf*mean_sum + 1*mean``;
    ``variance_sum = maf*variance_sum + bias_correction*variance`` with
    ``bias_correction = (Dtype)m/(m-1)`` (float quotient) when m > 1, else 1;
    each ``caffe_cpu_axpby`` is ``scal`` (Y *= beta) then ``axpy`` (Y += alpha*X), in float.
    """
    maf = np.float32(moving_average_fraction)
    scale_factor[0] = scale_factor[0] * maf
    scale_factor[0] = scale_factor[0] + F32_ONE
    if m > 1:
        correction = np.float32(m) / np.float32(m - 1)
    else:
        correction = F32_ONE
    for c in range(channels):
        mean_sum[c] = mean_sum[c] * maf
        mean_sum[c] = mean_sum[c] + F32_ONE * mean[c]
    for c in range(channels):
        variance_sum[c] = variance_sum[c] * maf
        variance_sum[c] = variance_sum[c] + correction * variance[c]


@kernel
def caffe_bn_global_statistics(mean_sum, variance_sum, scale_factor, channels, mean, variance):
    """Caffe's ``use_global_stats`` branch: ``scale = factor == 0 ? 0 : 1/factor`` (float),
    then ``mean = scale*mean_sum`` and ``variance = scale*variance_sum`` (``caffe_cpu_scale``, float)."""
    if scale_factor[0] == 0:
        scale = F32_ZERO
    else:
        scale = F32_ONE / scale_factor[0]
    for c in range(channels):
        mean[c] = scale * mean_sum[c]
    for c in range(channels):
        variance[c] = scale * variance_sum[c]


@kernel
def caffe_bn_normalize(output, mean, variance, eps, num, channels, spatial_dim, x_norm):
    """The normalisation of Caffe's Forward_cpu: ``top = x - mean`` (K=1 gemm with alpha -1:
    a float subtraction), ``std = sqrtf(variance + eps)`` (``caffe_add_scalar``, ``caffe_sqrt``),
    ``top = top / std`` (``caffe_div``, float); ``x_norm`` keeps a copy of ``top``."""
    eps = np.float32(eps)
    for n in range(num):
        for c in range(channels):
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                output[index] = output[index] - mean[c]
    std = np.zeros(channels, np.float32)
    for c in range(channels):
        std[c] = np.float32(math.sqrt(np.float64(variance[c] + eps)))
    for n in range(num):
        for c in range(channels):
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                output[index] = output[index] / std[c]
    copy_cpu(num * channels * spatial_dim, output, 1, x_norm, 1)


@kernel
def caffe_bn_forward(output, x_norm, mean, variance, mean_sum, variance_sum, scale_factor,
                     use_global, moving_average_fraction, eps, num, channels, spatial_dim):
    """Caffe's ``BatchNormLayer::Forward_cpu`` on ``output`` (which holds the input on entry).

    With ``use_global``: statistics from the three blobs, which stay unchanged.
    Otherwise batch statistics, then the moving-average update of the blobs.
    ``mean``/``variance`` receive the statistics used (before eps is added).
    """
    if use_global:
        caffe_bn_global_statistics(mean_sum, variance_sum, scale_factor, channels, mean, variance)
    else:
        temp = np.zeros(num * channels * spatial_dim, np.float32)
        num_by_chans = np.zeros(num * channels, np.float32)
        caffe_bn_statistics(output, num, channels, spatial_dim, mean, variance, temp, num_by_chans)
        caffe_bn_moving_average(mean, variance, channels, num * spatial_dim, moving_average_fraction,
                                mean_sum, variance_sum, scale_factor)
    caffe_bn_normalize(output, mean, variance, eps, num, channels, spatial_dim, x_norm)


@kernel
def caffe_bn_backward_batch(delta, x_norm, variance, eps, num, channels, spatial_dim):
    """Caffe's ``BatchNormLayer::Backward_cpu`` with batch statistics, in place on ``delta``
    (top diff in, bottom diff out):

    ``s1 = sum(dy*y)`` and ``s2 = sum(dy)`` per channel by the two gemv's (alpha 1);
    ``bottom = y*s1`` then ``+= s2`` (K=1 gemm, beta 1), then ``caffe_cpu_axpby(1, dy,
    (Dtype)(-1./(num*spatial_dim)), bottom)``: ``bottom = beta*bottom; bottom += 1*dy``,
    then ``bottom / sqrtf(variance + eps)``.  All float.
    """
    eps = np.float32(eps)
    count = num * channels * spatial_dim
    bottom = np.zeros(count, np.float32)
    num_by_chans = np.zeros(num * channels, np.float32)
    s1 = np.zeros(channels, np.float32)
    s2 = np.zeros(channels, np.float32)
    for i in range(count):
        bottom[i] = x_norm[i] * delta[i]
    caffe_row_col_sums(bottom, num, channels, spatial_dim, F32_ONE, num_by_chans, s1)
    for n in range(num):
        for c in range(channels):
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                bottom[index] = x_norm[index] * s1[c]
    caffe_row_col_sums(delta, num, channels, spatial_dim, F32_ONE, num_by_chans, s2)
    for n in range(num):
        for c in range(channels):
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                bottom[index] = bottom[index] + s2[c]
    beta = np.float32(-1. / (num * spatial_dim))
    for i in range(count):
        bottom[i] = bottom[i] * beta
    for i in range(count):
        bottom[i] = bottom[i] + F32_ONE * delta[i]
    for c in range(channels):
        s1[c] = np.float32(math.sqrt(np.float64(variance[c] + eps)))   # std, reusing s1
    for n in range(num):
        for c in range(channels):
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                delta[index] = bottom[index] / s1[c]


@kernel
def caffe_bn_backward_global(delta, variance, eps, num, channels, spatial_dim):
    """Caffe's Backward_cpu with ``use_global_stats``: ``bottom = top_diff / sqrtf(variance + eps)`` (float)."""
    eps = np.float32(eps)
    for n in range(num):
        for c in range(channels):
            std = np.float32(math.sqrt(np.float64(variance[c] + eps)))
            for s in range(spatial_dim):
                index = (n * channels + c) * spatial_dim + s
                delta[index] = delta[index] / std


# ---------------------------------------------------------------- group statistics on darknet's kernels

@kernel
def variance_biased_cpu(x, mean, batch, filters, spatial, variance):
    """darknet's ``variance_cpu`` with the biased scale ``(float)(1./(batch*spatial))``.

    Same promotions as darknet's: ``pow(x - mean, 2)`` is the float difference
    squared in double (exact), ``variance[i] += term`` adds in double and rounds
    to float, then ``*= scale`` in float.
    """
    scale = np.float32(1. / (batch * spatial))
    for i in range(filters):
        variance[i] = 0
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                d = np.float64(x[index] - mean[i])
                variance[i] = np.float32(np.float64(variance[i]) + d * d)
        variance[i] *= scale


@kernel
def normalize_eps_cpu(x, mean, variance, eps, batch, filters, spatial):
    """darknet's ``normalize_cpu`` with the epsilon inside the root, as darknet's backward has it:
    ``x = (x - mean)/sqrt(variance + eps)``: float difference and float ``variance + eps``,
    the root and the quotient in double, rounded to float on store."""
    eps = np.float32(eps)
    for b in range(batch):
        for f in range(filters):
            for i in range(spatial):
                index = b * filters * spatial + f * spatial + i
                x[index] = np.float32(np.float64(x[index] - mean[f]) /
                                      math.sqrt(np.float64(variance[f] + eps)))


@kernel
def mean_delta_eps_cpu(delta, variance, eps, batch, filters, spatial, mean_delta):
    """darknet's ``mean_delta_cpu`` with ``eps`` for its ``.00001f``: float sum over b then k,
    then ``*= -1./sqrt(variance + eps)`` (float add, double root, quotient and product)."""
    eps = np.float32(eps)
    for i in range(filters):
        mean_delta[i] = 0
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                mean_delta[i] += delta[index]
        factor = -1. / math.sqrt(np.float64(variance[i] + eps))
        mean_delta[i] = np.float32(np.float64(mean_delta[i]) * factor)


@kernel
def variance_delta_eps_cpu(x, delta, mean, variance, eps, batch, filters, spatial, variance_delta):
    """darknet's ``variance_delta_cpu`` with ``eps`` for its ``.00001f``: float sum of
    ``delta*(x - mean)``, then ``*= -.5 * pow(variance + eps, (float)(-3./2.))`` in double."""
    eps = np.float32(eps)
    exponent = np.float64(np.float32(-3. / 2.))
    for i in range(filters):
        variance_delta[i] = 0
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                variance_delta[i] += delta[index] * (x[index] - mean[i])
        factor = -.5 * math.pow(np.float64(variance[i] + eps), exponent)
        variance_delta[i] = np.float32(np.float64(variance_delta[i]) * factor)


@kernel
def normalize_delta_eps_cpu(x, mean, variance, eps, mean_delta, variance_delta, batch, filters, spatial, delta):
    """darknet's ``normalize_delta_cpu`` with ``eps`` for its ``.00001f``, C's mixed precision:
    ``(float)(d*1./sqrt(variance + eps) + variance_delta*2.*(x - mean)/n + (double)(mean_delta/(float)n))``."""
    eps = np.float32(eps)
    n = spatial * batch
    n64 = np.float64(n)
    n32 = np.float32(n)
    for j in range(batch):
        for f in range(filters):
            for k in range(spatial):
                index = j * filters * spatial + f * spatial + k
                term1 = np.float64(delta[index]) * 1. / math.sqrt(np.float64(variance[f] + eps))
                term2 = np.float64(variance_delta[f]) * 2. * np.float64(x[index] - mean[f]) / n64
                term3 = np.float64(mean_delta[f] / n32)
                delta[index] = np.float32(term1 + term2 + term3)


@kernel
def groupnorm_forward(output, x, x_norm, mean, variance, scales, biases, eps, batch, c, spatial, groups):
    """Group normalisation of ``output`` (the input on entry) in place, then the per-channel affine.

    Statistics on the (1, batch*groups, (c/groups)*spatial) view (see the module
    docstring): darknet's ``mean_cpu``, the biased ``variance_biased_cpu`` and
    ``normalize_eps_cpu``; ``x`` keeps the input and ``x_norm`` the normalised
    values; then darknet's ``scale_bias`` and ``add_bias`` over (batch, c, spatial).
    ``mean``/``variance`` hold batch*groups values, image-major.
    """
    outputs = batch * c * spatial
    filters = batch * groups
    group_spatial = (c // groups) * spatial
    copy_cpu(outputs, output, 1, x, 1)
    mean_cpu(output, 1, filters, group_spatial, mean)
    variance_biased_cpu(output, mean, 1, filters, group_spatial, variance)
    normalize_eps_cpu(output, mean, variance, eps, 1, filters, group_spatial)
    copy_cpu(outputs, output, 1, x_norm, 1)
    scale_bias(output, scales, batch, c, spatial)
    add_bias(output, biases, batch, c, spatial)


@kernel
def groupnorm_backward(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                       mean_delta, variance_delta, eps, batch, c, spatial, groups):
    """The backward of ``groupnorm_forward``, in place on ``delta`` (dE/dy in, dE/dx out).

    darknet's batchnorm backward sequence: ``backward_bias`` and ``backward_scale_cpu``
    per channel, ``scale_bias`` of the delta, then the eps-parameterised
    ``mean_delta``/``variance_delta``/``normalize_delta`` on the group view.
    """
    filters = batch * groups
    group_spatial = (c // groups) * spatial
    backward_bias(bias_updates, delta, batch, c, spatial)
    backward_scale_cpu(x_norm, delta, batch, c, spatial, scale_updates)
    scale_bias(delta, scales, batch, c, spatial)
    mean_delta_eps_cpu(delta, variance, eps, 1, filters, group_spatial, mean_delta)
    variance_delta_eps_cpu(x, delta, mean, variance, eps, 1, filters, group_spatial, variance_delta)
    normalize_delta_eps_cpu(x, mean, variance, eps, mean_delta, variance_delta, 1, filters,
                            group_spatial, delta)
