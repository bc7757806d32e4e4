"""``@cuda.jit`` twins of darknet's CPU activations (``activations.c`` / ``activations.h``).

Same formulas and C promotions as ``darkpy.kernels.reference.activations``, one
thread per element.  Note that darknet's own GPU kernels (activation_kernels.cu)
compute in float with ``expf`` and a different tanh, and nvcc contracts
``a*b + c`` into FMAs, so darknet's GPU results differ from its CPU results;
these twins aim at the CPU bits instead (the golden dumps):

* every product that feeds an addition goes through ``dmul_rn``/``fmul_rn``
  (libdevice's explicitly rounded operations, which the compiler never fuses
  into an FMA), and the addition through ``dadd_rn``/``fadd_rn``;
* ``stair`` guards the double -> int conversion as x86-64 behaves (INT_MIN for
  NaN, inf and out-of-range values), where PTX's ``cvt`` would give 0 or saturate;
* ``exp`` is CUDA's double ``exp`` (libdevice, within 1 ulp) where the CPU uses
  glibc's: the double results can differ in the last bit, which survives the
  rounding to float32 only for inputs within one double ulp of a float32
  rounding boundary (none were seen in testing, but it is not excluded).

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where libdevice is not
implemented, the rounded operations are plain Python float operations.
"""

import math

import numpy as np
from numba import config, cuda

from darkpy.kernels.reference.activations import (  # noqa: F401  (re-exported API)
    ACTIVATIONS, ELU, HARDTAN, LEAKY, LHTAN, LINEAR, LOGGY, LOGISTIC, PLSE, RAMP, RELIE, RELU, SELU,
    STAIR, TANH, check_activation, get_activation, get_activation_string)

BLOCK = 512

if config.ENABLE_CUDASIM:
    @cuda.jit(device=True)
    def dmul(a, b):
        return a * b

    @cuda.jit(device=True)
    def dadd(a, b):
        return a + b

    @cuda.jit(device=True)
    def fmul(a, b):
        return np.float32(np.float32(a) * np.float32(b))

    @cuda.jit(device=True)
    def fadd(a, b):
        return np.float32(np.float32(a) + np.float32(b))

    @cuda.jit(device=True)
    def exp(v):  # Python's math.exp raises on overflow; C's gives inf
        with np.errstate(over="ignore"):
            return np.float64(np.exp(np.float64(v)))

    @cuda.jit(device=True)
    def floor(v):  # Python's math.floor raises on inf/NaN; C's returns them
        return np.float64(np.floor(np.float64(v)))
else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def dmul(a, b):
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True)
    def dadd(a, b):
        return libdevice.dadd_rn(a, b)

    @cuda.jit(device=True)
    def fmul(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True)
    def fadd(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True)
    def exp(v):
        return math.exp(v)

    @cuda.jit(device=True)
    def floor(v):
        return math.floor(v)


@cuda.jit(device=True)
def activate_kernel(x, a):
    """darknet's ``activate`` (CPU semantics) for one float32 ``x``."""
    x = np.float32(x)
    xd = np.float64(x)
    if a == LINEAR:
        return x
    if a == LOGISTIC:
        return np.float32(1. / (1. + exp(-xd)))
    if a == LOGGY:
        return np.float32(2. / (1. + exp(-xd)) - 1.)
    if a == RELU:
        return fmul(x, np.float32(x > 0))
    if a == ELU:
        return np.float32(dadd(np.float64(fmul(np.float32(x >= 0), x)),
                               dmul(np.float64(x < 0), exp(xd) - 1.)))
    if a == SELU:
        return np.float32(dadd(dmul(dmul(np.float64(x >= 0), 1.0507), xd),
                               dmul(dmul(dmul(np.float64(x < 0), 1.0507), 1.6732), exp(xd) - 1.)))
    if a == RELIE:
        if x > 0:
            return x
        return np.float32(.01 * xd)
    if a == RAMP:
        return np.float32(dadd(np.float64(fmul(x, np.float32(x > 0))), dmul(.1, xd)))
    if a == LEAKY:
        if x > 0:
            return x
        return np.float32(.1 * xd)
    if a == TANH:
        e = exp(np.float64(fmul(np.float32(2), x)))
        return np.float32((e - 1.) / (e + 1.))
    if a == PLSE:
        if x < np.float32(-4):
            return np.float32(.01 * np.float64(np.float32(x + np.float32(4))))
        if x > np.float32(4):
            return np.float32(dadd(dmul(.01, np.float64(np.float32(x - np.float32(4)))), 1.))
        return np.float32(dadd(dmul(.125, xd), .5))
    if a == STAIR:
        fl = floor(xd)
        if fl >= -2147483648.0 and fl < 2147483648.0:
            n = int(fl)
        else:
            n = -2147483648
        if n % 2 == 0:
            return np.float32(floor(xd / 2.))
        return np.float32(np.float64(np.float32(x - np.float32(n))) + floor(xd / 2.))
    if a == HARDTAN:
        if x < np.float32(-1):
            return np.float32(-1)
        if x > np.float32(1):
            return np.float32(1)
        return x
    if a == LHTAN:
        if x < 0:
            return np.float32(.001 * xd)
        if x > np.float32(1):
            return np.float32(dadd(dmul(.001, np.float64(np.float32(x - np.float32(1)))), 1.))
        return x
    return np.float32(0)


