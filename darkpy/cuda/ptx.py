"""PTX audit of the ``strict`` kernels: no fused multiply-add, no unrounded arithmetic.

NVVM (behind Numba's CUDA target) contracts ``a*b + c`` into ``fma.rn`` even
without fastmath, and ``ptxas`` may fuse a ``mul.f32``/``add.f32`` pair that has
no rounding modifier.  A strict kernel must therefore contain neither
``fma.*`` nor a floating ``mul``/``add``/``sub`` without ``.rn``.  Compiling to
PTX needs libNVVM (the CUDA toolkit) but no GPU: ``numba.cuda.compile_ptx``.

Run as ``python -m darkpy.cuda.ptx`` (without ``NUMBA_ENABLE_CUDASIM``): prints
one line per kernel and exits 1 if any kernel fails the audit (2 under the
simulator, 3 without libNVVM).
"""

import re
import sys

import numpy as np

#: Compute capability the audit compiles for (any supported by the installed NVVM).
CC = (7, 5)

_FUSED = re.compile(r"^\s*(fma|mad)\.[a-z.]*f(32|64)\b")
_UNROUNDED = re.compile(r"^\s*(mul|add|sub)\.f(32|64)\b")


def _f(n=8):
    return np.zeros(n, np.float32)


def strict_kernels():
    """(name, kernel, example arguments[, libdevice functions called]) for every strict kernel."""
    from darkpy.kernels import blas_cuda, gemm_cuda

    f32 = np.float32(1)
    i = 2
    out = [
        ("blas_cuda.copy", blas_cuda._copy_kernel, (i, _f(), i, _f(), i)),
        ("blas_cuda.fill", blas_cuda._fill_kernel, (i, f32, _f(), i)),
        ("blas_cuda.axpy", blas_cuda._axpy_kernel, (i, f32, _f(), i, _f(), i)),
        ("blas_cuda.scal", blas_cuda._scal_kernel, (i, f32, _f(), i)),
        ("blas_cuda.add_bias", blas_cuda._add_bias_kernel, (_f(), _f(), i, i, i)),
        ("blas_cuda.scale_bias", blas_cuda._scale_bias_kernel, (_f(), _f(), i, i, i)),
        ("blas_cuda.backward_bias", blas_cuda._backward_bias_kernel, (_f(), _f(), i, i, i)),
        ("blas_cuda.backward_scale", blas_cuda._backward_scale_kernel, (_f(), _f(), i, i, i, _f())),
        ("blas_cuda.mean", blas_cuda._mean_kernel, (_f(), i, i, i, _f())),
        ("blas_cuda.variance", blas_cuda._variance_kernel, (_f(), _f(), i, i, i, _f())),
        ("blas_cuda.normalize", blas_cuda._normalize_kernel, (_f(), _f(), _f(), i, i, i)),
        ("blas_cuda.mean_delta", blas_cuda._mean_delta_kernel, (_f(), _f(), i, i, i, _f())),
        ("blas_cuda.variance_delta", blas_cuda._variance_delta_kernel,
         (_f(), _f(), _f(), _f(), i, i, i, _f(), _f(), np.zeros(8, np.int32)), ("pow(x, -1.5)",)),
        ("blas_cuda.normalize_delta", blas_cuda._normalize_delta_kernel,
         (_f(), _f(), _f(), _f(), _f(), i, i, i, _f())),
        ("gemm_cuda.gemm", gemm_cuda._gemm_kernel, (i, i, i, i, i, f32, _f(), i, _f(), i, f32, _f(), i)),
    ]
    try:
        from darkpy.kernels import shapes_cuda
        out += shapes_cuda.audited_kernels()
    except ImportError:
        pass
    try:
        from darkpy.kernels import pooling_cuda
        out += pooling_cuda.audited_kernels()
    except ImportError:
        pass
    return out


class _OfflineDevice:
    """Stands for the current device while compiling without a driver: Numba asks the
    current device for its compute capability when it compiles a called device function."""

    compute_capability = CC


