"""Normalisation kernels beyond darknet, fast: bit-identical to ``darkpy.kernels.reference.norms``.

Every name of the reference exists here (re-exported below).  The layer-level
compositions are redefined as fused kernels parallel across independent
outputs only: one channel (Caffe) or one group (layer/instance/group norm) per
``prange`` iteration, each sum kept in the reference's order inside its
iteration, so every value is computed by the same float operations in the same
order.  tests/test_norms.py and tests/test_caffe_batchnorm.py compare each one
with its reference, bit for bit.
"""

import math

import numpy as np
from numba import prange

from darkpy.kernels import pkernel
from darkpy.kernels.reference.norms import *  # noqa: F401,F403

F32_ZERO = np.float32(0)
F32_ONE = np.float32(1)


@pkernel
def caffe_bn_forward(output, x_norm, mean, variance, mean_sum, variance_sum, scale_factor,
                     use_global, moving_average_fraction, eps, num, channels, spatial_dim):
    """Fused ``caffe_bn_forward`` (Caffe's ``BatchNormLayer::Forward_cpu``), one channel per iteration.

    Per channel c: the row sums of each image's plane (``alpha*temp``) added in
    batch order give the mean, the same over ``(x - mean)^2`` the biased variance;
    moving averages as ``caffe_bn_moving_average``; ``y = (x - mean)/sqrtf(var + eps)``.
    """
    eps = np.float32(eps)
    maf = np.float32(moving_average_fraction)
    m = num * spatial_dim
    if use_global:
        if scale_factor[0] == 0:
            scale = F32_ZERO
        else:
            scale = F32_ONE / scale_factor[0]
    else:
        scale = F32_ZERO
        factor = scale_factor[0] * maf
        scale_factor[0] = factor + F32_ONE
    if m > 1:
        correction = np.float32(m) / np.float32(m - 1)
    else:
        correction = F32_ONE
    alpha = np.float32(1. / (num * spatial_dim))
    for c in prange(channels):
        if use_global:
            mu = scale * mean_sum[c]
            var = scale * variance_sum[c]
        else:
            mu = F32_ZERO
            for n in range(num):
                temp = F32_ZERO
                base = (n * channels + c) * spatial_dim
                for s in range(spatial_dim):
                    temp += output[base + s]
                mu += alpha * temp
            var = F32_ZERO
            for n in range(num):
                temp = F32_ZERO
                base = (n * channels + c) * spatial_dim
                for s in range(spatial_dim):
                    centred = output[base + s] - mu
                    temp += centred * centred
                var += alpha * temp
            mean_sum[c] = mean_sum[c] * maf + F32_ONE * mu
            variance_sum[c] = variance_sum[c] * maf + correction * var
        mean[c] = mu
        variance[c] = var
        std = np.float32(math.sqrt(np.float64(var + eps)))
        for n in range(num):
            base = (n * channels + c) * spatial_dim
            for s in range(spatial_dim):
                y = (output[base + s] - mu) / std
                output[base + s] = y
                x_norm[base + s] = y


@pkernel
def caffe_bn_backward_batch(delta, x_norm, variance, eps, num, channels, spatial_dim):
    """Fused ``caffe_bn_backward_batch`` (Caffe's Backward_cpu, batch statistics), one channel per iteration:
    ``dx = (beta*(y*s1 + s2) + 1*dy) / sqrtf(var + eps)`` with the reference's sums and beta."""
    eps = np.float32(eps)
    beta = np.float32(-1. / (num * spatial_dim))
    for c in prange(channels):
        s1 = F32_ZERO
        s2 = F32_ZERO
        for n in range(num):
            temp = F32_ZERO
            base = (n * channels + c) * spatial_dim
            for s in range(spatial_dim):
                temp += x_norm[base + s] * delta[base + s]
            s1 += F32_ONE * temp
        for n in range(num):
            temp = F32_ZERO
            base = (n * channels + c) * spatial_dim
            for s in range(spatial_dim):
                temp += delta[base + s]
            s2 += F32_ONE * temp
        std = np.float32(math.sqrt(np.float64(variance[c] + eps)))
        for n in range(num):
            base = (n * channels + c) * spatial_dim
            for s in range(spatial_dim):
                bottom = (x_norm[base + s] * s1 + s2) * beta
                delta[base + s] = (bottom + F32_ONE * delta[base + s]) / std


