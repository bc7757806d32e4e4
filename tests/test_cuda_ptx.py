"""The strict kernels' PTX holds no fused multiply-add and no unrounded float arithmetic.

Compiling to PTX needs libNVVM but no GPU, and cannot happen in a process that
selected the CUDA simulator, so the audit runs in a subprocess without
``NUMBA_ENABLE_CUDASIM``.  A naive ``a*b + c`` kernel is audited first: it must
be caught (NVVM contracts it into ``fma.rn.f32`` even without fastmath).  The
darknet-gpu kernels must instead fuse exactly where nvcc's PTX of darknet does.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import numpy as np
from numba.cuda.cudadrv import nvvm
if not nvvm.is_available():
    sys.exit(3)
from darkpy.cuda import ptx

def naive(a, b, c, out):
    out[0] = a[0] * b[0] + c[0]

args = tuple(np.zeros(1, np.float32) for _ in range(4))
bad = ptx.audit("naive", naive, args)
print("naive:", bad)
assert any(line.startswith("fma.rn.f32") for line in bad), bad
from darkpy.kernels.reference.darknet_gpu import FUSE_PTXAS
counts = ptx.darknet_gpu_fma_counts()
print("darknet-gpu fma:", counts)
assert counts["axpy"] == 1 and counts["normalize_delta"] == 0 and counts["fast_mean"] == 0, counts
assert (counts["backward_scale"] > 0) == FUSE_PTXAS, counts
sys.exit(ptx.main())
"""


def test_strict_kernels_have_no_fma():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode == 3:
        pytest.skip("libNVVM (CUDA toolkit) not installed: PTX cannot be compiled here")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("blas_cuda.variance_delta: ok") for line in lines), proc.stdout
    assert any(line.startswith("gemm_cuda.gemm: ok") for line in lines), proc.stdout
