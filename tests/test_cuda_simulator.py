"""Runs the CUDA kernel tests in a process of their own under Numba's CUDA simulator.

``NUMBA_ENABLE_CUDASIM`` is read when numba is first imported.  In a full test
run another module (or conftest) imports numba before the ``test_cuda_*``
modules can select the simulator, so those modules skip themselves in that
process; this test then runs them in a fresh interpreter with the simulator
selected, and requires every one of their tests to pass (none skipped).  When
the simulator (or a GPU) is already active in this process, the modules ran
in-process and this test skips.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from darkpy import cuda as dcuda

TESTS = Path(__file__).resolve().parent
MODULES = ["test_cuda_blas.py", "test_cuda_fp.py", "test_cuda_shapes.py", "test_cuda_darknet_gpu.py",
           "test_cuda_network.py"]


def test_cuda_modules_pass_in_the_simulator():
    if dcuda.available():
        pytest.skip("the CUDA tests ran in this process (simulator or GPU active)")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-rs",
                           *(str(TESTS / m) for m in MODULES)],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=1200)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary and "failed" not in summary, tail
