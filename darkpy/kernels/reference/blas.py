"""darknet's ``blas.c`` CPU kernels, loop for loop: the oracle of ``darkpy.kernels.blas``.

Also here, because layers call them as blas-like helpers: ``add_bias``,
``scale_bias``, ``backward_bias`` (darknet keeps them in convolutional_layer.c),
``sum_array`` (utils.c) and ``backward_scale_cpu``, ``mean_delta_cpu``,
``variance_delta_cpu``, ``normalize_delta_cpu`` (batchnorm_layer.c).

Conventions (shared with ``darkpy.kernels.blas``, which re-exports every name):

* Names and argument order are darknet's.  Buffers are flat 1-D float32 arrays;
  where darknet passes an offset pointer (``l.output + i*l.outputs``) callers pass
  a view (``l.output[i*l.outputs:]``).  A NULL pointer argument is ``None``.
* ``float`` scalar parameters (``ALPHA``, ``s1``, ``temp``, ...) are rounded to
  float32 on entry, as C converts a double argument at the call.
* Arithmetic is C's, operation by operation.  Where C stays in ``float`` we stay
  in float32 (Numba literals are float64, so every float literal is written
  ``np.float32(...)`` and every int operand of a float operation is cast).  Where
  C promotes to ``double`` (``pow``, ``sqrt``, ``exp``, ``log`` on a float, or a
  double literal such as ``2.`` or ``1./``), we compute in float64 and round to
  float32 exactly where C assigns to a ``float``.  Each docstring names the
  promotions of its function.
* ``pow(x, 2)`` with a constant 2 is compiled by gcc (and LLVM) to ``x*x``,
  which is exact for the double square of a float; we write the product.
* Division by zero and overflow give IEEE inf/NaN, as in darknet
  (``error_model='numpy'``).
* When *both* operands of an operation are NaN, x86 returns the first source
  operand's NaN (quieted), so the NaN's sign and payload depend on the operand
  order the compiler chose.  Where gcc's order for darknet (read from the strict
  build's machine code) is not what LLVM would pick by itself, we write gcc's
  order and pin it with ``first_nan`` (e.g. ``scale_bias`` keeps the output's
  NaN over the scale's, ``normalize_delta_cpu`` adds its terms as gcc does).

The batchnorm compositions at the end (``batchnorm_forward_train``, ...) are
the sequences of calls darknet's forward/backward_batchnorm_layer make; they are
the oracles of the fused kernels of the same names in ``darkpy.kernels.blas``.
"""

import math

import numpy as np

from darkpy.errors import ShapeError
from darkpy.kernels import kernel
from darkpy.kernels.reference.activations import activate_array_cpu
from darkpy.kernels.reference.nan import first_nan  # noqa: F401  (re-exported: every blas user pins NaNs with it)

__all__ = [
    "reorg_cpu", "flatten", "weighted_sum_cpu", "weighted_delta_cpu", "shortcut_cpu",
    "mean_cpu", "variance_cpu", "l2normalize_cpu", "normalize_cpu", "const_cpu", "mul_cpu",
    "pow_cpu", "axpy_cpu", "scal_cpu", "fill_cpu", "deinter_cpu", "inter_cpu", "copy_cpu",
    "mult_add_into_cpu", "smooth_l1_cpu", "l1_cpu", "softmax_x_ent_cpu", "logistic_x_ent_cpu",
    "l2_cpu", "dot_cpu", "softmax", "softmax_cpu", "upsample_cpu",
    "first_nan", "sum_array", "add_bias", "scale_bias", "backward_bias",
    "backward_scale_cpu", "mean_delta_cpu", "variance_delta_cpu", "normalize_delta_cpu",
    "batchnorm_forward_train", "batchnorm_forward_infer", "batchnorm_forward_infer_activate",
    "batchnorm_backward",
]

F32_ONE = np.float32(1)
F32_MAX = np.float32(3.4028234663852886e38)      # FLT_MAX
# The epsilons of batchnorm, float literals in C (.000001f, .00001f), widened exactly
# to double where C adds them to a double.
EPS_FORWARD = np.float32(.000001)
EPS_BACKWARD = np.float32(.00001)


