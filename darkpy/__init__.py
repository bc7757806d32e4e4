"""darkpy: darknet's neural-network layer engine in Python + Numba, bit-exact with the C code."""

__version__ = "0.1.0"

from darkpy.errors import DarkpyError  # noqa: E402,F401
