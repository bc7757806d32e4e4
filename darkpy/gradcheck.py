"""``darkpy gradcheck``: float64 central differences against every layer's backward pass.

How it works, per layer of a network (``gradcheck_network``):

1. The network (a deep copy: the caller's is untouched) runs one training
   forward pass on a seeded random input; each layer's input is recorded.
2. At that input ``x`` and the layer's current parameters, a *float64 twin* of
   the layer (numpy formulas of darknet's forward and of darknet's backward, in
   this module) gives the gradient of ``L = sum(r*y)`` for a seeded random
   upstream gradient ``r``, with respect to the input and every parameter;
   central differences ``(L(p+h) - L(p-h))/2h`` of the twin's forward give the
   same numbers independently.  Row ``gradient``: the max relative error
   ``max|analytic - fd| / max(|analytic|, |fd|)`` (max norms), bound 1e-6.
3. The layer's own float32 code (forward and backward on a copy of the layer)
   is compared with the twin at the same ``x`` and ``r``: row ``float32``,
   bound ``FLOAT32_BOUND``.  This ties the twin to the code the network runs.

Why twins rather than the float32 kernels on float64 copies: darkpy's kernels
reproduce C's float arithmetic, so they round to float32 inside (``np.float32``
constants and stores, darknet's float accumulators); in float64 buffers they
would still compute float32 values, and central differences of float32 values
cannot resolve 1e-6.  A twin is short numpy code per layer type; row ``float32``
checks that it computes what the kernels compute.

darknet's batchnorm (``[batchnorm]``, ``batch_normalize=1`` in convolutional and
connected layers) departs on purpose from the gradient of its own forward: the
forward normalises with the *unbiased* variance and ``sqrt(var) + 1e-6``, the
backward is the textbook formula (biased variance, ``sqrt(var + 1e-5)``)
evaluated at that unbiased variance.  For these layers row ``gradient`` checks
darknet's backward formula against the forward it was derived for (biased
variance, epsilon inside the root: the textbook forward), and two ``departure``
rows state, without a bound, how far darknet's actual backward is from that
textbook gradient (about 1 - sqrt((m-1)/m) ~ 1/(2m) for m = batch*spatial values
per channel) and from the true gradient of darknet's own forward (the same
order: the projection term differs by 1/m, and the epsilons are placed apart).

Piecewise activations (leaky, relu) are differenced with the activation pattern
of the unperturbed point (exact away from the kinks, which have measure zero).
Layers without a twin (pooling, route, ...) get a ``skipped`` row and do not
fail the check.
"""

import argparse
import copy
import sys
from dataclasses import dataclass, field

import numpy as np

from darkpy import kernels
from darkpy.errors import DarkpyError
from darkpy.kernels import activations as act

#: Bound of the ``gradient`` rows (relative error, float64).
GRADIENT_BOUND = 1e-6
#: Bound of the ``float32`` rows: the float32 layer against its float64 twin (relative error).
#: float32 rounding gives ~1e-7 in well-conditioned layers; batch statistics over very few
#: values amplify it (m = 2 values per channel: up to ~2e-4 seen); a wrong term gives >= 1e-2.
FLOAT32_BOUND = 1e-3
#: Default central-difference step.
DEFAULT_EPS = 1e-5

# darknet's batchnorm epsilons (.000001f in normalize_cpu, .00001f in the backward), widened exactly.
_EPS_FORWARD = float(np.float32(.000001))
_EPS_BACKWARD = float(np.float32(.00001))
_LEAKY_SLOPE = float(np.float32(.1))

COLUMNS = ("input", "weights", "biases", "scales")


@dataclass
class GradRow:
    """One line of the gradcheck table."""

    index: int
    type: str
    check: str                       # "gradient", "float32", "departure: ...", "skipped"
    errors: dict = field(default_factory=dict)   # gradient name -> max relative error
    bound: float = None              # None: reported, not bounded
    ok: bool = True
    note: str = ""


def rel_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``; 0 when both are zero."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    if scale == 0:
        return 0.0
    return float(np.abs(a - b).max() / scale)


# ----------------------------------------------------------------------------- float64 pieces