# ---------------------------------------------------------------- layout shuffles

@kernel
def reorg_cpu(x, w, h, c, batch, stride, forward, out):
    """darknet's ``reorg_cpu``: space-to-depth (forward) or its inverse, pure copies."""
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]


@kernel
def flatten(x, size, layers, batch, forward):
    """darknet's ``flatten``: transpose each image between (layers, size) and (size, layers), in place."""
    swap = np.zeros(size * layers * batch, dtype=np.float32)
    for b in range(batch):
        for c in range(layers):
            for i in range(size):
                i1 = b * layers * size + c * size + i
                i2 = b * layers * size + i * layers + c
                if forward:
                    swap[i2] = x[i1]
                else:
                    swap[i1] = x[i2]
    for i in range(size * layers * batch):
        x[i] = swap[i]


@kernel
def upsample_cpu(input, w, h, c, batch, stride, forward, scale, out):
    """darknet's ``upsample_cpu`` (its ``in`` is ``input`` here).

    Forward: ``out = scale*in`` (float); backward: ``in += scale*out`` (float),
    each input pixel receiving its stride*stride products in (j, i) order (NaN order
    as gcc's: ``out*scale``, then ``in + product``).
    """
    scale = np.float32(scale)
    for b in range(batch):
        for k in range(c):
            for j in range(h * stride):
                for i in range(w * stride):
                    in_index = b * w * h * c + k * w * h + (j // stride) * w + i // stride
                    out_index = b * w * h * c * stride * stride + k * w * h * stride * stride + j * w * stride + i
                    if forward:
                        out[out_index] = scale * input[in_index]
                    else:
                        value = out[out_index]
                        product = first_nan(value, value * scale)
                        input[in_index] = first_nan(input[in_index], input[in_index] + product)


@kernel
def deinter_cpu(NX, X, NY, Y, B, OUT):
    """darknet's ``deinter_cpu``: add the interleaved rows of OUT back into X and Y (either may be None)."""
    index = 0
    for j in range(B):
        for i in range(NX):
            if X is not None:
                X[j * NX + i] += OUT[index]
            index += 1
        for i in range(NY):
            if Y is not None:
                Y[j * NY + i] += OUT[index]
            index += 1


@kernel
def inter_cpu(NX, X, NY, Y, B, OUT):
    """darknet's ``inter_cpu``: OUT = rows of X and Y interleaved, batch by batch."""
    index = 0
    for j in range(B):
        for i in range(NX):
            OUT[index] = X[j * NX + i]
            index += 1
        for i in range(NY):
            OUT[index] = Y[j * NY + i]
            index += 1


# ---------------------------------------------------------------- vector ops (BLAS level 1)

@kernel
def const_cpu(N, ALPHA, X, INCX):
    """darknet's ``const_cpu``: X[i*INCX] = ALPHA (ALPHA rounded to float)."""
    alpha = np.float32(ALPHA)
    for i in range(N):
        X[i * INCX] = alpha


@kernel
def fill_cpu(N, ALPHA, X, INCX):
    """darknet's ``fill_cpu``: X[i*INCX] = ALPHA (ALPHA rounded to float)."""
    alpha = np.float32(ALPHA)
    for i in range(N):
        X[i * INCX] = alpha


@kernel
def mul_cpu(N, X, INCX, Y, INCY):
    """darknet's ``mul_cpu``: Y *= X elementwise (float)."""
    for i in range(N):
        Y[i * INCY] *= X[i * INCX]


@kernel
def pow_cpu(N, ALPHA, X, INCX, Y, INCY):
    """darknet's ``pow_cpu``: Y = pow(X, ALPHA); C's ``pow`` is the double one, rounded to float on store."""
    alpha = np.float64(np.float32(ALPHA))
    for i in range(N):
        Y[i * INCY] = np.float32(math.pow(np.float64(X[i * INCX]), alpha))


@kernel
def axpy_cpu(N, ALPHA, X, INCX, Y, INCY):
    """darknet's ``axpy_cpu``: Y += ALPHA*X, all float (no fused multiply-add); gcc adds
    the product first (its NaN wins over Y's)."""
    alpha = np.float32(ALPHA)
    for i in range(N):
        product = alpha * X[i * INCX]
        Y[i * INCY] = first_nan(product, product + Y[i * INCY])


@kernel
def scal_cpu(N, ALPHA, X, INCX):
    """darknet's ``scal_cpu``: X *= ALPHA (float)."""
    alpha = np.float32(ALPHA)
    for i in range(N):
        X[i * INCX] *= alpha


@kernel
def copy_cpu(N, X, INCX, Y, INCY):
    """darknet's ``copy_cpu``: Y = X."""
    for i in range(N):
        Y[i * INCY] = X[i * INCX]


@kernel
def mult_add_into_cpu(N, X, Y, Z):
    """darknet's ``mult_add_into_cpu``: Z += X*Y (float, product rounded before the add)."""
    for i in range(N):
        Z[i] += X[i] * Y[i]


@kernel
def dot_cpu(N, X, INCX, Y, INCY):
    """darknet's ``dot_cpu``: a float ``dot`` accumulating X*Y in index order; returns float32
    (NaN order as gcc's: X first in the product, the running dot first in the sum)."""
    dot = np.float32(0)
    for i in range(N):
        x = X[i * INCX]
        product = first_nan(x, x * Y[i * INCY])
        dot = first_nan(dot, dot + product)
    return dot


@kernel
def sum_array(a, n):
    """darknet's ``sum_array`` (utils.c): a float ``sum`` of a[0..n) in order."""
    sum = np.float32(0)
    for i in range(n):
        sum += a[i]
    return sum


@kernel
def weighted_sum_cpu(a, b, s, n, c):
    """darknet's ``weighted_sum_cpu``: c = s*a + (1-s)*b, b None meaning 0 (float).

    NaN order as gcc's code: ``a*s`` (a first), ``(1-s)*b`` (1-s first), and the
    second product plus the first.
    """
    for i in range(n):
        if b is not None:
            bi = b[i]
        else:
            bi = np.float32(0)
        first = first_nan(a[i], a[i] * s[i])
        keep = F32_ONE - s[i]
        second = first_nan(keep, keep * bi)
        c[i] = first_nan(second, second + first)


@kernel
def weighted_delta_cpu(a, b, s, da, db, ds, n, dc):
    """darknet's ``weighted_delta_cpu``: da += dc*s, db += dc*(1-s), ds += dc*(a-b) (float;
    da, db may be None).  NaN order as gcc's code: ``s*dc``, ``(1-s)*dc``, ``(a-b)*dc``,
    each product added first."""
    for i in range(n):
        if da is not None:
            product = first_nan(s[i], s[i] * dc[i])
            da[i] = first_nan(product, product + da[i])
        if db is not None:
            keep = F32_ONE - s[i]
            product = first_nan(keep, keep * dc[i])
            db[i] = first_nan(product, product + db[i])
        diff = a[i] - b[i]
        product = first_nan(diff, diff * dc[i])
        ds[i] = first_nan(product, product + ds[i])


@kernel
def shortcut_cpu(batch, w1, h1, c1, add, w2, h2, c2, s1, s2, out):
    """darknet's ``shortcut_cpu``: out = s1*out + s2*add over the common extent (float).

    The input with the larger width is strided, the smaller one sampled; darknet
    asserts that width and height scale alike, which we raise as ``ShapeError``.
    """
    s1 = np.float32(s1)
    s2 = np.float32(s2)
    stride = w1 // w2
    sample = w2 // w1
    if stride != h1 // h2 or sample != h2 // h1:
        raise ShapeError("shortcut_cpu: the two inputs scale differently in width and height")
    if stride < 1:
        stride = 1
    if sample < 1:
        sample = 1
    minw = min(w1, w2)
    minh = min(h1, h2)
    minc = min(c1, c2)
    for b in range(batch):
        for k in range(minc):
            for j in range(minh):
                for i in range(minw):
                    out_index = i * sample + w2 * (j * sample + h2 * (k + c2 * b))
                    add_index = i * stride + w1 * (j * stride + h1 * (k + c1 * b))
                    out[out_index] = s1 * out[out_index] + s2 * add[add_index]


# ---------------------------------------------------------------- statistics and normalisation

@kernel
def mean_cpu(x, batch, filters, spatial, mean):
    """darknet's ``mean_cpu``.

    ``scale = 1./(batch*spatial)`` is computed in double and stored in a *float*;
    the sum accumulates in ``mean[i]`` (float) over b, then k; then ``mean *= scale`` in float.
    """
    scale = np.float32(1. / (batch * spatial))
    for i in range(filters):
        mean[i] = 0
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                m = mean[i]
                mean[i] = first_nan(m, m + x[index])
        mean[i] *= scale


@kernel
def variance_cpu(x, mean, batch, filters, spatial, variance):
    """darknet's ``variance_cpu`` (unbiased: divides by n-1).

    ``scale = 1./(batch*spatial - 1)`` double, stored in a float (inf when n == 1).
    Each term ``pow(x - mean, 2)``: the float difference squared in double (exact);
    ``variance[i] += term`` adds in double and rounds to float at every step (the
    running float is held widened to double, ``sum``, the accumulator first as in
    gcc's code).  Then ``*= scale`` in float.
    """
    scale = np.float32(1. / (batch * spatial - 1))
    for i in range(filters):
        sum = 0.
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                d = np.float64(x[index] - mean[i])
                sum = np.float64(np.float32(first_nan(sum, sum + d * d)))
        variance[i] = np.float32(sum) * scale


@kernel
def l2normalize_cpu(x, dx, batch, filters, spatial):
    """darknet's ``l2normalize_cpu``: per pixel, x /= |x| over filters; dx = (1 - x)/|x| (float).

    ``powf(x, 2)`` is compiled to ``x*x``; ``sqrtf`` is the correctly rounded float root.
    """
    for b in range(batch):
        for i in range(spatial):
            sum = np.float32(0)
            for f in range(filters):
                index = b * filters * spatial + f * spatial + i
                sum += x[index] * x[index]
            sum = np.float32(math.sqrt(np.float64(sum)))
            for f in range(filters):
                index = b * filters * spatial + f * spatial + i
                x[index] /= sum
                dx[index] = (F32_ONE - x[index]) / sum


@kernel
def normalize_cpu(x, mean, variance, batch, filters, spatial):
    """darknet's ``normalize_cpu``: x = (x - mean)/(sqrt(variance) + .000001f).

    ``x - mean`` is a float difference; ``sqrt`` is called on the float variance
    promoted to double, the float epsilon is added in double, the quotient is
    double and rounded to float on store.
    """
    for b in range(batch):
        for f in range(filters):
            for i in range(spatial):
                index = b * filters * spatial + f * spatial + i
                x[index] = np.float32(np.float64(x[index] - mean[f]) /
                                      (math.sqrt(np.float64(variance[f])) + np.float64(EPS_FORWARD)))


@kernel
def add_bias(output, biases, batch, n, size):
    """darknet's ``add_bias`` (convolutional_layer.c): output += biases[channel] (float;
    an output NaN wins over a bias NaN, as in gcc's code)."""
    for b in range(batch):
        for i in range(n):
            for j in range(size):
                index = (b * n + i) * size + j
                value = output[index]
                output[index] = first_nan(value, value + biases[i])


@kernel
def scale_bias(output, scales, batch, n, size):
    """darknet's ``scale_bias`` (convolutional_layer.c): output *= scales[channel] (float;
    an output NaN wins over a scale NaN, as in gcc's code)."""
    for b in range(batch):
        for i in range(n):
            for j in range(size):
                index = (b * n + i) * size + j
                value = output[index]
                output[index] = first_nan(value, value * scales[i])


@kernel
def backward_bias(bias_updates, delta, batch, n, size):
    """darknet's ``backward_bias`` (convolutional_layer.c).

    For b, then channel i: ``bias_updates[i] += sum_array(plane)``: each
    (image, channel) plane is summed on its own (float, from 0) and added
    separately, so a channel's updates receive ``batch`` float additions (the
    plane's sum first, as gcc adds them).
    """
    for b in range(batch):
        for i in range(n):
            sum = sum_array(delta[size * (i + b * n):], size)
            bias_updates[i] = first_nan(sum, sum + bias_updates[i])


@kernel
def backward_scale_cpu(x_norm, delta, batch, n, size, scale_updates):
    """darknet's ``backward_scale_cpu`` (batchnorm_layer.c).

    Per channel f, one float ``sum`` of ``delta*x_norm`` over b then i (each
    product rounded to float), then ``scale_updates[f] += sum`` (the sum first, as gcc adds).
    """
    for f in range(n):
        sum = np.float32(0)
        for b in range(batch):
            for i in range(size):
                index = i + size * (f + n * b)
                sum = first_nan(sum, sum + delta[index] * x_norm[index])
        scale_updates[f] = first_nan(sum, sum + scale_updates[f])


@kernel
def mean_delta_cpu(delta, variance, batch, filters, spatial, mean_delta):
    """darknet's ``mean_delta_cpu`` (batchnorm_layer.c).

    The deltas of a channel accumulate in a float (darknet: in ``mean_delta[i]``)
    over b then k; then ``mean_delta[i] *= -1./sqrt(variance[i] + .00001f)``: the
    epsilon is added in float, the root and quotient are double, the product is
    double (the sum's NaN first) and rounded to float.
    """
    for i in range(filters):
        sum = np.float32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                sum = first_nan(sum, sum + delta[index])
        factor = -1. / math.sqrt(np.float64(variance[i] + EPS_BACKWARD))
        wide = np.float64(sum)
        mean_delta[i] = np.float32(first_nan(wide, wide * factor))


@kernel
def variance_delta_cpu(x, delta, mean, variance, batch, filters, spatial, variance_delta):
    """darknet's ``variance_delta_cpu`` (batchnorm_layer.c).

    A float sum (darknet: ``variance_delta[i] +=``) of ``delta*(x - mean)``: the
    difference, the product and each addition rounded to float (gcc multiplies
    ``(x - mean)*delta``, which decides whose NaN a NaN product carries); then
    ``*= -.5 * pow(variance + .00001f, (float)(-3./2.))``: epsilon added in float,
    ``pow`` in double (exponent exactly -1.5), the factor and the product double
    (the sum's NaN first), rounded to float on store.
    """
    exponent = np.float64(np.float32(-3. / 2.))
    for i in range(filters):
        sum = np.float32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                sum = first_nan(sum, sum + (x[index] - mean[i]) * delta[index])
        factor = math.pow(np.float64(variance[i] + EPS_BACKWARD), exponent) * -.5
        wide = np.float64(sum)
        variance_delta[i] = np.float32(first_nan(wide, wide * factor))


@kernel
def normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta, batch, filters, spatial, delta):
    """darknet's ``normalize_delta_cpu`` (batchnorm_layer.c), C's mixed precision exactly.

    With n = spatial*batch (int), d = delta, dx = x - mean (float difference)::

        delta = (float)( ((double)d * 1.) / sqrt((double)(variance + .00001f))
                         + (((double)variance_delta * 2.) * (double)dx) / (double)n
                         + (double)(mean_delta / (float)n) )

    i.e. every term is double except the last quotient, which C computes in
    float (float / int) before widening it; the additions are double and the sum
    is rounded to float on store.  Operands are written in the order gcc's code
    uses them (``dx*(vd*2.)``, second term plus first term, then the third), which
    only decides whose NaN survives when two meet.
    """
    n = spatial * batch
    n64 = np.float64(n)
    n32 = np.float32(n)
    for j in range(batch):
        for f in range(filters):
            for k in range(spatial):
                index = j * filters * spatial + f * spatial + k
                term1 = np.float64(delta[index]) * 1. / math.sqrt(np.float64(variance[f] + EPS_BACKWARD))
                dx = np.float64(x[index] - mean[f])
                term2 = first_nan(dx, dx * (np.float64(variance_delta[f]) * 2.)) / n64
                term3 = np.float64(mean_delta[f] / n32)
                total = first_nan(term2, term2 + term1)
                delta[index] = np.float32(first_nan(total, total + term3))


