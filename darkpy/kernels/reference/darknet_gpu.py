"""darknet's own GPU kernels (``blas_kernels.cu``, non-cuDNN build) emulated on the CPU.

The oracle of ``darkpy.kernels.darknet_gpu_cuda`` (profile ``darknet-gpu``): the
exact order of every float operation darknet's ``.cu`` kernels perform, so that
the CUDA twins can be checked bit for bit without a GPU.  What differs from the
CPU functions of the same purpose (``darkpy.kernels.reference.blas``):

* **Reductions are block-strided.**  ``fast_mean_kernel``,
  ``fast_variance_kernel``, ``fast_mean_delta_kernel``,
  ``fast_variance_delta_kernel``, ``backward_bias_kernel`` and
  ``backward_scale_kernel`` run one block of ``BLOCK`` (512) threads per
  channel.  Thread ``id`` keeps a float partial sum of the elements
  ``i + id`` (``i`` stepping by ``BLOCK``) of every image plane, images in
  order, adding ``0`` where ``i + id`` runs past the plane (so a ``-0`` partial
  becomes ``+0``); then thread 0 adds the ``BLOCK`` partials in thread order.
  ``fast_mean``/``fast_variance`` start that final sum from 0 and divide by
  ``(float)(spatial*batch)`` (``- 1``); ``backward_bias``/``backward_scale``
  add each partial straight into the update.  ``backward_bias`` with
  ``size == 1`` is ``backward_bias_conn_kernel``: one thread per filter.
* **Float, not double.**  The kernels use ``sqrtf`` and ``powf``:
  ``normalize`` is ``(x - mean)/sqrtf(variance + .00001f)`` (no epsilon outside
  the root, unlike the CPU's ``sqrt(variance) + .000001f``), ``mean_delta`` uses
  ``-1.f/sqrtf(...)``, ``normalize_delta`` is all float:
  ``(d/s + ((vd + vd)*(x - mean))/n) + md/n`` as nvcc's PTX orders it.
* **FMA.**  nvcc contracts by default (``--fmad=true``).  Read from the PTX
  nvcc 13.0 emits for ``blas_kernels.cu`` (``nvcc -ptx``, sm_75) and from the
  SASS ``ptxas`` 13.0 makes of it (disassembled with ``nvdisasm``):
  ``axpy_kernel`` is one ``fma.rn.f32``/``FFMA``; the products of
  ``backward_scale_kernel`` (``delta*x_norm``) and
  ``fast_variance_delta_kernel`` (``delta*(x - mean)``) stay a separate
  ``FMUL`` and ``FADD`` (the multiply is predicated on ``i + id < spatial``,
  the add takes 0 otherwise): not fused (:data:`FUSE_PTXAS` ``= False``).
  No other kernel here has a multiply feeding an add.  The ``FFMA`` of the
  SASS of ``fast_mean``, ``normalize`` etc. belong to the correctly rounded
  division and square root routines, not to darknet's expressions.
* **NaN.**  NVIDIA arithmetic returns the canonical NaN ``0x7fffffff`` for any
  NaN result; the emulation canonicalises every arithmetic result (copies keep
  their bits).
* **``powf``** is CUDA's own single-precision algorithm (libdevice
  ``__nv_powf``, documented within a few ulp, not correctly rounded; nvcc
  does not turn ``powf(d, 2)`` into a product: the PTX holds the whole
  algorithm).  We emulate ``powf(d, 2)`` as the rounded ``d*d`` and
  ``powf(v, -1.5f)`` as the correctly rounded float of the double ``pow``:
  unverified assumptions, to be checked on a GPU (``CUDA.md``).

``BLOCK`` is a parameter (``threads``) of every block-strided function so that
tests can use small blocks; darknet's value is 512.
"""

import math

import numpy as np

from darkpy.kernels import kernel

#: darknet's BLOCK (include/darknet.h): threads per block of every launch.
BLOCK = 512
#: Whether ptxas fuses the unrounded ``mul.f32``/``add.f32`` pairs nvcc leaves in the PTX
#: of backward_scale_kernel and fast_variance_delta_kernel: it does not (SASS of ptxas 13.0,
#: sm_75: FMUL then FADD).  Other ptxas versions or architectures may differ: one switch.
FUSE_PTXAS = False

CANONICAL_NAN = np.uint32(0x7FFFFFFF).view(np.float32)
EPS = np.float32(.00001)
F32_ZERO = np.float32(0)
_TWO53 = 9007199254740992.0


