"""Activations: darknet's C semantics, fast == reference bitwise, float64 gradient checks."""

import math

import numpy as np
import pytest

from conftest import bits, run_in_cuda_simulator, from_hex
from darkpy.errors import CfgError, DarkpyError
from darkpy.kernels import activations as fast
from darkpy.kernels.reference import activations as ref

NAMES = ["logistic", "relu", "relie", "linear", "ramp", "tanh", "plse", "leaky", "elu", "loggy",
         "stair", "hardtan", "lhtan", "selu"]  # darknet's ACTIVATION enum order


# ----------------------------------------------------------------------------- names and values

def test_enum_values_are_darknets():
    for value, name in enumerate(NAMES):
        assert getattr(ref, name.upper()) == value
        assert getattr(fast, name.upper()) == value
        assert ref.get_activation(name) == value
        assert ref.get_activation_string(value) == name


def test_unknown_activation_name_raises_naming_value_and_choices():
    with pytest.raises(CfgError) as err:
        ref.get_activation("swish")
    assert "swish" in str(err.value)
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_enum_value_is_refused_by_the_array_functions():
    x = np.zeros(4, np.float32)
    for module in (ref, fast):
        with pytest.raises(DarkpyError):
            module.activate_array(x, 4, 14)
        with pytest.raises(DarkpyError):
            module.gradient_array(x, 4, -1, x.copy())
        with pytest.raises(DarkpyError):
            module.activate_array(x, 5, ref.RELU)  # n beyond the buffer
        with pytest.raises(DarkpyError):
            module.activate_array(x.astype(np.float64), 4, ref.RELU)
    # darknet's scalar switch returns 0 for a value outside the enum
    assert ref.activate(np.float32(2), 99) == 0 and ref.gradient(np.float32(2), 99) == 0
    assert ref.get_activation_string(99) == "relu"


# ----------------------------------------------------------------------------- C semantics

# Inputs and the float32 bits of activate(x) and gradient(x) for them, produced by
# compiling darknet's activations.c (f6afaabc) with gcc 12.2 -O2 -ffp-contract=off
# -fno-fast-math on x86-64: an oracle independent of darkpy.
GCC_X = ("ff800000 c3c80000 c0900000 bf800000 bf000000 80000000 00000000 3e99999a 3fc00000 "
         "406ccccd 43c80000 7f800000 7fc00000 000116c2")  # -inf -400 -4.5 -1 -.5 -0 0 .3 1.5 3.7 400 inf nan denormal
