"""darknet's own GPU kernels (``blas_kernels.cu``, non-cuDNN), profile ``darknet-gpu``.

Each kernel has darknet's launch geometry where the geometry decides the result:
the block-strided reductions (``fast_mean``, ``fast_variance``,
``fast_mean_delta``, ``fast_variance_delta``, ``backward_bias``,
``backward_scale``) run ``<<<filters, BLOCK>>>`` with a shared ``local[BLOCK]``,
one partial sum per thread, ``__syncthreads()``, then thread 0 sums the partials
in thread order.  Elementwise kernels run one thread per element (their geometry
changes nothing).  The arithmetic is darknet's float arithmetic with NVIDIA's
semantics (``darkpy.cuda.fp``'s ``g*`` operations: canonical NaN, ``fmaf``
exactly where nvcc's code fuses).  The CPU emulation of the same order,
``darkpy.kernels.reference.darknet_gpu``, is the oracle of these kernels; its
docstring lists what was read from nvcc's PTX and what remains unverified.
"""

import numpy as np
from numba import cuda

from darkpy.cuda import simulator
from darkpy.cuda.fp import gadd, gdiv, gfma, gmul, gpowf, gsqrt, gsub
from darkpy.kernels.blas_cuda import copy_gpu
from darkpy.kernels.reference import darknet_gpu as D
from darkpy.kernels.reference.darknet_gpu import BLOCK, EPS, FUSE_PTXAS

#: Threads per block of the reductions run by the batchnorm layer functions below
#: (darknet's BLOCK; tests lower it, the simulator being one Python thread per thread).
THREADS = BLOCK
#: Threads per block of the elementwise kernels (no effect on their results).
ELEMENTWISE_BLOCK = 32 if simulator() else 512


