"""Numba kernels, one module per family (blas, gemm, im2col, activations, ...).

Every family exists twice with the same function names and signatures:

* ``darkpy/kernels/reference/<family>.py`` — the readable oracle: darknet's C
  loops transliterated loop for loop (same loop order, same variable names,
  same float/double promotions).
* ``darkpy/kernels/<family>.py`` — the fast kernels, bit-identical to the
  reference (tested against it), selected by default.

``use("reference")`` / ``use("fast")`` switches every layer between the two;
layers fetch a family with ``family("blas")`` at call time.

Numerics rules for every kernel (see ARCHITECTURE.md): ``error_model='numpy'``
(IEEE inf/NaN instead of exceptions), never ``fastmath``, float32 constants
written as ``np.float32(...)`` wherever C has a float literal (``.01f``),
float64 where C promotes to double.
"""

import importlib
from functools import partial

from numba import njit

#: ``@kernel``: how every CPU kernel is compiled (IEEE semantics, cached, no fastmath).
kernel = partial(njit, cache=True, error_model="numpy", fastmath=False)
#: ``@pkernel``: the same, with ``prange`` parallelism across independent outputs.
pkernel = partial(njit, cache=True, error_model="numpy", fastmath=False, parallel=True)

IMPLEMENTATIONS = ("fast", "reference")
_active = "fast"


def use(name):
    """Select the kernel implementation every layer calls: ``"fast"`` or ``"reference"``."""
    global _active
    if name not in IMPLEMENTATIONS:
        from darkpy.errors import DarkpyError
        raise DarkpyError(f"unknown kernel implementation {name!r}: expected one of {IMPLEMENTATIONS}")
    _active = name


def active():
    """The name of the selected implementation."""
    return _active


def family(name):
    """The module of kernel family ``name`` ("blas", "gemm", ...) in the selected implementation."""
    if _active == "reference":
        return importlib.import_module(f"darkpy.kernels.reference.{name}")
    return importlib.import_module(f"darkpy.kernels.{name}")