# ---------------------------------------------------------------- losses

@kernel
def smooth_l1_cpu(n, pred, truth, delta, error):
    """darknet's ``smooth_l1_cpu`` (float; ``fabs`` of a float is exact).

    Note darknet's sign: beyond |diff| >= 1 the delta is ``+1`` for diff < 0 and
    ``-1`` otherwise, the opposite of ``diff`` inside; we copy it.
    """
    for i in range(n):
        diff = truth[i] - pred[i]
        abs_val = abs(diff)
        if abs_val < 1:
            error[i] = diff * diff
            delta[i] = diff
        else:
            error[i] = np.float32(2) * abs_val - F32_ONE
            delta[i] = F32_ONE if diff < 0 else -F32_ONE


@kernel
def l1_cpu(n, pred, truth, delta, error):
    """darknet's ``l1_cpu``: error = |diff|, delta = 1 if diff > 0 else -1 (NaN gives -1)."""
    for i in range(n):
        diff = truth[i] - pred[i]
        error[i] = abs(diff)
        delta[i] = F32_ONE if diff > 0 else -F32_ONE


@kernel
def l2_cpu(n, pred, truth, delta, error):
    """darknet's ``l2_cpu``: error = diff*diff, delta = diff (float)."""
    for i in range(n):
        diff = truth[i] - pred[i]
        error[i] = diff * diff
        delta[i] = diff


