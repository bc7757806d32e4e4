"""darknet's activations (``activations.c`` and the inline functions of ``activations.h``).

The oracle of ``darkpy.kernels.activations``: one scalar function per
activation and per gradient, written with exactly the C types darknet's
expressions have.  ``x`` is always a ``float`` (float32) argument and every
function returns a ``float``, so a double intermediate is rounded to float32
once, on return.  The promotions copied from C, activation by activation:

* float only: ``linear``, ``hardtan``, ``relu`` (``x*(x>0)``: the int becomes a
  float 0 or 1, so a negative input gives -0.0 and -inf gives NaN).
* double, rounded on return: ``logistic`` and ``loggy`` (``exp`` of a double,
  double literals 1. and 2.), ``leaky`` / ``relie`` (``.1*x`` / ``.01*x``:
  the ternary's type is double), ``ramp`` (float ``x*(x>0)`` plus double
  ``.1*x``), ``elu`` (float ``(x>=0)*x`` plus double ``(x<0)*(exp(x)-1)``),
  ``selu`` (all double), ``plse`` and ``lhtan`` (double literals applied to a
  float ``x+4`` / ``x-4`` / ``x-1``).
* ``tanh``: ``2*x`` is a float product (it overflows to inf in float), then
  ``(exp(2x)-1)/(exp(2x)+1)`` in double: NaN once exp overflows (x > ~354.9).
* ``stair``: ``int n = floor(x)`` converts a double to int; x86-64's
  ``cvttsd2si`` gives INT_MIN for NaN, +-inf and anything outside int range,
  which is even, so those inputs take the ``floor(x/2.)`` branch.  The odd
  branch computes ``(x - (float)n)`` in float and adds the double ``floor``.

Gradients are functions of the activation's OUTPUT (darknet stores only the
output), again with C's types: ``logistic`` ``(1-x)*x`` and ``tanh`` ``1-x*x``
in float, ``loggy`` rounds ``y = (x+1.)/2.`` to float then ``2*(1-y)*y`` in
float, ``selu`` and ``ramp`` are double rounded on return, constants such as
``.1``, ``.01``, ``.001`` are returned as float32.
"""

import numpy as np

from darkpy.errors import CfgError, DarkpyError
from darkpy.kernels import kernel
from darkpy.kernels.reference.nan import first_nan

# darknet's ``ACTIVATION`` enum (include/darknet.h), same order, same values.
LOGISTIC = 0
RELU = 1
RELIE = 2
LINEAR = 3
RAMP = 4
TANH = 5
PLSE = 6
LEAKY = 7
ELU = 8
LOGGY = 9
STAIR = 10
HARDTAN = 11
LHTAN = 12
SELU = 13

#: cfg name -> enum value, for every activation darknet's ``get_activation`` knows.
ACTIVATIONS = {
    "logistic": LOGISTIC, "loggy": LOGGY, "relu": RELU, "elu": ELU, "selu": SELU,
    "relie": RELIE, "plse": PLSE, "hardtan": HARDTAN, "lhtan": LHTAN, "linear": LINEAR,
    "ramp": RAMP, "leaky": LEAKY, "tanh": TANH, "stair": STAIR,
}
_NAMES = {value: name for name, value in ACTIVATIONS.items()}

_INT_MIN = -2147483648


def get_activation(s):
    """darknet's ``get_activation``: the enum value of activation name ``s``.

    darknet prints a warning and falls back to RELU for an unknown name; we raise
    ``CfgError`` naming the value and the valid names instead.
    """
    try:
        return ACTIVATIONS[s]
    except (KeyError, TypeError):
        raise CfgError(f"unknown activation {s!r}: expected one of "
                       f"{', '.join(ACTIVATIONS)}") from None


def get_activation_string(a):
    """darknet's ``get_activation_string``: the cfg name of enum value ``a`` ("relu" if unknown)."""
    return _NAMES.get(a, "relu")


def check_activation(a):
    """Raise ``DarkpyError`` unless ``a`` is one of darknet's ACTIVATION values; return it as int."""
    if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)) or int(a) not in _NAMES:
        raise DarkpyError(f"unknown activation value {a!r}: expected an ACTIVATION enum value 0..13")
    return int(a)


def check_array(name, x, n):
    """Raise ``DarkpyError`` unless ``x`` is a 1-D float32 array holding at least ``n`` floats."""
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 1):
        raise DarkpyError(f"{name} must be a 1-D float32 array, got "
                          f"{getattr(x, 'dtype', type(x).__name__)} with shape {getattr(x, 'shape', None)}")
    if n < 0 or x.shape[0] < n:
        raise DarkpyError(f"{name} holds {x.shape[0]} floats, n={n}")


# ---------------------------------------------------------------- activations

@kernel
def stair_activate(x):
    """``stair_activate``: ``n = (int)floor(x)``; even n: ``floor(x/2.)``, odd: ``(x-n) + floor(x/2.)``."""
    fl = np.floor(np.float64(x))
    if fl >= -2147483648.0 and fl < 2147483648.0:
        n = int(fl)
    else:  # cvttsd2si's "integer indefinite" for NaN, inf and out-of-range values
        n = _INT_MIN
    if n % 2 == 0:
        return np.float32(np.floor(np.float64(x) / 2.))
    return np.float32(np.float64(x - np.float32(n)) + np.floor(np.float64(x) / 2.))