def _blocks(n):
    return max(1, (n + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK)


@cuda.jit(device=True)
def mul_add(a, b, c):
    """``c + a*b`` where nvcc left an unrounded ``mul``/``add`` pair (fused per ``FUSE_PTXAS``)."""
    if FUSE_PTXAS:
        return gfma(a, b, c)
    return gadd(c, gmul(a, b))


# ----------------------------------------------------------------------------- elementwise

@cuda.jit
def _axpy_kernel(N, ALPHA, X, INCX, Y, INCY):
    i = cuda.grid(1)
    if i < N:
        Y[i * INCY] = gfma(ALPHA, X[i * INCX], Y[i * INCY])


@cuda.jit
def _scal_kernel(N, ALPHA, X, INCX):
    i = cuda.grid(1)
    if i < N:
        X[i * INCX] = gmul(X[i * INCX], ALPHA)


@cuda.jit
def _scale_bias_kernel(output, scales, batch, n, size):
    index = cuda.grid(1)
    if index < batch * n * size:
        output[index] = gmul(output[index], scales[(index // size) % n])


@cuda.jit
def _add_bias_kernel(output, biases, batch, n, size):
    index = cuda.grid(1)
    if index < batch * n * size:
        output[index] = gadd(output[index], biases[(index // size) % n])


@cuda.jit
def _normalize_kernel(N, x, mean, variance, batch, filters, spatial):
    index = cuda.grid(1)
    if index < N:
        f = (index // spatial) % filters
        x[index] = gdiv(gsub(x[index], mean[f]), gsqrt(gadd(variance[f], EPS)))


@cuda.jit
def _normalize_delta_kernel(N, x, mean, variance, mean_delta, variance_delta, batch, filters, spatial, delta):
    index = cuda.grid(1)
    if index < N:
        f = (index // spatial) % filters
        n = np.float32(spatial * batch)
        t1 = gdiv(delta[index], gsqrt(gadd(variance[f], EPS)))
        t2 = gdiv(gmul(gadd(variance_delta[f], variance_delta[f]), gsub(x[index], mean[f])), n)
        t3 = gdiv(mean_delta[f], n)
        delta[index] = gadd(t3, gadd(t1, t2))


def axpy_gpu(N, ALPHA, X, INCX, Y, INCY):
    """``axpy_gpu``: ``Y += ALPHA*X``, one ``fmaf`` per element."""
    if N > 0:
        _axpy_kernel[_blocks(N), ELEMENTWISE_BLOCK](N, np.float32(ALPHA), X, INCX, Y, INCY)


def scal_gpu(N, ALPHA, X, INCX):
    """``scal_gpu``: ``X *= ALPHA``."""
    if N > 0:
        _scal_kernel[_blocks(N), ELEMENTWISE_BLOCK](N, np.float32(ALPHA), X, INCX)


def scale_bias_gpu(output, scales, batch, n, size):
    """``scale_bias_gpu``: ``output *= scales[filter]``."""
    if batch * n * size > 0:
        _scale_bias_kernel[_blocks(batch * n * size), ELEMENTWISE_BLOCK](output, scales, batch, n, size)


def add_bias_gpu(output, biases, batch, n, size):
    """``add_bias_gpu``: ``output += biases[filter]``."""
    if batch * n * size > 0:
        _add_bias_kernel[_blocks(batch * n * size), ELEMENTWISE_BLOCK](output, biases, batch, n, size)


def normalize_gpu(x, mean, variance, batch, filters, spatial):
    """``normalize_gpu``: ``(x - mean)/sqrtf(variance + .00001f)`` in float."""
    N = batch * filters * spatial
    if N > 0:
        _normalize_kernel[_blocks(N), ELEMENTWISE_BLOCK](N, x, mean, variance, batch, filters, spatial)


def normalize_delta_gpu(x, mean, variance, mean_delta, variance_delta, batch, filters, spatial, delta):
    """``normalize_delta_gpu``: ``(d/s + ((vd + vd)*(x - mean))/n) + md/n`` in float."""
    N = batch * filters * spatial
    if N > 0:
        _normalize_delta_kernel[_blocks(N), ELEMENTWISE_BLOCK](N, x, mean, variance, mean_delta,
                                                               variance_delta, batch, filters, spatial, delta)


# ----------------------------------------------------------------------------- block-strided reductions

_REDUCTIONS = {}


def reductions(threads=BLOCK):
    """The reduction kernels compiled for ``threads`` threads per block (darknet: 512)."""
    if threads in _REDUCTIONS:
        return _REDUCTIONS[threads]
    THREADS = threads

    @cuda.jit(device=True)
    def finish(local):
        """Thread 0's serial sum of the partials, from 0, in thread order."""
        s = np.float32(0)
        for i in range(THREADS):
            s = gadd(s, local[i])
        return s

    @cuda.jit
    def fast_mean(x, batch, filters, spatial, mean):
        local = cuda.shared.array(THREADS, np.float32)
        id = cuda.threadIdx.x
        filter = cuda.blockIdx.x
        local[id] = np.float32(0)
        for j in range(batch):
            for i in range(0, spatial, THREADS):
                index = j * spatial * filters + filter * spatial + i + id
                local[id] = gadd(local[id], x[index] if i + id < spatial else np.float32(0))
        cuda.syncthreads()
        if id == 0:
            mean[filter] = gdiv(finish(local), np.float32(spatial * batch))

    @cuda.jit
    def fast_variance(x, mean, batch, filters, spatial, variance):
        local = cuda.shared.array(THREADS, np.float32)
        id = cuda.threadIdx.x
        filter = cuda.blockIdx.x
        local[id] = np.float32(0)
        for j in range(batch):
            for i in range(0, spatial, THREADS):
                index = j * spatial * filters + filter * spatial + i + id
                term = np.float32(0)
                if i + id < spatial:
                    term = gpowf(gsub(x[index], mean[filter]), np.float32(2))
                local[id] = gadd(local[id], term)
        cuda.syncthreads()
        if id == 0:
            variance[filter] = gdiv(finish(local), np.float32(spatial * batch - 1))

    @cuda.jit
    def fast_mean_delta(delta, variance, batch, filters, spatial, mean_delta):
        local = cuda.shared.array(THREADS, np.float32)
        id = cuda.threadIdx.x
        filter = cuda.blockIdx.x
        local[id] = np.float32(0)
        for j in range(batch):
            for i in range(0, spatial, THREADS):
                index = j * spatial * filters + filter * spatial + i + id
                local[id] = gadd(local[id], delta[index] if i + id < spatial else np.float32(0))
        cuda.syncthreads()
        if id == 0:
            factor = gdiv(np.float32(-1), gsqrt(gadd(variance[filter], EPS)))
            mean_delta[filter] = gmul(finish(local), factor)

    @cuda.jit
    def fast_variance_delta(x, delta, mean, variance, batch, filters, spatial, variance_delta):
        local = cuda.shared.array(THREADS, np.float32)
        id = cuda.threadIdx.x
        filter = cuda.blockIdx.x
        local[id] = np.float32(0)
        for j in range(batch):
            for i in range(0, spatial, THREADS):
                index = j * spatial * filters + filter * spatial + i + id
                if i + id < spatial:
                    local[id] = mul_add(delta[index], gsub(x[index], mean[filter]), local[id])
                else:
                    local[id] = gadd(local[id], np.float32(0))
        cuda.syncthreads()
        if id == 0:
            factor = gmul(np.float32(-.5), gpowf(gadd(variance[filter], EPS), np.float32(-1.5)))
            variance_delta[filter] = gmul(finish(local), factor)

    @cuda.jit
    def backward_bias(bias_updates, delta, batch, n, size):
        local = cuda.shared.array(THREADS, np.float32)
        p = cuda.threadIdx.x
        filter = cuda.blockIdx.x
        sum = np.float32(0)
        for b in range(batch):
            for i in range(0, size, THREADS):
                index = p + i + size * (filter + n * b)
                sum = gadd(sum, delta[index] if p + i < size else np.float32(0))
        local[p] = sum
        cuda.syncthreads()
        if p == 0:
            for i in range(THREADS):
                bias_updates[filter] = gadd(bias_updates[filter], local[i])

    @cuda.jit
    def backward_scale(x_norm, delta, batch, n, size, scale_updates):
        local = cuda.shared.array(THREADS, np.float32)
        p = cuda.threadIdx.x
        filter = cuda.blockIdx.x
        sum = np.float32(0)
        for b in range(batch):
            for i in range(0, size, THREADS):
                index = p + i + size * (filter + n * b)
                if p + i < size:
                    sum = mul_add(delta[index], x_norm[index], sum)
                else:
                    sum = gadd(sum, np.float32(0))
        local[p] = sum
        cuda.syncthreads()
        if p == 0:
            for i in range(THREADS):
                scale_updates[filter] = gadd(scale_updates[filter], local[i])

    k = dict(fast_mean=fast_mean, fast_variance=fast_variance, fast_mean_delta=fast_mean_delta,
             fast_variance_delta=fast_variance_delta, backward_bias=backward_bias,
             backward_scale=backward_scale)
    _REDUCTIONS[threads] = k
    return k


@cuda.jit
def _backward_bias_conn_kernel(bias_updates, delta, batch, n):
    index = cuda.grid(1)
    if index < n:
        sum = np.float32(0)
        for b in range(batch):
            sum = gadd(sum, delta[b * n + index])
        bias_updates[index] = gadd(bias_updates[index], sum)


def fast_mean_gpu(x, batch, filters, spatial, mean, threads=BLOCK):
    """``fast_mean_gpu``: ``fast_mean_kernel<<<filters, BLOCK>>>``."""
    if filters > 0:
        reductions(threads)["fast_mean"][filters, threads](x, batch, filters, spatial, mean)


def fast_variance_gpu(x, mean, batch, filters, spatial, variance, threads=BLOCK):
    """``fast_variance_gpu``: ``fast_variance_kernel<<<filters, BLOCK>>>``."""
    if filters > 0:
        reductions(threads)["fast_variance"][filters, threads](x, mean, batch, filters, spatial, variance)


def fast_mean_delta_gpu(delta, variance, batch, filters, spatial, mean_delta, threads=BLOCK):
    """``fast_mean_delta_gpu``: ``fast_mean_delta_kernel<<<filters, BLOCK>>>``."""
    if filters > 0:
        reductions(threads)["fast_mean_delta"][filters, threads](delta, variance, batch, filters, spatial,
                                                                 mean_delta)


def fast_variance_delta_gpu(x, delta, mean, variance, batch, filters, spatial, variance_delta, threads=BLOCK):
    """``fast_variance_delta_gpu``: ``fast_variance_delta_kernel<<<filters, BLOCK>>>``."""
    if filters > 0:
        reductions(threads)["fast_variance_delta"][filters, threads](x, delta, mean, variance, batch, filters,
                                                                     spatial, variance_delta)


def backward_bias_gpu(bias_updates, delta, batch, n, size, threads=BLOCK):
    """``backward_bias_gpu``: ``backward_bias_conn_kernel`` when ``size == 1``, else
    ``backward_bias_kernel<<<n, BLOCK>>>``."""
    if n <= 0:
        return
    if size == 1:
        _backward_bias_conn_kernel[_blocks(n), ELEMENTWISE_BLOCK](bias_updates, delta, batch, n)
    else:
        reductions(threads)["backward_bias"][n, threads](bias_updates, delta, batch, n, size)


def backward_scale_gpu(x_norm, delta, batch, n, size, scale_updates, threads=BLOCK):
    """``backward_scale_gpu``: ``backward_scale_kernel<<<n, BLOCK>>>``."""
    if n > 0:
        reductions(threads)["backward_scale"][n, threads](x_norm, delta, batch, n, size, scale_updates)


# ----------------------------------------------------------------------------- batchnorm layer

def forward_batchnorm_gpu(input, l, train, threads=None):
    """``forward_batchnorm_layer_gpu`` (non-cuDNN) on device layer ``l``; ``input`` is
    ``net.input`` for a [batchnorm] layer, ``l.output`` otherwise."""
    threads = threads or THREADS
    outputs = l.outputs * l.batch
    spatial = l.out_h * l.out_w
    if input is not l.output:
        copy_gpu(outputs, input, 1, l.output, 1)
    copy_gpu(outputs, l.output, 1, l.x, 1)
    if train:
        fast_mean_gpu(l.output, l.batch, l.out_c, spatial, l.mean, threads)
        fast_variance_gpu(l.output, l.mean, l.batch, l.out_c, spatial, l.variance, threads)
        scal_gpu(l.out_c, .99, l.rolling_mean, 1)
        axpy_gpu(l.out_c, .01, l.mean, 1, l.rolling_mean, 1)
        scal_gpu(l.out_c, .99, l.rolling_variance, 1)
        axpy_gpu(l.out_c, .01, l.variance, 1, l.rolling_variance, 1)
        copy_gpu(outputs, l.output, 1, l.x, 1)
        normalize_gpu(l.output, l.mean, l.variance, l.batch, l.out_c, spatial)
        copy_gpu(outputs, l.output, 1, l.x_norm, 1)
    else:
        normalize_gpu(l.output, l.rolling_mean, l.rolling_variance, l.batch, l.out_c, spatial)
    scale_bias_gpu(l.output, l.scales, l.batch, l.out_c, spatial)
    add_bias_gpu(l.output, l.biases, l.batch, l.out_c, spatial)


def backward_batchnorm_gpu(l, mean, variance, threads=None):
    """``backward_batchnorm_layer_gpu`` (non-cuDNN) on device layer ``l`` with the statistics
    ``mean``/``variance`` (the rolling ones when not training); the copy to ``net.delta`` of a
    [batchnorm] layer is the caller's."""
    threads = threads or THREADS
    spatial = l.out_w * l.out_h
    backward_bias_gpu(l.bias_updates, l.delta, l.batch, l.out_c, spatial, threads)
    backward_scale_gpu(l.x_norm, l.delta, l.batch, l.out_c, spatial, l.scale_updates, threads)
    scale_bias_gpu(l.delta, l.scales, l.batch, l.out_c, spatial)
    fast_mean_delta_gpu(l.delta, variance, l.batch, l.out_c, spatial, l.mean_delta, threads)
    fast_variance_delta_gpu(l.x, l.delta, mean, variance, l.batch, l.out_c, spatial, l.variance_delta, threads)
    normalize_delta_gpu(l.x, mean, variance, l.mean_delta, l.variance_delta, l.batch, l.out_c, spatial, l.delta)


# ----------------------------------------------------------------------------- activations

@cuda.jit(device=True)
def _activate(x, a):
    if a == D.LEAKY:
        return x if x > 0 else gmul(np.float32(.1), x)
    if a == D.RELU:
        return gmul(x, np.float32(x > 0))
    return x


@cuda.jit(device=True)
def _gradient(x, a):
    if a == D.LEAKY:
        return np.float32(1) if x > 0 else np.float32(.1)
    if a == D.RELU:
        return np.float32(x > 0)
    if a == D.LOGISTIC:
        return gmul(gsub(np.float32(1), x), x)
    return np.float32(1)


@cuda.jit
def _activate_array_kernel(x, n, a):
    i = cuda.grid(1)
    if i < n:
        x[i] = _activate(x[i], a)


@cuda.jit
def _gradient_array_kernel(x, n, a, delta):
    i = cuda.grid(1)
    if i < n:
        delta[i] = gmul(delta[i], _gradient(x[i], a))


def activate_array_gpu(x, n, a):
    """``activate_array_gpu`` of activation_kernels.cu for linear, leaky and relu; the
    other activations (CUDA ``expf``, not reproducible here) fall back to the strict twins."""
    if a not in D.EXACT_ACTIVATIONS:
        from darkpy.kernels import activations_cuda
        return activations_cuda.activate_array_gpu(x, n, a)
    if n > 0:
        _activate_array_kernel[_blocks(n), ELEMENTWISE_BLOCK](x, n, a)


def gradient_array_gpu(x, n, a, delta):
    """``gradient_array_gpu``: ``delta *= gradient(x)`` for linear, leaky, relu and logistic;
    other activations fall back to the strict twins."""
    if a not in D.EXACT_GRADIENTS:
        from darkpy.kernels import activations_cuda
        return activations_cuda.gradient_array_gpu(x, n, a, delta)
    if n > 0:
        _gradient_array_kernel[_blocks(n), ELEMENTWISE_BLOCK](x, n, a, delta)
