"""darkpy.cuda.fp: x86 NaN rebuilding, NaN-preserving conversions, and the glibc tie window.

The device functions are called directly (the simulator runs them as Python).
Their NaN paths rebuild x86's NaN from the operands; the hardware's own result
(numpy on this x86 CPU) is the reference, bit for bit.  The tie tests are the
argument that a libdevice ``pow``/``exp`` result a few double ulps away from
glibc's rounds to the same float32 unless ``near_tie`` flags it.
"""

import math
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from darkpy import cuda as dcuda  # noqa: E402

if not dcuda.simulator():
    pytest.skip("these tests call the device functions in the CUDA simulator", allow_module_level=True)

from darkpy.cuda import fp  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

F32 = np.array([0x7fc00000, 0xffc00000, 0x7fa00001, 0xff812345, 0x7f800000, 0xff800000,
                0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x00000001],
               np.uint32).view(np.float32)
F64 = np.array([0x7ff8000000000000, 0xfff8000000000000, 0x7ff4000000000123, 0xfff0000012345678,
                0x7ff0000000000000, 0xfff0000000000000, 0, 0x8000000000000000,
                0x3ff0000000000000, 0xc000000000000000], np.uint64).view(np.float64)


def bits32(x):
    return int(np.float32(x).view(np.uint32))


def bits64(x):
    return int(np.float64(x).view(np.uint64))


@pytest.mark.parametrize("op,dev", [(np.add, fp.fadd), (np.subtract, fp.fsub),
                                    (np.multiply, fp.fmul), (np.divide, fp.fdiv)])
def test_float_ops_give_x86_nans(op, dev):
    for a in F32:
        for b in F32:
            assert bits32(dev(a, b)) == bits32(op(a, b)), (a, b)


@pytest.mark.parametrize("op,dev", [(np.add, fp.dadd), (np.subtract, fp.dsub),
                                    (np.multiply, fp.dmul), (np.divide, fp.ddiv)])
def test_double_ops_give_x86_nans(op, dev):
    for a in F64:
        for b in F64:
            assert bits64(dev(a, b)) == bits64(op(a, b)), (a, b)


def test_rebuilt_nans_equal_the_hardware():
    """nan32/nan64 alone (what the device runs after its canonical NaN) against x86's
    ``addss`` (numpy's add ufunc keeps the operand order; numpy's scalar ``+`` does not)."""
    for a in F32:
        for b in F32:
            r = np.add(a, b)
            if r != r:
                assert bits32(fp.nan32(a, b)) == bits32(r)
    assert bits32(fp.nan32(np.float32(1), np.float32(2))) == 0xffc00000
    assert bits64(fp.nan64(np.float64(1), np.float64(2))) == 0xfff8000000000000
    assert bits64(fp.dsqrt(np.float64(-1))) == bits64(np.sqrt(np.float64(-1)))
    assert bits64(fp.dsqrt(F64[2])) == bits64(np.sqrt(F64[2]))


def test_conversions_keep_nan_payloads():
    for a in F32:
        assert bits64(fp.f2d(a)) == bits64(np.float64(a))
    for a in F64:
        assert bits32(fp.d2f(a)) == bits32(np.float32(a))


# ----------------------------------------------------------------------------- ties

def midpoints(seed, n):
    """Doubles exactly halfway between two adjacent float32s (normal range)."""
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32)
    return (f.astype(np.float64) + np.nextafter(f, np.float32(np.inf)).astype(np.float64)) / 2