def compile_ptx(func, args):
    """PTX of kernel ``func`` for the types of ``args``, compiled for ``CC`` (no GPU needed)."""
    from numba import cuda, typeof
    import importlib

    pyfunc = getattr(func, "py_func", func)
    # numba's built-in CUDA target and NVIDIA's numba-cuda keep the dispatcher under
    # different module names; stub the current-device query wherever it is.
    patched = []
    if not cuda.is_available():
        for name in ("numba.cuda.dispatcher", "numba_cuda.numba.cuda.dispatcher"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "get_current_device"):
                patched.append((module, module.get_current_device))
                module.get_current_device = _OfflineDevice
    try:
        ptx, _ = cuda.compile_ptx(pyfunc, tuple(typeof(a) for a in args), fastmath=False, cc=CC)
    finally:
        for module, saved in patched:
            module.get_current_device = saved
    return ptx


def _offending(ptx):
    return [line.strip() for line in ptx.splitlines() if _FUSED.match(line) or _UNROUNDED.match(line)]


def _shape(line):
    """An instruction with its registers anonymised (``fma.rn.f64 %fd18, ...`` -> ``fma.rn.f64 %, ...``)."""
    return re.sub(r"%[a-z]+\d*", "%", line.split("//")[0]).strip()


def _probes():
    from darkpy.cuda.fp import dpow

    def pow_probe(a, out):  # the exponent a constant, as in variance_delta (NVVM specialises it)
        out[0] = dpow(a[0], -1.5)

    return {"pow(x, -1.5)": (pow_probe, (np.zeros(1), np.zeros(1)))}
_libm_lines = {}


def libm_lines(name):
    """The fused/unrounded instructions of libdevice's own ``name`` (its algorithm uses
    FMAs by design; they are part of the function, not contractions of our code)."""
    if name not in _libm_lines:
        from numba import cuda
        func, args = _probes()[name]
        _libm_lines[name] = [_shape(line) for line in _offending(compile_ptx(cuda.jit(func), args))]
    return _libm_lines[name]


def audit(name, func, args, libm=()):
    """The offending PTX lines of one kernel (an empty list when it passes).

    ``libm`` names the libdevice functions the kernel calls: their own instructions
    (as found in a kernel calling only that function) are not counted.
    """
    bad = _offending(compile_ptx(func, args))
    allowed = [line for name in libm for line in libm_lines(name)]
    kept = []
    for line in bad:
        shape = _shape(line)
        if shape in allowed:
            allowed.remove(shape)
        else:
            kept.append(line)
    return kept


def darknet_gpu_fma_counts():
    """``{kernel: number of fma.rn.f32}`` for darknet-gpu kernels whose fusion is known from
    nvcc's PTX of darknet: axpy one, normalize_delta and fast_mean none, backward_scale
    one per unrolled product when ``FUSE_PTXAS`` (else none)."""
    from darkpy.kernels import darknet_gpu_cuda as C
    f = np.zeros(8, np.float32)
    one = np.float32(1)
    r = C.reductions(C.BLOCK)
    counts = {}
    for name, func, args in (
            ("axpy", C._axpy_kernel, (2, one, f, 1, f, 1)),
            ("normalize_delta", C._normalize_delta_kernel, (2, f, f, f, f, f, 1, 1, 2, f)),
            ("fast_mean", r["fast_mean"], (f, 1, 1, 2, f)),
            ("backward_scale", r["backward_scale"], (f, f, 1, 1, 2, f))):
        counts[name] = sum(1 for line in compile_ptx(func, args).splitlines()
                           if re.match(r"\s*fma\.rn\.f32", line))
    return counts


def main():
    from darkpy.cuda import simulator
    if simulator():
        print("ptx audit: unset NUMBA_ENABLE_CUDASIM (the simulator has no compiler)", file=sys.stderr)
        return 2
    from numba.cuda.cudadrv import nvvm
    if not nvvm.is_available():
        print("ptx audit: libNVVM (the CUDA toolkit) is not installed", file=sys.stderr)
        return 3
    failed = 0
    for name, func, args, *libm in strict_kernels():
        bad = audit(name, func, args, *libm)
        print(f"{name}: {'ok' if not bad else 'FUSED/UNROUNDED ' + '; '.join(bad[:4])}")
        failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
