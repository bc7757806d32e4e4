"""Fast ``activate_array`` / ``gradient_array``, bit-identical to darknet's ``activations.c``.

The per-element arithmetic is the reference's scalar functions
(``darkpy.kernels.reference.activations``: each mirrors one inline function of
darknet's ``activations.h`` with its C promotions); what changes is the loop:

* darknet switches on the activation for every element; here the switch is
  taken once and each activation has its own tight loop, which LLVM inlines
  and vectorises (the branches become selects, which changes no value; each
  lane does the scalar's operations in the scalar's order).  The loops index
  with unsigned integers (``U``): with signed ones Numba's negative-index
  wraparound test stays in the loop and LLVM does not vectorise it;
* ``leaky`` and ``relie`` (``x > 0 ? x : k*x`` with a double ``k``) are written
  as explicit ``<8 x float>`` steps (``_scale_nonpositive8``): left to itself
  LLVM stores only the changed lanes with ``vmaskmovps``, which is slow on AMD
  (~4x here); the vector is widened to double, multiplied, rounded back,
  blended and stored whole;
* elements are independent, so long arrays are split into chunks run in
  parallel (``prange``); each element still gets exactly one evaluation of the
  same formula, so the bits cannot depend on the split.

The enum values, ``get_activation``, ``get_activation_string``, ``activate`` and
``gradient`` are the reference's (one definition of the formulas).
"""

import numpy as np
from llvmlite import binding as llvm, ir
from numba import prange, types
from numba.extending import intrinsic

from darkpy.errors import DarkpyError
from darkpy.kernels import kernel, pkernel
from darkpy.kernels.reference.nan import first_nan
from darkpy.kernels.reference.activations import (  # noqa: F401  (re-exported API)
    ACTIVATIONS, ELU, HARDTAN, LEAKY, LHTAN, LINEAR, LOGGY, LOGISTIC, PLSE, RAMP, RELIE, RELU,
    SELU, STAIR, TANH, activate, check_activation, check_array, elu_activate, elu_gradient,
    get_activation, get_activation_string, gradient, hardtan_activate, hardtan_gradient,
    leaky_activate, leaky_gradient, lhtan_activate, lhtan_gradient, logistic_activate,
    logistic_gradient, loggy_activate, loggy_gradient, plse_activate, plse_gradient,
    ramp_activate, ramp_gradient, relie_activate, relie_gradient, relu_activate, relu_gradient,
    selu_activate, selu_gradient, stair_activate, stair_gradient, tanh_activate, tanh_gradient)

#: Below this many elements one thread does the whole array.  The activations that call
#: ``exp`` cost ~6-30 ns an element and gain from threads early; the others are a vectorised
#: pass limited by memory bandwidth, where threads only pay off on very large arrays
#: (leaky on yolov3-tiny's largest output, 2.77M floats: ~0.57 ms on one thread, ~0.47 ms
#: on two when the second core is idle, several ms when it is busy).
PARALLEL_MIN = 1 << 17
PARALLEL_MIN_CHEAP = 1 << 23
_EXPENSIVE = (LOGISTIC, LOGGY, TANH, ELU, SELU)
#: Elements per parallel chunk.
CHUNK = 1 << 13


def _parallel(n, a):
    return n >= (PARALLEL_MIN if a in _EXPENSIVE else PARALLEL_MIN_CHEAP)


#: Loop indices are unsigned (no negative-index wraparound test in the loop body).
U = np.uint64
#: Lanes of one vector step.
LANES = 8
_F8 = ir.VectorType(ir.FloatType(), LANES)
_D8 = ir.VectorType(ir.DoubleType(), LANES)
_X86 = llvm.get_process_triple().startswith(("x86_64", "i686", "i386"))


@intrinsic
def _scale_nonpositive8(typingctx, x, i, k):
    """``x[i:i+8]``, lane-wise, becomes ``x > 0 ? x : (float)(k * (double)x)`` (``k`` a float64).

    That is ``leaky_activate`` (k = .1) and ``relie_activate`` (k = .01): C's ternary
    has type double, so ``x`` is widened, multiplied by the double ``k`` and rounded to
    float once; the ``x > 0`` arm gives ``x`` back unchanged (widening and rounding a
    float that is > 0 is exact).  The comparison is ordered, so NaN takes the multiply
    arm, which quiets a signalling NaN exactly as the scalar ``cvtss2sd`` does.
    """
    if not (isinstance(x, types.Array) and x.dtype == types.float32 and x.ndim == 1
            and x.layout == "C" and isinstance(i, types.Integer) and k == types.float64):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        index = context.cast(builder, args[1], sig.args[1], types.intp)
        ptr = builder.bitcast(builder.gep(ary.data, [index]), _F8.as_pointer())
        v = builder.load(ptr, align=4, typ=_F8)
        kv = builder.insert_element(ir.Constant(_D8, ir.Undefined), args[2], ir.Constant(ir.IntType(32), 0))
        kv = builder.shuffle_vector(kv, ir.Constant(_D8, ir.Undefined),
                                    ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))
        scaled = builder.fptrunc(builder.fmul(kv, builder.fpext(v, _D8)), _F8)
        positive = builder.fcmp_ordered(">", v, ir.Constant(_F8, [0.0] * LANES))
        result = builder.select(positive, v, scaled)
        if _X86:
            # an empty asm statement hides that the kept lanes equal memory: LLVM's x86
            # backend would otherwise store only the scaled lanes with a (slow) masked store
            result = builder.asm(ir.FunctionType(_F8, [_F8]), "", "=x,0", [result], False)
        builder.store(result, ptr, align=4)
        return context.get_dummy_value()

    return types.none(x, i, k), codegen