@kernel
def softmax_x_ent_cpu(n, pred, truth, delta, error):
    """darknet's ``softmax_x_ent_cpu``: error = t ? -log(p) : 0 (double ``log``, rounded), delta = t - p.

    C's truth test of a float: any non-zero t, NaN included, takes ``-log(p)``.
    """
    for i in range(n):
        t = truth[i]
        p = pred[i]
        if t != 0:
            error[i] = np.float32(-math.log(np.float64(p)))
        else:
            error[i] = np.float32(0)
        delta[i] = t - p


@kernel
def logistic_x_ent_cpu(n, pred, truth, delta, error):
    """darknet's ``logistic_x_ent_cpu``.

    ``error = -t*log(p) - (1-t)*log(1-p)``: ``-t`` and ``1-t``, ``1-p`` are float;
    each ``log`` is double, so both products and the difference are double,
    rounded to float on store.  delta = t - p.
    """
    for i in range(n):
        t = truth[i]
        p = pred[i]
        error[i] = np.float32(np.float64(-t) * math.log(np.float64(p))
                              - np.float64(F32_ONE - t) * math.log(np.float64(F32_ONE - p)))
        delta[i] = t - p


# ---------------------------------------------------------------- softmax

@kernel
def softmax(input, n, temp, stride, output):
    """darknet's ``softmax`` over n elements ``stride`` apart.

    ``largest`` starts at -FLT_MAX.  ``e = exp(in/temp - largest/temp)``: both
    quotients and the difference in float, ``exp`` in double, rounded to float.
    ``sum`` is a float; the outputs are divided by it in float.
    """
    temp = np.float32(temp)
    sum = np.float32(0)
    largest = -F32_MAX
    for i in range(n):
        if input[i * stride] > largest:
            largest = input[i * stride]
    for i in range(n):
        e = np.float32(math.exp(np.float64(input[i * stride] / temp - largest / temp)))
        sum = first_nan(sum, sum + e)
        output[i * stride] = e
    for i in range(n):
        output[i * stride] /= sum