def _activate(z, activation, frozen):
    """darknet's activation in float64; ``frozen`` is the pattern (z > 0) used by leaky/relu."""
    if activation == act.LINEAR:
        return z, None
    if activation in (act.LEAKY, act.RELU):
        mask = z > 0 if frozen is None else frozen
        return np.where(mask, z, _LEAKY_SLOPE * z if activation == act.LEAKY else 0.0), mask
    if activation == act.LOGISTIC:
        return 1. / (1. + np.exp(-z)), None
    if activation == act.TANH:
        return np.tanh(z), None
    raise KeyError(activation)


def _activation_gradient(y, activation, mask):
    """darknet's gradient_array factor, from the output ``y`` (and the leaky/relu pattern)."""
    if activation == act.LINEAR:
        return np.ones_like(y)
    if activation == act.LEAKY:
        return np.where(mask, 1.0, _LEAKY_SLOPE)
    if activation == act.RELU:
        return np.where(mask, 1.0, 0.0)
    if activation == act.LOGISTIC:
        return (1. - y) * y
    return 1. - y * y  # TANH


TWIN_ACTIVATIONS = (act.LINEAR, act.LEAKY, act.RELU, act.LOGISTIC, act.TANH)


def _bn_variance(z, mode):
    """Per channel of (batch, c, spatial): darknet's unbiased variance or the textbook biased one."""
    m = z.shape[0] * z.shape[2]
    mu = z.mean(axis=(0, 2), keepdims=True)
    s = ((z - mu) ** 2).sum(axis=(0, 2), keepdims=True)
    return mu, (s / (m - 1) if mode == "darknet" else s / m)


def _bn_normalize(z, mode):
    """darknet's ``x_norm``: ``(z-mu)/(sqrt(var_u) + 1e-6)``; textbook: ``(z-mu)/sqrt(var_b + 1e-5)``."""
    mu, var = _bn_variance(z, mode)
    if mode == "darknet":
        return (z - mu) / (np.sqrt(var) + _EPS_FORWARD)
    return (z - mu) / np.sqrt(var + _EPS_BACKWARD)


def _bn_backward(z, d, mode):
    """darknet's mean_delta/variance_delta/normalize_delta in float64 (``d`` = delta after
    scale_bias), at darknet's unbiased variance or (textbook) the biased one."""
    m = z.shape[0] * z.shape[2]
    mu, var = _bn_variance(z, mode)
    mean_delta = d.sum(axis=(0, 2), keepdims=True) * (-1. / np.sqrt(var + _EPS_BACKWARD))
    variance_delta = (d * (z - mu)).sum(axis=(0, 2), keepdims=True) * (-.5 * (var + _EPS_BACKWARD) ** -1.5)
    return d / np.sqrt(var + _EPS_BACKWARD) + variance_delta * 2. * (z - mu) / m + mean_delta / m


def _group_backward(z, d, eps):
    """The same formula per group of a (groups', spatial') view, biased variance, any eps."""
    m = z.shape[1]
    mu = z.mean(axis=1, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=1, keepdims=True)
    mean_delta = d.sum(axis=1, keepdims=True) * (-1. / np.sqrt(var + eps))
    variance_delta = (d * (z - mu)).sum(axis=1, keepdims=True) * (-.5 * (var + eps) ** -1.5)
    return d / np.sqrt(var + eps) + variance_delta * 2. * (z - mu) / m + mean_delta / m


def _affine_then_activate(l, z, p, mode, frozen):
    """darknet's tail of a convolutional/connected forward on z (batch, n, spatial):
    batchnorm (scales, biases) or add_bias, then the activation."""
    if l.batch_normalize:
        xn = _bn_normalize(z, mode)
        pre = xn * p["scales"][None, :, None] + p["biases"][None, :, None]
    else:
        xn = None
        pre = z + p["biases"][None, :, None]
    y, mask = _activate(pre, l.activation, frozen)
    return y, mask, xn


def _affine_backward(l, z, y, mask, xn, p, r, mode, grads):
    """Gradient through activation and batchnorm/bias; fills grads, returns dE/dz."""
    dz = r * _activation_gradient(y, l.activation, mask)
    grads["biases"] = dz.sum(axis=(0, 2))
    if l.batch_normalize:
        grads["scales"] = (dz * xn).sum(axis=(0, 2))
        return _bn_backward(z, dz * p["scales"][None, :, None], mode)
    return dz


# ----------------------------------------------------------------------------- twins