@kernel
def hardtan_activate(x):
    """``hardtan_activate``: clamp to [-1, 1] by float comparisons (NaN passes through)."""
    if x < np.float32(-1):
        return np.float32(-1)
    if x > np.float32(1):
        return np.float32(1)
    return x


@kernel
def linear_activate(x):
    """``linear_activate``: ``x``."""
    return x


@kernel
def logistic_activate(x):
    """``logistic_activate``: ``1./(1. + exp(-x))`` in double, rounded to float."""
    return np.float32(1. / (1. + np.exp(np.float64(-x))))


@kernel
def loggy_activate(x):
    """``loggy_activate``: ``2./(1. + exp(-x)) - 1`` in double, rounded to float."""
    return np.float32(2. / (1. + np.exp(np.float64(-x))) - 1.)


@kernel
def relu_activate(x):
    """``relu_activate``: ``x*(x>0)`` in float (-0.0 for a negative x, NaN for -inf)."""
    return x * np.float32(x > 0)


@kernel
def elu_activate(x):
    """``elu_activate``: float ``(x>=0)*x`` plus double ``(x<0)*(exp(x)-1)``, rounded to float."""
    return np.float32(np.float64(np.float32(x >= 0) * x)
                      + np.float64(x < 0) * (np.exp(np.float64(x)) - 1.))


@kernel
def selu_activate(x):
    """``selu_activate``: ``(x>=0)*1.0507*x + (x<0)*1.0507*1.6732*(exp(x)-1)``, all double."""
    return np.float32(np.float64(x >= 0) * 1.0507 * np.float64(x)
                      + np.float64(x < 0) * 1.0507 * 1.6732 * (np.exp(np.float64(x)) - 1.))


@kernel
def relie_activate(x):
    """``relie_activate``: ``x`` if x > 0 else ``.01*x`` (double), rounded to float."""
    if x > 0:
        return x
    return np.float32(.01 * np.float64(x))


@kernel
def ramp_activate(x):
    """``ramp_activate``: float ``x*(x>0)`` plus double ``.1*x``, rounded to float."""
    return np.float32(np.float64(x * np.float32(x > 0)) + .1 * np.float64(x))


@kernel
def leaky_activate(x):
    """``leaky_activate``: ``x`` if x > 0 else ``.1*x`` (double), rounded to float."""
    if x > 0:
        return x
    return np.float32(.1 * np.float64(x))


@kernel
def tanh_activate(x):
    """``tanh_activate``: float ``2*x``, then ``(exp(2x)-1)/(exp(2x)+1)`` in double."""
    e = np.exp(np.float64(np.float32(2) * x))
    return np.float32((e - 1.) / (e + 1.))


@kernel
def plse_activate(x):
    """``plse_activate``: ``.01*(x+4)`` / ``.01*(x-4) + 1`` / ``.125*x + .5`` (double, float inner sums)."""
    if x < np.float32(-4):
        return np.float32(.01 * np.float64(x + np.float32(4)))
    if x > np.float32(4):
        return np.float32(.01 * np.float64(x - np.float32(4)) + 1.)
    return np.float32(.125 * np.float64(x) + .5)


@kernel
def lhtan_activate(x):
    """``lhtan_activate``: ``.001*x`` below 0, ``.001*(x-1) + 1`` above 1 (double), else ``x``."""
    if x < 0:
        return np.float32(.001 * np.float64(x))
    if x > np.float32(1):
        return np.float32(.001 * np.float64(x - np.float32(1)) + 1.)
    return x


# ------------------------------------------------------------------ gradients

@kernel
def lhtan_gradient(x):
    """``lhtan_gradient``: 1 inside (0, 1), else ``.001`` as float."""
    if x > 0 and x < np.float32(1):
        return np.float32(1)
    return np.float32(.001)


@kernel
def hardtan_gradient(x):
    """``hardtan_gradient``: 1 inside (-1, 1), else 0."""
    if x > np.float32(-1) and x < np.float32(1):
        return np.float32(1)
    return np.float32(0)


@kernel
def linear_gradient(x):
    """``linear_gradient``: 1."""
    return np.float32(1)


@kernel
def logistic_gradient(x):
    """``logistic_gradient``: ``(1-x)*x`` in float."""
    return (np.float32(1) - x) * x


@kernel
def loggy_gradient(x):
    """``loggy_gradient``: ``float y = (x+1.)/2.`` (double, rounded), then ``2*(1-y)*y`` in float."""
    y = np.float32((np.float64(x) + 1.) / 2.)
    return np.float32(2) * (np.float32(1) - y) * y


@kernel
def stair_gradient(x):
    """``stair_gradient``: 0 where ``floor(x) == x`` (integers and +-inf), else 1."""
    if np.floor(np.float64(x)) == np.float64(x):
        return np.float32(0)
    return np.float32(1)


