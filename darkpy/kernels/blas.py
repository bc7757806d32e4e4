"""darknet's blas kernels, fast: bit-identical to ``darkpy.kernels.reference.blas``.

Every name of the reference exists here (re-exported below); the functions
that have a faster twin are redefined after the import.  tests/test_blas.py
checks each redefined function against its reference, bit for bit.
"""

from darkpy.kernels.reference.blas import *  # noqa: F401,F403