@kernel
def softmax_cpu(input, n, batch, batch_offset, groups, group_offset, stride, temp, output):
    """darknet's ``softmax_cpu``: ``softmax`` on every (batch, group) slice, b then g."""
    for b in range(batch):
        for g in range(groups):
            offset = b * batch_offset + g * group_offset
            softmax(input[offset:], n, temp, stride, output[offset:])


# ---------------------------------------------------------------- batchnorm compositions
# The exact call sequences of forward_batchnorm_layer / backward_batchnorm_layer
# (batchnorm_layer.c) after their layer-type-dependent copies; the oracles of the
# fused kernels of the same names in darkpy.kernels.blas.

@kernel
def batchnorm_forward_train(input, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                            scales, biases, batch, out_c, spatial):
    """forward_batchnorm_layer with net.train: ``copy_cpu(input -> output)`` (what a
    [batchnorm] layer does with net.input; a convolutional layer passes its own
    ``output`` as ``input``), then darknet's calls in order.  The rolling updates use
    float .99 and .01 (``scal_cpu``/``axpy_cpu`` take a float ALPHA).
    """
    outputs = batch * out_c * spatial
    copy_cpu(outputs, input, 1, output, 1)
    copy_cpu(outputs, output, 1, x, 1)
    mean_cpu(output, batch, out_c, spatial, mean)
    variance_cpu(output, mean, batch, out_c, spatial, variance)
    scal_cpu(out_c, .99, rolling_mean, 1)
    axpy_cpu(out_c, .01, mean, 1, rolling_mean, 1)
    scal_cpu(out_c, .99, rolling_variance, 1)
    axpy_cpu(out_c, .01, variance, 1, rolling_variance, 1)
    normalize_cpu(output, mean, variance, batch, out_c, spatial)
    copy_cpu(outputs, output, 1, x_norm, 1)
    scale_bias(output, scales, batch, out_c, spatial)
    add_bias(output, biases, batch, out_c, spatial)