@kernel
def relu_gradient(x):
    """``relu_gradient``: ``(x>0)``."""
    return np.float32(x > 0)


@kernel
def elu_gradient(x):
    """``elu_gradient``: ``(x>=0) + (x<0)*(x+1)`` in float."""
    return np.float32(x >= 0) + np.float32(x < 0) * (x + np.float32(1))


@kernel
def selu_gradient(x):
    """``selu_gradient``: ``(x>=0)*1.0507 + (x<0)*(x + 1.0507*1.6732)`` in double, rounded."""
    return np.float32(np.float64(x >= 0) * 1.0507
                      + np.float64(x < 0) * (np.float64(x) + 1.0507 * 1.6732))


@kernel
def relie_gradient(x):
    """``relie_gradient``: 1 if x > 0 else ``.01`` as float."""
    if x > 0:
        return np.float32(1)
    return np.float32(.01)


@kernel
def ramp_gradient(x):
    """``ramp_gradient``: ``(x>0) + .1`` in double, rounded (1.1f or .1f)."""
    return np.float32(np.float64(x > 0) + .1)


@kernel
def leaky_gradient(x):
    """``leaky_gradient``: 1 if x > 0 else ``.1`` as float."""
    if x > 0:
        return np.float32(1)
    return np.float32(.1)


@kernel
def tanh_gradient(x):
    """``tanh_gradient``: ``1-x*x`` in float."""
    return np.float32(1) - x * x


@kernel
def plse_gradient(x):
    """``plse_gradient``: ``.01`` outside [0, 1], else ``.125``, as float."""
    if x < 0 or x > np.float32(1):
        return np.float32(.01)
    return np.float32(.125)


# ------------------------------------------------------------ switch and loops

@kernel
def activate(x, a):
    """darknet's ``activate``: the activation ``a`` of one float; 0 for an unknown ``a``."""
    x = np.float32(x)
    if a == LINEAR:
        return linear_activate(x)
    if a == LOGISTIC:
        return logistic_activate(x)
    if a == LOGGY:
        return loggy_activate(x)
    if a == RELU:
        return relu_activate(x)
    if a == ELU:
        return elu_activate(x)
    if a == SELU:
        return selu_activate(x)
    if a == RELIE:
        return relie_activate(x)
    if a == RAMP:
        return ramp_activate(x)
    if a == LEAKY:
        return leaky_activate(x)
    if a == TANH:
        return tanh_activate(x)
    if a == PLSE:
        return plse_activate(x)
    if a == STAIR:
        return stair_activate(x)
    if a == HARDTAN:
        return hardtan_activate(x)
    if a == LHTAN:
        return lhtan_activate(x)
    return np.float32(0)


@kernel
def gradient(x, a):
    """darknet's ``gradient``: the derivative of activation ``a`` given its output ``x``."""
    x = np.float32(x)
    if a == LINEAR:
        return linear_gradient(x)
    if a == LOGISTIC:
        return logistic_gradient(x)
    if a == LOGGY:
        return loggy_gradient(x)
    if a == RELU:
        return relu_gradient(x)
    if a == ELU:
        return elu_gradient(x)
    if a == SELU:
        return selu_gradient(x)
    if a == RELIE:
        return relie_gradient(x)
    if a == RAMP:
        return ramp_gradient(x)
    if a == LEAKY:
        return leaky_gradient(x)
    if a == TANH:
        return tanh_gradient(x)
    if a == PLSE:
        return plse_gradient(x)
    if a == STAIR:
        return stair_gradient(x)
    if a == HARDTAN:
        return hardtan_gradient(x)
    if a == LHTAN:
        return lhtan_gradient(x)
    return np.float32(0)


@kernel
def activate_array_cpu(x, n, a):
    """darknet's ``activate_array``: ``x[i] = activate(x[i], a)`` for i < n, in place."""
    for i in range(n):
        x[i] = activate(x[i], a)


@kernel
def gradient_array_cpu(x, n, a, delta):
    """darknet's ``gradient_array``: ``delta[i] *= gradient(x[i], a)`` (a float product).

    gcc computes the gradient first and multiplies it by ``delta[i]`` (``mulss`` with the
    gradient as first source), so where both are NaN the gradient's NaN survives.
    """
    for i in range(n):
        g = gradient(x[i], a)
        delta[i] = first_nan(g, g * delta[i])


def activate_spans(x, starts, counts, a):
    """``activate_array(x[starts[s]:], counts[s], a)`` for every span s, one call each, in
    order: what darknet's yolo layer does for each anchor's x, y and objectness+classes."""
    for start, count in zip(starts, counts):
        activate_array(x[int(start):], int(count), a)


def activate_array(x, n, a):
    """darknet's ``activate_array(x, n, a)``: check the arguments, then activate ``x[:n]`` in place."""
    check_array("x", x, n)
    activate_array_cpu(x, int(n), check_activation(a))


def gradient_array(x, n, a, delta):
    """darknet's ``gradient_array(x, n, a, delta)``: ``delta[:n] *= gradient(x[:n])`` in place."""
    check_array("x", x, n)
    check_array("delta", delta, n)
    gradient_array_cpu(x, int(n), check_activation(a), delta)
