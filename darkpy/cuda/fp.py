"""Device arithmetic with the CPU's bits: no FMA contraction, x86 NaNs, glibc ties.

The ``strict`` kernels write every floating-point operation that C performs as
one of these device functions, so that the GPU rounds exactly where darknet's
CPU build rounds and produces the same NaN bit patterns:

* **No contraction.**  Numba's CUDA target hands its IR to NVVM with FMA
  contraction enabled (NVVM's default ``-fma=1``; ``fastmath=False`` does not
  change it): ``a*b + c`` becomes ``fma.rn.f32`` (checked in
  ``tests/test_cuda_ptx.py``).  PTX ``mul``/``add`` without a rounding modifier
  may also be fused later by ``ptxas``.  libdevice's ``__nv_fmul_rn``,
  ``__nv_fadd_rn``, ``__nv_dmul_rn``, ... compile to ``mul.rn``/``add.rn``,
  which neither NVVM nor ``ptxas`` ever fuses (CUDA C Programming Guide,
  "intrinsic functions": ``__fmul_rn`` "is never merged into a multiply-add").
* **x86 NaNs.**  NVIDIA hardware returns the canonical NaN ``0x7fffffff`` from
  any operation producing a NaN; x86 SSE returns the first NaN operand made
  quiet, or the "default NaN" ``0xffc00000`` (double ``0xfff8000000000000``)
  for an invalid operation (``inf - inf``, ``0 * inf``, ``0/0``, ``sqrt(-1)``).
  Each operation here checks its result and, when it is NaN, rebuilds x86's
  NaN from the operands; ``cvt`` between float and double is treated alike
  (x86 keeps the sign and the top payload bits).  The operand order of the
  device functions is the order darknet's compiled CPU code uses (see the
  ``first_nan`` notes of ``darkpy.kernels.reference.blas``).
* **Ties of double transcendental functions.**  ``sqrt`` and ``/`` are
  correctly rounded on both sides.  ``pow``/``exp``/``log`` are not: libdevice
  (<= 2 ulp) and glibc (< 1 ulp) may disagree in the last bits of the double
  result, which changes the float32 that C stores only when the double lies
  within a few ulps of a float32 rounding boundary (a midpoint between two
  floats).  :func:`near_tie` detects that window from the double's bits; the
  kernels flag such elements and the host recomputes them with glibc (Python's
  ``math`` module), so the stored float32 is glibc's.

Under the CUDA simulator libdevice is not implemented: the operations are
numpy scalar operations, which x86 computes with exactly the semantics above;
the NaN rebuilding then runs on values numpy already produced, so the tests
check it against the hardware bit for bit.
"""

import math

import numpy as np
from numba import cuda

from darkpy.cuda import simulator

#: x86's default NaN (what an invalid operation returns), float and double bit patterns.
DEFAULT_NAN32_BITS = -4194304                      # 0xffc00000 as int32
DEFAULT_NAN64_BITS = -2251799813685248             # 0xfff8000000000000 as int64
_QUIET32 = 0x00400000
_QUIET64 = 0x0008000000000000
#: Half-width, in double ulps, of the window around a float32 rounding boundary
#: inside which a libdevice result is not trusted to round like glibc's.
TIE_ULPS = 64

if simulator():
    import warnings

    # numpy warns where C silently produces inf/NaN (the IEEE results we want); the
    # filter names this module only.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=__name__)

    def _fmul_rn(a, b):
        return np.float32(np.float32(a) * np.float32(b))

    def _fadd_rn(a, b):
        return np.float32(np.float32(a) + np.float32(b))

    def _fsub_rn(a, b):
        return np.float32(np.float32(a) - np.float32(b))

    def _fdiv_rn(a, b):
        return np.float32(np.float32(a) / np.float32(b))

    def _dmul_rn(a, b):
        return np.float64(np.float64(a) * np.float64(b))

    def _dadd_rn(a, b):
        return np.float64(np.float64(a) + np.float64(b))

    def _dsub_rn(a, b):
        return np.float64(np.float64(a) - np.float64(b))

    def _ddiv_rn(a, b):
        return np.float64(np.float64(a) / np.float64(b))

    def _sqrt(a):
        return np.float64(np.sqrt(np.float64(a)))

    def _pow(a, b):  # math.pow raises where C returns inf/NaN
        try:
            return np.float64(math.pow(np.float64(a), np.float64(b)))
        except (OverflowError, ValueError):
            return np.float64(np.power(np.float64(a), np.float64(b)))

    def _f32_bits(x):
        return int(np.float32(x).view(np.int32))

    def _bits_f32(i):
        return np.int32(i).view(np.float32)

    def _f64_bits(x):
        return int(np.float64(x).view(np.int64))

    def _bits_f64(i):
        return np.int64(i).view(np.float64)

    def _to_f32(x):
        return np.float32(x)

    def _to_f64(x):
        return np.float64(x)