@kernel
def canon(r):
    """An arithmetic result as NVIDIA hardware returns it: any NaN is ``0x7fffffff``."""
    if r != r:
        return CANONICAL_NAN
    return r


@kernel
def fma32(a, b, c):
    """``fmaf(a, b, c)``: ``a*b + c`` with one rounding, emulated exactly in double.

    ``a*b`` is exact in double; the sum is rounded to double with its error kept
    (TwoSum), then made "round to odd" (when inexact and even, the neighbour toward
    the error), which rounds to the correct float32 (53 >= 24 + 2 bits).
    """
    p = np.float64(a) * np.float64(b)
    cd = np.float64(c)
    r = p + cd
    if r != r or math.isinf(r) or math.isinf(p):
        return canon(np.float32(r))
    bv = r - p
    e = (p - (r - bv)) + (cd - bv)
    if e != 0:
        m, ex = math.frexp(r)
        if np.int64(m * _TWO53) % 2 == 0:
            r = np.nextafter(r, math.inf if e > 0 else -math.inf)
    return canon(np.float32(r))


@kernel
def mul_add(a, b, c):
    """``c + a*b`` as compiled for an unrounded PTX ``mul``/``add`` pair: fused when ``FUSE_PTXAS``."""
    if FUSE_PTXAS:
        return fma32(a, b, c)
    return canon(c + canon(a * b))


@kernel
def sqrtf(v):
    """CUDA's ``sqrtf`` (``sqrt.rn.f32``): correctly rounded."""
    return canon(np.sqrt(np.float32(v)))


@kernel
def powf(a, b):
    """CUDA's ``powf`` as assumed here (unverified, see module doc): ``powf(d, 2)`` the
    rounded ``d*d``, any other exponent the correctly rounded float of the double ``pow``."""
    if b == 2:
        return canon(a * a)
    return canon(np.float32(math.pow(np.float64(a), np.float64(b))))


# ----------------------------------------------------------------------------- elementwise

@kernel
def axpy_dg(N, ALPHA, X, INCX, Y, INCY):
    """``axpy_kernel``: ``Y += ALPHA*X`` as one ``fma.rn.f32``."""
    alpha = np.float32(ALPHA)
    for i in range(N):
        Y[i * INCY] = fma32(alpha, X[i * INCX], Y[i * INCY])


@kernel
def scal_dg(N, ALPHA, X, INCX):
    """``scal_kernel``: ``X *= ALPHA``."""
    alpha = np.float32(ALPHA)
    for i in range(N):
        X[i * INCX] = canon(X[i * INCX] * alpha)


@kernel
def scale_bias_dg(output, scales, batch, n, size):
    """``scale_bias_kernel``: ``output *= scales[filter]``."""
    for b in range(batch):
        for f in range(n):
            for i in range(size):
                index = (b * n + f) * size + i
                output[index] = canon(output[index] * scales[f])


@kernel
def add_bias_dg(output, biases, batch, n, size):
    """``add_bias_kernel``: ``output += biases[filter]``."""
    for b in range(batch):
        for f in range(n):
            for i in range(size):
                index = (b * n + f) * size + i
                output[index] = canon(output[index] + biases[f])