@cuda.jit(device=True)
def gradient_kernel(x, a):
    """darknet's ``gradient`` (CPU semantics) of the output ``x``."""
    x = np.float32(x)
    if a == LINEAR:
        return np.float32(1)
    if a == LOGISTIC:
        return fmul(np.float32(np.float32(1) - x), x)
    if a == LOGGY:
        y = np.float32((np.float64(x) + 1.) / 2.)
        return fmul(fmul(np.float32(2), np.float32(np.float32(1) - y)), y)
    if a == RELU:
        return np.float32(x > 0)
    if a == ELU:
        return fadd(np.float32(x >= 0), fmul(np.float32(x < 0), np.float32(x + np.float32(1))))
    if a == SELU:
        return np.float32(dadd(dmul(np.float64(x >= 0), 1.0507),
                               dmul(np.float64(x < 0), np.float64(x) + 1.0507 * 1.6732)))
    if a == RELIE:
        return np.float32(1) if x > 0 else np.float32(.01)
    if a == RAMP:
        return np.float32(np.float64(x > 0) + .1)
    if a == LEAKY:
        return np.float32(1) if x > 0 else np.float32(.1)
    if a == TANH:
        return np.float32(np.float32(1) - fmul(x, x))
    if a == PLSE:
        if x < 0 or x > np.float32(1):
            return np.float32(.01)
        return np.float32(.125)
    if a == STAIR:
        if floor(np.float64(x)) == np.float64(x):
            return np.float32(0)
        return np.float32(1)
    if a == HARDTAN:
        if x > np.float32(-1) and x < np.float32(1):
            return np.float32(1)
        return np.float32(0)
    if a == LHTAN:
        if x > 0 and x < np.float32(1):
            return np.float32(1)
        return np.float32(.001)
    return np.float32(0)


@cuda.jit
def activate_array_kernel(x, n, a):
    """``x[i] = activate(x[i], a)``, one thread per element (darknet's activate_array_kernel layout)."""
    i = cuda.grid(1)
    if i < n:
        x[i] = activate_kernel(x[i], a)


@cuda.jit
def gradient_array_kernel(x, n, a, delta):
    """``delta[i] *= gradient(x[i], a)`` (a rounded float product), one thread per element."""
    i = cuda.grid(1)
    if i < n:
        delta[i] = fmul(delta[i], gradient_kernel(x[i], a))


def _blocks(n):
    return max(1, (n + BLOCK - 1) // BLOCK)


def activate_array_gpu(x, n, a):
    """darknet's ``activate_array_gpu(x, n, a)`` on a device (or host) float32 array, in place."""
    a = check_activation(a)
    n = int(n)
    if n > 0:
        activate_array_kernel[_blocks(n), BLOCK](x, n, a)


def gradient_array_gpu(x, n, a, delta):
    """darknet's ``gradient_array_gpu(x, n, a, delta)``: ``delta[:n] *= gradient(x[:n])`` in place."""
    a = check_activation(a)
    n = int(n)
    if n > 0:
        gradient_array_kernel[_blocks(n), BLOCK](x, n, a, delta)