else:  # pragma: no cover - needs a GPU (or compile_ptx)
    from numba.cuda import libdevice

    _fmul_rn = libdevice.fmul_rn
    _fadd_rn = libdevice.fadd_rn
    _fsub_rn = libdevice.fsub_rn
    _fdiv_rn = libdevice.fdiv_rn
    _dmul_rn = libdevice.dmul_rn
    _dadd_rn = libdevice.dadd_rn

    @cuda.jit(device=True)
    def _dsub_rn(a, b):  # libdevice has no dsub_rn; negation is exact (NaNs are rebuilt by dsub)
        return libdevice.dadd_rn(a, -b)

    _ddiv_rn = libdevice.ddiv_rn
    _sqrt = libdevice.dsqrt_rn
    _pow = libdevice.pow
    _f32_bits = libdevice.float_as_int
    _bits_f32 = libdevice.int_as_float
    _f64_bits = libdevice.double_as_longlong
    _bits_f64 = libdevice.longlong_as_double

    @cuda.jit(device=True)
    def _to_f32(x):
        return np.float32(x)

    @cuda.jit(device=True)
    def _to_f64(x):
        return np.float64(x)


# ----------------------------------------------------------------------------- x86 NaNs

@cuda.jit(device=True)
def quiet32(a):
    """``a`` (a float NaN) with its quiet bit set, as x86 passes a NaN operand on."""
    return _bits_f32(_f32_bits(a) | _QUIET32)


@cuda.jit(device=True)
def quiet64(a):
    """``a`` (a double NaN) with its quiet bit set."""
    return _bits_f64(_f64_bits(a) | _QUIET64)


@cuda.jit(device=True)
def nan32(a, b):
    """x86's NaN for a float operation ``a op b`` whose result is NaN."""
    if a != a:
        return quiet32(a)
    if b != b:
        return quiet32(b)
    return _bits_f32(DEFAULT_NAN32_BITS)


@cuda.jit(device=True)
def nan64(a, b):
    """x86's NaN for a double operation ``a op b`` whose result is NaN."""
    if a != a:
        return quiet64(a)
    if b != b:
        return quiet64(b)
    return _bits_f64(DEFAULT_NAN64_BITS)


# ----------------------------------------------------------------------------- float

@cuda.jit(device=True)
def fmul(a, b):
    """C's float ``a*b``: rounded on its own (never fused), x86 NaN."""
    r = _fmul_rn(a, b)
    if r != r:
        r = nan32(a, b)
    return r


@cuda.jit(device=True)
def fadd(a, b):
    """C's float ``a + b``: rounded on its own (never fused), x86 NaN."""
    r = _fadd_rn(a, b)
    if r != r:
        r = nan32(a, b)
    return r


@cuda.jit(device=True)
def fsub(a, b):
    """C's float ``a - b``: rounded on its own (never fused), x86 NaN."""
    r = _fsub_rn(a, b)
    if r != r:
        r = nan32(a, b)
    return r


@cuda.jit(device=True)
def fdiv(a, b):
    """C's float ``a / b`` (correctly rounded), x86 NaN."""
    r = _fdiv_rn(a, b)
    if r != r:
        r = nan32(a, b)
    return r


# ----------------------------------------------------------------------------- double

@cuda.jit(device=True)
def dmul(a, b):
    """C's double ``a*b``: rounded on its own (never fused), x86 NaN."""
    r = _dmul_rn(a, b)
    if r != r:
        r = nan64(a, b)
    return r


@cuda.jit(device=True)
def dadd(a, b):
    """C's double ``a + b``: rounded on its own (never fused), x86 NaN."""
    r = _dadd_rn(a, b)
    if r != r:
        r = nan64(a, b)
    return r


@cuda.jit(device=True)
def dsub(a, b):
    """C's double ``a - b``: rounded on its own (never fused), x86 NaN."""
    r = _dsub_rn(a, b)
    if r != r:
        r = nan64(a, b)
    return r


@cuda.jit(device=True)
def ddiv(a, b):
    """C's double ``a / b`` (correctly rounded), x86 NaN."""
    r = _ddiv_rn(a, b)
    if r != r:
        r = nan64(a, b)
    return r


@cuda.jit(device=True)
def dsqrt(a):
    """C's double ``sqrt`` (correctly rounded on both sides): x86 NaN (``sqrt(-1)`` is the default NaN)."""
    r = _sqrt(a)
    if r != r:
        r = nan64(a, a)
    return r


@cuda.jit(device=True)
def dpow(a, b):
    """C's double ``pow`` through libdevice (<= 2 ulp from glibc: see :func:`near_tie`); NaN as glibc's ``x + y``."""
    r = _pow(a, b)
    if r != r:
        r = nan64(a, b)
    return r


# ----------------------------------------------------------------------------- conversions

@cuda.jit(device=True)
def f2d(a):
    """``(double)a``: exact; a NaN keeps its sign and payload (shifted up), made quiet, as ``cvtss2sd``."""
    if a != a:
        bits = _f32_bits(a)
        sign = np.int64(1) if bits < 0 else np.int64(0)
        payload = np.int64(bits & 0x007FFFFF)
        return _bits_f64((sign << 63) | np.int64(0x7FF8000000000000) | (payload << 29))
    return _to_f64(a)