@kernel
def _scale_nonpositive_range(x, lo, hi, k):
    """``x[i] = x[i] > 0 ? x[i] : (float)(k * x[i])`` for lo <= i < hi: eight at a time, then the tail."""
    i = lo
    while i + LANES <= hi:
        _scale_nonpositive8(x, U(i), k)
        i += LANES
    for i in range(U(i), U(hi)):
        v = x[i]
        if not v > 0:
            x[i] = np.float32(k * np.float64(v))


@kernel
def activate_range(x, lo, hi, a):
    """``x[i] = activate(x[i], a)`` for lo <= i < hi, one loop per activation."""
    if a == LINEAR:
        return  # darknet's linear_activate returns x: nothing changes
    if a == LOGISTIC:
        for i in range(U(lo), U(hi)):
            x[i] = logistic_activate(x[i])
    elif a == LOGGY:
        for i in range(U(lo), U(hi)):
            x[i] = loggy_activate(x[i])
    elif a == RELU:
        for i in range(U(lo), U(hi)):
            x[i] = relu_activate(x[i])
    elif a == ELU:
        for i in range(U(lo), U(hi)):
            x[i] = elu_activate(x[i])
    elif a == SELU:
        for i in range(U(lo), U(hi)):
            x[i] = selu_activate(x[i])
    elif a == RELIE:  # relie_activate, eight at a time
        _scale_nonpositive_range(x, lo, hi, .01)
    elif a == RAMP:
        for i in range(U(lo), U(hi)):
            x[i] = ramp_activate(x[i])
    elif a == LEAKY:  # leaky_activate, eight at a time
        _scale_nonpositive_range(x, lo, hi, .1)
    elif a == TANH:
        for i in range(U(lo), U(hi)):
            x[i] = tanh_activate(x[i])
    elif a == PLSE:
        for i in range(U(lo), U(hi)):
            x[i] = plse_activate(x[i])
    elif a == STAIR:
        for i in range(U(lo), U(hi)):
            x[i] = stair_activate(x[i])
    elif a == HARDTAN:
        for i in range(U(lo), U(hi)):
            x[i] = hardtan_activate(x[i])
    elif a == LHTAN:
        for i in range(U(lo), U(hi)):
            x[i] = lhtan_activate(x[i])
    else:  # darknet's activate returns 0 for a value outside the enum
        for i in range(U(lo), U(hi)):
            x[i] = np.float32(0)


@kernel
def gradient_range(x, lo, hi, a, delta):
    """``delta[i] *= gradient(x[i], a)`` for lo <= i < hi, one loop per activation.

    gcc multiplies the gradient by ``delta[i]`` with the gradient as first source, so where
    both are NaN the gradient's NaN survives: pinned with ``first_nan`` for the activations
    whose gradient can be NaN (logistic, loggy, elu, selu, tanh); the others' gradients
    never are, so delta's NaN wins whatever the order."""
    if a == LOGISTIC:
        for i in range(U(lo), U(hi)):
            g = logistic_gradient(x[i])
            delta[i] = first_nan(g, g * delta[i])
    elif a == LOGGY:
        for i in range(U(lo), U(hi)):
            g = loggy_gradient(x[i])
            delta[i] = first_nan(g, g * delta[i])
    elif a == RELU:
        for i in range(U(lo), U(hi)):
            delta[i] *= relu_gradient(x[i])
    elif a == ELU:
        for i in range(U(lo), U(hi)):
            g = elu_gradient(x[i])
            delta[i] = first_nan(g, g * delta[i])
    elif a == SELU:
        for i in range(U(lo), U(hi)):
            g = selu_gradient(x[i])
            delta[i] = first_nan(g, g * delta[i])
    elif a == RELIE:
        for i in range(U(lo), U(hi)):
            delta[i] *= relie_gradient(x[i])
    elif a == RAMP:
        for i in range(U(lo), U(hi)):
            delta[i] *= ramp_gradient(x[i])
    elif a == LEAKY:
        for i in range(U(lo), U(hi)):
            delta[i] *= leaky_gradient(x[i])
    elif a == TANH:
        for i in range(U(lo), U(hi)):
            g = tanh_gradient(x[i])
            delta[i] = first_nan(g, g * delta[i])
    elif a == PLSE:
        for i in range(U(lo), U(hi)):
            delta[i] *= plse_gradient(x[i])
    elif a == STAIR:
        for i in range(U(lo), U(hi)):
            delta[i] *= stair_gradient(x[i])
    elif a == HARDTAN:
        for i in range(U(lo), U(hi)):
            delta[i] *= hardtan_gradient(x[i])
    elif a == LHTAN:
        for i in range(U(lo), U(hi)):
            delta[i] *= lhtan_gradient(x[i])
    else:
        # LINEAR (and values outside the enum, gradient 0).  darknet really multiplies
        # by linear_gradient's 1, which quiets a signalling NaN in delta; a literal
        # ``*= 1`` would be folded away by LLVM, so the factor comes from the
        # runtime switch.
        for i in range(U(lo), U(hi)):
            delta[i] *= gradient(x[i], a)


