"""Which NaN survives: x86 keeps the first source operand's NaN where two NaNs meet.

darknet's bits include NaN payloads and signs, so where gcc's operand order decides
which NaN comes out, the kernels pin that order with ``first_nan``.
"""

from darkpy.kernels import kernel


@kernel
def first_nan(a, r):
    """``r``, the result of ``a op b``, as x86 gives it with ``a`` as first source operand:
    when ``a`` is NaN the result is ``a`` quieted (``a + a``), whatever ``b`` is.

    Pins the NaN-payload choice where compilers may swap the operands of a
    commutative operation; a no-op on every value that is not NaN.
    """
    return a + a if a != a else r