@pkernel
def caffe_bn_backward_global(delta, variance, eps, num, channels, spatial_dim):
    """Parallel ``caffe_bn_backward_global``: ``dx = dy / sqrtf(var + eps)`` (float), one channel per iteration."""
    eps = np.float32(eps)
    for c in prange(channels):
        std = np.float32(math.sqrt(np.float64(variance[c] + eps)))
        for n in range(num):
            base = (n * channels + c) * spatial_dim
            for s in range(spatial_dim):
                delta[base + s] = delta[base + s] / std


@pkernel
def groupnorm_forward(output, x, x_norm, mean, variance, scales, biases, eps, batch, c, spatial, groups):
    """Fused ``groupnorm_forward``: one (image, group) per iteration for the statistics and the
    normalisation (darknet's mean_cpu / biased variance / normalize promotions), then one
    (image, channel) plane per iteration for ``scales*x_norm + biases``."""
    eps = np.float32(eps)
    filters = batch * groups
    group_spatial = (c // groups) * spatial
    mean_scale = np.float32(1. / group_spatial)
    for g in prange(filters):
        base = g * group_spatial
        mu = F32_ZERO
        for k in range(group_spatial):
            mu += output[base + k]
        mu *= mean_scale
        var = F32_ZERO
        for k in range(group_spatial):
            d = np.float64(output[base + k] - mu)
            var = np.float32(np.float64(var) + d * d)
        var *= mean_scale
        mean[g] = mu
        variance[g] = var
        root = math.sqrt(np.float64(var + eps))
        for k in range(group_spatial):
            value = output[base + k]
            x[base + k] = value
            y = np.float32(np.float64(value - mu) / root)
            x_norm[base + k] = y
            output[base + k] = y
    for plane in prange(batch * c):
        channel = plane % c
        base = plane * spatial
        for j in range(spatial):
            output[base + j] = output[base + j] * scales[channel] + biases[channel]


@pkernel
def groupnorm_backward(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                       mean_delta, variance_delta, eps, batch, c, spatial, groups):
    """Fused ``groupnorm_backward``: per channel (in parallel) darknet's backward_bias /
    backward_scale_cpu sums in their order; then per (image, group) the scaled delta, the
    eps-parameterised mean/variance deltas and normalize_delta."""
    eps = np.float32(eps)
    filters = batch * groups
    group_spatial = (c // groups) * spatial
    cpg = c // groups
    for i in prange(c):
        for b in range(batch):
            base = (b * c + i) * spatial
            sum = F32_ZERO
            for j in range(spatial):
                sum += delta[base + j]
            bias_updates[i] += sum
        sum = F32_ZERO
        for b in range(batch):
            base = (b * c + i) * spatial
            for j in range(spatial):
                sum += delta[base + j] * x_norm[base + j]
        scale_updates[i] += sum
    exponent = np.float64(np.float32(-3. / 2.))
    n64 = np.float64(group_spatial)
    n32 = np.float32(group_spatial)
    for g in prange(filters):
        base = g * group_spatial
        first_channel = (g % groups) * cpg
        for k in range(group_spatial):
            delta[base + k] *= scales[first_channel + k // spatial]
        md = F32_ZERO
        for k in range(group_spatial):
            md += delta[base + k]
        md = np.float32(np.float64(md) * (-1. / math.sqrt(np.float64(variance[g] + eps))))
        vd = F32_ZERO
        for k in range(group_spatial):
            vd += delta[base + k] * (x[base + k] - mean[g])
        vd = np.float32(np.float64(vd) * (-.5 * math.pow(np.float64(variance[g] + eps), exponent)))
        mean_delta[g] = md
        variance_delta[g] = vd
        root = math.sqrt(np.float64(variance[g] + eps))
        term3 = np.float64(md / n32)
        for k in range(group_spatial):
            term1 = np.float64(delta[base + k]) * 1. / root
            term2 = np.float64(vd) * 2. * np.float64(x[base + k] - mean[g]) / n64
            delta[base + k] = np.float32(term1 + term2 + term3)