@pkernel
def activate_array_parallel(x, n, a):
    """``activate_range`` over chunks of ``CHUNK`` elements, in parallel."""
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks):
        activate_range(x, c * CHUNK, min(n, (c + 1) * CHUNK), a)


@pkernel
def gradient_array_parallel(x, n, a, delta):
    """``gradient_range`` over chunks of ``CHUNK`` elements, in parallel."""
    nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks):
        gradient_range(x, c * CHUNK, min(n, (c + 1) * CHUNK), a, delta)


def activate_array(x, n, a):
    """darknet's ``activate_array(x, n, a)``: activate ``x[:n]`` in place."""
    check_array("x", x, n)
    a = check_activation(a)
    n = int(n)
    if _parallel(n, a):
        activate_array_parallel(x, n, a)
    else:
        activate_range(x, 0, n, a)


def gradient_array(x, n, a, delta):
    """darknet's ``gradient_array(x, n, a, delta)``: ``delta[:n] *= gradient(x[:n], a)`` in place."""
    check_array("x", x, n)
    check_array("delta", delta, n)
    a = check_activation(a)
    n = int(n)
    if n >= PARALLEL_MIN_CHEAP:  # no gradient calls exp
        gradient_array_parallel(x, n, a, delta)
    else:
        gradient_range(x, 0, n, a, delta)


_SPAN_OUTSIDE = 1
_SPANS_OVERLAP = 2


@kernel
def _check_spans(starts, counts, n):
    """(status, total count): 0, ``_SPAN_OUTSIDE`` or ``_SPANS_OVERLAP`` for spans in ``[0, n)``."""
    total = 0
    for s in range(starts.shape[0]):
        if starts[s] < 0 or counts[s] < 0 or starts[s] + counts[s] > n:
            return _SPAN_OUTSIDE, total
        total += counts[s]
    end = 0  # the end of the spans so far, in order of their starts (empty spans hold nothing)
    for s in np.argsort(starts):
        if counts[s] > 0:
            if starts[s] < end:
                return _SPANS_OVERLAP, total
            end = starts[s] + counts[s]
    return 0, total


@kernel
def activate_spans_serial(x, starts, counts, a):
    """``activate_range`` over ``x[starts[s] : starts[s] + counts[s]]`` for each span s, in order."""
    for s in range(starts.shape[0]):
        activate_range(x, starts[s], starts[s] + counts[s], a)


@pkernel
def activate_spans_parallel(x, starts, counts, a):
    """The spans cut into chunks of ``CHUNK`` elements, all chunks of all spans in parallel.

    The spans must not overlap (``activate_spans`` checks): then every element
    belongs to exactly one chunk and is activated once, as in the serial loop.
    """
    nspans = starts.shape[0]
    first = np.empty(nspans + 1, np.int64)  # first[s]: the number of chunks before span s
    first[0] = 0
    for s in range(nspans):
        first[s + 1] = first[s] + (counts[s] + CHUNK - 1) // CHUNK
    for t in prange(first[nspans]):
        s = np.searchsorted(first, t, side="right") - 1
        lo = starts[s] + (t - first[s]) * CHUNK
        activate_range(x, lo, min(starts[s] + counts[s], lo + CHUNK), a)


def activate_spans(x, starts, counts, a):
    """``activate_array(x[starts[s]:], counts[s], a)`` for every span s, as one job.

    For layers that activate several separate runs of one buffer (yolo's x, y,
    objectness and classes of every anchor): the runs are shared among threads
    together when their total is large enough, instead of one small call each.
    ``starts``/``counts`` are int64 arrays; the spans must lie in ``x`` and not overlap.
    """
    a = check_activation(a)
    starts = np.ascontiguousarray(starts, np.int64)
    counts = np.ascontiguousarray(counts, np.int64)
    if starts.shape != counts.shape or starts.ndim != 1:
        raise DarkpyError(f"starts {starts.shape} and counts {counts.shape} must be equal 1-D shapes")
    check_array("x", x, 0)
    status, total = _check_spans(starts, counts, x.shape[0])
    if status == _SPAN_OUTSIDE:
        raise DarkpyError(f"a span lies outside x ({x.shape[0]} floats)")
    if status == _SPANS_OVERLAP:
        raise DarkpyError("activate_spans: the spans overlap")
    if _parallel(total, a):
        activate_spans_parallel(x, starts, counts, a)
    else:
        activate_spans_serial(x, starts, counts, a)