@cuda.jit(device=True)
def d2f(a):
    """``(float)a``: round to nearest; a NaN keeps its sign and top payload bits, made quiet, as ``cvtsd2ss``."""
    if a != a:
        bits = _f64_bits(a)
        sign = 1 if bits < 0 else 0
        payload = np.int32((bits >> 29) & 0x007FFFFF)
        if sign:
            return _bits_f32(np.int32(DEFAULT_NAN32_BITS) | payload)
        return _bits_f32(np.int32(0x7FC00000) | payload)
    return _to_f32(a)


# ----------------------------------------------------------------------------- ties

@cuda.jit(device=True)
def near_tie(y):
    """True when the double ``y`` lies within ``TIE_ULPS`` double ulps of a float32
    rounding boundary, so that a libdevice result and glibc's may round to
    different floats.  Conservative for float32-subnormal magnitudes (always True).

    A normal float32 keeps the top 23 of the double's 52 fraction bits; the 29 bits
    below decide the rounding, and the boundary is their midpoint ``1 << 28``
    (a value whose low bits are all 0 or all 1 sits next to a float32 itself and is
    safe: both libraries round it to that float).
    """
    if y != y:
        return False
    bits = _f64_bits(y)
    exponent = (bits >> 52) & 0x7FF
    if exponent == 0x7FF:
        return False
    if exponent < 1023 - 126:   # float32 subnormal or underflow: boundaries elsewhere
        return exponent != 0 or (bits & 0x000FFFFFFFFFFFFF) != 0
    low = bits & 0x1FFFFFFF
    distance = low - 0x10000000
    if distance < 0:
        distance = -distance
    return distance <= TIE_ULPS


def near_tie_host(y):
    """:func:`near_tie` on the host (plain Python), for tests and host-side fix-ups."""
    y = np.float64(y)
    if y != y:
        return False
    bits = int(y.view(np.int64))
    exponent = (bits >> 52) & 0x7FF
    if exponent == 0x7FF:
        return False
    if exponent < 1023 - 126:
        return exponent != 0 or (bits & 0x000FFFFFFFFFFFFF) != 0
    return abs((bits & 0x1FFFFFFF) - 0x10000000) <= TIE_ULPS


# ----------------------------------------------------------------------------- NVIDIA semantics (darknet-gpu)
# darknet's own kernels as the hardware runs them: IEEE float operations with the
# canonical NaN 0x7fffffff for every NaN result, and fmaf where nvcc fused.  The
# operations are explicitly rounded so that NVVM fuses nothing darknet's build did not.

#: NVIDIA's canonical NaN, as int32 bits.
CANONICAL_NAN32_BITS = 0x7FFFFFFF

if simulator():
    from darkpy.kernels.reference.darknet_gpu import fma32 as _fmaf
    from darkpy.kernels.reference.darknet_gpu import powf as _powf

    def _fsqrt_rn(a):
        return np.sqrt(np.float32(a))
else:  # pragma: no cover - needs a GPU
    _fmaf = libdevice.fmaf
    _fsqrt_rn = libdevice.fsqrt_rn
    _powf = libdevice.powf


@cuda.jit(device=True)
def gcanon(r):
    """``r`` with any NaN replaced by NVIDIA's canonical NaN (what the hardware returns)."""
    if r != r:
        return _bits_f32(CANONICAL_NAN32_BITS)
    return r


@cuda.jit(device=True)
def gadd(a, b):
    """Device float ``a + b`` (not fused), canonical NaN."""
    return gcanon(_fadd_rn(a, b))


@cuda.jit(device=True)
def gsub(a, b):
    """Device float ``a - b`` (not fused), canonical NaN."""
    return gcanon(_fsub_rn(a, b))


@cuda.jit(device=True)
def gmul(a, b):
    """Device float ``a*b`` (not fused), canonical NaN."""
    return gcanon(_fmul_rn(a, b))


@cuda.jit(device=True)
def gdiv(a, b):
    """Device float ``a/b`` (``div.rn.f32``, nvcc's default ``-prec-div=true``), canonical NaN."""
    return gcanon(_fdiv_rn(a, b))


@cuda.jit(device=True)
def gfma(a, b, c):
    """``fmaf(a, b, c)`` (``fma.rn.f32``): one rounding, canonical NaN."""
    return gcanon(_fmaf(a, b, c))


@cuda.jit(device=True)
def gsqrt(a):
    """CUDA's ``sqrtf`` (``sqrt.rn.f32``, nvcc's default ``-prec-sqrt=true``), canonical NaN."""
    return gcanon(_fsqrt_rn(a))


@cuda.jit(device=True)
def gpowf(a, b):
    """CUDA's ``powf`` (libdevice ``__nv_powf``) on the device; in the simulator the
    emulation's assumption (``darkpy.kernels.reference.darknet_gpu.powf``)."""
    return gcanon(_powf(a, b))