GCC = {
    'logistic': ("00000000 00000000 3c340294 3e89b2b1 3ec14d03 3f000000 3f000000 3f130eaa 3f514c90 3f79d2d0 3f800000 3f800000 ffc00000 3f000000",
                 "ff800000 c81ca400 c1c60000 c0000000 bf400000 80000000 00000000 3e570a3e bf400000 c11fd70b c81bdc00 ff800000 7fc00000 000116c2"),
    'relu': ("ffc00000 80000000 80000000 80000000 80000000 80000000 00000000 3e99999a 3fc00000 406ccccd 43c80000 7f800000 7fc00000 000116c2",
             "00000000 00000000 00000000 00000000 00000000 00000000 00000000 3f800000 3f800000 3f800000 3f800000 3f800000 00000000 3f800000"),
    'relie': ("ff800000 c0800000 bd3851ec bc23d70a bba3d70a 80000000 00000000 3e99999a 3fc00000 406ccccd 43c80000 7f800000 7fc00000 000116c2",
              "3c23d70a 3c23d70a 3c23d70a 3c23d70a 3c23d70a 3c23d70a 3c23d70a 3f800000 3f800000 3f800000 3f800000 3f800000 3c23d70a 3f800000"),
    'linear': ("ff800000 c3c80000 c0900000 bf800000 bf000000 80000000 00000000 3e99999a 3fc00000 406ccccd 43c80000 7f800000 7fc00000 000116c2",
               "3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000"),
    'ramp': ("ffc00000 c2200000 bee66666 bdcccccd bd4ccccd 80000000 00000000 3ea8f5c3 3fd33333 40823d71 43dc0000 7f800000 7fc00000 000132a2",
             "3dcccccd 3dcccccd 3dcccccd 3dcccccd 3dcccccd 3dcccccd 3dcccccd 3f8ccccd 3f8ccccd 3f8ccccd 3f8ccccd 3f8ccccd 3dcccccd 3f8ccccd"),
    'tanh': ("bf800000 bf800000 bf7fefd4 bf42f7d6 beec9a9f 00000000 00000000 3e9526ee 3f67b7cc 3f7fafee ffc00000 ffc00000 7fc00000 00000000",
             "ff800000 c81c3fc0 c19a0000 00000000 3f400000 3f800000 3f800000 3f68f5c2 bfa00000 c14b0a3e c81c3fc0 ff800000 7fc00000 3f800000"),
    'plse': ("ff800000 c07d70a4 bba3d70a 3ec00000 3ee00000 3f000000 3f000000 3f09999a 3f300000 3f766666 409eb852 7f800000 7fc00000 3f000000",
             "3c23d70a 3c23d70a 3c23d70a 3c23d70a 3c23d70a 3e000000 3e000000 3e000000 3c23d70a 3c23d70a 3c23d70a 3c23d70a 3e000000 3e000000"),
    'leaky': ("ff800000 c2200000 bee66666 bdcccccd bd4ccccd 80000000 00000000 3e99999a 3fc00000 406ccccd 43c80000 7f800000 7fc00000 000116c2",
              "3dcccccd 3dcccccd 3dcccccd 3dcccccd 3dcccccd 3dcccccd 3dcccccd 3f800000 3f800000 3f800000 3f800000 3f800000 3dcccccd 3f800000"),
    'elu': ("ffc00000 bf800000 bf7d27f6 bf21d2a7 bec974d0 00000000 00000000 3e99999a 3fc00000 406ccccd 43c80000 ffc00000 7fc00000 000116c2",
            "ff800000 c3c78000 c0600000 00000000 3f000000 3f800000 3f800000 3f800000 3f800000 3f800000 3f800000 ffc00000 7fc00000 3f800000"),
    'loggy': ("bf800000 bf800000 bf7a5feb beec9a9f be7acbf5 00000000 00000000 3e187552 3f22991f 3f73a5a0 3f800000 3f800000 ffc00000 00000000",
              "ff800000 c79c3fc0 c11a0000 00000000 3ec00000 3f000000 3f000000 3ee8f5c3 bf200000 c0cb0a3c c79c3fc0 ff800000 7fc00000 3f000000"),
    'stair': ("ff800000 c3480000 c0200000 bf800000 bf000000 80000000 00000000 00000000 3f000000 3fd9999a 43480000 7f800000 7fc00000 00000000",
              "00000000 00000000 3f800000 00000000 3f800000 00000000 00000000 3f800000 3f800000 3f800000 00000000 00000000 3f800000 3f800000"),
    'hardtan': ("bf800000 bf800000 bf800000 bf800000 bf000000 80000000 00000000 3e99999a 3f800000 3f800000 3f800000 3f800000 7fc00000 000116c2",
                "00000000 00000000 00000000 00000000 3f800000 3f800000 3f800000 3f800000 00000000 00000000 00000000 00000000 00000000 3f800000"),
    'lhtan': ("ff800000 becccccd bb9374bc ba83126f ba03126f 80000000 00000000 3e99999a 3f801062 3f805879 3fb3126f 7f800000 7fc00000 000116c2",
              "3a83126f 3a83126f 3a83126f 3a83126f 3a83126f 3a83126f 3a83126f 3f800000 3a83126f 3a83126f 3a83126f 3a83126f 3a83126f 3f800000"),
    'selu': ("ffc00000 bfe1072b bfde8736 bf8e3ead bf31154f 00000000 00000000 3ea16335 3fc9bc02 4078ce46 43d223d7 ffc00000 7fc00000 000124e4",
             "ff800000 c3c71ef9 c02f7c6b 3f420e56 3fa1072b 3f867d56 3f867d56 3f867d56 3f867d56 3f867d56 3f867d56 ffc00000 7fc00000 3f867d56"),
}


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
@pytest.mark.parametrize("name", NAMES)
def test_bits_match_gcc_compiled_darknet(module, name):
    x = from_hex(GCC_X)
    want_act, want_grad = (from_hex(s) for s in GCC[name])
    a = ref.get_activation(name)
    y = x.copy()
    module.activate_array(y, len(y), a)
    assert np.array_equal(bits(y), bits(want_act)), name
    delta = np.ones_like(x)
    module.gradient_array(x, len(x), a, delta)
    assert np.array_equal(bits(delta), bits(want_grad)), name
    for i in range(len(x)):  # the scalar switch agrees with the array loop
        assert bits(ref.activate(x[i], a)) == bits(want_act[i])
        assert bits(ref.gradient(x[i], a)) == bits(want_grad[i])


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_gradient_multiplies_even_by_one(module):
    """darknet multiplies delta by linear's gradient 1, which quiets a signalling NaN (gcc-checked);
    activate_array with linear leaves x as it is."""
    snan = np.array([0x7f800001, 0xff800001, 0x7fc00001, 0x7fa00000], np.uint32).view(np.float32)
    delta = snan.copy()
    module.gradient_array(np.ones(4, np.float32), 4, ref.LINEAR, delta)
    assert [hex(v) for v in bits(delta)] == ["0x7fc00001", "0xffc00001", "0x7fc00001", "0x7fe00000"]
    x = snan.copy()
    module.activate_array(x, 4, ref.LINEAR)
    assert np.array_equal(bits(x), bits(snan))