@kernel
def normalize_dg(x, mean, variance, batch, filters, spatial):
    """``normalize_kernel``: ``(x - mean)/sqrtf(variance + .00001f)``, all float."""
    for index in range(batch * filters * spatial):
        f = (index // spatial) % filters
        x[index] = canon(canon(x[index] - mean[f]) / sqrtf(canon(variance[f] + EPS)))


@kernel
def normalize_delta_dg(x, mean, variance, mean_delta, variance_delta, batch, filters, spatial, delta):
    """``normalize_delta_kernel`` in float, in the order of nvcc's PTX:
    ``(d/s + ((vd + vd)*(x - mean))/n) + md/n`` with ``s = sqrtf(variance + .00001f)``."""
    n = np.float32(spatial * batch)
    for index in range(batch * filters * spatial):
        f = (index // spatial) % filters
        s = sqrtf(canon(variance[f] + EPS))
        t1 = canon(delta[index] / s)
        t2 = canon(canon(canon(variance_delta[f] + variance_delta[f]) * canon(x[index] - mean[f])) / n)
        t3 = canon(mean_delta[f] / n)
        delta[index] = canon(t3 + canon(t1 + t2))


# ----------------------------------------------------------------------------- block-strided reductions

@kernel
def _partials(x, y, batch, filters, spatial, filter, threads, op, shift):
    """The ``threads`` partial sums of one channel: thread ``id`` over ``i + id``, images in order.

    ``op`` selects the term: 0 ``x``; 1 ``powf(x - shift, 2)``; 2 ``y*(x - shift)``
    (fused per ``FUSE_PTXAS``); 3 ``x*y`` (fused per ``FUSE_PTXAS``).
    """
    local = np.zeros(threads, np.float32)
    for id in range(threads):
        for j in range(batch):
            for i in range(0, spatial, threads):
                index = j * spatial * filters + filter * spatial + i + id
                if i + id < spatial:
                    if op == 0:
                        local[id] = canon(local[id] + x[index])
                    elif op == 1:
                        local[id] = canon(local[id] + powf(canon(x[index] - shift), np.float32(2)))
                    elif op == 2:
                        local[id] = mul_add(y[index], canon(x[index] - shift), local[id])
                    else:
                        local[id] = mul_add(x[index], y[index], local[id])
                else:
                    local[id] = canon(local[id] + F32_ZERO)
    return local


@kernel
def fast_mean_dg(x, batch, filters, spatial, mean, threads=BLOCK):
    """``fast_mean_kernel``: block partials, thread 0 sums them from 0, ``/= spatial*batch`` (float)."""
    for filter in range(filters):
        local = _partials(x, x, batch, filters, spatial, filter, threads, 0, F32_ZERO)
        m = F32_ZERO
        for i in range(threads):
            m = canon(m + local[i])
        mean[filter] = canon(m / np.float32(spatial * batch))


@kernel
def fast_variance_dg(x, mean, batch, filters, spatial, variance, threads=BLOCK):
    """``fast_variance_kernel``: partials of ``powf(x - mean, 2)``, summed from 0, ``/= spatial*batch - 1``."""
    for filter in range(filters):
        local = _partials(x, x, batch, filters, spatial, filter, threads, 1, mean[filter])
        v = F32_ZERO
        for i in range(threads):
            v = canon(v + local[i])
        variance[filter] = canon(v / np.float32(spatial * batch - 1))


@kernel
def fast_mean_delta_dg(delta, variance, batch, filters, spatial, mean_delta, threads=BLOCK):
    """``fast_mean_delta_kernel``: partials of delta, summed from 0, ``*= -1.f/sqrtf(variance + .00001f)``."""
    for filter in range(filters):
        local = _partials(delta, delta, batch, filters, spatial, filter, threads, 0, F32_ZERO)
        m = F32_ZERO
        for i in range(threads):
            m = canon(m + local[i])
        mean_delta[filter] = canon(m * canon(np.float32(-1) / sqrtf(canon(variance[filter] + EPS))))


@kernel
def fast_variance_delta_dg(x, delta, mean, variance, batch, filters, spatial, variance_delta, threads=BLOCK):
    """``fast_variance_delta_kernel``: partials of ``delta*(x - mean)``, summed from 0,
    ``*= -.5f*powf(variance + .00001f, -1.5f)``."""
    for filter in range(filters):
        local = _partials(x, delta, batch, filters, spatial, filter, threads, 2, mean[filter])
        v = F32_ZERO
        for i in range(threads):
            v = canon(v + local[i])
        factor = canon(np.float32(-.5) * powf(canon(variance[filter] + EPS), np.float32(-1.5)))
        variance_delta[filter] = canon(v * factor)


@kernel
def backward_bias_dg(bias_updates, delta, batch, n, size, threads=BLOCK):
    """``backward_bias_gpu``: ``size == 1``: ``backward_bias_conn_kernel`` (a float sum over
    the batch, then one add); else ``backward_bias_kernel`` (block partials added one by
    one straight into the update)."""
    for filter in range(n):
        if size == 1:
            sum = F32_ZERO
            for b in range(batch):
                sum = canon(sum + delta[b * n + filter])
            bias_updates[filter] = canon(bias_updates[filter] + sum)
        else:
            local = _partials(delta, delta, batch, n, size, filter, threads, 0, F32_ZERO)
            for i in range(threads):
                bias_updates[filter] = canon(bias_updates[filter] + local[i])


@kernel
def backward_scale_dg(x_norm, delta, batch, n, size, scale_updates, threads=BLOCK):
    """``backward_scale_kernel``: partials of ``delta*x_norm`` (fused per ``FUSE_PTXAS``),
    added one by one straight into the update."""
    for filter in range(n):
        local = _partials(delta, x_norm, batch, n, size, filter, threads, 3, F32_ZERO)
        for i in range(threads):
            scale_updates[filter] = canon(scale_updates[filter] + local[i])


# ----------------------------------------------------------------------------- batchnorm compositions

def batchnorm_forward_train_dg(input, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                               scales, biases, batch, out_c, spatial, threads=BLOCK):
    """``forward_batchnorm_layer_gpu`` with net.train, non-cuDNN, call for call."""
    outputs = batch * out_c * spatial
    output[:outputs] = input[:outputs]
    x[:outputs] = output[:outputs]
    fast_mean_dg(output, batch, out_c, spatial, mean, threads)
    fast_variance_dg(output, mean, batch, out_c, spatial, variance, threads)
    scal_dg(out_c, .99, rolling_mean, 1)
    axpy_dg(out_c, .01, mean, 1, rolling_mean, 1)
    scal_dg(out_c, .99, rolling_variance, 1)
    axpy_dg(out_c, .01, variance, 1, rolling_variance, 1)
    x[:outputs] = output[:outputs]
    normalize_dg(output, mean, variance, batch, out_c, spatial)
    x_norm[:outputs] = output[:outputs]
    scale_bias_dg(output, scales, batch, out_c, spatial)
    add_bias_dg(output, biases, batch, out_c, spatial)


def batchnorm_forward_infer_dg(input, output, x, rolling_mean, rolling_variance, scales, biases,
                               batch, out_c, spatial):
    """``forward_batchnorm_layer_gpu`` without net.train."""
    outputs = batch * out_c * spatial
    output[:outputs] = input[:outputs]
    x[:outputs] = output[:outputs]
    normalize_dg(output, rolling_mean, rolling_variance, batch, out_c, spatial)
    scale_bias_dg(output, scales, batch, out_c, spatial)
    add_bias_dg(output, biases, batch, out_c, spatial)


def batchnorm_backward_dg(delta, x, x_norm, mean, variance, scales, bias_updates, scale_updates,
                          mean_delta, variance_delta, batch, out_c, spatial, threads=BLOCK):
    """``backward_batchnorm_layer_gpu``, non-cuDNN, call for call."""
    backward_bias_dg(bias_updates, delta, batch, out_c, spatial, threads)
    backward_scale_dg(x_norm, delta, batch, out_c, spatial, scale_updates, threads)
    scale_bias_dg(delta, scales, batch, out_c, spatial)
    fast_mean_delta_dg(delta, variance, batch, out_c, spatial, mean_delta, threads)
    fast_variance_delta_dg(x, delta, mean, variance, batch, out_c, spatial, variance_delta, threads)
    normalize_delta_dg(x, mean, variance, mean_delta, variance_delta, batch, out_c, spatial, delta)


# ----------------------------------------------------------------------------- activations (activation_kernels.cu)
# Only the activations whose device arithmetic is fully specified are emulated: linear,
# leaky, relu (float products, no libm), and the gradients of those and of logistic.
# darknet's logistic/tanh/elu/... call CUDA's expf, whose last bits we cannot
# reproduce on the CPU; the darknet-gpu profile keeps the strict activations there.

LINEAR = 3
LEAKY = 7
RELU = 1
LOGISTIC = 0
#: Activations whose forward darknet-gpu emulates exactly.
EXACT_ACTIVATIONS = (LINEAR, LEAKY, RELU)
#: Activations whose gradient darknet-gpu emulates exactly.
EXACT_GRADIENTS = (LINEAR, LEAKY, RELU, LOGISTIC)


@kernel
def activate_dg(x, a):
    """``activate_kernel``: linear ``x``; leaky ``(x>0) ? x : .1f*x``; relu ``x*(x>0)`` (float)."""
    if a == LEAKY:
        return x if x > 0 else canon(np.float32(.1) * x)
    if a == RELU:
        return canon(x * np.float32(x > 0))
    return x


@kernel
def gradient_dg(x, a):
    """``gradient_kernel``: linear 1, leaky ``(x>0) ? 1 : .1f``, relu ``(x>0)``, logistic ``(1-x)*x``."""
    if a == LEAKY:
        return np.float32(1) if x > 0 else np.float32(.1)
    if a == RELU:
        return np.float32(x > 0)
    if a == LOGISTIC:
        return canon(canon(np.float32(1) - x) * x)
    return np.float32(1)


@kernel
def activate_array_dg(x, n, a):
    """``activate_array_kernel``: ``x[i] = activate_kernel(x[i], a)``."""
    for i in range(n):
        x[i] = activate_dg(x[i], a)


@kernel
def gradient_array_dg(x, n, a, delta):
    """``gradient_array_kernel``: ``delta[i] *= gradient_kernel(x[i], a)`` (a float product)."""
    for i in range(n):
        delta[i] = canon(delta[i] * gradient_dg(x[i], a))