class ConvolutionalTwin:
    """darknet's convolutional layer (groups, stride, padding, batch_normalize) in float64."""

    @staticmethod
    def supports(l):
        return l.activation in TWIN_ACTIVATIONS

    @staticmethod
    def params(l):
        p = {"weights": l.weights.astype(np.float64).reshape(l.n, l.c // l.groups, l.size, l.size),
             "biases": l.biases.astype(np.float64)}
        if l.batch_normalize:
            p["scales"] = l.scales.astype(np.float64)
        return p

    @staticmethod
    def _patches(l, x):
        xp = np.pad(x.reshape(l.batch, l.c, l.h, l.w), ((0, 0), (0, 0), (l.pad, l.pad), (l.pad, l.pad)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (l.size, l.size), axis=(2, 3))
        win = win[:, :, ::l.stride, ::l.stride][:, :, :l.out_h, :l.out_w]
        return win.reshape(l.batch, l.groups, l.c // l.groups, l.out_h, l.out_w, l.size, l.size)

    @classmethod
    def _conv(cls, l, x, p):
        w = p["weights"].reshape(l.groups, l.n // l.groups, l.c // l.groups, l.size, l.size)
        z = np.einsum("bgchwij,gfcij->bgfhw", cls._patches(l, x), w)
        return z.reshape(l.batch, l.n, l.out_h * l.out_w)

    @classmethod
    def forward(cls, l, x, p, mode, frozen=None):
        y, mask, _ = _affine_then_activate(l, cls._conv(l, x, p), p, mode, frozen)
        return y.ravel(), mask

    @classmethod
    def backward(cls, l, x, p, r, mode):
        z = cls._conv(l, x, p)
        y, mask, xn = _affine_then_activate(l, z, p, mode, None)
        grads = {}
        dz = _affine_backward(l, z, y, mask, xn, p, r.reshape(z.shape), mode, grads)
        g, f, cg = l.groups, l.n // l.groups, l.c // l.groups
        dz = dz.reshape(l.batch, g, f, l.out_h, l.out_w)
        patches = cls._patches(l, x)
        grads["weights"] = np.einsum("bgchwij,bgfhw->gfcij", patches, dz).reshape(p["weights"].shape)
        w = p["weights"].reshape(g, f, cg, l.size, l.size)
        dpatch = np.einsum("gfcij,bgfhw->bgchwij", w, dz).reshape(l.batch, l.c, l.out_h, l.out_w, l.size, l.size)
        dxp = np.zeros((l.batch, l.c, l.h + 2 * l.pad, l.w + 2 * l.pad))
        for i in range(l.size):
            for j in range(l.size):
                dxp[:, :, i:i + l.stride * l.out_h:l.stride, j:j + l.stride * l.out_w:l.stride] += dpatch[..., i, j]
        grads["input"] = dxp[:, :, l.pad:l.pad + l.h, l.pad:l.pad + l.w].ravel()
        return grads

    @staticmethod
    def float32_gradients(l, net):
        g = {"input": net.delta, "weights": l.weight_updates, "biases": l.bias_updates}
        if l.batch_normalize:
            g["scales"] = l.scale_updates
        return g


class ConnectedTwin:
    """darknet's connected layer (with or without batch_normalize) in float64."""

    supports = ConvolutionalTwin.supports

    @staticmethod
    def params(l):
        p = {"weights": l.weights.astype(np.float64).reshape(l.outputs, l.inputs),
             "biases": l.biases.astype(np.float64)}
        if l.batch_normalize:
            p["scales"] = l.scales.astype(np.float64)
        return p

    @staticmethod
    def forward(l, x, p, mode, frozen=None):
        z = (x.reshape(l.batch, l.inputs) @ p["weights"].T)[:, :, None]
        y, mask, _ = _affine_then_activate(l, z, p, mode, frozen)
        return y.ravel(), mask

    @staticmethod
    def backward(l, x, p, r, mode):
        xb = x.reshape(l.batch, l.inputs)
        z = (xb @ p["weights"].T)[:, :, None]
        y, mask, xn = _affine_then_activate(l, z, p, mode, None)
        grads = {}
        dz = _affine_backward(l, z, y, mask, xn, p, r.reshape(z.shape), mode, grads)[:, :, 0]
        grads["weights"] = dz.T @ xb
        grads["input"] = (dz @ p["weights"]).ravel()
        return grads

    float32_gradients = ConvolutionalTwin.float32_gradients


class BatchnormTwin:
    """darknet's ``[batchnorm]`` layer (training statistics) in float64."""

    @staticmethod
    def supports(l):
        return True

    @staticmethod
    def params(l):
        return {"scales": l.scales.astype(np.float64), "biases": l.biases.astype(np.float64)}

    @staticmethod
    def _shape(l, x):
        return x.reshape(l.batch, l.out_c, l.out_h * l.out_w)

    @classmethod
    def forward(cls, l, x, p, mode, frozen=None):
        xn = _bn_normalize(cls._shape(l, x), mode)
        return (xn * p["scales"][None, :, None] + p["biases"][None, :, None]).ravel(), None

    @classmethod
    def backward(cls, l, x, p, r, mode):
        z = cls._shape(l, x)
        dy = r.reshape(z.shape)
        xn = _bn_normalize(z, mode)
        return {"biases": dy.sum(axis=(0, 2)), "scales": (dy * xn).sum(axis=(0, 2)),
                "input": _bn_backward(z, dy * p["scales"][None, :, None], mode).ravel()}

    @staticmethod
    def float32_gradients(l, net):
        return {"input": net.delta, "biases": l.bias_updates, "scales": l.scale_updates}


class CaffeBatchnormTwin:
    """``[batchnorm] style=caffe`` in float64: batch statistics (biased variance) or the stored ones."""

    @staticmethod
    def supports(l):
        return True

    @staticmethod
    def params(l):
        return {}

    @staticmethod
    def _statistics(l, z):
        if l.global_used:
            factor = float(l.scale_factor[0])
            scale = 0.0 if factor == 0 else 1.0 / factor
            mean = (l.rolling_mean.astype(np.float64) * scale)[None, :, None]
            var = (l.rolling_variance.astype(np.float64) * scale)[None, :, None]
            return mean, var
        mean = z.mean(axis=(0, 2), keepdims=True)
        return mean, ((z - mean) ** 2).mean(axis=(0, 2), keepdims=True)

    @classmethod
    def forward(cls, l, x, p, mode, frozen=None):
        z = x.reshape(l.batch, l.out_c, l.out_h * l.out_w)
        mean, var = cls._statistics(l, z)
        return ((z - mean) / np.sqrt(var + float(l.eps))).ravel(), None

    @classmethod
    def backward(cls, l, x, p, r, mode):
        z = x.reshape(l.batch, l.out_c, l.out_h * l.out_w)
        dy = r.reshape(z.shape)
        mean, var = cls._statistics(l, z)
        std = np.sqrt(var + float(l.eps))
        if l.global_used:
            return {"input": (dy / std).ravel()}
        y = (z - mean) / std
        dx = (dy - dy.mean(axis=(0, 2), keepdims=True) - (dy * y).mean(axis=(0, 2), keepdims=True) * y) / std
        return {"input": dx.ravel()}

    @staticmethod
    def float32_gradients(l, net):
        return {"input": net.delta}


class GroupnormTwin:
    """``[layernorm]``, ``[instancenorm]``, ``[groupnorm]`` in float64 (per-sample group statistics)."""

    @staticmethod
    def supports(l):
        return True

    params = BatchnormTwin.params

    @staticmethod
    def _normalize(l, x):
        z = x.reshape(l.batch * l.groups, -1)
        mean = z.mean(axis=1, keepdims=True)
        var = ((z - mean) ** 2).mean(axis=1, keepdims=True)
        return z, ((z - mean) / np.sqrt(var + float(l.eps))).reshape(l.batch, l.out_c, -1)

    @classmethod
    def forward(cls, l, x, p, mode, frozen=None):
        _, xn = cls._normalize(l, x)
        return (xn * p["scales"][None, :, None] + p["biases"][None, :, None]).ravel(), None

    @classmethod
    def backward(cls, l, x, p, r, mode):
        z, xn = cls._normalize(l, x)
        dy = r.reshape(xn.shape)
        d = (dy * p["scales"][None, :, None]).reshape(z.shape)
        return {"biases": dy.sum(axis=(0, 2)), "scales": (dy * xn).sum(axis=(0, 2)),
                "input": _group_backward(z, d, float(l.eps)).ravel()}

    float32_gradients = BatchnormTwin.float32_gradients


def twin_for(l):
    """The float64 twin of a layer, or None when darkpy has none for it."""
    if l.type == "batchnorm":
        twin = CaffeBatchnormTwin if getattr(l, "style", "darknet") == "caffe" else BatchnormTwin
    else:
        twin = {"convolutional": ConvolutionalTwin, "connected": ConnectedTwin,
                "layernorm": GroupnormTwin, "instancenorm": GroupnormTwin,
                "groupnorm": GroupnormTwin}.get(l.type)
    if twin is None or not twin.supports(l):
        return None
    return twin


def has_darknet_batchnorm(l):
    """Whether a layer runs darknet's batchnorm (and so departs from the textbook gradient)."""
    if l.type == "batchnorm":
        return getattr(l, "style", "darknet") != "caffe"
    return l.type in ("convolutional", "connected") and bool(l.batch_normalize)


# ----------------------------------------------------------------------------- central differences

def central_differences(f, arrays, r, h):
    """d sum(r*f())/d a for every element of every array in ``arrays`` (modified in place and
    restored), by ``sum(r*(f(a+h) - f(a-h)))/(2h)``."""
    grads = {}
    for name, a in arrays.items():
        g = np.zeros(a.size)
        flat = a.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            up = f()
            flat[i] = old - h
            down = f()
            flat[i] = old
            g[i] = np.dot(r, up - down) / (2 * h)
        grads[name] = g
    return grads


def _differenced(twin, l, x, p, r, mode, h):
    _, frozen = twin.forward(l, x, p, mode)
    arrays = {"input": x, **p}
    return central_differences(lambda: twin.forward(l, x, p, mode, frozen)[0], arrays, r, h)


def _row(index, l, check, analytic, reference, bound, note=""):
    errors = {name: rel_error(analytic[name], reference[name]) for name in analytic}
    ok = True if bound is None else all(e <= bound for e in errors.values())
    return GradRow(index, _type_name(l), check, errors, bound, ok, note)


def _type_name(l):
    if l.type == "batchnorm" and getattr(l, "style", "darknet") == "caffe":
        return "batchnorm(caffe)"
    return l.type


def _float32_run(l, net, x32, r32):
    """The layer's own forward and backward on a copy: returns (copy, the network view it used)."""
    lc = copy.deepcopy(l)
    for name in ("bias_updates", "scale_updates", "weight_updates"):
        buf = getattr(lc, name, None)
        if isinstance(buf, np.ndarray):
            buf.fill(0)
    n = copy.copy(net)
    n.input = x32.copy()
    n.delta = np.zeros(x32.size, np.float32)
    n.train = 1
    lc.delta.fill(0)
    lc.forward(lc, n)
    lc.delta[:] = r32
    lc.backward(lc, n)
    return lc, n


def gradcheck_layer(l, index, net, x32, rng, h=DEFAULT_EPS):
    """The rows of one layer at input ``x32`` (float32, as recorded in the network)."""
    twin = twin_for(l)
    if twin is None:
        return [GradRow(index, _type_name(l), "skipped", note="no float64 twin for this layer type/activation")]
    r32 = rng.standard_normal(l.outputs * l.batch).astype(np.float32)
    r = r32.astype(np.float64)
    x = x32.astype(np.float64)
    p = twin.params(l)
    departs = has_darknet_batchnorm(l)
    check_mode = "textbook" if departs else "darknet"
    rows = []

    analytic = twin.backward(l, x, p, r, check_mode)
    fd = _differenced(twin, l, x, p, r, check_mode, h)
    note = "darknet's backward formula vs its textbook forward" if departs else ""
    rows.append(_row(index, l, "gradient", analytic, fd, GRADIENT_BOUND, note))

    actual = twin.backward(l, x, p, r, "darknet")
    lc, n = _float32_run(l, net, x32, r32)
    f32 = {k: v.astype(np.float64) for k, v in twin.float32_gradients(lc, n).items()}
    rows.append(_row(index, l, "float32", f32, actual, FLOAT32_BOUND, "float32 layer vs float64 twin"))

    if departs:
        m = l.batch * l.out_h * l.out_w
        rows.append(_row(index, l, "departure: textbook", actual, analytic, None,
                         f"m={m} per channel; 1-sqrt((m-1)/m) = {1 - np.sqrt((m - 1) / m):.2e}"))
        true = _differenced(twin, l, x, p, r, "darknet", h)
        rows.append(_row(index, l, "departure: true", actual, true, None,
                         "vs central differences of darknet's own forward"))
    return rows


def gradcheck_network(net, layers=None, eps=DEFAULT_EPS, seed=0):
    """Gradient-check the layers of ``net`` (indices ``layers``, default all); returns ``GradRow``s.

    ``eps`` is the central-difference step, ``seed`` seeds the input and the upstream
    gradients.  The network passed in is not modified.
    """
    net = copy.deepcopy(net)
    rng = np.random.default_rng(seed)
    if layers is None:
        layers = range(net.n)
    layers = sorted(set(int(i) for i in layers))
    for i in layers:
        if not 0 <= i < net.n:
            raise DarkpyError(f"gradcheck: layer {i} does not exist (the network has {net.n} layers)")
    net.train = 1
    inputs = []
    n = copy.copy(net)
    n.input = rng.standard_normal(net.inputs * net.batch).astype(np.float32)
    for i, l in enumerate(net.layers):
        inputs.append(n.input.copy())
        if l.delta is not None:
            l.delta.fill(0)
        n.index = i
        l.forward(l, n)
        n.input = l.output
    rows = []
    for i in layers:
        rows += gradcheck_layer(net.layers[i], i, net, inputs[i], rng, eps)
    return rows


def format_rows(rows):
    """The table ``darkpy gradcheck`` prints."""
    head = f"{'layer':>5}  {'type':<17} {'check':<20}" + "".join(f"{c:>10}" for c in COLUMNS) + \
           f"{'bound':>9}  ok"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = "".join(f"{row.errors[c]:>10.2e}" if c in row.errors else f"{'-':>10}" for c in COLUMNS)
        bound = f"{row.bound:>9.0e}" if row.bound is not None else f"{'stated':>9}"
        verdict = "ok" if row.ok else "FAIL"
        if row.check == "skipped":
            cells, bound, verdict = " " * (10 * len(COLUMNS)), " " * 9, "-"
        line = f"{row.index:>5}  {row.type:<17} {row.check:<20}{cells}{bound}  {verdict}"
        lines.append(line + (f"  {row.note}" if row.note else ""))
    return "\n".join(lines)


def _layer_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 1,3,5, got {text!r}")


def main_gradcheck(args_list=None):
    """``darkpy gradcheck CFG [--weights W] [--layers 1,3,5] [--seed N] [--eps H] [--batch B] [--kernels K]``.

    Prints the table; returns 0 when every bounded row is within its bound, 1 when
    one is not, 2 on an error reading or building the network.
    """
    p = argparse.ArgumentParser(prog="darkpy gradcheck",
                                description="float64 central differences against every layer's backward pass")
    p.add_argument("cfg", help="darknet .cfg or .yaml network description")
    p.add_argument("--weights", help="darknet .weights file (default: deterministic random weights)")
    p.add_argument("--layers", type=_layer_list, help="comma-separated layer indices (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, input and upstream gradients")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS, help=f"central-difference step (default {DEFAULT_EPS})")
    p.add_argument("--batch", type=int, help="override the cfg's batch")
    p.add_argument("--kernels", choices=kernels.IMPLEMENTATIONS, default=None,
                   help="kernels of the float32 rows: fast or reference (default: the active ones)")
    args = p.parse_args(args_list)
    from darkpy.network import load_network, randomize_parameters
    before = kernels.active()
    if args.kernels is not None:
        kernels.use(args.kernels)
    try:
        net = load_network(args.cfg, args.weights, batch=args.batch)
        if args.weights is None:
            randomize_parameters(net, args.seed)
        rows = gradcheck_network(net, layers=args.layers, eps=args.eps, seed=args.seed)
    except DarkpyError as exc:
        print(f"darkpy gradcheck: error: {exc}", file=sys.stderr)
        return 2
    finally:
        kernels.use(before)
    print(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    print(f"\n{len(rows)} rows, {len(failed)} outside their bound" if failed else
          f"\nevery bounded row within its bound ({len(rows)} rows)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_gradcheck())