def test_near_tie_flags_the_window_and_only_it():
    for m in midpoints(1, 200):
        for k in (0, 1, 5, fp.TIE_ULPS):
            for y in (m + k * math.ulp(m), m - k * math.ulp(m)):
                assert fp.near_tie(y) and fp.near_tie_host(y)
        far = m + 4 * fp.TIE_ULPS * math.ulp(m)
        assert not fp.near_tie(far) and not fp.near_tie_host(far)
    assert not fp.near_tie(np.float64(np.nan)) and not fp.near_tie(np.float64(np.inf))
    assert not fp.near_tie(np.float64(1.0)) and not fp.near_tie(np.float64(0.0))
    assert fp.near_tie(np.float64(1e-42))         # float32 subnormal: always recomputed


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False).filter(lambda v: abs(v) > 1e-30),
       st.integers(min_value=-fp.TIE_ULPS // 2, max_value=fp.TIE_ULPS // 2))
def test_a_few_ulps_change_the_float32_only_inside_the_window(y, k):
    """The argument: if libdevice's double is within TIE_ULPS/2 of glibc's and rounds
    to a different float32, the kernel's ``near_tie`` flagged it (so glibc recomputes)."""
    other = y
    step = math.inf if k > 0 else -math.inf
    for _ in range(abs(k)):
        other = math.nextafter(other, step)
    if np.float32(y) != np.float32(other):
        assert fp.near_tie(other)


def test_libdevice_sized_errors_on_real_results():
    """glibc's exp(-x) and pow(v, -1.5) of float inputs (darknet's logistic and
    variance_delta), moved by libdevice's documented error bounds (1 ulp for exp, 2 for
    pow): wherever that changes the float32, ``near_tie`` of the moved value is set, and
    values with the window clear of a boundary keep glibc's float32.  Random inputs almost
    never land near a boundary, so the inputs whose results lie closest to one
    (``_hardest``) are added: those must be flagged.  (Even they sit a few double ulps from
    the boundary, so a 1-2 ulp move changes no float32 here: ``changed`` is printed.)"""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(1500) * 20).astype(np.float32).astype(np.float64)
    v = np.abs(x) + 1e-5
    x = np.concatenate([x, _hardest(lambda a: np.exp(-a), 16, chunks=1)[0]])
    v = np.concatenate([v, _hardest(lambda a: np.power(a, -1.5), 16, chunks=1)[0]])
    changed = flagged = 0
    for f, arg, bound in ((lambda a: math.exp(-a), x, 1), (lambda a: math.pow(a, -1.5), v, 2)):
        for a in arg:
            g = f(float(a))
            if not math.isfinite(g) or g == 0:
                continue
            for k in range(-bound, bound + 1):
                t = g
                for _ in range(abs(k)):
                    t = math.nextafter(t, math.inf if k > 0 else -math.inf)
                tie = fp.near_tie_host(t)
                flagged += tie
                if np.float32(t) != np.float32(g):
                    changed += 1
                    assert tie, (a, g, t)
    print(f"float32 changed by a libdevice-sized error: {changed}; flagged for glibc: {flagged}")
    assert flagged > 0  # the hardest inputs lie inside the window


def _hardest(f, count, chunks=4, chunk=1 << 21):
    """Among ``chunks*chunk`` consecutive float inputs from 0.75 up, the ``count`` whose
    double results ``f(x)`` lie closest to a float32 rounding boundary."""
    best_x, best_d = np.zeros(0), np.zeros(0, np.int64)
    start = int(np.float32(0.75).view(np.int32))
    for c in range(chunks):
        x = (start + c * chunk + np.arange(chunk, dtype=np.int32)).view(np.float32).astype(np.float64)
        bits = f(x).view(np.int64)
        d = np.abs((bits & 0x1FFFFFFF) - 0x10000000)
        keep = np.argsort(d, kind="stable")[:count]
        best_x, best_d = np.concatenate([best_x, x[keep]]), np.concatenate([best_d, d[keep]])
    order = np.argsort(best_d, kind="stable")[:count]
    return best_x[order], best_d[order]


def test_adversarial_inputs_near_float32_ties():
    """Search 2^23 consecutive float inputs of exp(-x) (logistic) and of pow(v, -1.5)
    (variance_delta) for the results closest to a float32 midpoint: the closest fall
    inside the window and are flagged by near_tie (so the device defers them to glibc);
    glibc (math) and numpy's libm are compared on them (printed)."""
    for f_np, f_glibc in ((lambda a: np.exp(-a), lambda a: math.exp(-a)),
                          (lambda a: np.power(a, -1.5), lambda a: math.pow(a, -1.5))):
        worst, distance = _hardest(f_np, 4)
        print("double ulps from a float32 midpoint:", distance)
        assert distance[0] <= fp.TIE_ULPS, distance
        for a, d in zip(worst, distance):
            g = f_glibc(float(a))
            if d <= fp.TIE_ULPS:
                assert fp.near_tie_host(g) and fp.near_tie(g)
            print(f"input {a!r}: glibc {g.hex()}, numpy {float(f_np(np.float64(a))).hex()}")