def test_c_promotions_are_visible():
    """Each promotion changes bits for some input: the kernels follow C, not a float-only version."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(20000) * 3).astype(np.float32)
    neg = x[x < 0]
    # leaky: .1*x in double then rounded, not .1f*x
    leaky = neg.copy()
    ref.activate_array(leaky, len(leaky), ref.LEAKY)
    as_double = (np.float64(.1) * neg.astype(np.float64)).astype(np.float32)
    as_float = np.float32(.1) * neg
    assert np.array_equal(bits(leaky), bits(as_double))
    assert not np.array_equal(bits(leaky), bits(as_float))
    # logistic: exp in double; expf-based float logistic differs somewhere
    y = x.copy()
    ref.activate_array(y, len(y), ref.LOGISTIC)
    as_double = (1. / (1. + np.exp(-x.astype(np.float64)))).astype(np.float32)
    as_float = np.float32(1) / (np.float32(1) + np.exp(-x))
    assert np.array_equal(bits(y), bits(as_double))
    assert not np.array_equal(bits(y), bits(as_float))
    # tanh: 2*x is a float product that overflows before exp sees it, giving NaN
    assert math.isnan(ref.activate(np.float32(3e38), ref.TANH))
    assert ref.activate(np.float32(-3e38), ref.TANH) == -1
    # relu: a negative input gives -0.0 (x*0), -inf gives NaN
    assert bits(ref.activate(np.float32(-2), ref.RELU)) == 0x80000000
    assert math.isnan(ref.activate(np.float32(-np.inf), ref.RELU))


def test_stair_out_of_int_range_takes_the_even_branch():
    """(int)floor(x) on x86-64 is INT_MIN (even) for NaN, inf and |x| >= 2**31."""
    for v in (3e9, -3e9, 2.0 ** 31, 1e30):
        x = np.float32(v)
        assert ref.activate(x, ref.STAIR) == np.float32(math.floor(float(x) / 2.))
    # odd n: (x - n) in float plus floor(x/2.)
    assert ref.activate(np.float32(3.25), ref.STAIR) == np.float32(1.25)
    assert ref.activate(np.float32(-2.5), ref.STAIR) == np.float32(-1.5)


# ----------------------------------------------------------------------------- fast == reference

def _inputs(rng, n):
    parts = [rng.standard_normal(n).astype(np.float32) * s for s in (1, 4, 60)]
    parts.append(rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32))
    special = [0., -0., np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-39, -1e-39, 3.4e38, -3.4e38,
               2. ** 31, -2. ** 31, 354.9, 355., -88.7, 88.7]
    near = []
    for b in (-4, -1, 0, 1, 2, 3, 4, 0.5, -0.5, -2, -3, 44.4, 1e-3):
        v = np.float32(b)
        near += [v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))]
    parts.append(np.array(special + near, np.float32))
    x = np.concatenate(parts).astype(np.float32)
    return x[rng.permutation(len(x))]


@pytest.mark.parametrize("name", NAMES)
def test_fast_equals_reference_bitwise(name):
    rng = np.random.default_rng(NAMES.index(name))
    a = ref.get_activation(name)
    x = _inputs(rng, 250)
    y_ref, y_fast = x.copy(), x.copy()
    ref.activate_array(y_ref, len(x) - 3, a)  # n shorter than the buffer: the tail is untouched
    fast.activate_array(y_fast, len(x) - 3, a)
    assert np.array_equal(bits(y_ref), bits(y_fast))
    assert np.array_equal(bits(y_ref[-3:]), bits(x[-3:]))
    delta = _inputs(rng, 250)[:len(x)]
    d_ref, d_fast = delta.copy(), delta.copy()
    ref.gradient_array(x, len(x), a, d_ref)
    fast.gradient_array(x, len(x), a, d_fast)
    assert np.array_equal(bits(d_ref), bits(d_fast))


@pytest.mark.parametrize("name", NAMES)
def test_parallel_chunks_equal_reference_bitwise(name):
    """The chunked parallel loops, called directly (n not a multiple of the chunk)."""
    rng = np.random.default_rng(100 + NAMES.index(name))
    a = ref.get_activation(name)
    x = _inputs(rng, (3 * fast.CHUNK) // 4)
    n = len(x) - 5
    y_ref, y_par = x.copy(), x.copy()
    ref.activate_array(y_ref, n, a)
    fast.activate_array_parallel(y_par, n, a)
    assert np.array_equal(bits(y_ref), bits(y_par))
    delta = _inputs(rng, (3 * fast.CHUNK) // 4)[:len(x)]
    d_ref, d_par = delta.copy(), delta.copy()
    ref.gradient_array(x, n, a, d_ref)
    fast.gradient_array_parallel(x, n, a, d_par)
    assert np.array_equal(bits(d_ref), bits(d_par))


@pytest.mark.parametrize("name", ["logistic", "leaky", "relu", "tanh", "stair"])
@pytest.mark.parametrize("kernel", ["dispatch", "serial", "parallel"])
def test_activate_spans_equals_reference_span_by_span(name, kernel):
    """Several separate runs of one buffer (yolo's layout), with gaps left untouched; the
    parallel kernel cuts spans longer than a chunk into chunks."""
    rng = np.random.default_rng(200 + NAMES.index(name))
    a = ref.get_activation(name)
    x = _inputs(rng, fast.CHUNK)
    starts = np.array([3, 40, 41, 900, 2 * fast.CHUNK + 1, 100], np.int64)
    counts = np.array([30, 0, 50, 2 * fast.CHUNK - 899, 11, 700], np.int64)  # unsorted, one empty
    want = x.copy()
    ref.activate_spans(want, starts, counts, a)   # darknet's calls, one span at a time
    got = x.copy()
    {"dispatch": fast.activate_spans, "serial": fast.activate_spans_serial,
     "parallel": fast.activate_spans_parallel}[kernel](got, starts, counts, a)
    assert np.array_equal(bits(want), bits(got))
    assert not np.array_equal(bits(want), bits(x))


def test_activate_spans_refuses_overlap_and_outside():
    x = np.zeros(100, np.float32)
    with pytest.raises(DarkpyError, match="overlap"):
        fast.activate_spans(x, np.array([0, 10]), np.array([20, 5]), ref.LEAKY)
    with pytest.raises(DarkpyError, match="overlap"):
        fast.activate_spans(x, np.array([50, 0, 60]), np.array([5, 60, 1]), ref.LEAKY)
    fast.activate_spans(x, np.array([0, 10, 20]), np.array([20, 0, 5]), ref.LEAKY)  # empty: no overlap
    with pytest.raises(DarkpyError, match="outside"):
        fast.activate_spans(x, np.array([90]), np.array([11]), ref.LEAKY)
    with pytest.raises(DarkpyError, match="outside"):
        fast.activate_spans(x, np.array([-1]), np.array([2]), ref.LEAKY)
    with pytest.raises(DarkpyError):
        fast.activate_spans(x, np.array([0]), np.array([2]), 99)


# ----------------------------------------------------------------------------- float64 gradient checks

A64 = 1.0507 * 1.6732


def _stair64(x):
    n = math.floor(x)
    return math.floor(x / 2.) if n % 2 == 0 else (x - n) + math.floor(x / 2.)


#: float64 twins: (f(x), darknet's gradient as a function of y = f(x))
TWINS = {
    "logistic": (lambda x: 1. / (1. + math.exp(-x)), lambda y: (1 - y) * y),
    "loggy": (lambda x: 2. / (1. + math.exp(-x)) - 1, lambda y: 2 * (1 - (y + 1) / 2) * ((y + 1) / 2)),
    "relu": (lambda x: x * (x > 0), lambda y: float(y > 0)),
    "relie": (lambda x: x if x > 0 else .01 * x, lambda y: 1. if y > 0 else .01),
    "linear": (lambda x: x, lambda y: 1.),
    "ramp": (lambda x: x * (x > 0) + .1 * x, lambda y: (y > 0) + .1),
    "tanh": (lambda x: (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1), lambda y: 1 - y * y),
    "plse": (lambda x: .01 * (x + 4) if x < -4 else (.01 * (x - 4) + 1 if x > 4 else .125 * x + .5),
             lambda y: .01 if (y < 0 or y > 1) else .125),
    "leaky": (lambda x: x if x > 0 else .1 * x, lambda y: 1. if y > 0 else .1),
    "elu": (lambda x: x if x >= 0 else math.exp(x) - 1, lambda y: 1. if y >= 0 else y + 1),
    "selu": (lambda x: 1.0507 * x if x >= 0 else A64 * (math.exp(x) - 1),
             lambda y: 1.0507 if y >= 0 else y + A64),
    "stair": (_stair64, lambda y: 0. if math.floor(y) == y else 1.),
    "hardtan": (lambda x: -1. if x < -1 else (1. if x > 1 else x), lambda y: 1. if -1 < y < 1 else 0.),
    "lhtan": (lambda x: .001 * x if x < 0 else (.001 * (x - 1) + 1 if x > 1 else x),
              lambda y: 1. if 0 < y < 1 else .001),
}

#: where each activation has a kink or a step (central differences are not taken within 1e-3 of these)
KINKS = {"relu": [0], "relie": [0], "ramp": [0], "leaky": [0], "plse": [-4, 4], "hardtan": [-1, 1],
         "lhtan": [0, 1], "selu": [0], "stair": list(range(-8, 9))}


@pytest.mark.parametrize("name", NAMES)
def test_gradient_of_output_is_the_derivative(name):
    """Central differences of the float64 twin agree with darknet's gradient(f(x)) off the kinks,
    and darknet's float32 gradient agrees with the float64 twin's."""
    f, g = TWINS[name]
    a = ref.get_activation(name)
    rng = np.random.default_rng(NAMES.index(name))
    xs = rng.uniform(-7, 7, 400)
    xs = [x for x in xs if all(abs(x - k) > 1e-3 for k in KINKS.get(name, []))]
    h = 1e-6
    for x in xs:
        numeric = (f(x + h) - f(x - h)) / (2 * h)
        analytic = g(f(x))
        assert abs(numeric - analytic) <= 1e-6 * max(1., abs(analytic)), (name, x, numeric, analytic)
        # darkpy's float32 kernels against the twin
        x32 = np.float32(x)
        y32 = ref.activate(x32, a)
        assert abs(float(y32) - f(float(x32))) <= 2e-7 * max(1., abs(f(float(x32)))), (name, x)
        g32 = ref.gradient(y32, a)
        assert abs(float(g32) - g(float(y32))) <= 1e-6 * max(1., abs(g(float(y32)))), (name, x)


#: Where darknet's gradient is NOT the derivative: at kinks it returns one one-sided slope
#: (name, x, darknet's gradient at y=f(x), left slope, right slope).
ONE_SIDED = [
    ("relu", 0., 0., 0., 1.),
    ("leaky", 0., .1, .1, 1.),
    ("relie", 0., .01, .01, 1.),
    ("ramp", 0., .1, .1, 1.1),
    ("selu", 0., 1.0507, A64, 1.0507),
    ("hardtan", -1., 0., 0., 1.),
    ("hardtan", 1., 0., 1., 0.),
    ("lhtan", 0., .001, .001, 1.),
    ("lhtan", 1., .001, 1., .001),
    ("plse", -4., .125, .01, .125),
    ("plse", 4., .125, .125, .01),
    ("stair", 2., 0., 1., 0.),
    ("stair", 3., 0., 0., 1.),  # stair's gradient is 0 wherever its output is an integer
]


@pytest.mark.parametrize("name,x,dk,left,right", ONE_SIDED)
def test_gradients_at_kinks_are_one_sided(name, x, dk, left, right):
    f, g = TWINS[name]
    h = 1e-7
    assert abs((f(x) - f(x - h)) / h - left) < 1e-6
    assert abs((f(x + h) - f(x)) / h - right) < 1e-6
    assert left != right
    assert g(f(x)) == dk
    y = ref.activate(np.float32(x), ref.get_activation(name))
    assert ref.gradient(y, ref.get_activation(name)) == np.float32(dk)


# ----------------------------------------------------------------------------- CUDA twins (simulator)

CUDA_SIM_SCRIPT = r"""
import numpy as np
from darkpy.kernels import activations_cuda as C
from darkpy.kernels.reference import activations as R
rng = np.random.default_rng(0)
x = np.concatenate([rng.standard_normal(60).astype(np.float32) * 5,
                    np.array([0, -0., np.inf, -np.inf, np.nan, 1e-40, 3e38, -3e38, 3e9, -2.5, 3.25, 400,
                              -400, -4, 4, 1, -1], np.float32),
                    rng.integers(0, 2**32, 30, dtype=np.uint64).astype(np.uint32).view(np.float32)])
bad = []
for a in range(14):
    y, yr = x.copy(), x.copy()
    C.activate_array_gpu(y, len(y) - 1, a)
    R.activate_array(yr, len(yr) - 1, a)
    d = rng.standard_normal(len(x)).astype(np.float32)
    dr = d.copy()
    C.gradient_array_gpu(x, len(x), a, d)
    R.gradient_array(x, len(x), a, dr)
    for name, u, v in (("activate", y, yr), ("gradient", d, dr)):
        if not np.array_equal(u.view(np.uint32), v.view(np.uint32)):
            bad.append((R.get_activation_string(a), name))
print("MISMATCH" if bad else "BITWISE", bad)
"""


def test_cuda_twins_equal_reference_in_the_simulator():
    """activations_cuda under NUMBA's CUDA simulator equals the reference bitwise."""
    out = run_in_cuda_simulator(CUDA_SIM_SCRIPT)
    assert out.startswith("BITWISE"), out