@kernel
def batchnorm_forward_infer(input, output, x, rolling_mean, rolling_variance, scales, biases,
                            batch, out_c, spatial):
    """forward_batchnorm_layer without net.train: copy ``input`` to ``output`` and ``x``,
    normalise with the rolling statistics, then scale and bias."""
    outputs = batch * out_c * spatial
    copy_cpu(outputs, input, 1, output, 1)
    copy_cpu(outputs, output, 1, x, 1)
    normalize_cpu(output, rolling_mean, rolling_variance, batch, out_c, spatial)
    scale_bias(output, scales, batch, out_c, spatial)
    add_bias(output, biases, batch, out_c, spatial)


@kernel
def batchnorm_forward_infer_activate(input, output, x, rolling_mean, rolling_variance, scales, biases,
                                     batch, out_c, spatial, activation):
    """A convolutional layer's inference epilogue: ``batchnorm_forward_infer``, then
    darknet's ``activate_array(output, batch*out_c*spatial, activation)`` (the scalar
    functions of ``darkpy.kernels.reference.activations``; LINEAR leaves the output as is)."""
    batchnorm_forward_infer(input, output, x, rolling_mean, rolling_variance, scales, biases,
                            batch, out_c, spatial)
    activate_array_cpu(output, batch * out_c * spatial, activation)


@kernel
def batchnorm_backward(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                       mean_delta, variance_delta, batch, out_c, spatial):
    """backward_batchnorm_layer's kernel calls (``mean``/``variance`` are the rolling
    statistics when not training: the caller passes them)."""
    backward_bias(bias_updates, delta, batch, out_c, spatial)
    backward_scale_cpu(x_norm, delta, batch, out_c, spatial, scale_updates)
    scale_bias(delta, scales, batch, out_c, spatial)
    mean_delta_cpu(delta, variance, batch, out_c, spatial, mean_delta)
    variance_delta_cpu(x, delta, mean, variance, batch, out_c, spatial, variance_delta)
    normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta, batch, out_c, spatial, delta)
